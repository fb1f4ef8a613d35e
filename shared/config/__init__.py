"""The configuration: model (frozen dataclasses), parse (validation), settings (the only env reader)."""

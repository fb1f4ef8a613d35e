"""Thin trigger adapters: parse the trigger payload, call one shared entry point."""

"""Event parsing and routing, handling one event, bringing replicas to a version."""

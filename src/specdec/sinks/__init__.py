"""Built-in sinks (registered as plugins through entry points)."""

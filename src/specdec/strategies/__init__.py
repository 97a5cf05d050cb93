"""Built-in strategies (registered as plugins through entry points)."""

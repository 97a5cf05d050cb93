"""Built-in benchmarks (registered as plugins through entry points)."""

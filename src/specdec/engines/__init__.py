"""Inference engines: the offline vLLM engine (one module imports vLLM)."""

"""Inference engines, a plugin kind: the offline vLLM engine and an OpenAI-compatible server.

Each backend is an entry point of ``specdec.engines`` (the built-ins ``offline``
and ``server`` too) and reports its own capabilities.  Only
:mod:`specdec.engines.vllm_offline` imports vLLM (lazily); the server engine
talks HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specdec import registry
from specdec.interfaces import Engine
from specdec.records import ExperimentConfig


def engine_for(config: ExperimentConfig, model: Path | str,
               speculative_config: Mapping[str, Any] | None) -> Engine:
    """The engine of the backend ``config.engine.backend`` names, for one run."""
    backend = registry.engines.create(config.engine.backend)
    engine: Engine = backend.create(config, model, speculative_config)
    return engine

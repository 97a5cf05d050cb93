"""Inference engines: the offline vLLM engine and an OpenAI-compatible server.

Only :mod:`specdec.engines.vllm_offline` imports vLLM (lazily); the server
engine talks HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specdec.interfaces import Engine
from specdec.records import ExperimentConfig


def engine_for(config: ExperimentConfig, model: Path | str,
               speculative_config: Mapping[str, Any] | None) -> Engine:
    """The engine ``config.engine.backend`` asks for."""
    if config.engine.backend == "server":
        from specdec.engines.openai_server import OpenAIServerEngine  # noqa: PLC0415

        return OpenAIServerEngine(config, model, speculative_config)
    from specdec.engines.vllm_offline import VllmOfflineEngine  # noqa: PLC0415

    return VllmOfflineEngine(config, model, speculative_config)

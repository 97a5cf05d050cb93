"""specdec: which speculative-decoding method makes this model faster on vLLM, and by how much.

The public API.  Importing it does not import vLLM (only the engine adapter
does, when a run starts), so ``import specdec`` is fast and works without vLLM.

Example::

    import specdec

    config = specdec.load_config(overrides=["strategy.name=ngram", "benchmark.limit=4"])
    result = specdec.run_experiment(config)
    print(result.summary.overall.tokens_per_s_mean)
"""

from __future__ import annotations

from specdec.config import load_config
from specdec.draft_replay import replay_draft_run
from specdec.errors import (
    BenchmarkError,
    ConfigError,
    EngineError,
    InvalidOptionError,
    ModelError,
    OutputExistsError,
    PluginError,
    ReplayError,
    SpecdecError,
    StrategyError,
    UnknownPluginError,
)
from specdec.frames import load_runs
from specdec.interfaces import (
    Benchmark,
    Capabilities,
    Engine,
    EngineBackend,
    MetricsSink,
    RunInfo,
    ScoreRequest,
    ScoreResult,
    SpeculationStrategy,
    TargetInfo,
    TokenScore,
)
from specdec.records import (
    SCHEMA_VERSION,
    BenchmarkConfig,
    Conversation,
    EngineConfig,
    ExperimentConfig,
    GenerationConfig,
    GroupMetrics,
    Message,
    RequestRecord,
    RunSummary,
    SpecMetrics,
    SpecStats,
    StrategyConfig,
    TurnRecord,
)
from specdec.registry import PLUGIN_API_VERSION
from specdec.replay import (
    Proposer,
    ReplayedRun,
    RequestReplay,
    TurnReplay,
    draft_lengths,
    read_known_run,
    replay_agreement,
    replay_run,
    replay_turn,
    replay_with,
)
from specdec.run_folder import (
    Outcome,
    StoredRun,
    read_records,
    read_run,
    read_summary,
    to_dataframe,
)
from specdec.runner import RunResult, prepare_run, run_experiment

__all__ = [
    "PLUGIN_API_VERSION",
    "SCHEMA_VERSION",
    "Benchmark",
    "BenchmarkConfig",
    "BenchmarkError",
    "Capabilities",
    "ConfigError",
    "Conversation",
    "Engine",
    "EngineBackend",
    "EngineConfig",
    "EngineError",
    "ExperimentConfig",
    "GenerationConfig",
    "GroupMetrics",
    "InvalidOptionError",
    "Message",
    "MetricsSink",
    "ModelError",
    "Outcome",
    "OutputExistsError",
    "PluginError",
    "Proposer",
    "ReplayError",
    "ReplayedRun",
    "RequestRecord",
    "RequestReplay",
    "RunInfo",
    "RunResult",
    "RunSummary",
    "ScoreRequest",
    "ScoreResult",
    "SpecMetrics",
    "SpecStats",
    "SpecdecError",
    "SpeculationStrategy",
    "StoredRun",
    "StrategyConfig",
    "StrategyError",
    "TargetInfo",
    "TokenScore",
    "TurnRecord",
    "TurnReplay",
    "UnknownPluginError",
    "draft_lengths",
    "load_config",
    "load_runs",
    "prepare_run",
    "read_known_run",
    "read_records",
    "read_run",
    "read_summary",
    "replay_agreement",
    "replay_draft_run",
    "replay_run",
    "replay_turn",
    "replay_with",
    "run_experiment",
    "to_dataframe",
]

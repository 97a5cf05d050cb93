"""The server engine: the same benchmark against an OpenAI-compatible vLLM server.

Requests are streamed (``/v1/chat/completions``, or ``/v1/completions`` for raw
prompts) with a chosen concurrency, or arriving at a request rate as ``vllm
bench serve`` sends them (:func:`send_offsets`; the wait for a concurrency slot
is recorded apart from the latency).  Per request the client measures time to
first token, decode time and end-to-end latency; output tokens come from the
server's usage report.  A timed request carries only what the user configured
plus vLLM's ``return_token_ids``, where the server's version offers it, for the
output token ids; log-probabilities are asked for only when
``generation.logprobs`` is set.  Without either the run states that its
comparison is by text (:data:`IDS_BY_TEXT` in the provenance).
Speculative acceptance comes from the server's Prometheus ``/metrics`` counters
(``vllm:spec_decode_*_total``, read before and after the run and summed over
engines) and, where the server reports them, per-request speculative metrics.

Failures are per request: an unreachable server, a 4xx/5xx answer, a stream
cut before ``[DONE]`` or a timeout are recorded in that request's ``error`` and
the run goes on.  The server gives a turn whose prompt leaves less room than
``generation.max_tokens`` in its ``max_model_len`` (from ``/v1/models``) only
what fits; that budget is recorded in the turn's ``max_tokens`` and the run
logs one warning with how many turns were capped, as the offline engine does.

:class:`ServerBackend` is the ``server`` entry point of ``specdec.engines``.  It
never imports vLLM: an existing server's capabilities are what it reports
(``/version``, ``/v1/models``), a server to be launched is described from the
installed distribution's metadata, and what neither tells (speculative methods,
``speculative_config`` fields, an existing server's device) is recorded as
unknown.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import structlog
from prometheus_client.parser import text_string_to_metric_families

from specdec.engines.device import installed_vllm, local_device
from specdec.engines.launch import ServerProcess
from specdec.engines.requests import (
    WARMUP_MAX_TOKENS,
    RawPromptError,
    chat_messages,
    raw_prompt,
    request_seed,
    sample_settings,
    sampling_settings,
    seeded,
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
    RequestRecord,
    SpecStats,
    TurnRecord,
)
from specdec.registry import PLUGIN_API_VERSION

log = structlog.get_logger("specdec.server")

BACKEND = "server"
PREFIX = "vllm:spec_decode_"
SCORE_CONCURRENCY = 8
"""Scoring requests in flight when engine.concurrency is unset: the server batches them."""
SAMPLE_CONCURRENCY = 64
"""Sampling requests (a few tokens each) in flight when engine.concurrency is unset."""
NO_URL = "the server backend needs engine.url (or --endpoint URL), or engine.launch: true"

IDS_RETURNED = "returned"
"""``provenance.server.token_ids``: the server returned each turn's output token ids
(vLLM's ``return_token_ids``) without log-probabilities."""
IDS_FROM_LOGPROBS = "returned (from log-probabilities)"
"""``provenance.server.token_ids``: an older server; the ids come with the
log-probabilities ``generation.logprobs`` asked for (``return_tokens_as_token_ids``)."""
IDS_BY_TEXT = "unavailable (comparison by text)"
"""``provenance.server.token_ids``: the server cannot return token ids and no
log-probabilities were asked for: turns carry no token ids, so outputs compare by text."""
RETURN_TOKEN_IDS_SINCE = (0, 10, 2)
"""The first vLLM release whose OpenAI server takes ``return_token_ids`` (vLLM PR #22587)."""


def offers_token_ids(version: str | None) -> bool:
    """Whether a vLLM server of this version returns output token ids on request.

    vLLM's ``return_token_ids`` (since 0.10.2) adds ``token_ids`` to each
    streamed choice: the tokens of that chunk.  An unknown or unreadable version
    is taken as not offering it, so nothing unasked-for is sent to a server that
    may not be vLLM.
    """
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if found is None:
        return False
    release = tuple(int(part or 0) for part in found.groups())
    return release >= RETURN_TOKEN_IDS_SINCE


def gamma_intervals(count: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """``count`` gaps between arrivals: gamma with shape ``burstiness``, mean ``1 / rate``.

    As ``vllm bench serve`` draws them (``vllm/benchmarks/serve.py``,
    ``get_request``: ``np.random.gamma(shape=burstiness, scale=1 / (rate *
    burstiness))``): burstiness 1 is the exponential distribution (a Poisson
    process); the variance is ``1 / (rate**2 * burstiness)``.
    """
    rng = random.Random(seed)  # noqa: S311 - a schedule, not a secret
    scale = 1.0 / (rate * burstiness)
    return [rng.gammavariate(burstiness, scale) for _ in range(count)]


def send_offsets(count: int, rate: float | None, *, schedule: str = "poisson",
                 burstiness: float = 1.0, seed: int = 0) -> tuple[float, ...]:
    """When each of ``count`` requests is due, in seconds after the run begins.

    Without a rate every request is due at once (each is sent when a concurrency
    slot frees).  ``fixed``: request i at ``i / rate``.  ``poisson``: the gaps
    between consecutive requests are :func:`gamma_intervals` seeded by ``seed``,
    then rescaled so that they add up to the fixed schedule's span, as
    ``get_request`` rescales its delays to ``count / rate`` "to close the gap for
    stabilizing the throughput data from different random seeds".  Request 0 is
    sent at once (vLLM's first request waits one gap, which only adds idle time
    before the run).
    """
    if not rate:
        return (0.0,) * count
    if schedule == "fixed" or count < 2:  # noqa: PLR2004 - a gap needs two requests
        return tuple(i / rate for i in range(count))
    gaps = gamma_intervals(count - 1, rate, burstiness, seed)
    scale = (count - 1) / rate / sum(gaps)
    offsets = [0.0]
    for gap in gaps:
        offsets.append(offsets[-1] + gap * scale)
    return tuple(offsets)


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


def _logprob_entries(logprobs: Mapping[str, Any]) -> list[tuple[int | None, list[float]]]:
    """Per token of a streamed chunk: its id (when given as ``token_id:N``) and top log-probs.

    Chat answers list ``content`` entries with ``top_logprobs`` objects;
    ``/v1/completions`` gives parallel lists, ``tokens`` and ``top_logprobs``
    (one ``{token: logprob}`` map per token).
    """
    if logprobs.get("content"):
        return [(_token_id(entry.get("token", "")),
                 sorted((float(t["logprob"]) for t in entry.get("top_logprobs") or ()),
                        reverse=True))
                for entry in logprobs["content"]]
    tokens = logprobs.get("tokens") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [(_token_id(token), sorted((float(v) for v in (top or {}).values()), reverse=True))
            for token, top in zip(tokens, tops, strict=False)]


class _Stream:
    """What one streamed answer delivered, and when."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        """Output token ids as the server returned them (``return_token_ids``)."""
        self.logprob_token_ids: list[int] = []
        """Output token ids read from log-probabilities (``return_tokens_as_token_ids``)."""
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
            ids = [int(t) for t in choice.get("token_ids") or ()]
            self.token_ids += ids
            entries = _logprob_entries(choice.get("logprobs") or {})
            for token, tops in entries:
                if token is not None:
                    self.logprob_token_ids.append(token)
                if len(tops) > 1:
                    self.margins.append(tops[0] - tops[1])
            if piece or entries or ids:
                self.first = self.first if self.first is not None else now
                self.last = now
            self.text.append(piece)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


def _auth_headers(config: ExperimentConfig) -> dict[str, str]:
    name = config.engine.api_key_env
    if not name:
        return {}
    key = os.environ.get(name)
    if not key:
        msg = f"engine.api_key_env names {name}, which is not set"
        raise EngineError(msg)
    return {"Authorization": f"Bearer {key}"}


def _ask(url: str, headers: Mapping[str, str]) -> tuple[Any, str | None]:
    """The JSON a server answers at ``url``, or None and why not."""
    try:
        response = httpx.get(url, headers=dict(headers), timeout=10)
        response.raise_for_status()
        return response.json(), None
    except (httpx.HTTPError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def server_capabilities(config: ExperimentConfig) -> Capabilities:
    """What the configured server offers, as far as it tells (vLLM is never imported).

    An existing server is asked for ``/version`` and ``/v1/models``; a server to
    be launched will run this environment's vLLM, whose version and device come
    from the installed distribution.  Speculative methods and fields are unknown
    either way (no server endpoint lists them), and so is an existing server's
    device.
    """
    engine = config.engine
    if engine.launch:
        installed = installed_vllm()
        if installed is None:
            msg = (
                "engine.launch: true starts vLLM's server from this environment, but no vLLM "
                "is installed here: install the `cpu` or `cuda` extra, or give the URL of a "
                "running server (engine.url / --endpoint) instead"
            )
            raise EngineError(msg)
        return Capabilities(
            BACKEND,
            vllm_version=installed.version,
            device=local_device(installed),
            local=True,
            source=f"launch: the installed {installed.distribution} distribution's metadata",
            reported={"distribution": installed.distribution},
        )
    if not engine.url:
        raise EngineError(NO_URL)
    base = engine.url.rstrip("/")
    headers = _auth_headers(config)
    version, version_error = _ask(f"{base}/version", headers)
    listing, models_error = _ask(f"{base}/v1/models", headers)
    reported: dict[str, Any] = {}
    if isinstance(version, Mapping) and isinstance(version.get("version"), str):
        reported["version"] = version["version"]
    else:
        reported["version_error"] = version_error or f"unexpected answer: {version!r}"
        log.warning("the server did not tell its vLLM version; recording it as unknown",
                    url=f"{base}/version", error=reported["version_error"])
    if isinstance(listing, Mapping) and isinstance(listing.get("data"), list):
        reported["models"] = [
            {k: m.get(k) for k in ("id", "root", "max_model_len")}
            for m in listing["data"] if isinstance(m, Mapping)
        ]
    else:
        reported["models_error"] = models_error or f"unexpected answer: {listing!r}"
    return Capabilities(
        BACKEND,
        vllm_version=reported.get("version"),
        local=False,
        source=f"the server at {base} (/version, /v1/models); it does not report its "
               "speculative methods, speculative_config fields or device",
        reported=reported,
    )


class ServerBackend:
    """The ``server`` engine: an OpenAI-compatible vLLM server, existing or launched."""

    name = BACKEND
    plugin_api_version = PLUGIN_API_VERSION

    def capabilities(self, config: ExperimentConfig) -> Capabilities:
        """What the server reports (see :func:`server_capabilities`)."""
        return server_capabilities(config)

    def create(self, config: ExperimentConfig, model_path: Path | str,
               speculative_config: Mapping[str, Any] | None) -> OpenAIServerEngine:
        """An :class:`OpenAIServerEngine` for this run."""
        return OpenAIServerEngine(config, model_path, speculative_config)


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
            self.base_url = self.server.url
        elif engine.url:
            self.base_url = engine.url.rstrip("/")
        else:
            raise EngineError(NO_URL)
        self.model_name = ""
        self._headers: dict[str, str] = {}
        self._max_model_len: int | None = None
        """The served model's context length, when /v1/models tells it."""
        self._capped = 0
        self._token_ids: str | None = None
        """How turns get their output token ids: one of the ``IDS_*`` values."""
        self._incomplete = 0

    def start(self) -> None:
        """Launch the server if asked, wait until it answers, and warm it up."""
        self._headers = _auth_headers(self.config)
        if self.server is not None:
            self.base_url = self.server.start()
        self.model_name = self._served_model()
        self.token_ids()
        if self.config.warmup:
            asyncio.run(self._warmup(warmup_conversation()))

    def close(self) -> None:
        """Stop a launched server; an existing server is left alone."""
        if self.server is not None:
            self.server.stop()

    def describe(self) -> dict[str, Any]:
        """What the outputs should record about the server.

        ``token_ids`` says how turns got their output token ids (one of the
        ``IDS_*`` values: with :data:`IDS_BY_TEXT` a comparison of
        outputs is by text); ``arrivals`` is the request schedule, when a rate is set.
        """
        shared: dict[str, Any] = {"token_ids": self.token_ids()}
        if seeded(self.config.generation):
            shared["seed"] = "per request: each turn's record holds its seed"
        engine = self.config.engine
        if engine.request_rate:
            shared["arrivals"] = {"request_rate": engine.request_rate,
                                  "schedule": engine.request_schedule,
                                  "burstiness": engine.burstiness, "seed": self._request_seed()}
        if self.server is not None:
            return {"launched": True, "url": self.base_url, "command": self.server.command,
                    **shared}
        return {
            "launched": False,
            "url": self.base_url,
            "declared": {"strategy": self.config.strategy.name,
                         "speculative_config": self.speculative_config},
            "note": "an existing server: its strategy and settings are as declared by the "
                    "user, not seen by the client",
            **shared,
        }

    def token_ids(self) -> str:
        """How this run's turns get their output token ids (an ``IDS_*`` value).

        Decided once from the server's vLLM version (:func:`offers_token_ids`): an
        existing server's ``/version``, or the installed vLLM a launched server
        runs.  Without ``return_token_ids`` the ids come from log-probabilities
        only when ``generation.logprobs`` asks for them; otherwise there are none.
        """
        if self._token_ids is None:
            if self.server is not None:
                installed = installed_vllm()
                version = installed.version if installed is not None else None
            else:
                answer, _error = _ask(f"{self.base_url}/version", _auth_headers(self.config))
                version = answer.get("version") if isinstance(answer, Mapping) else None
            if offers_token_ids(version if isinstance(version, str) else None):
                self._token_ids = IDS_RETURNED
            elif self.config.generation.logprobs is not None:
                self._token_ids = IDS_FROM_LOGPROBS
            else:
                self._token_ids = IDS_BY_TEXT
                log.warning("the server cannot return token ids (vLLM before 0.10.2, or its "
                            "version unknown) and generation.logprobs is unset: outputs "
                            "compare by text", url=self.base_url, version=version)
        return self._token_ids

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        """The token ids of the prompt a timed request sent for this turn, by ``/tokenize``.

        The turn is ``conversation.turns[len(answers)]``, after the engine's own
        ``answers`` to the earlier ones.  vLLM's ``POST /tokenize`` renders chat
        ``messages`` with ``add_generation_prompt`` (and no further special
        tokens) as ``/v1/chat/completions`` does, and a raw ``prompt`` with the
        special tokens ``/v1/completions`` adds.  A failure raises: a scoring
        pass needs every prompt.
        """
        if not self.model_name:
            msg = "the engine is not started: call start() first"
            raise EngineError(msg)
        body: dict[str, Any] = {"model": self.model_name}
        if self.config.chat_template:
            body |= {"messages": chat_messages(conversation, answers),
                     "add_generation_prompt": True}
        else:
            body["prompt"] = raw_prompt(conversation, answers)
        url = f"{self.base_url}/tokenize"
        try:
            response = httpx.post(url, json=body, headers=self._headers,
                                  timeout=self.config.engine.timeout_s)
        except httpx.HTTPError as exc:
            msg = f"tokenizing conversation {conversation.id!r} at {url} failed: {exc}"
            raise EngineError(msg) from exc
        if response.status_code >= 400:  # noqa: PLR2004 - HTTP error statuses
            msg = (f"tokenizing conversation {conversation.id!r} at {url} failed: HTTP "
                   f"{response.status_code}: {response.text[:300]}")
            raise EngineError(msg)
        try:
            return tuple(int(t) for t in response.json()["tokens"])
        except (ValueError, KeyError, TypeError) as exc:
            msg = (f"the server at {self.base_url} answered /tokenize without a token list "
                   f"({type(exc).__name__}: {exc}): is it a vLLM server?")
            raise EngineError(msg) from exc

    def _request_seed(self) -> int:
        engine = self.config.engine
        return engine.seed if engine.request_seed is None else engine.request_seed

    def _served_model(self) -> str:
        try:
            response = httpx.get(f"{self.base_url}/v1/models", headers=self._headers, timeout=10)
            response.raise_for_status()
            cards = {str(m["id"]): m for m in response.json().get("data", [])}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot list the server's models; requests will likely fail",
                        url=self.base_url, error=str(exc))
            return self.config.engine.served_model_name or str(self.model_path)
        name = self.config.engine.served_model_name
        if not name:
            if not cards:
                msg = f"the server at {self.base_url} serves no model"
                raise EngineError(msg)
            name = next(iter(cards))
        length = cards.get(name, {}).get("max_model_len")
        self._max_model_len = length if isinstance(length, int) and length > 0 else None
        return name

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
        self._capped = self._incomplete = 0
        start = time.perf_counter()
        asyncio.run(self._run_all(conversations, on_record))
        elapsed = time.perf_counter() - start
        counters = counter_delta(self._read_counters(), before)
        if self._capped:
            log.warning("the server cut generation.max_tokens to fit max_model_len; each "
                        "capped turn's budget is in its record's max_tokens", turns=self._capped,
                        max_tokens=self.config.generation.max_tokens,
                        max_model_len=self._max_model_len)
        if self._incomplete:
            log.warning("the server returned fewer token ids than it counted output tokens for "
                        "some turns; their token ids are left empty, so they compare by text",
                        turns=self._incomplete)
        return EngineRun(elapsed, counters if self.speculative_config else None)

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        """One ``/v1/completions`` request per seed, with the prompt's token ids; not streamed.

        :data:`SAMPLE_CONCURRENCY` in flight (``engine.concurrency`` if set), so
        the server batches them.  The output ids come from ``return_token_ids``
        where the server offers it, else from ``logprobs: 0`` with
        ``return_tokens_as_token_ids``.  The speculative counters are read
        around the sampling (from ``/metrics``).  A failure raises: the check
        needs every sample.
        """
        if not self.model_name:
            msg = "the engine is not started: call start() first"
            raise EngineError(msg)
        before = self._read_counters()
        samples = asyncio.run(self._sample_all(requests))
        counters = counter_delta(self._read_counters(), before)
        return SampleRun(samples, counters if self.speculative_config else None)

    async def _sample_all(self, requests: Sequence[SampleRequest]
                          ) -> tuple[tuple[tuple[int, ...], ...], ...]:
        limit = asyncio.Semaphore(self.config.engine.concurrency or SAMPLE_CONCURRENCY)
        timeout = httpx.Timeout(self.config.engine.timeout_s, connect=10.0)
        async with httpx.AsyncClient(timeout=timeout, headers=self._headers) as client:

            async def one(request: SampleRequest, seed: int) -> tuple[int, ...]:
                async with limit:
                    return await self._sample(client, request, seed)

            drawn = await asyncio.gather(*(one(r, s) for r in requests for s in r.seeds))
        flat = iter(drawn)
        return tuple(tuple(next(flat) for _ in r.seeds) for r in requests)

    async def _sample(self, client: httpx.AsyncClient, request: SampleRequest,
                      seed: int) -> tuple[int, ...]:
        returned = self.token_ids() == IDS_RETURNED
        payload = {"model": self.model_name, "prompt": list(request.token_ids),
                   **sample_settings(request, seed)}
        payload |= ({"return_token_ids": True} if returned
                    else {"logprobs": 0, "return_tokens_as_token_ids": True})
        response = await self._completion(client, payload, "sampling")
        try:
            choice = response.json()["choices"][0]
            tokens: list[Any] = (choice["token_ids"] if returned
                                 else [_token_id(t) for t in choice["logprobs"]["tokens"]])
            return tuple(int(t) for t in tokens)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            msg = (f"the server at {self.base_url} answered a sample without its token ids "
                   f"({type(exc).__name__}: {exc}): is it a vLLM server?")
            raise EngineError(msg) from exc

    async def _completion(self, client: httpx.AsyncClient, payload: dict[str, Any],
                          what: str) -> httpx.Response:
        """POST ``payload`` to ``/v1/completions`` and return the answer.

        A transport error or an HTTP error status raises an EngineError saying
        that ``what`` failed, where and why.
        """
        url = f"{self.base_url}/v1/completions"
        try:
            response = await client.post(url, json=payload)
        except httpx.HTTPError as exc:
            msg = f"{what} at {url} failed: {type(exc).__name__}: {exc}"
            raise EngineError(msg) from exc
        if response.status_code >= 400:  # noqa: PLR2004 - HTTP error statuses
            msg = f"{what} at {url} failed: HTTP {response.status_code}: {response.text[:300]}"
            raise EngineError(msg)
        return response

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score sequences with ``/v1/completions``: token-id prompts, ``prompt_logprobs=2``.

        ``prompt_logprobs`` is vLLM's extension of the completions API; the answer's
        ``choices[0].prompt_logprobs`` holds, per prompt position, ``null`` (the
        first) or a map from token id (as a string) to ``{logprob, rank,
        decoded_token}``.  One generated token is asked for and ignored.  A failure
        raises: a scoring pass needs every sequence.
        """
        if not self.model_name:
            msg = "the engine is not started: call start() first"
            raise EngineError(msg)
        return asyncio.run(self._score_all(requests))

    async def _score_all(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        limit = asyncio.Semaphore(self.config.engine.concurrency or SCORE_CONCURRENCY)
        timeout = httpx.Timeout(self.config.engine.timeout_s, connect=10.0)
        async with httpx.AsyncClient(timeout=timeout, headers=self._headers) as client:

            async def one(request: ScoreRequest) -> ScoreResult:
                async with limit:
                    return await self._score(client, request)

            return list(await asyncio.gather(*(one(r) for r in requests)))

    async def _score(self, client: httpx.AsyncClient, request: ScoreRequest) -> ScoreResult:
        payload = {"model": self.model_name, "prompt": list(request.token_ids), "max_tokens": 1,
                   "temperature": 0.0, "prompt_logprobs": SCORE_TOP}
        response = await self._completion(client, payload, "scoring")
        try:
            per_position = response.json()["choices"][0]["prompt_logprobs"]
            scores = []
            for position in request.chosen():
                candidates = {int(token): (float(entry["logprob"]), entry.get("rank"))
                              for token, entry in per_position[position].items()}
                scores.append(token_score(position, request.token_ids[position], candidates))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            msg = (
                f"the server at {self.base_url} answered scoring without usable "
                f"prompt_logprobs ({type(exc).__name__}: {exc}): is it a vLLM server?"
            )
            raise EngineError(msg) from exc
        return ScoreResult(tuple(scores))

    def _concurrency(self, count: int) -> int:
        engine = self.config.engine
        if engine.concurrency is not None:
            return engine.concurrency
        return 1 if self.config.mode == "sequential" else max(count, 1)

    async def _run_all(self, conversations: Sequence[Conversation],
                       on_record: Callable[[RequestRecord], None]) -> None:
        limit = asyncio.Semaphore(self._concurrency(len(conversations)))
        engine = self.config.engine
        due = send_offsets(len(conversations), engine.request_rate,
                           schedule=engine.request_schedule, burstiness=engine.burstiness,
                           seed=self._request_seed())
        timeout = httpx.Timeout(engine.timeout_s, connect=10.0)
        limits = httpx.Limits(max_connections=self._concurrency(len(conversations)) + 1)
        async with httpx.AsyncClient(timeout=timeout, limits=limits,
                                     headers=self._headers) as client:
            began = time.perf_counter()

            async def one(conv: Conversation, offset: float) -> None:
                await asyncio.sleep(max(0.0, began + offset - time.perf_counter()))
                async with limit:
                    # Sent now: the wait since it was due was for a slot, not the server.
                    waited = max(0.0, time.perf_counter() - began - offset)
                    record = await self._conversation(client, conv)
                    on_record(attrs.evolve(record, scheduled_s=offset, queue_wait_s=waited))

            await asyncio.gather(*(one(c, o) for c, o in zip(conversations, due, strict=True)))

    async def _warmup(self, conv: Conversation) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.config.engine.timeout_s),
                                     headers=self._headers) as client:
            record = await self._conversation(client, conv, max_tokens=WARMUP_MAX_TOKENS)
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
            **sampling_settings(gen, max_tokens,
                                request_seed(self.config, conv.id, len(earlier))),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # Only what the user configured, plus the token ids where the server returns them.
        how = self.token_ids()
        if how == IDS_RETURNED:
            payload["return_token_ids"] = True
        elif how == IDS_FROM_LOGPROBS:
            payload["return_tokens_as_token_ids"] = True
        top = gen.logprobs
        # The turn asked is the one after the engine's earlier answers (question).
        answers = [turn.output for turn in earlier]
        if self.config.chat_template:
            payload["messages"] = chat_messages(conv, answers)
            if top is not None:
                payload |= {"logprobs": True, "top_logprobs": top}
            return "/v1/chat/completions", payload
        try:
            payload["prompt"] = raw_prompt(conv, answers)
        except RawPromptError as exc:
            raise RequestFailedError(str(exc)) from exc
        if top is not None:
            payload["logprobs"] = top
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
        ids = self._output_ids(stream)
        output_tokens = int(usage.get("completion_tokens", len(ids)))
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        if self.token_ids() != IDS_BY_TEXT and len(ids) != output_tokens:
            # Incomplete ids (a parser held some back) would misplace a divergence.
            ids = ()
            self._incomplete += 1
        return TurnRecord(
            prompt=question,
            output="".join(stream.text),
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            ttft_s=first - sent,
            decode_s=last - first,
            finish_reason=stream.finish_reason,
            output_token_ids=ids,
            spec=_spec_from_response(stream.metrics),
            logprob_margins=tuple(stream.margins),
            max_tokens=self._budget(prompt_tokens, max_tokens),
            seed=payload.get("seed"),
        )

    def _output_ids(self, stream: _Stream) -> tuple[int, ...]:
        how = self.token_ids()
        if how == IDS_RETURNED:
            return tuple(stream.token_ids)
        if how == IDS_FROM_LOGPROBS:
            return tuple(stream.logprob_token_ids)
        return ()

    def _budget(self, prompt_tokens: int, max_tokens: int | None) -> int | None:
        """The budget the server gave a measured turn, if smaller than asked; else None.

        As vLLM's ``get_max_tokens``: the smaller of ``max_tokens`` and the room
        the prompt left in ``max_model_len``.
        """
        limit = self._max_model_len
        if max_tokens is not None or limit is None or not 0 < prompt_tokens < limit:
            return None
        room = limit - prompt_tokens
        if room >= self.config.generation.max_tokens:
            return None
        self._capped += 1
        return room

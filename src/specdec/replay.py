"""Predict, then confirm: replay a drafter over a finished greedy run's token ids.

Under greedy decoding every lossless strategy produces the baseline's tokens,
so what a verify step accepts is decided by the baseline's token ids alone.
:func:`replay_turn` runs vLLM's verify loop over one turn's known tokens with
an offline :class:`Proposer` and gives the counts the engine reports for that
turn (:class:`~specdec.records.SpecStats`, as
:func:`specdec.metrics.stats_from_histogram` builds them from vLLM's
per-request metrics); :func:`replay_run` does it for every turn of a finished
run folder and many settings at once, so :mod:`specdec.metrics` computes every
acceptance figure from the replayed records unchanged.

The loop is vLLM 0.32's (``vllm/v1/worker/gpu_model_runner.py``, which the CPU
runner inherits, and ``vllm/v1/core/sched/scheduler.py``), for one request:

- the step that ends the prefill samples the first output token, and the
  drafter runs right after it on the prompt and that token, so the first
  decode step already verifies a draft;
- after every step the drafter sees the prompt and all output tokens so far
  (``token_ids_cpu[:num_tokens_no_spec]``) and proposes up to k tokens;
- the scheduler verifies at most ``max_model_len - n - 1`` of them when n tokens
  are known (``num_new_tokens`` is cut so no position passes the context
  length); a step with no draft token scheduled is not a draft and counts nothing;
- the target accepts the drafts that agree with its own next tokens, in order,
  and adds one token of its own: a step yields accepted + 1 tokens;
- when the step's sequence length plus k exceeds ``max_model_len``
  (``_input_fits_in_drafter``) the drafter does not run and the request gets k
  draft tokens of id 0 (:data:`FILLER_TOKEN`), verified and counted like any draft;
- a step is counted before the output is cut at ``max_tokens`` or EOS, so the
  last step may count accepted tokens past the turn's end.

Exact for a request the engine schedules alone (``mode: sequential``), and in
batch mode unless a batch effect intervenes: the context-length check above
takes the longest sequence of the whole batch, and a full token budget or a
preemption trims or drops a step's drafts.  Where the last step's draft runs
past the known tokens (past EOS, or past the output of a run whose budget was
the replayed one), what the engine accepted there is unknown: replay counts
those tokens rejected and reports them as :attr:`TurnReplay.unresolved`.  A
baseline run with a larger ``max_tokens`` than the one replayed leaves none.

A draft model has no offline drafter here: :mod:`specdec.draft_replay` runs it in
an engine of its own and replays its continuations through :func:`replay_known`.
Its greedy draft also agrees with the target position by position whatever k, so
:func:`replay_agreement` replays it from finished runs of it at other k
(:func:`measured_agreement`), bounded where they do not tell.
``docs/prediction.md`` says what is exact per strategy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import attrs
import numpy as np
from attrs import field, frozen
from numpy.typing import NDArray

from specdec import registry, run_folder
from specdec.benchmarks.loader import conversation_of, run_conversations
from specdec.engines.requests import PromptTokenizer, prompt_token_ids
from specdec.errors import ReplayError
from specdec.interfaces import TargetInfo
from specdec.metrics import add_stats, stats_from_histogram
from specdec.records import (
    ExperimentConfig,
    RequestRecord,
    SpecStats,
    StrategyConfig,
    TurnRecord,
)
from specdec.serialization import unstructure

Tokens = NDArray[np.int64]

FILLER_TOKEN = 0
"""The id of the k draft tokens vLLM schedules when the drafter may not run
(the sequence is within k tokens of ``max_model_len``): the runner zeroes its
draft buffer and hands that out (``gpu_model_runner.py``, ``not input_fits_in_drafter``)."""

DRAFT_LENGTHS = range(1, 9)
"""The draft lengths :func:`draft_lengths` sweeps by default: k = 1 to 8."""

NGRAM_DEFAULT_WINDOW = 5
"""vLLM's ``prompt_lookup_min`` and ``_max`` when neither is given (``SpeculativeConfig``)."""


class Proposer(Protocol):
    """A drafter that runs outside the engine: given the token ids so far, the draft.

    It must be a function of the token ids alone (vLLM's ngram and
    ``custom_class`` drafters are): replay calls it at every step the engine's
    runner calls its drafter, with the same ids.
    """

    def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
        """Up to ``k`` draft ids to follow ``token_ids`` (prompt and output so far); empty: none."""


def ngram_draft(tokens: Tokens, k: int, min_n: int, max_n: int, max_model_len: int) -> Tokens:
    """The ngram (prompt lookup) draft vLLM makes for one request holding ``tokens`` so far.

    The same draft as vLLM 0.32's ``vllm/v1/spec_decode/ngram_proposer.py``
    (``NgramProposer.propose`` and ``_find_longest_matched_ngram_and_propose_tokens``):

    - nothing once the request holds ``max_model_len`` tokens, or fewer than ``min_n``;
    - k is cut to ``max_model_len - len(tokens)``;
    - n is the longest length in ``[min_n, max_n]`` whose last n tokens occur
      earlier (ending before the last token; longer matches count as ``max_n``);
      nothing if even ``min_n`` tokens do not;
    - of the occurrences of those n tokens, the earliest is taken, and the draft
      is the (at most k) tokens that followed it, stopping at the end of ``tokens``.

    vLLM finds that match with a KMP pass over the reversed tokens; here the
    earlier copies of the last token are narrowed to those matching one token
    further back until none does or ``max_n`` is reached, which picks the same
    length and occurrence (``tests/test_replay.py`` checks it against vLLM's own
    function).
    """
    total = int(tokens.shape[0])
    if total >= max_model_len or total < min_n:
        return tokens[:0]
    k = min(k, max_model_len - total)
    if k <= 0:
        return tokens[:0]
    last = total - 1
    # Indices where an earlier copy of the suffix ends; every copy matches `length` tokens.
    ends = np.flatnonzero(tokens[:last] == tokens[last])
    length = 1
    while ends.size and length < max_n:
        reach = ends[ends >= length]
        longer = reach[tokens[reach - length] == tokens[last - length]]
        if not longer.size:
            break
        ends = longer
        length += 1
    if not ends.size or length < min_n:
        return tokens[:0]
    start = int(ends[0]) + 1
    return tokens[start : start + min(k, total - start)]


@frozen
class NgramProposer:
    """vLLM's ``ngram`` method offline: :func:`ngram_draft` with the run's window and context."""

    prompt_lookup_min: int
    prompt_lookup_max: int
    max_model_len: int

    def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
        """The ngram draft of at most ``k`` tokens (see :func:`ngram_draft`)."""
        drafted = ngram_draft(token_ids, k, self.prompt_lookup_min, self.prompt_lookup_max,
                              self.max_model_len)
        return [int(t) for t in drafted]


class CustomClassProposer:
    """A vLLM ``custom_class`` proposer, called outside the engine as vLLM's runner calls it.

    The class is imported from ``speculative_config["model"]`` as vLLM's
    ``create_custom_proposer`` does, built as ``cls(vllm_config)`` with a
    stand-in config (``speculative_config`` with the draft length,
    ``model_config.max_model_len``, ``scheduler_config.max_num_seqs``), its
    ``load_model`` given no model, then asked
    ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` for a
    batch of one request.  A proposer that needs more of vLLM (a model, a
    device) cannot run here and is refused with what it lacked.
    """

    def __init__(self, speculative_config: Mapping[str, Any], max_model_len: int) -> None:
        """Import the proposer class the config names; built once per draft length later."""
        self.speculative_config = dict(speculative_config)
        self.max_model_len = max_model_len
        self.path = str(self.speculative_config.get("model") or "")
        module, _, name = self.path.rpartition(".")
        if not module:
            msg = (f"custom_class needs speculative_config.model to be a dotted class path "
                   f"(module.Class), got {self.path!r}")
            raise ReplayError(msg)
        try:
            self.cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            msg = (f"cannot import the custom_class proposer {self.path!r} here "
                   f"({type(exc).__name__}: {exc}): install its package where replay runs")
            raise ReplayError(msg) from exc
        self._built: dict[int, Any] = {}

    def _failed(self, what: str, exc: Exception) -> ReplayError:
        msg = (f"the custom_class proposer {self.path!r} failed to {what} outside the engine "
               f"({type(exc).__name__}: {exc}); replay gives it a stand-in vllm_config with "
               "speculative_config, model_config.max_model_len and scheduler_config."
               "max_num_seqs only, and no model: a proposer that needs more cannot be replayed")
        return ReplayError(msg)

    def _instance(self, k: int) -> Any:
        if k not in self._built:
            config = SimpleNamespace(
                speculative_config=SimpleNamespace(
                    **{**self.speculative_config, "num_speculative_tokens": k}),
                model_config=SimpleNamespace(max_model_len=self.max_model_len),
                scheduler_config=SimpleNamespace(max_num_seqs=1),
            )
            try:
                instance = self.cls(config)
                load = getattr(instance, "load_model", None)
                if callable(load):
                    load(None)
            except Exception as exc:  # any failure means it needs the engine
                raise self._failed("start", exc) from exc
            self._built[k] = instance
        return self._built[k]

    def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
        """The proposer's draft for one request holding ``token_ids`` (its own k applies)."""
        instance = self._instance(k)
        total = int(token_ids.shape[0])
        try:
            drafts = instance.propose([[int(token_ids[-1])]], np.array([total], dtype=np.int32),
                                      token_ids.astype(np.int32)[None, :], slot_mappings=None)
        except Exception as exc:  # any failure means it needs the engine
            raise self._failed("propose", exc) from exc
        return [int(t) for t in drafts[0]]


def _ngram_window(speculative_config: Mapping[str, Any]) -> tuple[int, int]:
    """``prompt_lookup_min`` and ``_max`` as vLLM completes them (one given: both are it)."""
    given = [int(value) for key in ("prompt_lookup_min", "prompt_lookup_max")
             if (value := speculative_config.get(key)) is not None]
    if not given:
        return NGRAM_DEFAULT_WINDOW, NGRAM_DEFAULT_WINDOW
    return given[0], given[-1]


def proposer_for(speculative_config: Mapping[str, Any], max_model_len: int) -> Proposer:
    """The offline drafter of a ``speculative_config``, keyed by vLLM's method as vLLM is.

    ``ngram`` is :class:`NgramProposer`; ``custom_class`` is
    :class:`CustomClassProposer`.  Any strategy whose config names one of them
    replays, a plugin's too.

    Raises:
        ReplayError: another method (a draft model, EAGLE, MTP, DFlash or DSpark
            head, suffix decoding) needs the engine; ``ngram_gpu``'s matcher is
            not ``ngram``'s.
    """
    method = speculative_config.get("method")
    if method in ("ngram", "[ngram]"):
        low, high = _ngram_window(speculative_config)
        return NgramProposer(low, high, max_model_len)
    if method == "custom_class":
        return CustomClassProposer(speculative_config, max_model_len)
    if method == "ngram_gpu":
        msg = ("replay cannot predict speculative method 'ngram_gpu': replay runs ngram's "
               "proposer, and ngram_gpu's own matcher (vllm/v1/spec_decode/"
               "ngram_proposer_gpu.py) has not been shown to draft the same tokens; replay "
               "predicts the ngram and custom_class methods")
        raise ReplayError(msg)
    msg = (f"replay cannot predict speculative method {method!r}: its drafts come from a model "
           "run by the engine (or, for suffix, a cache shared across requests); replay "
           "predicts the ngram and custom_class methods (EAGLE heads: specdec_train's "
           "replay_eagle)")
    raise ReplayError(msg)


def _draft_length(speculative_config: Mapping[str, Any]) -> int:
    k = speculative_config.get("num_speculative_tokens")
    if not isinstance(k, int) or k < 1:
        msg = (f"replay needs num_speculative_tokens (at least 1) in the speculative_config, "
               f"got {k!r}: set the strategy's num_speculative_tokens")
        raise ReplayError(msg)
    return k


@frozen
class TurnReplay:
    """What the engine would have counted for one turn, and how sure that is.

    ``spec`` has the engine's per-turn semantics.  ``unresolved`` counts draft
    tokens of the last step that lay past the known tokens: counted rejected
    here, the engine may have accepted up to this many more (0: exact).
    ``decode_steps`` counts the steps after the prefill, each one forward pass
    of the target, with or without a draft.
    """

    spec: SpecStats
    unresolved: int = 0
    decode_steps: int = 0


def replay_turn(prompt_ids: Sequence[int], output_ids: Sequence[int], proposer: Proposer,
                k: int, max_model_len: int, *, output_tokens: int | None = None,
                drafter_max_model_len: int | None = None) -> TurnReplay:
    """Replay one turn: the engine's verify steps over a known greedy continuation.

    ``output_ids`` is the greedy output after ``prompt_ids``; the replayed turn
    ends after ``output_tokens`` of them (all when None), as a request with that
    budget (or one that stopped at EOS there) would.  Output tokens past that
    are known too and settle the last step's draft.  ``k`` is the draft length
    (``num_speculative_tokens``).  ``drafter_max_model_len`` is the context the
    drafter-fits check uses (vLLM's ``effective_drafter_max_model_len``: a draft
    model's own ``max_model_len`` where its speculative_config sets one;
    default ``max_model_len``).  See the module docstring for the loop.

    Raises:
        ReplayError: the turn does not fit ``max_model_len``, ``output_tokens``
            is out of range, or the proposer drafted more than ``k`` tokens.
    """
    prompt = len(prompt_ids)
    produced = len(output_ids) if output_tokens is None else output_tokens
    if k < 1:
        raise ReplayError(f"the draft length k must be at least 1, got {k}")
    if prompt < 1 or not 0 <= produced <= len(output_ids):
        msg = (f"a turn needs a prompt and 0 to {len(output_ids)} output tokens, got "
               f"{prompt} prompt tokens and output_tokens={produced}")
        raise ReplayError(msg)
    end = prompt + produced
    if end > max_model_len:
        msg = (f"the turn holds {end} tokens, more than max_model_len {max_model_len}: "
               "give the max_model_len the run's engine had")
        raise ReplayError(msg)
    known: Tokens = np.asarray([*prompt_ids, *output_ids], dtype=np.int64)
    histogram = [0] * (k + 1)
    drafted = 0
    per_step: list[int] = []
    unresolved = 0
    steps = 0
    n = prompt + 1  # the prefill's step samples the first output token
    seq_len = prompt  # that step's computed plus scheduled tokens
    fits = max_model_len if drafter_max_model_len is None else drafter_max_model_len
    while n < end:
        draft = list(proposer.propose(known[:n], k)) if seq_len + k <= fits else [FILLER_TOKEN] * k
        if len(draft) > k:
            msg = f"the proposer drafted {len(draft)} tokens, more than k={k}"
            raise ReplayError(msg)
        scheduled = max(0, min(len(draft), max_model_len - n - 1))
        accepted = 0
        while (accepted < scheduled and n + accepted < known.shape[0]
               and draft[accepted] == known[n + accepted]):
            accepted += 1
        if accepted < scheduled and n + accepted >= known.shape[0]:
            unresolved += scheduled - accepted
        if scheduled:
            histogram[accepted] += 1
            drafted += scheduled
            per_step.append(accepted)
        steps += 1
        seq_len = n + scheduled
        n += accepted + 1
    return TurnReplay(stats_from_histogram(histogram, drafted, per_step), unresolved, steps)


@frozen
class RequestReplay:
    """One request's replayed turns; ``error`` says why the rest (or all) could not be replayed."""

    id: str
    turns: tuple[TurnReplay, ...]
    error: str | None = None

    @property
    def spec(self) -> SpecStats | None:
        """The request's counts: its turns' summed (as :func:`specdec.metrics.request_spec`)."""
        return add_stats(t.spec for t in self.turns) if self.turns else None

    @property
    def unresolved(self) -> int:
        """Draft tokens, over its turns, whose fate is unknown (counted rejected)."""
        return sum(t.unresolved for t in self.turns)


@frozen
class ReplayedRun:
    """One setting replayed over a finished run.

    ``strategy`` is the setting with its options written out in full;
    ``records`` are the run's own records with each replayed turn's ``spec``
    (and, under a smaller ``max_tokens``, its output cut there): the input
    :mod:`specdec.metrics` takes.  Their times are the run's, not predicted.
    """

    strategy: StrategyConfig
    speculative_config: Mapping[str, Any]
    max_tokens: int
    max_model_len: int
    requests: tuple[RequestReplay, ...]
    records: tuple[RequestRecord, ...] = field(repr=False)
    coverage: float | None = None
    """Replayed from measured agreement (:func:`replay_agreement`): the share of drafted
    positions whose agreement the measured runs gave; None for a drafter run offline."""

    @property
    def exact(self) -> bool:
        """Whether every replayed count is certain (no draft ran past the known tokens)."""
        return all(r.unresolved == 0 for r in self.requests)

    def request(self, request_id: str) -> RequestReplay:
        """The replay of request ``request_id``."""
        for replayed in self.requests:
            if replayed.id == request_id:
                return replayed
        msg = f"request {request_id!r} is not in the replayed run"
        raise KeyError(msg)


class ReplayTokenizer(PromptTokenizer, Protocol):
    """A tokenizer that builds the run's prompts and decodes a cut output."""

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        """The text of ``token_ids``."""


def draft_lengths(strategy: StrategyConfig,
                  lengths: Iterable[int] = DRAFT_LENGTHS) -> tuple[StrategyConfig, ...]:
    """``strategy`` once per draft length k (``num_speculative_tokens``), other options kept."""
    return tuple(attrs.evolve(strategy, options={**strategy.options, "num_speculative_tokens": k})
                 for k in lengths)


@frozen
class KnownTurn:
    """One turn as the run's engine saw it: its prompt ids, the known output, where it ends."""

    record: TurnRecord
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    output_tokens: int
    budget: int


@frozen
class KnownRequest:
    """One request of the run: its record, the turns that can be replayed, why not the rest."""

    record: RequestRecord
    turns: tuple[KnownTurn, ...]
    error: str | None


def _check_run(config: ExperimentConfig, folder: Path) -> None:
    if config.generation.temperature != 0:
        msg = (f"{folder}: the run sampled at temperature {config.generation.temperature}; "
               "replay needs a greedy run (temperature 0), whose tokens every lossless "
               "strategy repeats")
        raise ReplayError(msg)


def _context_length(config: ExperimentConfig, given: int | None, folder: Path) -> int:
    configured = config.engine.max_model_len
    if configured is not None and configured != -1:
        if given is not None and given != configured:
            msg = (f"max_model_len {given} differs from the run's own ({configured}, {folder}); "
                   "replay predicts runs under the run's settings: leave it out")
            raise ReplayError(msg)
        return configured
    if given is None:
        msg = (f"{folder}: the run let vLLM choose max_model_len ({configured}); pass "
               "max_model_len= the context length its engine had (vLLM logs it at start-up)")
        raise ReplayError(msg)
    return given


def load_tokenizer(config: ExperimentConfig) -> ReplayTokenizer:
    """The Hugging Face tokenizer vLLM loaded for the run's model (transformers, imported here).

    ``engine.extra.tokenizer`` is used where the run gave vLLM a tokenizer of its own.
    """
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy, only needed to replay

    from specdec.models import resolve_model  # noqa: PLC0415 - may prepare a bundled model

    source = config.engine.extra.get("tokenizer") or resolve_model(config.model)
    tokenizer: ReplayTokenizer = AutoTokenizer.from_pretrained(str(source))
    return tokenizer


def _requests(folder: Path, config: ExperimentConfig, tokenizer: ReplayTokenizer,
              max_tokens: int, limit: int) -> list[KnownRequest]:
    """Every request's turns with the ids its engine saw, cut at ``max_tokens``."""
    conversations = run_conversations(config.benchmark, folder)
    requests: list[KnownRequest] = []
    for record in run_folder.read_records(folder):
        conversation = conversation_of(conversations, record.id, folder, config.benchmark)
        turns: list[KnownTurn] = []
        error = record.error
        for index, turn in enumerate(record.turns):
            where = f"{folder}: request {record.id!r}, turn {index + 1}"
            if turns and turns[-1].output_tokens < len(turns[-1].output_ids):
                error = (f"turn {index + 1} cannot be replayed at max_tokens {max_tokens}: its "
                         f"prompt holds turn {index}'s answer, which the run let run longer; "
                         "replay at the run's own max_tokens")
                break
            if index >= len(conversation.turns) or conversation.turns[index] != turn.prompt:
                msg = (f"{where}: the benchmark's turn differs from the one the run answered: "
                       "was the benchmark file changed since the run?")
                raise ReplayError(msg)
            if turn.output_tokens and not turn.output_token_ids:
                msg = f"{where}: the run recorded no output token ids, which replay needs"
                raise ReplayError(msg)
            answers = [t.output for t in record.turns[:index]]
            prompt = prompt_token_ids(tokenizer, conversation, answers,
                                      chat_template=config.chat_template)
            if len(prompt) != turn.prompt_tokens:
                msg = (f"{where}: the tokenizer here makes a prompt of {len(prompt)} tokens, the "
                       f"run's engine had {turn.prompt_tokens}: give replay the tokenizer the "
                       "engine used")
                raise ReplayError(msg)
            budget = min(max_tokens, limit - len(prompt))
            output = tuple(int(t) for t in turn.output_token_ids)
            turns.append(KnownTurn(turn, prompt, output, min(budget, len(output)), budget))
        requests.append(KnownRequest(record, tuple(turns), error))
    return requests


def _record(request: KnownRequest, replays: Sequence[TurnReplay], max_tokens: int,
            tokenizer: ReplayTokenizer) -> RequestRecord:
    turns = []
    for turn, replayed in zip(request.turns, replays, strict=True):
        record = attrs.evolve(turn.record, spec=replayed.spec,
                              max_tokens=turn.budget if turn.budget < max_tokens else None)
        if turn.output_tokens < len(turn.output_ids):
            kept = turn.output_ids[:turn.output_tokens]
            record = attrs.evolve(record, output_token_ids=kept, output_tokens=len(kept),
                                  output=tokenizer.decode(kept, skip_special_tokens=True),
                                  finish_reason="length", logprob_margins=())
        turns.append(record)
    return attrs.evolve(request.record, turns=tuple(turns), error=request.error)


def _speculative_config(setting: StrategyConfig, config: ExperimentConfig
                        ) -> tuple[StrategyConfig, dict[str, Any], int]:
    strategy, options = registry.strategy_options(setting.name, setting.options)
    spec = strategy.speculative_config(options, TargetInfo(model=config.model, path=None))
    if spec is None:
        msg = f"strategy {setting.name!r} does not speculate: there is nothing to replay"
        raise ReplayError(msg)
    resolved = attrs.evolve(setting, options=unstructure(options))
    return resolved, spec, _draft_length(spec)


def _resolve(setting: StrategyConfig, config: ExperimentConfig, limit: int
             ) -> tuple[StrategyConfig, dict[str, Any], Proposer, int]:
    resolved, spec, k = _speculative_config(setting, config)
    return resolved, spec, proposer_for(spec, limit), k


TurnProposer = Callable[[RequestRecord, int], Proposer]
"""The proposer of one turn (a request's record in the replayed run, the turn's index)."""


def _replay(requests: Sequence[KnownRequest], strategy: StrategyConfig, spec: Mapping[str, Any],
            k: int, proposer: TurnProposer, *, budget: int, limit: int,
            encoder: ReplayTokenizer, coverage: float | None = None,
            drafter_limit: int | None = None) -> ReplayedRun:
    replays: list[RequestReplay] = []
    records: list[RequestRecord] = []
    for request in requests:
        turns = tuple(replay_turn(t.prompt_ids, t.output_ids, proposer(request.record, index), k,
                                  limit, output_tokens=t.output_tokens,
                                  drafter_max_model_len=drafter_limit)
                      for index, t in enumerate(request.turns))
        replays.append(RequestReplay(request.record.id, turns, request.error))
        records.append(_record(request, turns, budget, encoder))
    return ReplayedRun(strategy, spec, budget, limit, tuple(replays), tuple(records), coverage)


def _baseline(folder: Path, max_tokens: int | None, max_model_len: int | None
              ) -> tuple[ExperimentConfig, int, int]:
    """The greedy run's config, the budget to replay and its context length."""
    config = run_folder.read_config(folder)
    _check_run(config, folder)
    own = config.generation.max_tokens
    budget = own if max_tokens is None else max_tokens
    if not 1 <= budget <= own:
        msg = (f"max_tokens {budget} is outside 1..{own}: replay cannot predict tokens "
               f"beyond the run's own budget ({folder})")
        raise ReplayError(msg)
    return config, budget, _context_length(config, max_model_len, folder)


@frozen
class KnownRun:
    """A finished greedy run read for replay: every turn's prompt ids and known output.

    ``max_tokens`` is the budget replayed and ``max_model_len`` the run's context
    length; ``requests`` hold each request's replayable turns (:class:`KnownTurn`:
    the prompt ids rebuilt as the run's engine built them, the output ids, where
    the replayed turn ends).  :func:`read_known_run` builds it, and
    :func:`replay_known` replays one setting over it with a proposer per turn.
    """

    folder: Path
    config: ExperimentConfig
    max_tokens: int
    max_model_len: int
    requests: tuple[KnownRequest, ...]
    tokenizer: ReplayTokenizer = field(repr=False)


def read_known_run(folder: Path, *, max_tokens: int | None = None,
                   tokenizer: ReplayTokenizer | None = None,
                   max_model_len: int | None = None) -> KnownRun:
    """The greedy run in ``folder`` ready to replay (arguments as :func:`replay_run`'s).

    Raises:
        ReplayError: as :func:`replay_run`.
    """
    config, budget, limit = _baseline(folder, max_tokens, max_model_len)
    encoder = tokenizer if tokenizer is not None else load_tokenizer(config)
    requests = _requests(folder, config, encoder, budget, limit)
    return KnownRun(folder, config, budget, limit, tuple(requests), encoder)


def resolve_setting(setting: StrategyConfig, config: ExperimentConfig
                    ) -> tuple[StrategyConfig, dict[str, Any], int]:
    """A setting with its options written out, its ``speculative_config`` and its k.

    Raises:
        ReplayError: the strategy does not speculate or sets no draft length.
        UnknownPluginError, ConfigError: no such strategy, or options it refuses.
    """
    return _speculative_config(setting, config)


def replay_known(run: KnownRun, setting: StrategyConfig, proposer: TurnProposer, *,
                 drafter_max_model_len: int | None = None,
                 coverage: float | None = None) -> ReplayedRun:
    """Replay one setting over ``run``, each turn drafted by ``proposer(record, turn)``.

    ``drafter_max_model_len`` as :func:`replay_turn`'s; ``coverage`` is recorded
    on the result as given.

    Raises:
        ReplayError: as :func:`resolve_setting` and :func:`replay_turn`.
    """
    strategy, spec, k = _speculative_config(setting, run.config)
    return _replay(run.requests, strategy, spec, k, proposer, budget=run.max_tokens,
                   limit=run.max_model_len, encoder=run.tokenizer, coverage=coverage,
                   drafter_limit=drafter_max_model_len)


def replay_run(folder: Path, settings: Sequence[StrategyConfig], *,
               max_tokens: int | None = None, tokenizer: ReplayTokenizer | None = None,
               max_model_len: int | None = None) -> tuple[ReplayedRun, ...]:
    """Replay each setting over the finished greedy run in ``folder`` (read via run_folder).

    Each turn's prompt ids are rebuilt as the run's engine built them (its
    benchmark's conversation, the run's earlier answers, the chat template or
    raw prompt, :func:`specdec.engines.requests.prompt_token_ids`) and must have
    the length the engine recorded; ``tokenizer`` defaults to the model's own
    (:func:`load_tokenizer`).  ``max_tokens`` (at most the run's own, which is
    the default) replays a smaller budget: with a run of a few more tokens
    than replayed, no last step is left unresolved.  A later turn whose prompt
    holds an answer that budget would cut cannot be replayed: its request gets
    an ``error``, its earlier turns are kept.  ``max_model_len`` is needed only
    where the run let vLLM choose it.

    Raises:
        ReplayError: the run is not greedy, a setting cannot be replayed, or
            the prompts cannot be rebuilt as the run's engine built them.
        UnknownPluginError, ConfigError: a setting names no strategy or has
            options it refuses.
    """
    config, budget, limit = _baseline(folder, max_tokens, max_model_len)
    resolved = [_resolve(setting, config, limit) for setting in settings]
    encoder = tokenizer if tokenizer is not None else load_tokenizer(config)
    requests = _requests(folder, config, encoder, budget, limit)
    return tuple(_replay(requests, strategy, spec, k, _every_turn(proposer), budget=budget,
                         limit=limit, encoder=encoder)
                 for strategy, spec, proposer, k in resolved)


ProposerFactory = Callable[[Mapping[str, Any], int], TurnProposer]
"""A setting's per-turn proposer, from its ``speculative_config`` and the context length."""


def replay_with(folder: Path, settings: Sequence[StrategyConfig], proposers: ProposerFactory, *,
                max_tokens: int | None = None, tokenizer: ReplayTokenizer | None = None,
                max_model_len: int | None = None) -> tuple[ReplayedRun, ...]:
    """Replay settings whose drafter the caller builds: :func:`replay_run` with ``proposers``.

    ``proposers(speculative_config, max_model_len)`` gives each setting's
    :data:`TurnProposer`, called with the request's record (its full output) and
    the turn's index; its proposer then sees the turn's ids as in
    :func:`replay_turn`.  This is how a drafter that needs more than the token
    ids runs (an EAGLE head reads the target's hidden states:
    ``specdec_train.replay_eagle``); the arguments and errors are
    :func:`replay_run`'s, and any method is accepted.
    """
    config, budget, limit = _baseline(folder, max_tokens, max_model_len)
    resolved = [_speculative_config(setting, config) for setting in settings]
    encoder = tokenizer if tokenizer is not None else load_tokenizer(config)
    requests = _requests(folder, config, encoder, budget, limit)
    return tuple(_replay(requests, strategy, spec, k, proposers(spec, limit), budget=budget,
                         limit=limit, encoder=encoder)
                 for strategy, spec, k in resolved)


def _every_turn(proposer: Proposer) -> TurnProposer:
    def same(_record: RequestRecord, _turn: int) -> Proposer:
        return proposer
    return same


# -- a draft model's agreement, measured ---------------------------------------------------


AGREEMENT_METHODS = ("draft_model",)
"""The speculative methods :func:`replay_agreement` replays: those whose draft of k tokens
is the draft model's greedy continuation of the tokens alone (vLLM's ``DraftModelProposer``
passes the draft no hidden state of the target), so that its first j tokens are the same
whatever k.  EAGLE and MTP heads draft from the target's hidden states and their own
predicted ones, so a token's fate depends on its depth in the draft: not replayed."""

MISS_TOKEN = -1
"""A draft token where the draft model disagreed with the target: which token it drafted is
not known, only that it was not the target's, and no vocabulary has this id."""

Agreement = tuple[bool | None, ...]
"""Per output position of one turn: whether the draft model's greedy next token, given the
target's tokens before it, is the target's own (None: not known).  Position 0, the prefill's
token, is never drafted."""


def measured_agreement(output_ids: Sequence[int], spec: SpecStats, k: int, *,
                       prompt_tokens: int, max_model_len: int) -> Agreement | None:
    """What one measured greedy turn of a draft-model run at ``k`` says of its draft's agreement.

    vLLM's loop (module docstring) places each step: the first starts at output
    position 1, and a step at position m that accepted a tokens ends at m + a + 1.
    Its accepted positions m .. m+a-1 agreed with the target; if a < k, the draft
    disagreed at m + a; if a = k, position m + k was the target's own token (the
    bonus), which says nothing of the draft there: unknown.  From the first step
    within 2k tokens of ``max_model_len`` on, the drafter may not have run (vLLM
    drafts zeros there), so those positions stay unknown.

    None when the steps cannot be placed: the engine did not list every step's
    accepted tokens (``accepted_per_step``), or the steps do not cover the output
    as every step drafting would (a step without a draft happened).
    """
    length = len(output_ids)
    bits: list[bool | None] = [None] * length
    steps = spec.accepted_per_step
    if len(steps) != spec.num_drafts or any(not 0 <= a <= k for a in steps):
        return None
    start = 1
    for accepted in steps:
        if start >= length:
            return None
        if prompt_tokens + start + 2 * k >= max_model_len:
            return tuple(bits)
        for position in range(start, min(start + accepted, length)):
            bits[position] = True
        if accepted < k and start + accepted < length:
            bits[start + accepted] = False
        start += accepted + 1
    return tuple(bits) if start >= length or length <= 1 else None


def merge_agreement(parts: Sequence[Agreement]) -> tuple[Agreement, int]:
    """One turn's agreement from several measured runs, and the positions where they conflict.

    Agreement is a property of the position (the draft model's greedy token given
    the same tokens), so runs at different k fill in each other's unknown
    positions.  Runs that disagree about a position (numerics: a near-tie in the
    draft model) leave it unknown; their number is returned.
    """
    length = max((len(p) for p in parts), default=0)
    merged: list[bool | None] = []
    conflicts = 0
    for position in range(length):
        seen = {p[position] for p in parts if position < len(p) and p[position] is not None}
        if len(seen) > 1:
            conflicts += 1
        merged.append(seen.pop() if len(seen) == 1 else None)
    return tuple(merged), conflicts


@frozen
class AgreementProposer:
    """A draft model's drafts over one known turn, from its measured agreement.

    It drafts k tokens as a draft model does: the target's own token at each
    position where the draft agreed, and :data:`MISS_TOKEN` from the first where
    it did not.  An unknown position counts as a disagreement unless
    ``optimistic`` (the two bound what the draft model would do).
    """

    prompt_tokens: int
    output_ids: tuple[int, ...]
    agreement: Agreement
    optimistic: bool = False

    def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
        """The draft of ``k`` tokens for a request holding ``token_ids`` (this turn's so far)."""
        start = int(token_ids.shape[0]) - self.prompt_tokens
        draft: list[int] = []
        for position in range(start, start + k):
            agreed = self.agreement[position] if 0 <= position < len(self.agreement) else False
            if not (self.optimistic if agreed is None else agreed):
                break
            draft.append(self.output_ids[position])
        return draft + [MISS_TOKEN] * (k - len(draft))


@frozen
class _Source:
    """A measured draft-model run whose steps give agreement: its folder, k and records."""

    folder: Path
    k: int
    records: Mapping[str, RequestRecord]


def _source(folder: Path, setting: StrategyConfig, baseline: ExperimentConfig) -> _Source:
    config = run_folder.read_config(folder)
    _check_run(config, folder)
    mine = {key: v for key, v in setting.options.items() if key != "num_speculative_tokens"}
    theirs = {key: v for key, v in config.strategy.options.items()
              if key != "num_speculative_tokens"}
    if config.strategy.name != setting.name or mine != theirs:
        msg = (f"{folder} ran {config.strategy.name} with {theirs}, not {setting.name} with "
               f"{mine}: measure agreement with the draft model and options replayed")
        raise ReplayError(msg)
    if (config.model, config.engine, config.chat_template) != (
            baseline.model, baseline.engine, baseline.chat_template):
        msg = (f"{folder} ran with another model, engine settings or chat template than the "
               "replayed run: a draft's agreement is measured under the replayed settings")
        raise ReplayError(msg)
    k = _speculative_config(config.strategy, config)[2]
    return _Source(folder, k, {r.id: r for r in run_folder.read_records(folder)})


def _turn_agreement(record: RequestRecord, index: int, source: _Source,
                    limit: int) -> Agreement | None:
    """One source's agreement on a turn of the replayed run: None where its text differs.

    Its earlier turns must be the replayed run's (the prompt holds them); on the
    turn itself, only positions before the first token that differs are kept.
    """
    theirs = source.records.get(record.id)
    if theirs is None or theirs.error is not None or len(theirs.turns) <= index:
        return None
    for mine, other in zip(record.turns[:index], theirs.turns[:index], strict=True):
        if mine.output_token_ids != other.output_token_ids:
            return None
    turn, other = record.turns[index], theirs.turns[index]
    if other.spec is None or other.prompt_tokens != turn.prompt_tokens:
        return None
    bits = measured_agreement(other.output_token_ids, other.spec, source.k,
                              prompt_tokens=other.prompt_tokens, max_model_len=limit)
    if bits is None:
        return None
    same = 0
    for a, b in zip(turn.output_token_ids, other.output_token_ids, strict=False):
        if a != b:
            break
        same += 1
    length = len(turn.output_token_ids)
    if same >= length:
        return bits[:length]
    # At the first position that differs the draft saw the same tokens, so its agreement
    # with the source's token there is a disagreement with ours; after it nothing is known.
    first: bool | None = False if same < len(bits) and bits[same] else None
    return (*bits[:same], first, *(None,) * (length - same - 1))


def replay_agreement(folder: Path, settings: Sequence[StrategyConfig], sources: Sequence[Path],
                     *, optimistic: bool = False, tokenizer: ReplayTokenizer | None = None,
                     max_model_len: int | None = None) -> tuple[ReplayedRun, ...]:
    """Replay draft-model settings over the greedy run in ``folder``, from measured agreement.

    A draft model's k-token draft is its greedy continuation, so whether it
    agrees with the target at a position does not depend on k:
    :func:`measured_agreement` reads it off each turn of the finished runs in
    ``sources`` (the same draft model and options at other k, same model and
    engine settings, greedy; a turn whose text differs from the replayed run's
    is used up to the difference), :func:`merge_agreement` combines them, and
    the verify loop runs with an :class:`AgreementProposer` per turn.  Positions
    no source measured (bonus tokens after a fully accepted draft in every
    source) count as disagreements, or as agreements with ``optimistic``: the
    two replays bound the draft model's counts.  Each run's ``coverage`` is the
    share of drafted positions (after each turn's first) whose agreement is known.

    Exact up to those unknown positions and to the draft model's numerics (a
    near-tie in it may go either way from run to run; bfloat16 more than float32).

    Raises:
        ReplayError: as :func:`replay_run`; a setting of another method than
            :data:`AGREEMENT_METHODS`; a source of another strategy, options or
            settings, or sampled; no source.
    """
    if not sources:
        raise ReplayError("replaying a draft model needs measured runs of it: give sources")
    config, budget, limit = _baseline(folder, None, max_model_len)
    resolved = [_speculative_config(setting, config) for setting in settings]
    for strategy, spec, _ in resolved:
        if spec.get("method") not in AGREEMENT_METHODS:
            msg = (f"{strategy.name} drafts with method {spec.get('method')!r}: measured "
                   f"agreement replays {', '.join(AGREEMENT_METHODS)} only (a head's draft "
                   "depends on its depth, not on the tokens alone)")
            raise ReplayError(msg)
    encoder = tokenizer if tokenizer is not None else load_tokenizer(config)
    requests = _requests(folder, config, encoder, budget, limit)
    runs = []
    for strategy, spec, k in resolved:
        measured = [_source(path, strategy, config) for path in sources]
        agreement: dict[tuple[str, int], Agreement] = {}
        known = total = 0
        for request in requests:
            for index, turn in enumerate(request.record.turns[:len(request.turns)]):
                parts = [bits for source in measured
                         if (bits := _turn_agreement(request.record, index, source, limit))]
                merged, _ = merge_agreement(parts)
                bits = merged + (None,) * (len(turn.output_token_ids) - len(merged))
                agreement[request.record.id, index] = bits
                known += sum(b is not None for b in bits[1:])
                total += max(0, len(bits) - 1)

        def proposer(record: RequestRecord, index: int,
                     table: dict[tuple[str, int], Agreement] = agreement) -> Proposer:
            turn = record.turns[index]
            return AgreementProposer(turn.prompt_tokens, tuple(turn.output_token_ids),
                                     table[record.id, index], optimistic)

        runs.append(_replay(requests, strategy, spec, k, proposer, budget=budget, limit=limit,
                            encoder=encoder, coverage=known / total if total else None))
    return tuple(runs)

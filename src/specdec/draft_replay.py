"""Draft replay: a draft model's drafts over a greedy run, from its own greedy continuations.

What vLLM 0.32's draft-model drafter sees and does, read in
``vllm/v1/spec_decode/draft_model.py`` (``DraftModelProposer``, built with
``pass_hidden_states_to_model=False``), the base it extends,
``vllm/v1/spec_decode/llm_base_proposer.py`` (``SpecDecodeBaseProposer.propose``,
``set_inputs_first_pass``, ``_greedy_sample``; ``eagle.py``'s ``EagleProposer``
is the same base) and the runner that calls it,
``vllm/v1/worker/gpu_model_runner.py`` (``propose_draft_token_ids``,
``_input_fits_in_drafter``):

- The draft model has its own KV cache over the request's true tokens at their
  own positions: with no hidden states passed, ``set_inputs_first_pass`` copies
  the target's scheduled tokens unshifted (``shift_input_ids`` false) and
  appends the token the target just sampled, masking rejected draft slots.
  So at every step it conditions on the prompt and every output token so far,
  nothing of the target's but its tokens.
- It drafts exactly ``num_speculative_tokens`` tokens, each the argmax of its
  logits (``_greedy_sample``; ``_sample_draft_tokens`` samples only when the
  request does not decode greedily), each fed back for the next: its greedy
  continuation of the true prefix.  Nothing looks at EOS: a draft runs on past
  it.
- The runner calls it only when the step's longest sequence plus k fits the
  drafter's context (``effective_drafter_max_model_len``: the draft's
  ``max_model_len``, which the speculative_config may set, else the target's);
  otherwise it drafts k zeros, as :func:`specdec.replay.replay_turn` models.
  Where it runs, its last draft positions may pass what the scheduler verifies
  (at most ``max_model_len - n - 1``), never the context.

So the draft of k tokens after a prefix of n tokens is the first k tokens of the
draft model's greedy continuation of those n tokens, whatever k and wherever
the step started.  :func:`draft_continuations` computes, for every turn of a
finished greedy run, the continuation of max-k tokens from every prefix the
verify loop can draft at (prompt ids plus ``output[:p]`` for p = 1 .. the
turn's replayed length - 1; the prefill's own step drafts after its first
token, so p = 0 is never drafted), batched through one engine of the draft model
(:meth:`specdec.interfaces.Engine.sample` at temperature 0 with ``ignore_eos``;
vLLM's prefix caching shares the prefixes).  A continuation near the context
limit is cut at ``max_model_len - n`` tokens: the tokens past it could never be
verified.  :func:`replay_draft` then replays any k up to max-k over the run with
a :class:`ContinuationProposer` per turn.

Exact for the engine's counts as replay is (``docs/prediction.md``), up to the
draft model's numerics: the engine built its draft KV cache step by step in a
batch of one request, this pass prefills each prefix whole in a batch of many,
and a near-tie in the draft may go the other way (float32 makes that rare).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from attrs import frozen

from specdec.engines import engine_for
from specdec.errors import ReplayError
from specdec.interfaces import EngineFactory, SampleRequest
from specdec.records import ExperimentConfig, RequestRecord, StrategyConfig
from specdec.replay import (
    MISS_TOKEN,
    KnownRun,
    Proposer,
    ReplayedRun,
    Tokens,
    replay_known,
    resolve_setting,
)

DRAFT_METHODS = ("draft_model",)
"""The speculative methods whose draft is the draft model's greedy continuation of the
tokens alone (no hidden state of the target), and so can be replayed from continuations."""

Continuations = tuple[tuple[int, ...], ...]
"""One turn's continuations, indexed by prefix length p (output tokens before it); entry 0,
never drafted, is empty."""


@frozen
class DraftContinuations:
    """A draft model's greedy continuations over every turn of one greedy run.

    ``turns`` maps (request id, turn index) to that turn's :data:`Continuations`,
    each ``max_k`` tokens long (shorter only where the context ends first);
    ``requests`` is how many continuations the engine computed.
    """

    model: str
    max_k: int
    turns: Mapping[tuple[str, int], Continuations]
    requests: int


@frozen
class ContinuationProposer:
    """A draft model's drafts over one known turn: the first k tokens of its continuation.

    A continuation the context cut short is filled with :data:`MISS_TOKEN` up to
    k: those positions lie past what the scheduler verifies.
    """

    prompt_tokens: int
    continuations: Continuations

    def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
        """The draft of ``k`` tokens for a request holding ``token_ids`` (this turn's so far)."""
        p = int(token_ids.shape[0]) - self.prompt_tokens
        if not 0 < p < len(self.continuations):
            msg = (f"no continuation after {p} output tokens (computed for 1.."
                   f"{len(self.continuations) - 1}): the continuations are of another run")
            raise ReplayError(msg)
        draft = list(self.continuations[p][:k])
        return draft + [MISS_TOKEN] * (k - len(draft))


def _draft_spec(setting: StrategyConfig, config: ExperimentConfig
                ) -> tuple[StrategyConfig, dict[str, Any], int]:
    strategy, spec, k = resolve_setting(setting, config)
    if spec.get("method") not in DRAFT_METHODS:
        msg = (f"{strategy.name} drafts with method {spec.get('method')!r}: draft replay "
               f"replays {', '.join(DRAFT_METHODS)} only (a head drafts from the target's "
               "hidden states, not from the tokens alone)")
        raise ReplayError(msg)
    return strategy, spec, k


def _options_but_k(strategy: StrategyConfig) -> dict[str, Any]:
    return {key: v for key, v in strategy.options.items() if key != "num_speculative_tokens"}


def draft_engine_config(config: ExperimentConfig, speculative_config: Mapping[str, Any],
                        max_model_len: int) -> ExperimentConfig:
    """The config of an engine of the draft model alone, under the run's engine settings.

    The run's dtype, ``enforce_eager``, seed, backend and extra settings, the
    run's context length, no speculation, no warm-up; the draft's own tensor
    parallel size and quantization where its speculative_config sets them.

    Raises:
        ReplayError: the run used a server it did not launch, which serves the
            target, not the draft.
    """
    engine = config.engine
    if engine.backend == "server" and not engine.launch:
        msg = (f"the run used the server at {engine.url}, which serves the target: draft "
               "replay needs an engine of the draft model (engine.launch: true, or the "
               "offline backend)")
        raise ReplayError(msg)
    extra = dict(engine.extra)
    if speculative_config.get("quantization") is not None:
        extra["quantization"] = speculative_config["quantization"]
    tensor_parallel = (speculative_config.get("draft_tensor_parallel_size")
                       or engine.tensor_parallel_size)
    engine = attrs.evolve(engine, max_model_len=max_model_len, served_model_name=None,
                          tensor_parallel_size=int(tensor_parallel), extra=extra)
    generation = attrs.evolve(config.generation, temperature=0.0, seed=None, ignore_eos=True,
                              stop=(), logprobs=None)
    return attrs.evolve(config, model=str(speculative_config["model"]), engine=engine,
                        generation=generation, strategy=StrategyConfig("none", {}),
                        warmup=False)


def continuation_requests(run: KnownRun, max_k: int
                          ) -> tuple[list[tuple[tuple[str, int], int]], list[SampleRequest]]:
    """Every prefix the verify loop can draft at, and its greedy request of up to ``max_k``.

    Returns the (request id, turn index) and prefix length p of each, and the
    requests in the same order: prompt ids plus ``output[:p]``, temperature 0,
    ``ignore_eos``, ``min(max_k, max_model_len - n)`` tokens for a prefix of n.
    """
    keys: list[tuple[tuple[str, int], int]] = []
    requests: list[SampleRequest] = []
    for request in run.requests:
        for index, turn in enumerate(request.turns):
            for p in range(1, turn.output_tokens):
                prefix = (*turn.prompt_ids, *turn.output_ids[:p])
                budget = min(max_k, run.max_model_len - len(prefix))
                keys.append(((request.record.id, index), p))
                requests.append(SampleRequest(prefix, (0,), budget, 0.0, ignore_eos=True))
    return keys, requests


def draft_continuations(run: KnownRun, setting: StrategyConfig, max_k: int, *,
                        engine_factory: EngineFactory = engine_for) -> DraftContinuations:
    """The draft model of ``setting``'s greedy continuations over ``run``, in one engine.

    One engine of the draft model (:func:`draft_engine_config`, built by
    ``engine_factory``, default the run's backend), one
    :meth:`~specdec.interfaces.Engine.sample` call for every prefix
    (:func:`continuation_requests`), then closed.

    Raises:
        ReplayError: ``setting`` is not a draft model, ``max_k`` is below 1, or the
            engine returned a continuation of another length than asked (it
            stopped at EOS: the backend ignored ``ignore_eos``).
        EngineError: the draft model's engine could not start or run.
    """
    if max_k < 1:
        raise ReplayError(f"continuations need max_k of at least 1, got {max_k}")
    _, spec, _ = _draft_spec(setting, run.config)
    config = draft_engine_config(run.config, spec, run.max_model_len)
    keys, requests = continuation_requests(run, max_k)
    engine = engine_factory(config, config.model, None)
    engine.start()
    try:
        drawn = engine.sample(requests).samples if requests else ()
    finally:
        engine.close()
    table: dict[tuple[str, int], list[tuple[int, ...]]] = {
        (r.record.id, index): [()] * max(1, turn.output_tokens)
        for r in run.requests for index, turn in enumerate(r.turns)}
    for (key, p), request, samples in zip(keys, requests, drawn, strict=True):
        (continuation,) = samples
        if len(continuation) != request.max_tokens:
            msg = (f"the draft model's engine returned {len(continuation)} tokens for request "
                   f"{key[0]!r}, turn {key[1] + 1}, after {p} output tokens, not the "
                   f"{request.max_tokens} asked: it stopped early (at EOS?), which a drafter "
                   "never does; its backend must honour ignore_eos")
            raise ReplayError(msg)
        table[key][p] = tuple(int(t) for t in continuation)
    turns = {key: tuple(value) for key, value in table.items()}
    return DraftContinuations(config.model, max_k, turns, len(requests))


def _drafter_limit(spec: Mapping[str, Any], limit: int) -> int:
    """The context the drafter-fits check uses: the draft's own where set, else the run's.

    vLLM's ``effective_drafter_max_model_len`` (``gpu_model_runner.py``).
    """
    own = spec.get("max_model_len")
    return limit if own is None else min(limit, int(own))


def replay_draft(run: KnownRun, settings: Sequence[StrategyConfig],
                 continuations: DraftContinuations) -> tuple[ReplayedRun, ...]:
    """Replay draft-model settings over ``run`` from its draft's continuations.

    Each setting (any k up to ``continuations.max_k``) is replayed through
    :func:`specdec.replay.replay_known` with a :class:`ContinuationProposer` per
    turn.

    Raises:
        ReplayError: a setting of another method, of a draft model other than the
            continuations', or a k above their ``max_k``.
    """
    runs = []
    for setting in settings:
        strategy, spec, k = _draft_spec(setting, run.config)
        if str(spec["model"]) != continuations.model:
            msg = (f"{strategy.name} drafts with {spec['model']}, the continuations are of "
                   f"{continuations.model}")
            raise ReplayError(msg)
        if k > continuations.max_k:
            msg = (f"k={k} needs continuations of {k} tokens, these have "
                   f"{continuations.max_k}: compute them with max_k={k}")
            raise ReplayError(msg)

        def proposer(record: RequestRecord, index: int) -> Proposer:
            return ContinuationProposer(record.turns[index].prompt_tokens,
                                        continuations.turns[record.id, index])

        runs.append(replay_known(run, strategy, proposer,
                                 drafter_max_model_len=_drafter_limit(spec, run.max_model_len)))
    return tuple(runs)


def replay_draft_run(run: KnownRun, settings: Sequence[StrategyConfig], *,
                     engine_factory: EngineFactory = engine_for
                     ) -> tuple[tuple[ReplayedRun, ...], DraftContinuations]:
    """Draft-model settings of one draft model replayed over ``run`` from one continuation pass.

    The continuations are of the settings' largest k (:func:`draft_continuations`);
    every setting must be the same draft model and options but k.

    Raises:
        ReplayError, EngineError: as :func:`draft_continuations` and :func:`replay_draft`;
            settings of different draft models or options.
    """
    if not settings:
        raise ReplayError("draft replay needs at least one setting")
    resolved = [_draft_spec(setting, run.config) for setting in settings]
    kinds = {(s.name, repr(sorted(_options_but_k(s).items()))) for s, _, _ in resolved}
    if len(kinds) > 1:
        msg = ("one continuation pass serves one draft model and its options (all but k): "
               f"these settings differ ({sorted(kinds)})")
        raise ReplayError(msg)
    max_k = max(k for _, _, k in resolved)
    continuations = draft_continuations(run, settings[0], max_k, engine_factory=engine_factory)
    return replay_draft(run, settings, continuations), continuations

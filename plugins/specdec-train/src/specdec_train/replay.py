"""EAGLE replay: an EAGLE-1 or EAGLE-3 head's drafts over a finished greedy run, as vLLM drafts.

Under greedy decoding an EAGLE run has the baseline's tokens, and vLLM's
proposer (``vllm/v1/spec_decode/llm_base_proposer.py``, ``propose``) drafts, for
a request whose last known token sits at position ``n - 1``:

- step 0, at position ``n - 2``: the head's layer on ``embed(token[n - 1])``
  and the target's features at ``n - 2`` (EAGLE-1: the last hidden state after
  the final norm; EAGLE-3: ``fc`` of the residual streams after its auxiliary
  layers), attending to the draft KV cache, which holds step 0's keys of every
  earlier position (each verify step's first pass rewrites the positions the
  target just computed, so every cached position carries the true token and
  the target's features);
- step ``s >= 1``, at position ``n - 2 + s``: the token step ``s - 1`` drafted
  and that step's own output state (EAGLE-1: its hidden state; EAGLE-3: the
  prenorm state), attending to the cache and to its own earlier steps' keys.

The target's features along the true sequence are those of a causal model, so
the target runs once per turn over prompt and output (transformers, float32),
and the head's :meth:`~specdec_train.head.EagleHead.drafts` gives every row's
drafts at every depth at once.  A draft of depth ``s`` does not depend on k, so
one table serves k = 1 .. ``depth``.  The verify loop is specdec's
(:func:`specdec.replay.replay_with`), so the counts have the engine's semantics.

Exact but for numerics: the target's features and the head run here in float32
with transformers' kernels, not vLLM's.  At step 0 those inputs are the true
sequence's; from step 1 on, the head's own output state is carried, so a small
difference at step 0 travels into later steps, and a near-tie in the head's
argmax at any depth may draft another token.  ``docs/prediction.md`` says more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from attrs import define, field
from numpy.typing import NDArray
from specdec import run_folder
from specdec.errors import ReplayError
from specdec.models import resolve_model
from specdec.records import RequestRecord, StrategyConfig
from specdec.replay import (
    Proposer,
    ProposerFactory,
    ReplayedRun,
    ReplayTokenizer,
    Tokens,
    TurnProposer,
    replay_with,
)

from specdec_train.options import aux_layers

EAGLE_METHODS = ("eagle", "eagle3")
"""The speculative methods an EAGLE replay drafts for."""

DEPTH = 8
"""Drafting steps computed per turn by default: k = 1 .. 8 share them."""

Table = NDArray[np.int64]
"""A turn's drafts: ``table[s, i]`` is the token drafted at depth ``s`` from row ``i``,
the draft for position ``i + s + 2`` of the turn's sequence (prompt and output)."""


class DraftTable(Protocol):
    """What drafts a turn: every row's greedy drafts at depths ``0 .. steps - 1``."""

    def table(self, sequence: Tokens, steps: int) -> Table:
        """The [steps, len(sequence) - 1] drafts over one turn's known tokens."""


def head_layers(config: dict[str, Any], target_layers: int, kind: str) -> tuple[int, ...]:
    """The target layers an EAGLE-3 head reads, as vLLM takes them; () for EAGLE-1.

    The head's ``eagle_config.eagle_aux_hidden_state_layer_ids`` where given,
    else vLLM's default (:func:`~specdec_train.options.aux_layers`).
    """
    if kind != "eagle3":
        return ()
    given = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    return tuple(int(i) for i in given) if given else aux_layers(target_layers)


def load_head(folder: Path, kind: str, embed: Any) -> tuple[Any, Any | None]:
    """The head in ``folder`` (its ``config.json`` and ``model.safetensors``), in float32.

    ``embed`` is the target's input embedding, which vLLM shares with the head.
    Returns the head and its own LM head matrix where the checkpoint has one
    (``lm_head.weight``), else None: vLLM then shares the target's.

    Raises:
        ReplayError: a file is missing, a tensor the head needs is absent, or the
            checkpoint holds tensors this head does not (another layout, a
            reduced draft vocabulary).
    """
    from safetensors.torch import load_file  # noqa: PLC0415

    from specdec_train.head import Eagle3Head, EagleHead  # noqa: PLC0415

    files = folder / "config.json", folder / "model.safetensors"
    for path in files:
        if not path.is_file():
            raise ReplayError(f"{path} is missing: give the folder of an EAGLE head")
    config: dict[str, Any] = orjson.loads(files[0].read_bytes())
    weights = {name: t.float() for name, t in load_file(str(files[1])).items()}
    own_lm_head = weights.pop("lm_head.weight", None)
    head: Any
    if kind == "eagle3":
        inputs = weights["fc.weight"].shape[1] if "fc.weight" in weights else 0
        head = Eagle3Head(config, embed, inputs // config["hidden_size"] or 3)
    else:
        head = EagleHead(config, embed)
    expected = set(head.head_state())
    missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or extra:
        msg = (f"{files[1]} does not hold an {kind} head of specdec-train's layout "
               f"(missing: {', '.join(missing) or 'none'}; not used by it: "
               f"{', '.join(extra) or 'none'}): replay drafts with heads of that layout only")
        raise ReplayError(msg)
    head.load_state_dict(weights, strict=False)
    return head.eval(), own_lm_head


@define
class EagleDrafter:
    """One head over one target (transformers, float32): each turn's draft table.

    The target is a loaded causal LM (``model.model`` its decoder, ``lm_head``
    its LM head); tables are kept per sequence, so settings of several k over
    the same turns run the target and the head once per turn.
    """

    target: Any
    head: Any
    lm_head: Any
    layers: tuple[int, ...]
    _tables: dict[tuple[int, ...], Table] = field(factory=dict, init=False)

    @classmethod
    def load(cls, target: Any, folder: Path, kind: str) -> EagleDrafter:
        """The head in ``folder``, of ``kind`` (``eagle`` or ``eagle3``), over ``target``."""
        embed = target.get_input_embeddings().weight.detach().float()
        head, own = load_head(folder, kind, embed)
        config = orjson.loads((folder / "config.json").read_bytes())
        layers = head_layers(config, int(target.config.num_hidden_layers), kind)
        lm_head = own if own is not None else target.lm_head.weight.detach().float()
        return cls(target, head, lm_head, layers)

    def features(self, tokens: Any) -> Any:
        """The target's features [1, T, F] the head reads along ``tokens`` [1, T]."""
        import torch  # noqa: PLC0415

        result = self.target.model(input_ids=tokens, output_hidden_states=bool(self.layers))
        if not self.layers:
            return result.last_hidden_state  # after the final norm, as vLLM's Llama returns
        return torch.cat([result.hidden_states[k] for k in self.layers], dim=-1)

    def table(self, sequence: Tokens, steps: int) -> Table:
        """Every row's drafts at depths ``0 .. steps - 1`` (computed once per sequence)."""
        import torch  # noqa: PLC0415

        key = tuple(int(t) for t in sequence)
        known = self._tables.get(key)
        if known is not None and known.shape[0] >= steps:
            return known
        with torch.inference_mode():
            tokens = torch.tensor([key], dtype=torch.long)
            drafts = self.head.drafts(tokens, self.features(tokens).float(), self.lm_head, steps)
        table: Table = drafts[:, 0].numpy().astype(np.int64)
        self._tables[key] = table
        return table


@define
class TurnDrafts:
    """One turn's proposer: its draft table, built at the first draft from the prompt it sees.

    ``sequence`` is the prompt (the first ``prompt_tokens`` ids replay hands over)
    and the whole known output; a request holding ``n`` tokens gets the drafts
    of row ``n - 2``, depths ``0 .. k - 1``.
    """

    drafter: DraftTable
    prompt_tokens: int
    output_ids: tuple[int, ...]
    depth: int = DEPTH
    _sequence: Tokens | None = field(default=None, init=False)
    _table: Table | None = field(default=None, init=False)

    def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
        """The head's k-token draft for a request holding ``token_ids`` of this turn."""
        if self._sequence is None or self._table is None or self._table.shape[0] < k:
            prompt = [int(t) for t in token_ids[: self.prompt_tokens]]
            self._sequence = np.asarray([*prompt, *self.output_ids], dtype=np.int64)
            self._table = self.drafter.table(self._sequence, max(k, self.depth))
        n = int(token_ids.shape[0])
        if not self.prompt_tokens < n <= self._sequence.shape[0] or not np.array_equal(
                token_ids, self._sequence[:n]):
            msg = "an EAGLE turn proposer was asked to draft after tokens that are not its turn's"
            raise ReplayError(msg)
        return [int(t) for t in self._table[:k, n - 2]]


def eagle_turns(drafter: DraftTable, depth: int = DEPTH) -> TurnProposer:
    """Each turn's :class:`TurnDrafts` over ``drafter``, from the request's record."""
    def turn(record: RequestRecord, index: int) -> Proposer:
        known = record.turns[index]
        return TurnDrafts(drafter, known.prompt_tokens,
                          tuple(int(t) for t in known.output_token_ids), depth)
    return turn


def replay_eagle(folder: Path, settings: Sequence[StrategyConfig], *, head: Path | None = None,
                 target: Path | str | None = None, depth: int = DEPTH,
                 max_tokens: int | None = None, tokenizer: ReplayTokenizer | None = None,
                 max_model_len: int | None = None) -> tuple[ReplayedRun, ...]:
    """Replay EAGLE or EAGLE-3 settings over the finished greedy run in ``folder``.

    Each setting's head is its ``speculative_config["model"]`` (the strategy's
    ``model`` option; ``head`` replaces it for every setting) and its kind is
    its method.  The target is the run's model in float32 (``target`` replaces
    it), run once per turn over the turn's prompt and known output, and each
    head drafts every row at ``depth`` depths (k up to that shares them; a
    larger k computes more).  The other arguments and the errors are
    :func:`specdec.replay.replay_run`'s.

    Raises:
        ReplayError: as :func:`specdec.replay.replay_run`; a setting of another
            method than :data:`EAGLE_METHODS`; a head folder that is not an
            EAGLE head of specdec-train's layout.
    """
    model: list[Any] = []
    drafters: dict[tuple[Path, str], EagleDrafter] = {}

    def target_model() -> Any:
        if not model:
            from specdec_train.features import load_target  # noqa: PLC0415

            source = target if target is not None else resolve_model(
                run_folder.read_config(folder).model)
            model.append(load_target(Path(str(source)), "float32"))
        return model[0]

    def proposers(spec: Any, _limit: int) -> TurnProposer:
        method = spec.get("method")
        if method not in EAGLE_METHODS:
            msg = (f"replay_eagle drafts with EAGLE heads (methods {', '.join(EAGLE_METHODS)}), "
                   f"not method {method!r}: replay it with specdec.replay_run")
            raise ReplayError(msg)
        where = Path(head if head is not None else spec["model"])
        if (where, method) not in drafters:
            drafters[where, method] = EagleDrafter.load(target_model(), where, method)
        return eagle_turns(drafters[where, method], depth)

    factory: ProposerFactory = proposers
    return replay_with(folder, settings, factory, max_tokens=max_tokens, tokenizer=tokenizer,
                       max_model_len=max_model_len)

"""Step 2: the target's hidden states, collected with transformers into shards on disk.

For each sequence the target (loaded by transformers on the CPU) gives the
hidden states vLLM hands to the drafter and its greedy next token at every
position (the token a draft must match to be accepted):

- EAGLE-1: the last hidden state *after* the final norm [N, hidden];
- EAGLE-3: the residual streams after the :func:`~.options.aux_layers` layers
  ``(2, n // 2, n - 3)``, concatenated in ascending order [N, 3 * hidden], as
  vLLM's Llama collects them (``hidden + residual``, before any norm), which
  are transformers' ``hidden_states[k]`` (entry 0 is the embedding; only the
  last entry is post-norm, and every aux id is below it).
  Sequences go through in length-sorted batches; every
``shard_tokens`` tokens a shard is written atomically, and ``manifest.json``
records how far collection got, so memory stays bounded and an interrupted
collection resumes after its last shard.

Shard tensors (safetensors): ``features`` [N, hidden or 3 * hidden], ``tokens`` [N],
``labels`` [N] (greedy next token), ``offsets`` [S + 1] and ``answer_start``
[S] (per sequence, relative to its start).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import structlog
from attrs import frozen
from specdec.files import atomic_write_bytes
from specdec.serialization import structure, write_json

from specdec_train.data import TrainSequence
from specdec_train.options import TrainingError, TrainOptions, aux_layers

log = structlog.get_logger("specdec_train")

FEATURES_DIR = "features"
MANIFEST = "manifest.json"
LOGIT_CHUNK = 1024
"""Positions whose greedy token is computed at once (bounds the [chunk, vocab] logits)."""


@frozen
class ShardInfo:
    """One shard file: its split and size."""

    name: str
    split: str
    sequences: int
    tokens: int
    answer_tokens: int


@frozen
class Manifest:
    """What ``features/manifest.json`` records.

    ``head`` is the kind of head the features are for; ``aux_layers`` the target
    layers concatenated into an EAGLE-3 feature (empty for EAGLE-1).
    """

    target: str
    hidden_size: int
    total_sequences: int
    done_sequences: int = 0
    shards: tuple[ShardInfo, ...] = ()
    seconds: float = 0.0
    head: str = "eagle"
    aux_layers: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every sequence is in a shard."""
        return self.done_sequences >= self.total_sequences

    def of(self, split: str) -> list[ShardInfo]:
        """The shards of ``train`` or ``val``."""
        return [s for s in self.shards if s.split == split]


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of a features folder, if one was written."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return structure(orjson.loads(path.read_bytes()), Manifest)


def check_head(manifest: Manifest, head: str, folder: Path) -> None:
    """Refuse features collected for another kind of head than ``head``."""
    if manifest.head != head:
        msg = (
            f"{folder} holds features for an {manifest.head} head, not {head}: "
            "it belongs to another training; remove it (or pass --restart)"
        )
        raise TrainingError(msg)


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json(folder / MANIFEST, manifest)


def order(sequences: Sequence[TrainSequence]) -> list[TrainSequence]:
    """The collection order: by length, then id (stable across resumes)."""
    return sorted(sequences, key=lambda s: (len(s.tokens), s.id))


def batches(sequences: Sequence[TrainSequence], budget: int) -> Iterator[list[TrainSequence]]:
    """Consecutive groups whose padded size (count x longest) stays within ``budget``."""
    group: list[TrainSequence] = []
    longest = 0
    for seq in sequences:
        longest_if = max(longest, len(seq.tokens))
        if group and longest_if * (len(group) + 1) > budget:
            yield group
            group, longest_if = [], len(seq.tokens)
        group.append(seq)
        longest = longest_if
    if group:
        yield group


class _Buffer:
    """Sequences of one split waiting to be written as a shard."""

    def __init__(self, split: str) -> None:
        self.split = split
        self.items: list[tuple[TrainSequence, Any, Any]] = []

    @property
    def tokens(self) -> int:
        return sum(len(s.tokens) for s, _, _ in self.items)

    def write(self, folder: Path, index: int, dtype: Any) -> ShardInfo:
        import torch  # noqa: PLC0415
        from safetensors.torch import save  # noqa: PLC0415

        lengths = [len(s.tokens) for s, _, _ in self.items]
        offsets = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
        tensors = {
            "features": torch.cat([f for _, f, _ in self.items]).to(dtype).contiguous(),
            "tokens": torch.tensor([t for s, _, _ in self.items for t in s.tokens],
                                   dtype=torch.int32),
            "labels": torch.cat([y for _, _, y in self.items]).to(torch.int32),
            "offsets": offsets,
            "answer_start": torch.tensor([s.answer_start for s, _, _ in self.items],
                                         dtype=torch.int64),
        }
        name = f"{self.split}-{index:05d}.safetensors"
        ids = orjson.dumps([s.id for s, _, _ in self.items]).decode()
        atomic_write_bytes(folder / name, save(tensors, metadata={"ids": ids}))
        info = ShardInfo(name, self.split, len(self.items), int(offsets[-1]),
                         sum(len(s.tokens) - s.answer_start for s, _, _ in self.items))
        self.items = []
        return info


def load_target(path: Path, dtype: str) -> Any:
    """The target as a transformers causal LM on the CPU, in evaluation mode."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    return model.eval()


def _hidden_and_labels(model: Any, group: list[TrainSequence],
                       layers: tuple[int, ...] = ()) -> list[tuple[Any, Any]]:
    """Per sequence: its features (``layers``' hidden states, else the final one) and labels."""
    import torch  # noqa: PLC0415

    longest = max(len(s.tokens) for s in group)
    # Right padding needs no mask: a causal model's real positions never see it.
    ids = torch.zeros(len(group), longest, dtype=torch.long)
    for row, seq in enumerate(group):
        ids[row, : len(seq.tokens)] = torch.tensor(seq.tokens)
    with torch.inference_mode():
        # transformers' last_hidden_state is taken after the final norm, like vLLM's.
        result = model.model(input_ids=ids, output_hidden_states=bool(layers))
        hidden = result.last_hidden_state
        aux = torch.cat([result.hidden_states[k] for k in layers], -1) if layers else hidden
        out = []
        for row, seq in enumerate(group):
            final = hidden[row, : len(seq.tokens)]
            labels = torch.cat([
                model.lm_head(chunk).argmax(-1) for chunk in final.split(LOGIT_CHUNK)
            ])
            out.append((aux[row, : len(seq.tokens)].clone(), labels))
    return out


def collect(options: TrainOptions, target_path: Path, sequences: Sequence[TrainSequence],
            work: Path, on_progress: Callable[[int, int], None] | None = None) -> Manifest:
    """Collect the target's hidden states for ``sequences`` into shards under ``work``.

    Resumes after the last written shard of an interrupted collection.
    """
    import torch  # noqa: PLC0415

    folder = work / FEATURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    todo = order(sequences)
    manifest = read_manifest(folder)
    if manifest is not None:
        check_head(manifest, options.head, folder)
    if manifest is not None and manifest.total_sequences != len(todo):
        msg = (
            f"{folder} holds features of {manifest.total_sequences} sequences, not "
            f"{len(todo)}: it belongs to another training; remove it (or pass --restart)"
        )
        raise TrainingError(msg)
    if manifest is not None and manifest.complete:
        return manifest
    model = load_target(target_path, options.collect_dtype)
    layers = aux_layers(int(model.config.num_hidden_layers)) if options.head == "eagle3" else ()
    if manifest is None:
        manifest = Manifest(str(target_path), int(model.config.hidden_size), len(todo),
                            head=options.head, aux_layers=layers)
        _write_manifest(folder, manifest)
    dtype = getattr(torch, options.feature_dtype)
    buffers = {"train": _Buffer("train"), "val": _Buffer("val")}
    done = manifest.done_sequences
    shards = list(manifest.shards)
    seconds = manifest.seconds
    started = time.perf_counter()
    if on_progress is not None:
        on_progress(done, len(todo))
    log.info("collecting hidden states", sequences=len(todo), done=done,
             tokens=sum(len(s.tokens) for s in todo[done:]))
    for group in batches(todo[done:], options.batch_tokens):
        for seq, (feats, labels) in zip(group, _hidden_and_labels(model, group, layers),
                                        strict=True):
            buffers["val" if seq.val else "train"].items.append((seq, feats.to(dtype), labels))
        done += len(group)
        if sum(b.tokens for b in buffers.values()) >= options.shard_tokens or done == len(todo):
            shards += [b.write(folder, len(shards) + i, dtype)
                       for i, b in enumerate(b for b in buffers.values() if b.items)]
            now = time.perf_counter()
            seconds, started = seconds + now - started, now
            manifest = attrs.evolve(manifest, done_sequences=done, shards=tuple(shards),
                                    seconds=seconds)
            _write_manifest(folder, manifest)
        if on_progress is not None:
            on_progress(done, len(todo))
    return manifest

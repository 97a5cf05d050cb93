"""Step 1: the prompts, the held-out split, and the target's own answers.

The target answers every training prompt greedily through specdec's own runner
(strategy ``none``, batch mode), so the head learns the target's distribution
rather than a data set's (self-distillation).  The run folder
(:mod:`specdec.run_folder`) makes the generation resumable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog
from attrs import frozen
from specdec.benchmark_store import resolve_benchmark
from specdec.benchmarks.loader import default_benchmark_path, load_benchmark
from specdec.files import atomic_write_bytes
from specdec.records import Conversation, RequestRecord

from specdec_train.options import TrainingError, TrainOptions

log = structlog.get_logger("specdec_train")

GENERATE_DIR = "generate"
PROMPTS_FILE = "train-prompts.jsonl"
EVAL_PROMPTS_FILE = "eval-prompts.jsonl"


@frozen
class PromptSplit:
    """Training and held-out conversations, with where each came from."""

    train: tuple[Conversation, ...]
    held_out: tuple[Conversation, ...]
    sources: tuple[str, ...]
    held_out_source: str


@frozen
class TrainSequence:
    """One turn as the target saw it: prompt tokens then its own answer's tokens.

    ``answer_start`` is the index of the first answer token in ``tokens``.
    """

    id: str
    tokens: tuple[int, ...]
    answer_start: int
    val: bool


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def held_out_ids(ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded choice of ``round(fraction * n)`` ids (at least one when ``fraction > 0``)."""
    if fraction <= 0 or not ids:
        return set()
    count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(sorted(ids, key=lambda i: _rank(seed, i))[:count])


def _load(path: Path) -> list[Conversation]:
    conversations = load_benchmark(path)
    for conv in conversations:
        if conv.context:
            msg = (
                f"{path}: conversation {conv.id!r} carries context messages (such as a system "
                "prompt); train eagle reads question and prompt files without context"
            )
            raise TrainingError(msg)
    return conversations


def _tag(conversations: list[Conversation], source: Path) -> list[Conversation]:
    # Ids are unique within a file only: prefix the file's name.
    return [
        Conversation(f"{source.stem}:{c.id}", c.turns, c.category, c.context)
        for c in conversations
    ]


def split_prompts(options: TrainOptions) -> PromptSplit:
    """Read the prompt files and set the held-out conversations apart.

    Prompts that also appear (same turns) in the held-out set are removed from
    training, so the evaluation never sees a trained-on prompt.
    """
    files = ([default_benchmark_path()] if options.include_sample else []) + [
        resolve_benchmark(str(p.expanduser())) for p in options.prompts
    ]
    if not files:
        msg = "no training prompts: give --prompts FILE or keep the sample benchmark"
        raise TrainingError(msg)
    pool: list[Conversation] = []
    for path in files:
        pool += _tag(_load(path), path)
    if options.eval_prompts is not None:
        eval_path = resolve_benchmark(str(options.eval_prompts.expanduser()))
        held = _tag(_load(eval_path), eval_path)
        held_turns = {c.turns for c in held}
        train = [c for c in pool if c.turns not in held_turns]
        source = str(eval_path)
    else:
        chosen = held_out_ids([c.id for c in pool], options.holdout_fraction, options.seed)
        held = [c for c in pool if c.id in chosen]
        train = [c for c in pool if c.id not in chosen]
        source = f"{options.holdout_fraction:.0%} of the training prompts (seed {options.seed})"
    if not train:
        msg = "every training prompt is also an evaluation prompt: nothing is left to train on"
        raise TrainingError(msg)
    log.info("prompts", train=len(train), held_out=len(held))
    return PromptSplit(tuple(train), tuple(held), tuple(str(f) for f in files), source)


def write_questions(conversations: Sequence[Conversation], path: Path) -> Path:
    """Write conversations as a ``questions`` benchmark file (Spec-Bench's format)."""
    lines = [
        orjson.dumps({"question_id": c.id, "category": c.category, "turns": list(c.turns)})
        for c in conversations
    ]
    atomic_write_bytes(path, b"\n".join(lines) + b"\n")
    return path


def generation_config(options: TrainOptions, prompts: Path) -> Any:
    """The experiment that makes the target answer the training prompts greedily."""
    from specdec.config import apply_overrides, config_from_mapping  # noqa: PLC0415

    data: dict[str, Any] = {
        "name": "train-eagle-generate",
        "model": options.target,
        "strategy": {"name": "none"},
        "benchmark": {"path": str(prompts), "format": "questions"},
        "generation": {"max_tokens": options.max_tokens, "temperature": 0.0},
        "mode": "batch",
        "warmup": False,
        # No observers: the run folder, always written, is all the training reads.
        "sinks": [],
    }
    data = apply_overrides(data, options.engine_overrides)
    return config_from_mapping(data, "train eagle generation (with --set overrides)")


def generate(options: TrainOptions, conversations: Sequence[Conversation], work: Path,
             on_start: Callable[[int], None] | None = None,
             on_record: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """The target's greedy answers to ``conversations``, generated once and reused.

    A finished generation is read back through :mod:`specdec.run_folder`; an
    interrupted one is resumed by the runner.
    """
    from specdec import run_folder  # noqa: PLC0415
    from specdec.runner import run_experiment  # noqa: PLC0415

    out = work / GENERATE_DIR
    prompts = write_questions(conversations, out.parent / PROMPTS_FILE)
    if run_folder.is_finished(out):
        records = run_folder.read_records(out)
        log.info("reusing generated answers", answers=len(records), path=str(out))
        return records
    config = generation_config(options, prompts)
    result = run_experiment(config, out, resume=True, on_start=on_start, on_record=on_record)
    return list(result.records)


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def build_sequences(records: Sequence[RequestRecord], tokenizer: Any, max_length: int,
                    val_ids: set[str]) -> list[TrainSequence]:
    """Every answered turn as token ids, rebuilt as the engine built its prompt.

    Turn ``k`` is the chat template over the earlier questions and the target's
    earlier answers, then question ``k``, then the answer's token ids.  A
    sequence longer than ``max_length`` loses the start of its prompt (the
    target's hidden states are then those of the shorter context, which is
    still the target's own computation).
    """
    sequences: list[TrainSequence] = []
    for record in records:
        messages: list[dict[str, str]] = []
        for index, turn in enumerate(record.turns):
            messages.append({"role": "user", "content": turn.prompt})
            prompt = _chat_ids(tokenizer, messages)
            messages.append({"role": "assistant", "content": turn.output})
            answer = list(turn.output_token_ids)
            if not answer:
                continue
            if len(prompt) != turn.prompt_tokens:
                log.warning("prompt rebuilt with a different length than the engine's",
                            id=record.id, turn=index, rebuilt=len(prompt),
                            engine=turn.prompt_tokens)
            tokens = (prompt + answer)[-max_length:]
            start = max(len(tokens) - len(answer), 0)
            if len(tokens) < 2:  # noqa: PLR2004 - a pair is the least that predicts anything
                continue
            sequences.append(TrainSequence(f"{record.id}#{index}", tuple(tokens), start,
                                           record.id in val_ids))
    return sequences

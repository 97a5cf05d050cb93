"""``train_eagle``: the five steps, each resumable, from prompts to a measured head.

1. generate the target's greedy answers with vLLM (:mod:`.data`),
2. collect its hidden states with transformers (:mod:`.features`),
3. train the head (:mod:`.trainer`),
4. save it in vLLM's layout with a model card (:mod:`.save`),
5. measure it against ngram and a draft model (:mod:`.evaluate`).

The work folder (``<output>.partial`` by default) keeps each step's output and
``plan.json``, the options each step was made with.  Running the same
training again continues where it stopped; a step whose options changed is
redone, with the steps after it.  Heavy libraries are imported inside the steps.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import structlog
from attrs import frozen
from specdec.models import BASE_ALIAS, model_config, resolve_model
from specdec.provenance import collect as provenance
from specdec.serialization import write_json

from specdec_train.options import (
    HEAD_TITLES,
    TrainingError,
    TrainOptions,
    aux_layers,
    check_target,
    option_stages,
)

log = structlog.get_logger("specdec_train")

PLAN_FILE = "plan.json"
STAGES: dict[str, tuple[str, ...]] = option_stages()
"""Which options each step depends on (a step also depends on every step before it)."""
LEGACY_DEFAULTS: dict[str, Any] = {"head": "eagle"}
"""Options added after work folders existed, with the value that keeps the old behaviour:
at that value they stay out of the digest, so an EAGLE-1 work folder made before
``head`` existed keeps its keys and is resumed, not redone."""
STAGE_OUTPUTS = {"generate": ("generate",), "features": ("features",),
                 "train": ("checkpoint",), "evaluate": ("eval",)}

Progress = Callable[[str, int, "int | None"], None]
"""Called as (step description, done, total) while a step runs."""


@frozen
class EagleTrainResult:
    """Where the head went and its model card (the content of ``training.json``)."""

    head: Path
    work_dir: Path
    card: dict[str, Any]


def options_dict(options: TrainOptions) -> dict[str, Any]:
    """The options as JSON-ready values (paths as strings)."""
    def value(_inst: Any, _field: Any, v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v

    return attrs.asdict(options, value_serializer=value)


def stage_keys(options: TrainOptions) -> dict[str, str]:
    """A digest per step of the options it depends on, chained through the earlier steps."""
    values = options_dict(options)
    keys: dict[str, str] = {}
    previous = ""
    for stage, names in STAGES.items():
        chosen = {n: values[n] for n in names
                  if n not in LEGACY_DEFAULTS or values[n] != LEGACY_DEFAULTS[n]}
        blob = orjson.dumps(chosen, option=orjson.OPT_SORT_KEYS)
        previous = hashlib.sha256(previous.encode() + blob).hexdigest()[:16]
        keys[stage] = previous
    return keys


def _reconcile(work: Path, options: TrainOptions) -> dict[str, str]:
    """Remove the outputs of steps whose options changed; return the current keys."""
    keys = stage_keys(options)
    plan_path = work / PLAN_FILE
    if options.restart and work.exists():
        log.info("restarting: removing the work folder", path=str(work))
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    old: dict[str, str] = {}
    if plan_path.is_file():
        old = orjson.loads(plan_path.read_bytes()).get("keys", {})
    stale = False
    for stage, key in keys.items():
        stale = stale or (bool(old) and old.get(stage) != key)
        if stale:
            for name in STAGE_OUTPUTS[stage]:
                if (work / name).exists():
                    log.warning("options changed: redoing a step", step=stage,
                                removed=str(work / name))
                    shutil.rmtree(work / name)
    plan = {"keys": keys, "options": options_dict(options)}
    # Atomic: a plan cut by a crash would make the next run unable to tell what is stale.
    write_json(plan_path, plan)
    return keys


def _target(options: TrainOptions) -> tuple[Path, dict[str, Any]]:
    path = resolve_model(options.target)
    if not isinstance(path, Path):
        msg = (
            f"target {options.target!r} is a hub id: train eagle needs the target as a local "
            "folder (download it first, then pass the folder)"
        )
        raise TrainingError(msg)
    config = model_config(path)
    check_target(config, str(path / "config.json"), options.head)
    return path, config


def _card_name(options: TrainOptions, out: Path) -> str:
    return options.alias if options.target == BASE_ALIAS and options.output is None else str(out)


def _read_card(out: Path) -> dict[str, Any] | None:
    from specdec_train.save import CARD_JSON, is_finished  # noqa: PLC0415

    if not is_finished(out) or not (out / CARD_JSON).is_file():
        return None
    card: dict[str, Any] = orjson.loads((out / CARD_JSON).read_bytes())
    return card


def train_eagle(options: TrainOptions, on_progress: Progress | None = None) -> EagleTrainResult:
    """Train, save and evaluate an EAGLE head (``options.head``) for ``options.target``.

    Raises:
        ModelError: the target is unknown or its architecture unsupported.
        TrainingError: the output already holds a finished head (without
            ``overwrite``), or a step cannot go on; the message says what to do.
    """
    started = time.perf_counter()
    target_path, target_config = _target(options)
    out = options.output_path()
    work = options.work_path()
    card = _read_card(out)
    keys = stage_keys(options)
    resumable_eval = (card is not None and card.get("evaluation") is None and options.evaluate
                      and card.get("keys", {}).get("train") == keys["train"])
    if card is not None and not options.overwrite and not resumable_eval:
        msg = (
            f"{out} already holds a finished EAGLE head: pass --overwrite to train a new one, "
            "or choose another --output"
        )
        raise TrainingError(msg)
    _reconcile(work, options)
    progress = on_progress or (lambda _s, _d, _t: None)
    timings: dict[str, float] = dict(card.get("timings", {})) if resumable_eval and card else {}

    if not resumable_eval:
        card = _train_and_save(options, (target_path, target_config), out, work,
                               keys=keys, progress=progress, timings=timings)
    assert card is not None  # set by either branch above

    if options.evaluate:
        from specdec_train.data import split_prompts  # noqa: PLC0415
        from specdec_train.evaluate import evaluate  # noqa: PLC0415
        from specdec_train.save import update_card  # noqa: PLC0415

        clock = time.perf_counter()
        held_out = split_prompts(options).held_out
        card["evaluation"] = evaluate(
            options, out, held_out, work,
            on_progress=lambda item, done, total: progress(f"evaluate: {item}", done, total),
        )
        timings["evaluate_s"] = round(time.perf_counter() - clock, 1)
        timings["total_s"] = round(sum(v for k, v in timings.items() if k != "total_s"), 1)
        card["timings"] = timings
        update_card(out, card)
    if not options.keep_work:
        for name in ("features", "checkpoint"):
            shutil.rmtree(work / name, ignore_errors=True)
    log.info("EAGLE head ready", head=str(out), seconds=round(time.perf_counter() - started, 1))
    return EagleTrainResult(out, work, card)


def _train_and_save(options: TrainOptions, target: tuple[Path, dict[str, Any]], out: Path,
                    work: Path, *, keys: dict[str, str], progress: Progress,
                    timings: dict[str, float]) -> dict[str, Any]:
    """Steps 1 to 4; returns the model card written with the head."""
    from specdec_train import data  # noqa: PLC0415

    target_path, target_config = target

    split = data.split_prompts(options)

    clock = time.perf_counter()
    answered = [0]

    def on_record(_record: Any) -> None:
        answered[0] += 1
        progress("generate: answers", answered[0], None)

    records = data.generate(options, split.train, work,
                            on_start=lambda n: progress("generate: answers", 0, n),
                            on_record=on_record)
    timings["generate_s"] = round(time.perf_counter() - clock, 1)

    clock = time.perf_counter()
    from transformers import AutoTokenizer  # noqa: PLC0415

    from specdec_train.features import collect  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(str(target_path))
    val_ids = data.held_out_ids([r.id for r in records], options.val_fraction, options.seed + 1)
    sequences = data.build_sequences(records, tokenizer, options.max_length, val_ids)
    manifest = collect(options, target_path, sequences, work,
                       on_progress=lambda done, total: progress("hidden states: sequences",
                                                                done, total))
    timings["features_s"] = round(time.perf_counter() - clock, 1)

    clock = time.perf_counter()
    from specdec_train.trainer import Trainer  # noqa: PLC0415

    trainer = Trainer(options, target_path, target_config, work)
    result = trainer.run(on_step=lambda step, total, _f: progress("train: steps", step, total))
    timings["train_s"] = round(time.perf_counter() - clock, 1)

    train_shards = manifest.of("train")
    val_shards = manifest.of("val")
    layers = int(target_config["num_hidden_layers"])
    card: dict[str, Any] = {
        "schema_version": 1,
        "name": _card_name(options, out),
        "head": {
            "kind": options.head,
            "title": HEAD_TITLES[options.head],
            "method": options.head,
            "aux_layers": list(aux_layers(layers)) if options.head == "eagle3" else None,
        },
        "keys": keys,
        "target": {
            "model": options.target,
            "path": str(target_path),
            "model_type": target_config.get("model_type"),
            "hidden_size": target_config.get("hidden_size"),
            "num_hidden_layers": target_config.get("num_hidden_layers"),
        },
        "data": {
            "sources": list(split.sources),
            "held_out_source": split.held_out_source,
            "held_out_conversations": len(split.held_out),
            "train_conversations": len(split.train),
            "answers": len(records),
            "sequences": len(sequences),
            "val_sequences": sum(s.sequences for s in val_shards),
            "tokens": sum(s.tokens for s in train_shards),
            "answer_tokens": sum(s.answer_tokens for s in train_shards),
            "val_tokens": sum(s.tokens for s in val_shards),
            "max_tokens": options.max_tokens,
            "max_length": options.max_length,
        },
        "training": {
            "steps": result.steps,
            "epochs_run": result.epochs_run,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "history": result.history,
            "validation": result.validation,
            "vocab_size": result.vocab_size,
            "vocab_coverage": result.vocab_coverage,
            "ce_weight": options.ce_weight if options.head == "eagle" else None,
            "unroll": options.unroll,
            "seed": options.seed,
            "seconds": result.seconds,
        },
        "evaluation": None,
        "timings": dict(timings),
        "options": options_dict(options),
        "provenance": provenance(),
    }
    from specdec_train.save import save_head  # noqa: PLC0415

    save_head(out, result.state, target_config, card, name=card["name"],
              overwrite=options.overwrite, head=options.head)
    log.info("head saved", head=str(out), steps=result.steps,
             validation=result.validation.get("acc"))
    return card

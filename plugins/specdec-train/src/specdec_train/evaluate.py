"""Step 5: measure the head with the runner on held-out prompts, beside ngram and a draft.

Each strategy runs as one item of a specdec batch (its own process, resumable),
on the same held-out prompts and engine settings as the baseline, and one
report compares them: acceptance per position, mean acceptance length and the
speedups of ``docs/metrics.md``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from specdec.records import Conversation

from specdec_train.data import EVAL_PROMPTS_FILE, write_questions
from specdec_train.options import TrainingError, TrainOptions

log = structlog.get_logger("specdec_train")

EVAL_DIR = "eval"
REPORT_DIR = "evaluation"


def eval_items(options: TrainOptions, head: Path, prompts: Path) -> list[Any]:
    """The batch: baseline, then each compared strategy with ``eval_k`` speculative tokens.

    ``eagle`` in ``options.eval_strategies`` names the trained head, whatever its
    kind: it runs under vLLM's method for that kind (``eagle`` or ``eagle3``)
    and its item and report row carry that name.
    """
    from specdec.config import apply_overrides, config_from_mapping  # noqa: PLC0415
    from specdec.study import BatchItem  # noqa: PLC0415

    base: dict[str, Any] = {
        "model": options.target,
        "benchmark": {"path": str(prompts), "format": "questions"},
        "generation": {"max_tokens": options.eval_max_tokens, "temperature": 0.0,
                       "logprobs": 2},
        "mode": "sequential",
    }
    base = apply_overrides(base, [*options.engine_overrides, *options.eval_overrides])
    k = options.eval_k
    strategies: dict[str, dict[str, Any]] = {"baseline": {"name": "none"}}
    for name in options.eval_strategies:
        if name == "ngram":
            strategies[name] = {"name": "ngram", "num_speculative_tokens": k,
                                "prompt_lookup_min": 2, "prompt_lookup_max": 4}
        elif name == "draft_model":
            draft = options.draft_for_eval()
            if draft is None:
                log.warning("no draft model to compare with; pass --eval-draft MODEL")
                continue
            strategies[name] = {"name": "draft_model", "model": draft,
                                "num_speculative_tokens": k}
        elif name in ("eagle", "eagle3"):
            # The trained head, run with its own method: an EAGLE-3 head under `eagle3`.
            if name == "eagle3" and options.head != "eagle3":
                msg = ("evaluation strategy 'eagle3' needs an EAGLE-3 head (--head eagle3); "
                       "this training's head is EAGLE-1: use 'eagle'")
                raise TrainingError(msg)
            strategies[options.head] = {"name": options.head, "model": str(head),
                                        "num_speculative_tokens": k}
        else:
            msg = (f"unknown evaluation strategy {name!r}: use ngram, draft_model or eagle "
                   "(the trained head; eagle3 is accepted for an EAGLE-3 head)")
            raise TrainingError(msg)
    items = []
    for name, strategy in strategies.items():
        experiment = {**base, "strategy": strategy, "name": name}
        config_from_mapping(experiment, f"train eagle evaluation item {name}")
        items.append(BatchItem(name, name, experiment))
    return items


def evaluate(options: TrainOptions, head: Path, held_out: Sequence[Conversation], work: Path,
             on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the evaluation batch and return the card's ``evaluation`` section.

    The report is written to ``work/eval/report`` and copied into the head's
    ``evaluation/`` folder.
    """
    from specdec.report import OVERALL, build_report  # noqa: PLC0415
    from specdec.report_files import write_report  # noqa: PLC0415
    from specdec.study import run_batch  # noqa: PLC0415

    if not held_out:
        msg = "no held-out prompts to evaluate on: give --eval-prompts FILE or a holdout fraction"
        raise TrainingError(msg)
    prompts = write_questions(held_out, work / EVAL_PROMPTS_FILE)
    items = eval_items(options, head, prompts)
    folder = work / EVAL_DIR
    index = run_batch(items, folder, name="train-eagle-eval", on_progress=on_progress)
    failed = [f"{i.name}: {i.error}" for i in index.items if i.status != "done"]
    if failed:
        msg = (f"the evaluation failed ({'; '.join(failed)}); see {folder}/<item>/run.log, "
               "then run the same command again to resume it")
        raise TrainingError(msg)
    report = build_report([folder])
    write_report(report, folder / "report")
    target = head / REPORT_DIR
    target.mkdir(exist_ok=True)
    for name in ("report.md", "report.json"):
        shutil.copy2(folder / "report" / name, target / name)
    comparisons = {c.setting: c for c in report.comparisons if c.category == OVERALL}
    rows = []
    for setting in report.settings:
        comp = comparisons[setting.name]
        spec = setting.first.summary.engine_spec
        lossless = report.lossless.get(setting.name)
        rows.append({
            "strategy": setting.name,
            "mean_acceptance_length": comp.mean_acceptance_length,
            "acceptance_rate": comp.acceptance_rate,
            "acceptance_per_position": list(spec.acceptance_per_position) if spec else None,
            "num_drafts": spec.num_drafts if spec else None,
            "tokens_per_s_mean": comp.tokens_per_s_mean.median if comp.tokens_per_s_mean else None,
            "speedup_spec_bench": comp.speedup_spec_bench,
            "speedup_throughput": comp.speedup_throughput,
            "lossless": None if lossless is None else lossless.passed,
        })
    first = report.settings[0].first.config
    return {
        "prompts": f"{len(held_out)} held-out conversations ({options.eval_prompts or 'split'})",
        "settings": (f"{first.mode} mode, max_tokens {first.generation.max_tokens}, dtype "
                     f"{first.engine.dtype}, enforce_eager {first.engine.enforce_eager}, "
                     f"{options.eval_k} speculative tokens"),
        "strategies": rows,
        "batch": str(folder),
    }

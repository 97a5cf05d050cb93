"""EAGLE replay against the engine: a head's predicted mean acceptance length, then measured.

Replays the setting of a finished EAGLE (or EAGLE-3) run over a finished greedy
baseline of the same prompts with ``specdec_train.replay_eagle`` (the target in
float32 with transformers once per turn, the head drafting as vLLM's proposer
does, vLLM's verify loop; ``docs/prediction.md``, "EAGLE replay"), and prints,
per request and overall, the measured and replayed mean acceptance length,
acceptance per position and the error ``replayed / measured - 1``; how many
turns' texts differ from the baseline's (replay predicts for the baseline's
tokens, so a turn that diverged is predicted for other tokens than it ran on);
the same figures over the turns whose text is the baseline's; and how many
turns' counts were replayed exactly.  ``--k`` adds the replayed mean acceptance
length at other k (unmeasured).  ``--own-tokens`` replays over the EAGLE run's
own tokens instead (it is greedy too), which takes text divergence out.

The two runs (bundled model, float32, eager, one request at a time; the
baseline 8 tokens longer, so no last step's draft runs past what it knows)::

    B=results/eagle-replay
    COMMON="--set engine.dtype=float32 --set engine.enforce_eager=true \\
            --set engine.max_model_len=1024 --set mode=sequential"
    .venv/bin/specdec-run --strategy none --output-dir $B/baseline \\
        --set generation.max_tokens=72 $COMMON
    .venv/bin/specdec-run --strategy eagle --set strategy.num_speculative_tokens=3 \\
        --output-dir $B/eagle-k3 --set generation.max_tokens=64 $COMMON
    .venv/bin/specdec-run --strategy eagle3 --set strategy.num_speculative_tokens=3 \\
        --output-dir $B/eagle3-k3 --set generation.max_tokens=64 $COMMON

then::

    .venv/bin/python benchmarks/eagle_replay.py $B/baseline $B/eagle-k3 --k 1-8
    .venv/bin/python benchmarks/eagle_replay.py $B/baseline $B/eagle3-k3 --json $B/eagle3.json

A baseline longer than the EAGLE run is replayed at the EAGLE run's budget, so a
later turn (whose prompt holds an earlier answer the longer budget let run on)
is not replayed: those turns are counted and left out of both sides.  With
equal budgets every turn replays, and the last step's drafts past the known
tokens count rejected (``unresolved``).  Needs the training package
(``plugins/specdec-train``, installed by ``scripts/setup.sh``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specdec import run_folder
from specdec.metrics import add_stats, spec_metrics
from specdec.records import RequestRecord, SpecStats, StrategyConfig
from specdec.replay import ReplayedRun, draft_lengths


def _lengths(text: str) -> list[int]:
    ks: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        ks += range(int(low), int(high or low) + 1)
    return ks


def _figures(stats: SpecStats | None) -> dict[str, Any]:
    if stats is None or not stats.num_drafts:
        return {"drafts": 0, "mean_acceptance_length": None, "per_position": []}
    figures = spec_metrics(stats)
    return {"drafts": stats.num_drafts, "accepted": stats.num_accepted_tokens,
            "mean_acceptance_length": figures.mean_acceptance_length,
            "per_position": [round(p, 4) for p in figures.acceptance_per_position]}


def _error(replayed: float | None, measured: float | None) -> float | None:
    return replayed / measured - 1 if replayed is not None and measured else None


def _same_text(mine: Sequence[int], baseline: Sequence[int]) -> bool:
    return tuple(mine) == tuple(baseline[:len(mine)])


def compare(replayed: ReplayedRun, measured: dict[str, RequestRecord],
            baseline: dict[str, RequestRecord]) -> dict[str, Any]:
    """Replayed against measured, per request and overall, over the turns replayed."""
    rows = []
    totals: dict[str, list[SpecStats]] = {"measured": [], "replayed": [], "measured_same": [],
                                          "replayed_same": []}
    turns = differ = exact = skipped = unresolved = 0
    for request in replayed.requests:
        record = measured.get(request.id)
        if record is None:
            continue
        skipped += len(record.turns) - len(request.turns)
        mine, theirs, same = [], [], True
        for index, turn in enumerate(request.turns):
            engine = record.turns[index].spec if index < len(record.turns) else None
            if engine is None:
                continue
            turns += 1
            text_same = _same_text(record.turns[index].output_token_ids,
                                   baseline[request.id].turns[index].output_token_ids)
            same = same and text_same
            differ += not text_same
            exact += engine == turn.spec
            unresolved += turn.unresolved
            mine.append(turn.spec)
            theirs.append(engine)
            if text_same:
                totals["measured_same"].append(engine)
                totals["replayed_same"].append(turn.spec)
        if not mine:
            continue
        measured_figures, replayed_figures = _figures(add_stats(theirs)), _figures(add_stats(mine))
        totals["measured"] += theirs
        totals["replayed"] += mine
        rows.append({"request": request.id, "turns": len(mine), "text_as_baseline": same,
                     "measured": measured_figures, "replayed": replayed_figures,
                     "error": _error(replayed_figures["mean_acceptance_length"],
                                     measured_figures["mean_acceptance_length"])})
    overall = {key: _figures(add_stats(value)) for key, value in totals.items()}
    return {
        "strategy": replayed.strategy.name, "options": dict(replayed.strategy.options),
        "turns": turns, "turns_text_differs": differ, "turns_counts_exact": exact,
        "turns_not_replayed": skipped, "unresolved_draft_tokens": unresolved,
        "overall": overall,
        "error": _error(overall["replayed"]["mean_acceptance_length"],
                        overall["measured"]["mean_acceptance_length"]),
        "error_text_as_baseline": _error(overall["replayed_same"]["mean_acceptance_length"],
                                         overall["measured_same"]["mean_acceptance_length"]),
        "requests": rows,
    }


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _positions(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) or "-"


def show(result: dict[str, Any], others: dict[int, float | None]) -> None:
    """The comparison as text tables."""
    print(f"{result['strategy']} {result['options']}")
    print("request | turns | text as baseline | measured MAL | replayed MAL | error | "
          "measured per position | replayed per position")
    for row in result["requests"]:
        m, r = row["measured"], row["replayed"]
        print(f"{row['request']} | {row['turns']} | {'yes' if row['text_as_baseline'] else 'NO'}"
              f" | {_fmt(m['mean_acceptance_length'])} | {_fmt(r['mean_acceptance_length'])} | "
              f"{_fmt(row['error'], '+.1%')} | {_positions(m['per_position'])} | "
              f"{_positions(r['per_position'])}")
    overall = result["overall"]
    for label, suffix in (("all turns", ""), ("turns whose text is the baseline's", "_same")):
        m, r = overall["measured" + suffix], overall["replayed" + suffix]
        error = result["error" if not suffix else "error_text_as_baseline"]
        print(f"overall, {label}: measured MAL {_fmt(m['mean_acceptance_length'])}, replayed "
              f"{_fmt(r['mean_acceptance_length'])}, error {_fmt(error, '+.1%')}; per position "
              f"measured {_positions(m['per_position'])}, replayed "
              f"{_positions(r['per_position'])}")
    print(f"{result['turns']} turns compared: {result['turns_text_differs']} with text other "
          f"than the baseline's, {result['turns_counts_exact']} with counts replayed exactly, "
          f"{result['turns_not_replayed']} not replayed (a later turn after a longer baseline "
          f"answer), {result['unresolved_draft_tokens']} draft tokens past the known tokens "
          "(counted rejected)")
    if others:
        print("replayed MAL at other k: " + ", ".join(
            f"k={k} {_fmt(value)}" for k, value in sorted(others.items())))


def main() -> None:
    """Replay the EAGLE run's setting over the baseline and print it against the engine."""
    from specdec_train.replay import replay_eagle  # noqa: PLC0415 - needs torch

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path, help="a finished greedy baseline run folder")
    parser.add_argument("eagle", type=Path, help="a finished greedy eagle or eagle3 run folder")
    parser.add_argument("--head", type=Path, help="the head folder (default: the run's own)")
    parser.add_argument("--max-model-len", type=int, help="where the runs let vLLM choose it")
    parser.add_argument("--k", default="", help="also replay these k, e.g. 1-8 or 1,2,4")
    parser.add_argument("--own-tokens", action="store_true",
                        help="replay over the eagle run's own tokens, not the baseline's")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    config = run_folder.read_config(args.eagle)
    base = run_folder.read_config(args.baseline)
    for what in ("model", "engine", "chat_template", "benchmark"):
        if getattr(config, what) != getattr(base, what):
            print(f"warning: the runs differ in {what}: the replay predicts the baseline's")
    source = args.eagle if args.own_tokens else args.baseline
    budget = config.generation.max_tokens
    max_tokens = budget if run_folder.read_config(source).generation.max_tokens > budget else None
    setting = StrategyConfig(config.strategy.name, dict(config.strategy.options))
    measured_k = setting.options.get("num_speculative_tokens")
    extra = [k for k in _lengths(args.k) if k != measured_k] if args.k else []
    settings = [setting, *draft_lengths(setting, extra)]
    runs = replay_eagle(source, settings, head=args.head, max_tokens=max_tokens,
                        max_model_len=args.max_model_len)
    measured = {r.id: r for r in run_folder.read_records(args.eagle)}
    baseline = {r.id: r for r in run_folder.read_records(args.baseline)}
    result = compare(runs[0], measured, baseline)
    others = {k: _figures(add_stats(r.spec for r in run.requests if r.spec is not None)
                          )["mean_acceptance_length"] for k, run in zip(extra, runs[1:],
                                                                        strict=True)}
    result["replayed_other_k"] = others
    result["replayed_over"] = str(source)
    show(result, others)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

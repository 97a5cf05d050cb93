"""Does more training data raise the EAGLE head's acceptance?  Prompts the target writes itself.

The shipped EAGLE-1 head (``smollm2-135m-eagle``) learned from the target's greedy answers to
the 480 Spec-Bench questions, and over-fits them (docs/eagle.md, "What limits it"). No larger
prompt set can be fetched on the project's machine, so this script makes one the way issue 15
suggests: the target itself writes a new question beside each Spec-Bench question (sampled,
``--temperature``), which the training then answers greedily like the others.  It then trains
a head on both sets with the documented command, at the same number of optimiser steps as the
shipped head (half the epochs over twice the data; ``--same-epochs`` keeps the epochs instead),
and prints the held-out figures next to those in the shipped head's model card: the same 56
sample-benchmark conversations, never trained on, measured by vLLM.

Everything goes into ``--work`` (its own ``SPECDEC_HOME``, so neither the shipped head nor one
you trained is touched); run again, every step resumes.  About 35 minutes on 2 cores; run it on
an idle machine.

    .venv/bin/python benchmarks/head_data.py --work results/head-data
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHIPPED = ROOT / "src" / "specdec" / "heads" / "smollm2-135m-eagle"
SAMPLE = ROOT / "data" / "sample_benchmark.jsonl"

ASK = ("Here is a question someone asked an AI assistant:\n\n{question}\n\nWrite one new, "
       "different question on the same subject that someone could ask. Reply with the new "
       "question only.")
"""The meta-prompt: the target writes a new question beside each Spec-Bench question."""

QUESTION_CHARS = (20, 600)
"""A kept question's shortest and longest length, in characters."""

_LEAD = re.compile(r"^\s*(?:new question|question)\s*[:\-]\s*", re.IGNORECASE)


def _run(command: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)  # noqa: S603


def _questions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _clean(text: str) -> str | None:
    """The question in a generated reply, or None when there is none worth keeping."""
    text = _LEAD.sub("", text.strip().strip('"').strip())
    text = text.split("\n\n")[0].strip().strip('"').strip()
    return text if QUESTION_CHARS[0] <= len(text) <= QUESTION_CHARS[1] else None


def write_own_questions(spec_bench: Path, env: dict[str, str], work: Path,
                        temperature: float, max_tokens: int) -> Path:
    """The target's own questions, one beside each Spec-Bench question's first turn."""
    out = work / "own-questions.jsonl"
    if out.is_file():
        return out
    asks = work / "ask.jsonl"
    lines = [json.dumps({"question_id": f"ask-{q['question_id']}", "category": q["category"],
                         "turns": [ASK.format(question=q["turns"][0])]})
             for q in _questions(spec_bench)]
    asks.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = work / "ask-run"
    _run([str(BIN / "specdec-run"), "--benchmark", str(asks), "--mode", "batch",
          "--output-dir", str(run), *(["--resume"] if run.exists() else []),
          "--set", f"generation.max_tokens={max_tokens}",
          "--set", f"generation.temperature={temperature}", "--set", "generation.seed=0",
          "--set", "warmup=false", "--set", "sinks=[]"], env)
    from specdec.run_folder import read_records  # noqa: PLC0415

    kept = []
    for record in read_records(run):
        question = _clean(record.turns[0].output)
        if question is not None:
            kept.append(json.dumps({"question_id": f"own-{record.id.removeprefix('ask-')}",
                                    "category": record.category, "turns": [question]}))
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    print(f"head_data: {len(kept)} of {len(lines)} generated questions kept: {out}", flush=True)
    return out


def _card(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    return data


def _measured(folder: Path) -> str:
    """The eagle row of the card's measured-acceptance table."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| eagle |")]
    return rows[0] if rows else "(no measured row in the card)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("results/head-data"))
    parser.add_argument("--spec-bench", type=Path,
                        help="the Spec-Bench question file (default: the stored named copy)")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--question-tokens", type=int, default=96)
    parser.add_argument("--same-epochs", action="store_true",
                        help="train the shipped head's 8 epochs (twice its steps and time)")
    parser.add_argument("--skip-eval", action="store_true",
                        help="skip the vLLM runs on the held-out set (about 18 minutes): compare "
                             "the held-out accuracy and the acceptance it predicts only")
    args = parser.parse_args()

    from specdec.benchmark_store import resolve_benchmark  # noqa: PLC0415

    spec_bench = args.spec_bench or resolve_benchmark("spec-bench")
    work = args.work.resolve()
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SPECDEC_HOME=str(home))
    started = time.monotonic()
    _run([str(BIN / "specdec"), "models", "prepare", "smollm2-135m"], env)
    own = write_own_questions(spec_bench, env, work, args.temperature, args.question_tokens)
    asked = time.monotonic() - started
    epochs = ["--epochs", "8"] if args.same_epochs else ["--epochs", "4", "--teacher-epochs", "3"]
    _run([str(BIN / "specdec"), "train", "eagle", "--prompts", str(spec_bench),
          "--prompts", str(own), "--eval-prompts", str(SAMPLE), "--work-dir",
          str(work / "train"), "--keep-work", *epochs,
          *(["--skip-eval"] if args.skip_eval else ["--eval-strategies", "eagle"])], env)
    total = time.monotonic() - started
    trained = home / "models" / "smollm2-135m-eagle"
    mine, shipped = _card(trained), _card(SHIPPED)
    print(f"\nhead_data: {total / 60:.1f} min in all ({asked / 60:.1f} writing the questions)")
    for label, card, folder in (("shipped", shipped, SHIPPED), ("more data", mine, trained)):
        data, training = card.get("data", {}), card.get("training", {})
        shown = {"train_conversations": data.get("train_conversations"),
                 "answer_tokens": data.get("answer_tokens"), "steps": training.get("steps"),
                 "epochs_run": training.get("epochs_run"),
                 "held_out": training.get("validation"), "timings": card.get("timings")}
        print(f"{label}: {json.dumps(shown)}")
        print(f"{label}: {_measured(folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

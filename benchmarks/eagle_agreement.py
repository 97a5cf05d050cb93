"""How often an EAGLE-1 head's drafts match the target, offline, on a run's greedy answers.

Reads a baseline run's records (the target's greedy answers), rebuilds
each prompt as the engine built it, recomputes the target's hidden states with
transformers, and scores the head's unrolled drafts against the target's greedy
tokens with the trainer's own objective: top-1 agreement per drafting step, the
share of answer positions whose first s + 1 drafts all match (what vLLM accepts
per position under greedy decoding) and the mean acceptance length that
predicts.  Comparing it with the engine's figures for the same prompts tells a
training/serving mismatch from a head that is simply worse on those prompts.

    .venv/bin/python benchmarks/eagle_agreement.py RUN_DIR \\
        ~/.cache/specdec/models/smollm2-135m-eagle --work /tmp/agreement

``RUN_DIR`` is the run's folder (its ``responses.jsonl`` also names it).  Needs the
training package (``plugins/specdec-train``, installed by ``scripts/setup.sh``).

``HEAD`` is a head folder (``model.safetensors``) or a training checkpoint
(``checkpoint.pt``).  The hidden states are kept in ``--work`` and reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from specdec import models


def _head_state(head: Path) -> dict[str, Any]:
    import torch  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    if head.suffix == ".pt":
        saved: dict[str, Any] = torch.load(head, weights_only=False)
        state: dict[str, Any] = saved.get("head", saved)
        return state
    return dict(load_file(str(head / "model.safetensors")))


def main() -> None:
    """Score the head and print the figures as JSON."""
    from specdec_train import data  # noqa: PLC0415
    from specdec_train.features import collect  # noqa: PLC0415
    from specdec_train.options import TrainOptions  # noqa: PLC0415
    from specdec_train.trainer import Trainer  # noqa: PLC0415
    from transformers import AutoTokenizer  # noqa: PLC0415

    from specdec.run_folder import read_records  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a baseline run's folder (or its responses.jsonl)")
    parser.add_argument("head", type=Path, help="head folder or checkpoint.pt")
    parser.add_argument("--model", default=models.BASE_ALIAS, help="the target (default bundled)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the hidden states")
    parser.add_argument("--steps", type=int, default=3, help="drafting steps (default 3)")
    args = parser.parse_args()

    target = models.prepare(args.model)
    config = json.loads((target / "config.json").read_text())
    options = TrainOptions(ce_vocab=0)
    # A run's files are read only through the run-folder module, which wants the folder.
    records = read_records(args.run if args.run.is_dir() else args.run.parent)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    ids = [r.id for r in records]
    # The trainer needs one training sequence; every other one is scored.
    sequences = data.build_sequences(records, tokenizer, 1 << 16, set(ids[1:]))
    collect(options, target, sequences, args.work)
    trainer = Trainer(options, target, config, args.work)
    state = {k: v.float() for k, v in _head_state(args.head).items()}
    result = trainer.head.load_state_dict(state, strict=False)
    if result.unexpected_keys or [k for k in result.missing_keys if k.startswith("fc.")]:
        msg = f"{args.head} is not an EAGLE-1 head of this target: {result}"
        raise SystemExit(msg)
    figures = trainer.validate(args.steps, None, full_vocab=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

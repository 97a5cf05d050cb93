"""``specdec train eagle``: the command line over :func:`specdec_train.train_eagle`.

Building the parser imports nothing heavy; the handler imports the pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import attrs

from specdec.errors import ConfigError, InvalidOptionError
from specdec.models import BASE_ALIAS, EAGLE3_ALIAS, EAGLE_ALIAS
from specdec_train.options import EVAL_STRATEGIES, HEAD_KINDS, HEAD_TITLES, TrainOptions

DESCRIPTION = f"""\
Train an EAGLE head for a target model on the CPU, in the layout vLLM loads, and
measure it. --head eagle (default) trains an EAGLE-1 head (vLLM `method: eagle`,
reads the final hidden state); --head eagle3 an EAGLE-3 head (`method: eagle3`,
reads the residual streams after layers 2, n/2 and n-3, trained on tokens only).

  1. the target answers the training prompts greedily with vLLM (self-distillation),
  2. transformers collects the hidden states the head reads into shards on disk,
  3. the head trains with EAGLE's objective (held-out split, early stopping, seed),
  4. it is saved with a model card (data, steps, loss curve, acceptance),
  5. the runner measures it against ngram and the truncated draft on held-out prompts.

Every step resumes: run the same command again after an interruption (the
generated answers are shared by both kinds of head). For the bundled target the
head becomes the bundled alias {EAGLE_ALIAS} ({EAGLE3_ALIAS} for --head eagle3);
`--strategy eagle` then uses {EAGLE_ALIAS} by default. See docs/eagle.md.
"""

EPILOG = f"""\
examples:
  specdec train eagle --prompts ../shared/data/spec_bench/question.jsonl \\
      --eval-prompts data/sample_benchmark.jsonl        # the documented full training
  specdec train eagle --max-steps 20 --skip-eval --output /tmp/head   # a quick try
  specdec train eagle --head eagle3 --prompts ../shared/data/spec_bench/question.jsonl \
      --eval-prompts data/sample_benchmark.jsonl --eval-strategies eagle   # EAGLE-3 head
  specdec-run --strategy eagle                         # uses {EAGLE_ALIAS} once trained
"""


def _default(name: str) -> Any:
    return attrs.fields_dict(TrainOptions)[name].default


def add_train_parser(sub: Any) -> None:
    """Add ``train`` (with its ``eagle`` action) to the ``specdec`` sub-commands."""
    train = sub.add_parser("train", help="train a speculative drafter (EAGLE head) on the CPU")
    tsub = train.add_subparsers(dest="train_command", required=True, metavar="KIND")
    eagle = tsub.add_parser(
        "eagle", help="train, save and measure an EAGLE-1 or EAGLE-3 head for a target model",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    eagle.add_argument("--head", choices=HEAD_KINDS, default=_default("head"),
                       help="kind of head: eagle (EAGLE-1) or eagle3 (EAGLE-3; default "
                            "%(default)s)")
    data = eagle.add_argument_group("data")
    data.add_argument("--model", default=BASE_ALIAS,
                      help=f"target model folder or bundled alias (default {BASE_ALIAS})")
    data.add_argument("--prompts", type=Path, action="append", default=[], metavar="FILE",
                      help="prompt file (JSONL) to train on, besides the sample benchmark "
                           "(repeatable)")
    data.add_argument("--no-sample", action="store_true",
                      help="do not train on the bundled sample benchmark")
    data.add_argument("--eval-prompts", type=Path, metavar="FILE",
                      help="held-out prompts for the evaluation (removed from training); "
                           "default: a --holdout share of the prompts")
    data.add_argument("--holdout", type=float, default=_default("holdout_fraction"),
                      metavar="FRACTION",
                      help="share of conversations held out when --eval-prompts is not given")
    data.add_argument("--max-tokens", type=int, default=_default("max_tokens"),
                      help="answer length the target generates per prompt (default %(default)s)")
    data.add_argument("--max-length", type=int, default=_default("max_length"),
                      help="longest sequence whose hidden states are kept (default %(default)s)")
    data.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY.PATH=VALUE",
                      help="experiment override for the generation and evaluation runs, "
                           "e.g. engine.enforce_eager=true (repeatable)")

    train_group = eagle.add_argument_group("training")
    train_group.add_argument("--epochs", type=int, default=_default("epochs"),
                             help="passes over the data (default %(default)s)")
    train_group.add_argument("--max-steps", type=int, help="stop after this many steps")
    train_group.add_argument("--lr", type=float, default=_default("lr"),
                             help="peak learning rate (default %(default)s)")
    train_group.add_argument("--ce-weight", type=float, default=_default("ce_weight"),
                             help="cross-entropy weight beside the feature regression "
                                  "(EAGLE-1 only; default %(default)s)")
    train_group.add_argument("--unroll", type=int, default=_default("unroll"),
                             help="drafting steps trained per position (1: teacher forcing; "
                                  "default %(default)s)")
    train_group.add_argument("--teacher-epochs", type=int, default=_default("teacher_epochs"),
                             help="first epochs with teacher forcing only (default %(default)s)")
    train_group.add_argument("--feature-noise", type=float, default=_default("feature_noise"),
                             metavar="WIDTH",
                             help="uniform noise of this width on the input hidden states "
                                  "while training (default %(default)s)")
    train_group.add_argument("--ce-vocab", type=int, default=_default("ce_vocab"),
                             help="cross-entropy over the N most frequent target tokens "
                                  "(0: the whole vocabulary; default %(default)s)")
    train_group.add_argument("--batch-tokens", type=int, default=_default("batch_tokens"),
                             help="padded tokens per batch (default %(default)s)")
    train_group.add_argument("--val-fraction", type=float, default=_default("val_fraction"),
                             help="share of training conversations for the held-out loss")
    train_group.add_argument("--patience", type=int, default=_default("patience"),
                             help="held-out evaluations without improvement before stopping")
    train_group.add_argument("--eval-every", type=int, default=_default("eval_every"),
                             metavar="STEPS", help="held-out loss every N steps")
    train_group.add_argument("--checkpoint-every", type=int,
                             default=_default("checkpoint_every"), metavar="STEPS")
    train_group.add_argument("--seed", type=int, default=_default("seed"))
    train_group.add_argument("--threads", type=int, default=_default("threads"),
                             help="torch threads (default %(default)s)")

    output = eagle.add_argument_group("output and evaluation")
    output.add_argument("--output", type=Path, metavar="DIR",
                        help=f"head folder; default for {BASE_ALIAS}: the bundled alias "
                             f"{EAGLE_ALIAS} (or {EAGLE3_ALIAS}) in $SPECDEC_HOME/models")
    output.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="generation, features, checkpoints; default <output>.partial")
    output.add_argument("--skip-eval", action="store_true", help="do not run step 5")
    output.add_argument("--eval-strategies", default=",".join(EVAL_STRATEGIES),
                        help="compared with the baseline (default ngram,draft_model,eagle; "
                             "eagle is the trained head, run as eagle3 for an EAGLE-3 head)")
    output.add_argument("--eval-k", type=int, default=_default("eval_k"),
                        help="speculative tokens (default %(default)s)")
    output.add_argument("--eval-max-tokens", type=int, default=_default("eval_max_tokens"))
    output.add_argument("--eval-draft", help="draft model for draft_model (default: the "
                                             "bundled truncated draft for the bundled target)")
    output.add_argument("--eval-set", dest="eval_overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE",
                        help="override for the evaluation runs only, e.g. benchmark.limit=8")
    output.add_argument("--overwrite", action="store_true", help="replace a finished head")
    output.add_argument("--restart", action="store_true",
                        help="discard the work folder and start from step 1")
    output.add_argument("--keep-work", action="store_true",
                        help="keep features and checkpoints after success")
    eagle.set_defaults(handler=run_train_eagle)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The :class:`TrainOptions` the command line describes."""
    try:
        return TrainOptions(
            target=args.model,
            head=args.head,
            output=args.output,
            work_dir=args.work_dir,
            prompts=tuple(args.prompts),
            include_sample=not args.no_sample,
            eval_prompts=args.eval_prompts,
            holdout_fraction=args.holdout,
            val_fraction=args.val_fraction,
            max_tokens=args.max_tokens,
            max_length=args.max_length,
            engine_overrides=tuple(args.overrides),
            batch_tokens=args.batch_tokens,
            epochs=args.epochs,
            max_steps=args.max_steps,
            lr=args.lr,
            ce_weight=args.ce_weight,
            unroll=args.unroll,
            teacher_epochs=args.teacher_epochs,
            ce_vocab=args.ce_vocab,
            feature_noise=args.feature_noise,
            patience=args.patience,
            eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
            threads=args.threads,
            evaluate=not args.skip_eval,
            eval_strategies=tuple(s.strip() for s in args.eval_strategies.split(",")
                                  if s.strip()),
            eval_k=args.eval_k,
            eval_max_tokens=args.eval_max_tokens,
            eval_draft=args.eval_draft,
            eval_overrides=tuple(args.eval_overrides),
            overwrite=args.overwrite,
            restart=args.restart,
            keep_work=args.keep_work,
        )
    except InvalidOptionError as exc:
        raise ConfigError("specdec train eagle", [f"{exc} @ $"]) from exc


def run_train_eagle(args: argparse.Namespace) -> int:
    """Handler of ``specdec train eagle``."""
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    from specdec import logs  # noqa: PLC0415
    from specdec.display import stderr, stdout  # noqa: PLC0415
    from specdec_train.pipeline import train_eagle  # noqa: PLC0415

    logs.configure()
    options = options_from_args(args)
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=stderr) as bar:

        def progress(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            if total is None:
                bar.update(tasks[step], completed=done)
            else:
                bar.update(tasks[step], completed=done, total=total)

        result = train_eagle(options, on_progress=progress)
    card = result.card
    validation = card["training"].get("validation") or {}
    stdout.print(f"{HEAD_TITLES[options.head]} head: {result.head}")
    stdout.print(f"steps {card['training']['steps']}, held-out top-1 per drafting step "
                 f"{validation.get('acc')}, predicted mean acceptance length "
                 f"{validation.get('predicted_mean_acceptance_length')}")
    for row in (card.get("evaluation") or {}).get("strategies", []):
        length = row.get("mean_acceptance_length")
        speedup = row.get("speedup_spec_bench")
        stdout.print(f"  {row['strategy']:12s} mean acceptance length "
                     f"{'-' if length is None else f'{length:.2f}'}, speedup "
                     f"{'-' if speedup is None else f'{speedup:.2f}x'}")
    sys.stdout.write(f"model card: {result.head / 'README.md'}\n")
    return 0

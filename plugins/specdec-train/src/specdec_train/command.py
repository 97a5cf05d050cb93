"""``specdec train eagle``: the command line over :func:`specdec_train.train_eagle`.

:class:`TrainCommand` is this package's ``specdec.commands`` plugin: the core CLI
creates it and calls :meth:`TrainCommand.register` with the ``specdec`` cyclopts
application, which gains ``train`` and its ``eagle`` command.  The flags, their
help and defaults are :class:`~specdec_train.options.TrainOptions` itself.

Building the command imports nothing heavy; running it imports the pipeline.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

from cyclopts import App, Parameter
from specdec.models import EAGLE3_ALIAS, EAGLE_ALIAS

from specdec_train.options import HEAD_TITLES, TrainOptions

PLUGIN_API_VERSION = 1
"""The specdec plugin API this package was written for (a literal, on purpose:
specdec refuses the plugin if it offers another version)."""

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

    specdec benchmarks fetch spec-bench                  # once: the Spec-Bench questions
    specdec train eagle --prompts spec-bench \\
        --eval-prompts data/sample_benchmark.jsonl        # the documented full training
    specdec train eagle --max-steps 20 --skip-eval --output /tmp/head   # a quick try
    specdec train eagle --head eagle3 --prompts spec-bench \\
        --eval-prompts data/sample_benchmark.jsonl --eval-strategies eagle   # EAGLE-3 head
    specdec-run --strategy eagle                         # uses {EAGLE_ALIAS} once trained
"""
"""Shown after the flags; indented, so the help's Markdown keeps it as a code block."""

TRAIN_HELP = "Train a speculative drafter (an EAGLE head) on the CPU."
EAGLE_HELP = "train, save and measure an EAGLE-1 or EAGLE-3 head for a target model"


def _shown_default(value: Any) -> str | None:
    # Repeatable options show their default as the flag takes it (ngram,draft_model,eagle);
    # an off switch, an empty list or no value says nothing a reader needs.
    if value is None or value is False or value == ():
        return None
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


OPTIONS = Parameter(name="*", negative=(), show_default=_shown_default)
"""Every field of :class:`TrainOptions` is a flag of its own: no ``--options.`` prefix, and
no generated ``--no-X``/``--empty-X`` twins (the fields that need an off switch name it),
whatever the defaults of the application this command is added to."""


def train_eagle_command(options: Annotated[TrainOptions | None, OPTIONS] = None) -> int:
    """Run ``specdec train eagle`` with ``options``: train, save, evaluate, report.

    ``None`` (no flag given) is every default of :class:`TrainOptions`.

    Raises:
        SpecdecError: from :func:`~specdec_train.train_eagle`; the core CLI shows it.
    """
    from rich.progress import TaskID  # noqa: PLC0415
    from specdec.display import progress_bar, stdout  # noqa: PLC0415

    from specdec_train.pipeline import train_eagle  # noqa: PLC0415

    # Logging is already set up: the core CLI configures it once, before any command runs.
    options = options or TrainOptions()
    tasks: dict[str, TaskID] = {}
    with progress_bar() as bar:

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


def train_app() -> App:
    """The ``train`` application with its ``eagle`` command."""
    train = App(name="train", help=TRAIN_HELP)
    train.command(train_eagle_command, name="eagle", help=f"{EAGLE_HELP}\n\n{DESCRIPTION}",
                  help_epilogue=EPILOG, help_format="markdown")
    return train


class TrainCommand:
    """The ``specdec.commands`` plugin that adds ``specdec train``."""

    name = "train"
    plugin_api_version = PLUGIN_API_VERSION

    def register(self, app: App) -> None:
        """Add ``train`` (with ``eagle``) to ``app``, the ``specdec`` application."""
        app.command(train_app())

"""``specdec train eagle`` as a ``specdec.commands`` plugin: its flags come from TrainOptions.

In-process: a test builds a cyclopts application, lets the plugin register its
commands and parses a command line, or calls specdec's own ``cli.main``; one
runs the installed console script.  Nothing trains.
"""

from __future__ import annotations

import io
from importlib.metadata import entry_points
from pathlib import Path

import attrs
import pytest
from rich.console import Console
from specdec import registry
from specdec.commands import CommandPlugin

from specdec_train import TrainOptions
from specdec_train.command import DESCRIPTION, TrainCommand
from specdec_train.options import STEPS, option_stages
from specdec_train.pipeline import STAGES, stage_keys
from test_train_eagle import parse_train_eagle, run_cli, specdec_app

FLAGS_BEFORE_THE_MOVE = (
    "--head", "--model", "--prompts", "--no-sample", "--eval-prompts", "--holdout",
    "--max-tokens", "--max-length", "--set", "--epochs", "--max-steps", "--lr", "--ce-weight",
    "--unroll", "--teacher-epochs", "--feature-noise", "--ce-vocab", "--batch-tokens",
    "--val-fraction", "--patience", "--eval-every", "--checkpoint-every", "--seed", "--threads",
    "--output", "--work-dir", "--skip-eval", "--eval-strategies", "--eval-k", "--eval-max-tokens",
    "--eval-draft", "--eval-set", "--overwrite", "--restart", "--keep-work",
)
"""Every flag ``specdec train eagle`` took when it was an argparse parser in specdec."""


def test_the_package_declares_its_command_plugin() -> None:
    """The installed entry point names TrainCommand, which fits CommandPlugin and this API."""
    points = {e.name: e.value for e in entry_points(group="specdec.commands")}
    assert points["train"] == "specdec_train.command:TrainCommand"
    plugin = TrainCommand()
    assert isinstance(plugin, CommandPlugin)
    assert plugin.name == "train"
    assert plugin.plugin_api_version == registry.PLUGIN_API_VERSION


def test_help_shows_every_flag_with_the_description() -> None:
    """`train eagle --help` lists each flag users had, the description and the examples."""
    out = io.StringIO()
    specdec_app()(["train", "eagle", "--help"], console=Console(file=out, width=200))
    text = out.getvalue()
    for flag in FLAGS_BEFORE_THE_MOVE:
        assert f"{flag} " in text, flag
    assert DESCRIPTION.split(",", 1)[0].replace("\n", " ") in text
    assert "specdec train eagle --max-steps 20 --skip-eval --output /tmp/head" in text
    assert "--empty-" not in text
    assert "--no-overwrite" not in text


def test_every_flag_sets_its_option() -> None:
    """Each flag of the old parser reaches the same TrainOptions field, with the same value."""
    options = parse_train_eagle(
        "--head", "eagle3", "--model", "m", "--prompts", "a.jsonl", "--prompts", "b.jsonl",
        "--no-sample", "--eval-prompts", "e.jsonl", "--holdout", "0.2", "--max-tokens", "24",
        "--max-length", "100", "--set", "engine.enforce_eager=true",
        "--set", "engine.dtype=float32", "--epochs", "2", "--max-steps", "4", "--lr", "0.01",
        "--ce-weight", "0.3", "--unroll", "2", "--teacher-epochs", "1", "--feature-noise", "0.1",
        "--ce-vocab", "0", "--batch-tokens", "512", "--val-fraction", "0.2", "--patience", "5",
        "--eval-every", "7", "--checkpoint-every", "9", "--seed", "4", "--threads", "1",
        "--output", "out/head", "--work-dir", "out/work", "--skip-eval",
        "--eval-strategies", "eagle, ngram", "--eval-k", "2", "--eval-max-tokens", "10",
        "--eval-draft", "d", "--eval-set", "benchmark.limit=8",
        "--overwrite", "--restart", "--keep-work", "--no-autocast",
    )
    assert options == TrainOptions(
        head="eagle3", target="m", prompts=(Path("a.jsonl"), Path("b.jsonl")),
        include_sample=False, eval_prompts=Path("e.jsonl"), holdout_fraction=0.2, max_tokens=24,
        max_length=100, engine_overrides=("engine.enforce_eager=true", "engine.dtype=float32"),
        epochs=2, max_steps=4, lr=0.01, ce_weight=0.3, unroll=2, teacher_epochs=1,
        feature_noise=0.1, ce_vocab=0, batch_tokens=512, val_fraction=0.2, patience=5,
        eval_every=7, checkpoint_every=9, seed=4, threads=1, output=Path("out/head"),
        work_dir=Path("out/work"), evaluate=False, eval_strategies=("eagle", "ngram"), eval_k=2,
        eval_max_tokens=10, eval_draft="d", eval_overrides=("benchmark.limit=8",),
        overwrite=True, restart=True, keep_work=True, autocast=False,
    )
    assert parse_train_eagle() == TrainOptions()
    assert parse_train_eagle("--eval-strategies", "eagle").eval_strategies == ("eagle",)


def test_steps_and_their_keys_come_from_the_options() -> None:
    """STAGES is the fields' metadata; keys are those of work folders made before the move."""
    assert option_stages() == STAGES
    assert tuple(STAGES) == STEPS
    unkeyed = {"output", "work_dir", "checkpoint_every", "overwrite", "restart", "keep_work"}
    keyed = {name for names in STAGES.values() for name in names}
    assert keyed | unkeyed == set(attrs.fields_dict(TrainOptions))
    assert not keyed & unkeyed
    assert {step for step, names in STAGES.items() if "head" in names} == {"features", "train",
                                                                          "evaluate"}
    # Digests written into plan.json by specdec.training before it became this package:
    # a work folder started then is resumed, not redone.
    assert stage_keys(TrainOptions()) == {
        "generate": "8b1211f6376dce51", "features": "b2c1491d67c50a79",
        "train": "68a0cbb213349b35", "evaluate": "719658a80962d385",
    }
    assert stage_keys(TrainOptions(head="eagle3"))["train"] == "9e1cbb07bc1e1b46"


def test_the_specdec_cli_runs_the_plugin_and_its_errors_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Through specdec's own CLI: help exits 0; a bad value or choice exits 2, no traceback."""
    from specdec.cli import main

    assert main(["train", "eagle", "--help"]) == 0
    assert "--eval-strategies" in capsys.readouterr().out
    assert main(["train", "eagle", "--holdout", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "holdout_fraction must be in [0, 1), got 1.5" in err
    assert "Traceback" not in err
    assert main(["train", "eagle", "--head", "medusa"]) == 2
    assert 'Invalid value "medusa" for --head' in capsys.readouterr().err


def test_specdec_train_eagle_help_from_the_console_script() -> None:
    """The installed `specdec` finds the command through its entry point."""
    shown = run_cli("specdec", "train", "eagle", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--eval-strategies" in shown.stdout
    assert "examples:" in shown.stdout

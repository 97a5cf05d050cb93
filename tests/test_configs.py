"""Every pre-configured experiment under configs/ loads and validates, without an engine.

Each file is read strictly (``load_config``), its strategy is created from the
registry and its options are structured into that strategy's ``options_type``
(strict too: a misspelt option fails).  Nothing here resolves a model, reads a
benchmark or imports vLLM, so the checks are fast and run on any machine.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest

from specdec import registry
from specdec.config import load_config
from specdec.errors import ConfigError, UnknownPluginError
from specdec.models import BUNDLED
from specdec.records import ExperimentConfig
from specdec.serialization import problems, structure

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SUFFIXES = (".yaml", ".yml", ".json")

GPU_MODELS = {
    "qwen2-7b-instruct": "Qwen/Qwen2-7B-Instruct",
    "qwen2-72b-instruct": "Qwen/Qwen2-72B-Instruct",
    "qwen3-32b": "Qwen/Qwen3-32B",
    "llama-3-8b-instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama-3-70b-instruct": "meta-llama/Meta-Llama-3-70B-Instruct",
}
"""The model folders the study ships, and the hub id each one targets."""

HEAD_STRATEGIES = ("eagle", "eagle3")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)b(?![a-z])")
MIN_TENSOR_PARALLEL = ((60.0, 4), (25.0, 2))
"""(billions of parameters, smallest tensor_parallel_size): bfloat16 weights must fit the GPUs."""


def _config_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def _model_folders() -> list[Path]:
    return sorted({p.parent for p in _config_files()})


def _id(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


FILES = _config_files()
FOLDERS = _model_folders()


def validate(path: Path) -> tuple[ExperimentConfig, Any]:
    """Load ``path`` strictly and structure its strategy options; return both.

    Raises ConfigError (one ``message @ $.path`` line per problem) for an unknown
    key, a wrong type, an unknown strategy option or an invalid option value.
    """
    config = load_config(path)
    strategy = registry.strategies.create(config.strategy.name)
    try:
        options = structure(dict(config.strategy.options), strategy.options_type)
    except Exception as exc:
        raise ConfigError(str(path), problems(exc, "$.strategy")) from exc
    return config, options


def _billions(model: str) -> float | None:
    sizes = [float(m) for m in SIZE.findall(model.lower())]
    return max(sizes) if sizes else None


def test_configs_are_found() -> None:
    assert FILES, f"no config files under {CONFIGS}"
    assert all(p.parent.parent == CONFIGS for p in FILES), "configs/<model>/<file> only"


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_config_validates(path: Path) -> None:
    config, options = validate(path)
    expected = registry.strategies.load(config.strategy.name).options_type
    assert isinstance(options, typing.get_origin(expected) or expected)  # raw: dict[...]


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_config_starts_with_a_comment(path: Path) -> None:
    """Each file says what it is and what it needs before anything else."""
    if path.suffix == ".json":
        pytest.skip("JSON has no comments")
    first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
    assert first.startswith("#"), f"{_id(path)} should open with a comment"


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_models_are_hub_ids_or_bundled(path: Path) -> None:
    """Shipped configs are portable: no machine-specific model or head folders."""
    config, options = validate(path)
    names = [config.model]
    head = getattr(options, "model", None)
    if isinstance(head, str):
        names.append(head)
    for name in names:
        assert name in BUNDLED or HUB_ID.match(name), f"{name!r} is neither an alias nor a hub id"


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_big_models_are_split_across_gpus(path: Path) -> None:
    """70B/72B need tensor parallel >= 4, ~30B needs >= 2 (bfloat16 on 80 GB GPUs)."""
    config, _ = validate(path)
    size = _billions(config.model)
    if size is None:
        return
    for billions, minimum in MIN_TENSOR_PARALLEL:
        if size >= billions:
            assert config.engine.tensor_parallel_size >= minimum, (
                f"{config.model} ({size:g}B) needs tensor_parallel_size >= {minimum}"
            )
            break


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_heads_are_named(path: Path) -> None:
    """EAGLE and EAGLE-3 configs name a head, and the head is not the target itself."""
    config, options = validate(path)
    if config.strategy.name not in HEAD_STRATEGIES:
        return
    head = options.model
    assert isinstance(head, str)
    assert head.strip(), "an EAGLE config must name its head"
    assert head != config.model, "the head is a separate small model, not the target"
    assert "model" in config.strategy.options, "name the head in the file, do not rely on defaults"


@pytest.mark.parametrize("folder", FOLDERS, ids=_id)
def test_every_model_folder_has_a_baseline(folder: Path) -> None:
    baseline = folder / "baseline.yaml"
    assert baseline.is_file(), f"{_id(folder)} has no baseline.yaml"
    config, _ = validate(baseline)
    assert config.strategy.name == "none"


@pytest.mark.parametrize("folder", FOLDERS, ids=_id)
def test_folder_configs_compare_with_their_baseline(folder: Path) -> None:
    """Within a folder every experiment targets one model with the baseline's settings.

    Smoke runs (``quick*`` files) are exempt: they trade comparability for speed.
    """
    baseline, _ = validate(folder / "baseline.yaml")
    for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES):
        config, _ = validate(path)
        assert config.model == baseline.model, f"{_id(path)} targets another model"
        if path.stem.startswith("quick"):
            continue
        assert config.generation == baseline.generation, f"{_id(path)}: generation differs"
        assert config.engine == baseline.engine, f"{_id(path)}: engine differs"
        assert config.mode == baseline.mode, f"{_id(path)}: mode differs"


@pytest.mark.parametrize(("folder", "model"), GPU_MODELS.items())
def test_gpu_study_folders(folder: str, model: str) -> None:
    """Each GPU model folder has a baseline and an n-gram run for the named model."""
    for name in ("baseline.yaml", "ngram.yaml"):
        config, _ = validate(CONFIGS / folder / name)
        assert config.model == model
        assert config.generation.max_tokens == 1024
        assert config.generation.temperature == 0.0


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("num_speculative_token", "4", ("extra fields found (num_speculative_token); "
                                        "did you mean 'num_speculative_tokens'? @ $.strategy")),
        ("prompt_lookup_min", "6", "prompt_lookup_min (6) must be <= prompt_lookup_max (4)"),
        ("num_speculative_tokens", "four", "@ $.strategy.num_speculative_tokens"),
    ],
    ids=["misspelt-option", "invalid-window", "wrong-type"],
)
def test_validation_can_fail(tmp_path: Path, option: str, value: str, expected: str) -> None:
    """The same check refuses a broken copy of a shipped config."""
    text = (CONFIGS / "smollm2-135m" / "ngram.yaml").read_text(encoding="utf-8")
    fields = {"name": "ngram", "num_speculative_tokens": "4", "prompt_lookup_max": "4"}
    fields[option] = value
    line = "strategy: {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"
    broken = re.sub(r"^strategy:.*$", line, text, flags=re.MULTILINE)
    assert broken != text
    path = tmp_path / "broken.yaml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        validate(path)
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_unknown_strategy_fails(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("model: smollm2-135m\nstrategy: {name: eagel, model: a/b}\n", encoding="utf-8")
    with pytest.raises(UnknownPluginError, match="Did you mean 'eagle'"):
        validate(path)

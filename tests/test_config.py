"""Strict configuration loading: files, overrides and located error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec.config import dump_config, load_config, read_mapping
from specdec.errors import ConfigError
from specdec.records import ExperimentConfig

from .conftest import run_cli


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_shape_loads(tmp_path: Path) -> None:
    """model, generation, engine and a flat strategy section load into records."""
    path = _write(tmp_path, """
model: smollm2-135m
generation: {max_tokens: 64, temperature: 0.0, top_p: 1.0}
engine: {tensor_parallel_size: 1, gpu_memory_utilization: 0.3, enforce_eager: true}
strategy: {name: ngram, num_speculative_tokens: 3}
mode: batch
""")
    config = load_config(path)
    assert config.generation.max_tokens == 64
    assert config.engine.enforce_eager is True
    assert config.strategy.name == "ngram"
    assert dict(config.strategy.options) == {"num_speculative_tokens": 3}
    assert config.mode == "batch"


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    """A misspelt key fails with the file name and its $.path."""
    path = _write(tmp_path, "generation:\n  max_token: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == [
        "extra fields found (max_token); did you mean 'max_tokens'? @ $.generation"]


def test_wrong_type_is_named_with_its_path(tmp_path: Path) -> None:
    """A wrong type names the field and what was expected."""
    path = _write(tmp_path, "engine:\n  tensor_parallel_size: two\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].endswith("@ $.engine.tensor_parallel_size")
    assert "int" in info.value.problems[0]


def test_several_problems_one_line_each(tmp_path: Path) -> None:
    """Every problem in a file is reported, one line each."""
    path = _write(tmp_path, "mode: fast\ngeneration: {max_tokens: lots}\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 3
    text = str(info.value)
    assert "@ $.mode" in text
    assert "@ $.generation.max_tokens" in text
    assert "bogus" in text


def test_broken_yaml_gives_line_and_column(tmp_path: Path) -> None:
    """Malformed YAML is a ConfigError with the position, not a traceback."""
    path = _write(tmp_path, "model: x\nengine: {enforce_eager: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith("broken YAML at line 3")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    """Python-object tags are refused rather than executed."""
    path = _write(tmp_path, "model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="broken YAML"):
        load_config(path)


def test_json_config(tmp_path: Path) -> None:
    """JSON files load the same way."""
    path = _write(tmp_path, '{"model": "m", "strategy": "ngram"}', name="exp.json")
    config = load_config(path)
    assert config.strategy.name == "ngram"


def test_overrides_apply_in_order(tmp_path: Path) -> None:
    """--set values are YAML-typed and applied over the file."""
    path = _write(tmp_path, "generation: {max_tokens: 64}\n")
    config = load_config(path, ["generation.max_tokens=16", "engine.enforce_eager=true",
                                "strategy.name=ngram", "benchmark.categories=[math, code]"])
    assert config.generation.max_tokens == 16
    assert config.engine.enforce_eager is True
    assert config.benchmark.categories == ("math", "code")


def test_override_into_scalar_fails() -> None:
    """--set cannot descend into a value that is not a mapping."""
    with pytest.raises(ConfigError, match=r"\$\.mode is not a mapping"):
        load_config(None, ["mode=batch", "mode.x=1"])


def test_run_config_round_trips(tmp_path: Path) -> None:
    """A run's config.yaml (with provenance) reads back as the same config."""
    config = load_config(None, ["strategy.name=ngram", "strategy.num_speculative_tokens=2"])
    path = _write(tmp_path, dump_config(config, {"specdec": "0"}), name="config.yaml")
    assert load_config(path) == config
    assert read_mapping(path)["strategy"]["name"] == "ngram"


def test_defaults() -> None:
    """With nothing given: bundled model, baseline, sequential mode, all sinks."""
    assert load_config() == ExperimentConfig()


def test_cli_config_errors_exit_cleanly(tmp_path: Path) -> None:
    """specdec-run prints one line per problem and exits 2 without a traceback."""
    path = _write(tmp_path, "generation:\n  max_token: 64\nengine: {dtype: 3}\n")
    result = run_cli("specdec-run", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"invalid configuration in {path}" in result.stderr
    assert ("extra fields found (max_token); did you mean 'max_tokens'? @ $.generation"
            in result.stderr)


def test_cli_missing_model_exits_cleanly(tmp_path: Path) -> None:
    """A model that is neither a folder nor an alias is a clear error."""
    result = run_cli("specdec-run", "--model", str(tmp_path / "no-such-model"),
                     "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no-such-model' not found" in result.stderr

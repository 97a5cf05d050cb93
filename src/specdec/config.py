"""Reading experiment configurations: YAML or JSON files, and ``--set`` overrides.

Loading is strict: an unknown key, a wrong type or broken YAML becomes a
:class:`~specdec.errors.ConfigError` with one ``message @ $.path`` line per
problem.  YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from specdec.errors import ConfigError
from specdec.records import SCHEMA_VERSION, ExperimentConfig
from specdec.serialization import problems, structure, unstructure


def _yaml_reason(exc: yaml.YAMLError) -> str:
    # " at line L, column C: what", from PyYAML's mark when it has one.
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{where}: {getattr(exc, 'problem', None) or exc}"


def _read_text(path: Path) -> str:
    # UTF-8, with or without the byte-order mark some Windows editors write.
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror} @ $"]) from exc
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        utf16 = " (it looks like UTF-16)" if exc.object[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        msg = (f"cannot read file: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})"
               f"{utf16}; save it as UTF-8 @ $")
        raise ConfigError(str(path), [msg]) from exc


def read_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON file into a mapping, with located errors."""
    text = _read_text(path)
    if path.suffix == ".json":
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(str(path), [f"broken JSON: {exc} @ $"]) from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), [f"broken YAML{_yaml_reason(exc)} @ $"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"expected a mapping, got {type(data).__name__} @ $"])
    if "schema_version" in data and isinstance(data.get("config"), dict):
        # A run's own config.yaml: the experiment is under "config".
        inner: dict[str, Any] = data["config"]
        return inner
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", [f"expected key.path=value, got {item!r} @ $"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("--set", [f"cannot parse value {raw!r}: {exc} @ $.{key}"]) from exc
    return key.strip().split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` override applied."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(data))
    for item in overrides:
        keys, value = parse_override(item)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                msg = f"cannot set {item!r}: $.{where} is not a mapping @ $.{where}"
                raise ConfigError("--set", [msg])
            node = child
        node[keys[-1]] = value
    return result


def config_from_mapping(data: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Structure a mapping into an :class:`ExperimentConfig`, strictly."""
    try:
        return structure(dict(data), ExperimentConfig)
    except Exception as exc:
        raise ConfigError(source, problems(exc)) from exc


def load_config(
    path: Path | None = None, overrides: Iterable[str] = (), base: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Load ``path`` (or start from ``base``/defaults), apply overrides, and check it."""
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if path is not None:
        data.update(read_mapping(path))
        source = str(path)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} with --set overrides" if path else "--set overrides"
    return config_from_mapping(data, source)


def read_provenance(path: Path) -> dict[str, Any]:
    """The provenance section of a run's ``config.yaml`` (empty for a plain experiment file).

    A file that cannot be read or parsed is a :class:`ConfigError`, located as
    :func:`read_mapping` locates it.
    """
    text = _read_text(path)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"broken YAML{_yaml_reason(exc)} @ $"]) from exc
    provenance = document.get("provenance") if isinstance(document, dict) else None
    return dict(provenance) if isinstance(provenance, dict) else {}


def dump_config(config: ExperimentConfig, provenance: Mapping[str, Any]) -> str:
    """Render a run's ``config.yaml``: schema version, provenance and the resolved config.

    :func:`load_config` reads such a file back, so any run can be repeated with
    ``--config RUN_DIR/config.yaml``.
    """
    document = {
        "schema_version": SCHEMA_VERSION,
        "provenance": dict(provenance),
        "config": unstructure(config),
    }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)

"""The one cattrs converter that reads and writes every specdec file.

Structuring is strict: unknown keys are refused, and errors come back as one
``message @ $.path`` line per problem (:func:`problems`).

Every hook is registered in :func:`_build_converter`, when the converter is made:
no other module customises it, so what it does never depends on what happens
to have been imported (cattrs' advice for applications).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import cattrs
import orjson
from cattrs.preconf.orjson import OrjsonConverter, make_converter
from cattrs.v import format_exception

from specdec.errors import InvalidOptionError
from specdec.files import atomic_write_bytes
from specdec.records import StrategyConfig, StrategySpec

T = TypeVar("T")


def _structure_strategy(value: Any, _type: type[StrategyConfig]) -> StrategyConfig:
    # A strategy section is flat in files (`{name: ngram, num_speculative_tokens: 4}`):
    # the name picks the plugin and the other keys are that plugin's options, which
    # the plugin's own options class checks later.
    if isinstance(value, str):
        return StrategyConfig(name=value)
    if not isinstance(value, Mapping):
        msg = f"expected a mapping or a strategy name, got {type(value).__name__}"
        raise TypeError(msg)
    options = dict(value)
    name = options.pop("name", "none")
    if not isinstance(name, str):
        msg = "strategy name must be a string"
        raise TypeError(msg)
    return StrategyConfig(name=name, options=options)


def _unstructure_strategy(value: StrategyConfig) -> dict[str, Any]:
    return {"name": value.name, **value.options}


def _is_number_tuple(type_: Any) -> bool:
    return typing.get_origin(type_) is tuple and typing.get_args(type_) in (
        (int, Ellipsis), (float, Ellipsis))


def _number_tuple_hook(type_: Any) -> Any:
    # Token ids and log-probability margins come by the hundred per turn: one
    # C-level scan of the element types instead of one Python call per element
    # reads records about five times faster (benchmarks/report_scale.py), and
    # is stricter than cattrs' int()/float() (a bool or a string is refused).
    element: type = typing.get_args(type_)[0]
    allowed = frozenset({int}) if element is int else frozenset({int, float})

    def structure_numbers(value: Any, _type: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            msg = f"expected a list of {element.__name__} values, got {type(value).__name__}"
            raise TypeError(msg)
        kinds = set(map(type, value))
        if not kinds <= allowed:
            found = ", ".join(sorted(k.__name__ for k in kinds - allowed))
            msg = f"expected a list of {element.__name__} values, found {found}"
            raise TypeError(msg)
        if element is float and int in kinds:
            return tuple(map(float, value))
        return tuple(value)

    return structure_numbers




def _structure_spec(value: Any, _type: type[StrategySpec]) -> StrategySpec:
    # A study's strategy entry, flat like an experiment's strategy section.
    if isinstance(value, str):
        return StrategySpec(name=value)
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        msg = "expected a mapping with a strategy name"
        raise TypeError(msg)
    options = dict(value)
    name = options.pop("name")
    sweep = converter.structure(options.pop("sweep", {}), dict[str, tuple[Any, ...]])
    return StrategySpec(name=name, options=options, sweep=sweep)


def _build_converter() -> OrjsonConverter:
    made = make_converter(forbid_extra_keys=True, detailed_validation=True)
    made.register_structure_hook(StrategyConfig, _structure_strategy)
    made.register_unstructure_hook(StrategyConfig, _unstructure_strategy)
    made.register_structure_hook(StrategySpec, _structure_spec)
    made.register_structure_hook_factory(_is_number_tuple, _number_tuple_hook)
    return made


converter = _build_converter()
"""The converter for every record; JSON via orjson, YAML via PyYAML on top of it."""


def _describe(exc: BaseException, type_: type | None) -> str:
    # Validators raise InvalidOptionError with a sentence meant for the user: keep it.
    if isinstance(exc, InvalidOptionError):
        return str(exc)
    if type_ is not None and typing.get_origin(type_) is Literal:
        allowed = ", ".join(repr(a) for a in typing.get_args(type_))
        return f"must be one of {allowed}"
    return format_exception(exc, type_)


def problems(exc: BaseException, path: str = "$") -> list[str]:
    """Turn a structuring error into ``message @ $.path`` lines."""
    if isinstance(exc, cattrs.BaseValidationError | cattrs.ForbiddenExtraKeysError):
        return list(cattrs.transform_error(exc, path=path, format_exception=_describe))
    return [f"{exc} @ {path}"]


def structure(data: Any, cls: type[T]) -> T:
    """Structure ``data`` into ``cls`` with the shared converter."""
    return converter.structure(data, cls)


def unstructure(obj: Any) -> Any:
    """Unstructure a record into plain JSON-compatible data."""
    return converter.unstructure(obj)


def dumps(obj: Any, *, indent: bool = False) -> bytes:
    """Serialise a record (or plain data) to JSON bytes."""
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(unstructure(obj), option=option | orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | str) -> Any:
    """Parse JSON text into plain data."""
    return orjson.loads(data)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (see :func:`specdec.files.atomic_write_bytes`)."""
    atomic_write_bytes(path, dumps(obj, indent=True) + b"\n")

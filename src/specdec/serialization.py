"""The one cattrs converter that reads and writes every specdec file.

Structuring is strict: unknown keys are refused (with the closest field names
offered), values are never coerced into another kind, the records' validators
run, and errors come back as one ``message @ $.path`` line per problem
(:func:`problems`).  What "never coerced" means is in :func:`_build_converter`.

Every hook is registered in :func:`_build_converter`, when the converter is made:
no other module customises it, so what it does never depends on what happens
to have been imported (cattrs' advice for applications).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import cattrs
import orjson
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.preconf.orjson import OrjsonConverter, make_converter
from cattrs.v import format_exception

from specdec.errors import InvalidOptionError
from specdec.files import atomic_write_bytes
from specdec.records import StrategyConfig, StrategySpec
from specdec.validators import shown

T = TypeVar("T")


def _structure_strategy(value: Any, _type: type[StrategyConfig]) -> StrategyConfig:
    # A strategy section is flat in files (`{name: ngram, num_speculative_tokens: 4}`):
    # the name picks the plugin and the other keys are that plugin's options, which
    # the plugin's own options class checks later.
    if isinstance(value, str):
        return StrategyConfig(name=value)
    if not isinstance(value, Mapping):
        msg = f"expected a mapping or a strategy name, got {_kind(value)}"
        raise InvalidOptionError(msg)
    options = dict(value)
    name = options.pop("name", "none")
    if not isinstance(name, str):
        msg = f"strategy name must be a string, got {_kind(name)}"
        raise InvalidOptionError(msg, field="name")
    return StrategyConfig(name=name, options=options)


def _unstructure_strategy(value: StrategyConfig) -> dict[str, Any]:
    return {"name": value.name, **value.options}


def _kind(value: Any) -> str:
    # What a refused value is, as a config file's reader sees it.
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return shown(value)


def _is_numeral(value: Any) -> bool:
    # A number in quotes, which a hint can tell the user to unquote.
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _structure_bool(value: Any, _type: Any) -> bool:
    if isinstance(value, bool):
        return value
    hint = ": write true or false, without quotes" if isinstance(value, str) else ""
    msg = f"expected true or false, got {_kind(value)}{hint}"
    raise InvalidOptionError(msg)


def _structure_int(value: Any, _type: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    hint = ""
    if isinstance(value, float):
        hint = " (an integer has no fraction)"
    elif _is_numeral(value):
        hint = ": write the number without quotes"
    msg = f"expected an integer, got {_kind(value)}{hint}"
    raise InvalidOptionError(msg)


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    hint = ": write the number without quotes" if _is_numeral(value) else ""
    msg = f"expected a number, got {_kind(value)}{hint}"
    raise InvalidOptionError(msg)


def _structure_str(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    hint = ": put it in quotes" if isinstance(value, int | float) else ""
    msg = f"expected a string, got {_kind(value)}{hint}"
    raise InvalidOptionError(msg)


def _is_literal(type_: Any) -> bool:
    return typing.get_origin(type_) is Literal


def _literal_hook(type_: Any) -> Any:
    # cattrs' literal check says "batc not in literal ...", and takes True for 1.
    allowed = typing.get_args(type_)
    names = [a for a in allowed if isinstance(a, str)]

    def structure_literal(value: Any, _type: Any) -> Any:
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        close = _did_you_mean(value, names) if isinstance(value, str) else None
        msg = (f"must be one of {', '.join(repr(a) for a in allowed)}, got {_kind(value)}"
               + (f"; did you mean {close!r}?" if close else ""))
        raise InvalidOptionError(msg)

    return structure_literal


def _record_hook(type_: Any, made: cattrs.Converter) -> Any:
    # cattrs reads a record from anything with keys: a string's characters became
    # "extra fields found (a, b, c)".
    inner = made.gen_structure_attrs_fromdict(type_)

    def structure_record(value: Any, _type: Any) -> Any:
        if not isinstance(value, Mapping):
            msg = f"expected a mapping, got {_kind(value)}"
            raise InvalidOptionError(msg)
        return inner(value, _type)

    return structure_record


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = typing.get_args(type_)
    return typing.get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis  # noqa: PLR2004


def _tuple_hook(type_: Any, made: cattrs.Converter) -> Any:
    # cattrs would make a tuple of any iterable: a string's characters, a
    # mapping's keys.  Only a list is a list here; a lone string where strings
    # are meant is wrapped, deliberately (`stop: "</s>"` is one stop string).
    element = typing.get_args(type_)[0]
    inner = homogenous_tuple_structure_factory(type_, made)

    def structure_tuple(value: Any, _type: Any) -> tuple[Any, ...]:
        if isinstance(value, str) and element is str:
            return (value,)
        if not isinstance(value, list | tuple):
            hint = f": write it as a list, [{value}]" if isinstance(value, str) else ""
            msg = f"expected a list, got {_kind(value)}{hint}"
            raise InvalidOptionError(msg)
        result: tuple[Any, ...] = inner(value, _type)
        return result

    return structure_tuple


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
            msg = f"expected a list of {element.__name__} values, got {_kind(value)}"
            raise InvalidOptionError(msg)
        kinds = set(map(type, value))
        if not kinds <= allowed:
            found = ", ".join(sorted(k.__name__ for k in kinds - allowed))
            msg = f"expected a list of {element.__name__} values, found {found}"
            raise InvalidOptionError(msg)
        if element is float and int in kinds:
            return tuple(map(float, value))
        return tuple(value)

    return structure_numbers


def _structure_spec(value: Any, _type: type[StrategySpec]) -> StrategySpec:
    # A study's strategy entry, flat like an experiment's strategy section.
    if isinstance(value, str):
        return StrategySpec(name=value)
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        msg = f"expected a mapping with a strategy name, got {_kind(value)}"
        raise InvalidOptionError(msg)
    options = dict(value)
    name = options.pop("name")
    sweep = converter.structure(options.pop("sweep", {}), dict[str, tuple[Any, ...]])
    return StrategySpec(name=name, options=options, sweep=sweep)


def _build_converter() -> OrjsonConverter:
    """The converter, strict where cattrs would coerce.

    - A boolean is ``true`` or ``false``: the string ``"false"`` or ``"no"`` and
      the numbers 0 and 1 are refused (cattrs' ``bool()`` made ``"false"`` true).
    - An integer is an integer: ``12.7`` is refused (``int()`` made it 12), as are
      ``true``, ``"12"`` and ``null``; a float without a fraction (``12.0``, as
      some JSON writers spell integers) is accepted as that integer.
    - A float is any number but a boolean: ``1`` is ``1.0``; strings are refused.
    - A string is a string: a number is refused (quote it) rather than turned
      into its digits.
    - A list is a list: a mapping is refused rather than turned into its keys,
      and a string never into its characters.  Where a list of strings is
      meant (``generation.stop``, ``sinks``, ``benchmark.categories``, a study's
      ``models``), a single string is wrapped into a one-element list, so that
      ``--set generation.stop=</s>`` is ``("</s>",)`` and ``sinks: json`` is
      ``("json",)``.  Lists of anything else refuse a string.
    - Token ids and margins (``tuple[int, ...]``, ``tuple[float, ...]``) take a
      fast path that refuses booleans and strings (:func:`_number_tuple_hook`).

    Strategy options classes are structured by this converter too, so they
    get the same rules.
    """
    made = make_converter(forbid_extra_keys=True, detailed_validation=True)
    made.register_structure_hook_factory(attrs.has, _record_hook)
    made.register_structure_hook_factory(_is_literal, _literal_hook)
    made.register_structure_hook(bool, _structure_bool)
    made.register_structure_hook(int, _structure_int)
    made.register_structure_hook(float, _structure_float)
    made.register_structure_hook(str, _structure_str)
    made.register_structure_hook(StrategyConfig, _structure_strategy)
    made.register_unstructure_hook(StrategyConfig, _unstructure_strategy)
    made.register_structure_hook(StrategySpec, _structure_spec)
    # Registered later, so it is asked first for the number tuples it knows.
    made.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook)
    made.register_structure_hook_factory(_is_number_tuple, _number_tuple_hook)
    return made


converter = _build_converter()
"""The converter for every record; JSON via orjson, YAML via PyYAML on top of it."""


def _did_you_mean(unknown: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(unknown, known, n=1)
    return close[0] if close else None


def _describe_extra(exc: cattrs.ForbiddenExtraKeysError) -> str:
    extra = sorted(exc.extra_fields)
    text = f"extra fields found ({', '.join(extra)})"
    if not attrs.has(exc.cl):
        return text
    known = [a.name for a in attrs.fields(exc.cl)]
    matches = [(key, _did_you_mean(key, known)) for key in extra]
    found = [(key, match) for key, match in matches if match]
    if len(extra) == 1 and found:
        return f"{text}; did you mean {found[0][1]!r}?"
    if found:
        return f"{text}; did you mean " + ", ".join(
            f"{match!r} for {key!r}" for key, match in found) + "?"
    return text


def _describe(exc: BaseException, type_: type | None) -> str:
    # Validators and the strict hooks raise InvalidOptionError with a sentence
    # meant for the user: keep it.
    if isinstance(exc, InvalidOptionError):
        return str(exc)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return _describe_extra(exc)
    return format_exception(exc, type_)


def _line(exc: BaseException, path: str, type_: Any) -> str:
    # A validator names the field it checked; the class's error alone would
    # locate the message at the section.
    field = exc.field if isinstance(exc, InvalidOptionError) else None
    return f"{_describe(exc, type_)} @ {path}{f'.{field}' if field else ''}"


def _lines(exc: BaseException, path: str, type_: Any = None) -> list[str]:
    # cattrs.transform_error, but with validators' messages at their field.
    if isinstance(exc, cattrs.IterableValidationError):
        with_notes, without = exc.group_exceptions()
        iterable = [(sub, f"{path}[{note.index!r}]", note.type) for sub, note in with_notes]
    elif isinstance(exc, cattrs.ClassValidationError):
        with_notes_class, without = exc.group_exceptions()
        iterable = [(sub, f"{path}.{note.name}", note.type) for sub, note in with_notes_class]
    else:
        return [_line(exc, path, type_)]
    lines: list[str] = []
    for sub, where, sub_type in iterable:
        lines += _lines(sub, where, sub_type)
    lines += [_line(sub, path, None) for sub in without]
    return lines


def problems(exc: BaseException, path: str = "$") -> list[str]:
    """Turn a structuring error into ``message @ $.path`` lines."""
    if isinstance(exc, cattrs.BaseValidationError | cattrs.ForbiddenExtraKeysError
                  | InvalidOptionError):
        return _lines(exc, path)
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

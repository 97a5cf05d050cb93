"""The attrs validators of every record and options class that takes a number from the user.

Each raises :class:`~specdec.errors.InvalidOptionError` naming the option, so the
converter reports it as ``temperature must be >= 0, got -1 @ $.generation.temperature``.
The bounds of values that reach vLLM are vLLM's own (``SamplingParams._verify_args``,
``vllm.config``): a config is refused before the engine starts exactly when vLLM would
refuse it after.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from specdec.errors import InvalidOptionError

Validator = Callable[[Any, Any, Any], None]
"""What attrs calls: ``(instance, attribute, value)``."""


def shown(value: object) -> str:
    """A value as a config file spells it: ``true``, ``null``, ``-1``, ``0.5``, ``'text'``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def number(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
           also: Iterable[float] = (), note: str = "") -> Validator:
    """A validator: the number, when set, is within the bounds (or one of ``also``).

    NaN and infinities are always refused.  The message names the bound that
    failed and, after it, ``note`` (what the allowed special values mean).
    """
    extra = tuple(also)

    def check(_instance: object, attribute: Any, value: float | None) -> None:
        if value is None or value in extra:
            return
        name = attribute.name
        if not math.isfinite(value):
            msg = f"{name} must be a finite number, got {shown(value)}"
            raise InvalidOptionError(msg, field=name)
        failed = next((f"{op} {shown(bound)}" for op, bound, ok in (
            (">=", ge, ge is None or value >= ge),
            (">", gt, gt is None or value > gt),
            ("<=", le, le is None or value <= le),
        ) if not ok), None)
        if failed is None:
            return
        alternatives = "".join(f" or {shown(a)}" for a in extra)
        hint = f" ({note})" if note else ""
        msg = f"{name} must be {failed}{alternatives}{hint}, got {shown(value)}"
        raise InvalidOptionError(msg, field=name)

    return check


positive = number(ge=1)
"""A validator: the integer option, when set, is at least 1."""

above_zero = number(gt=0)
"""A validator: the number, when set, is greater than 0 (and finite)."""


def non_empty_strings(_instance: object, attribute: Any, value: Iterable[str] | None) -> None:
    """A validator: no string in the list is empty (vLLM refuses an empty stop string)."""
    if value is not None and any(not item for item in value):
        msg = f"{attribute.name} must not hold an empty string"
        raise InvalidOptionError(msg, field=attribute.name)


def one_of(*allowed: str) -> Validator:
    """A validator: the string, in any case, is one of ``allowed`` (the closest is offered)."""

    def check(_instance: object, attribute: Any, value: str) -> None:
        if value.lower() in allowed:
            return
        close = difflib.get_close_matches(value.lower(), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        msg = (f"{attribute.name} must be one of {', '.join(map(repr, allowed))}, "
               f"got {value!r}{hint}")
        raise InvalidOptionError(msg, field=attribute.name)

    return check


def distinct_positive(*, least: int = 1) -> Validator:
    """A validator: a list of at least ``least`` integers, each at least 1, none twice."""

    def check(_instance: object, attribute: Any, values: Iterable[int]) -> None:
        items = list(values)
        name = attribute.name
        if len(items) < least:
            msg = f"{name} must list at least {least} values, got {len(items)}"
            raise InvalidOptionError(msg, field=name)
        small = [shown(v) for v in items if v < 1]
        if small:
            msg = f"{name} values must be >= 1, got {', '.join(small)}"
            raise InvalidOptionError(msg, field=name)
        twice = sorted({v for v in items if items.count(v) > 1})
        if twice:
            msg = f"{name} lists {', '.join(map(str, twice))} more than once"
            raise InvalidOptionError(msg, field=name)

    return check

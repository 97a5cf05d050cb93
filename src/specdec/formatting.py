"""How numbers look wherever specdec shows them: terminal tables, reports, model cards.

One place so a missing value always reads ``-`` and the same quantity has the same
number of digits in the terminal, in ``report.md`` and on a plot's label.
"""

from __future__ import annotations

from collections.abc import Sequence

MISSING = "-"
"""What a value that was not measured (``None``) is shown as."""


def number(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """``value`` with ``digits`` decimals and ``suffix`` (``"x"``, ``" s"``), or ``-`` for None.

    >>> number(1.2345), number(2.0, 1, "x"), number(None, suffix="x")
    ('1.23', '2.0x', '-')
    """
    return MISSING if value is None else f"{value:.{digits}f}{suffix}"


def percent(value: float | None, digits: int = 0) -> str:
    """A fraction as a percentage with ``digits`` decimals, or ``-`` for None.

    >>> percent(0.125, 1), percent(None)
    ('12.5%', '-')
    """
    return MISSING if value is None else f"{value:.{digits}%}"


def duration(seconds: float | None) -> str:
    """A duration as H:MM:SS, whole seconds rounded down like rich's elapsed time, or ``-``.

    >>> duration(75.9), duration(3725), duration(None)
    ('0:01:15', '1:02:05', '-')
    """
    if seconds is None:
        return MISSING
    whole = max(int(seconds), 0)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def interval_text(estimate: float | None, low: float | None = None, high: float | None = None,
                  digits: int = 2, suffix: str = "x") -> str:
    """An estimate with its confidence interval, or the estimate alone without one.

    >>> interval_text(1.594, 1.412, 1.771), interval_text(0.5, suffix=""), interval_text(None)
    ('1.59x [1.41, 1.77]', '0.50', '-')
    """
    shown = number(estimate, digits, suffix)
    if estimate is None or low is None or high is None:
        return shown
    return f"{shown} [{number(low, digits)}, {number(high, digits)}]"


def median_spread(median: float, spread: float, n: int, digits: int = 1) -> str:
    """A median over ``n`` repeats with its relative spread (max - min) / median.

    The spread is shown as ± half of it, so the printed range covers the repeats;
    a single repeat has no spread to show.

    >>> median_spread(12.34, 0.1, 3), median_spread(12.34, 0.0, 1)
    ('12.3 ±5% (n=3)', '12.3')
    """
    if n == 1:
        return number(median, digits)
    return f"{number(median, digits)} ±{percent(spread / 2)} (n={n})"


def value(item: object, digits: int = 3) -> str:
    """Any value as a table cell: floats with ``digits`` decimals, sequences joined, None as ``-``.

    For loosely typed data (a model card's JSON) where a field may hold a number, a
    list of numbers, text or nothing.

    >>> value(0.5), value([1.0, 2]), value(None), value("adamw")
    ('0.500', '1.000, 2', '-', 'adamw')
    """
    if isinstance(item, float):
        return number(item, digits)
    if isinstance(item, Sequence) and not isinstance(item, str | bytes):
        return ", ".join(value(v, digits) for v in item)
    return MISSING if item is None else str(item)

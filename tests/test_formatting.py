"""The one number formatter: missing values, digits, suffixes, spreads."""

from __future__ import annotations

import doctest

from specdec import formatting
from specdec.formatting import median_spread, number, percent, value


def test_number_shows_missing_as_dash_and_keeps_digits_and_suffix() -> None:
    """None is '-', never 'None' or '0.00'; the suffix follows only real numbers."""
    assert [number(None), number(None, suffix="x"), number(1.005, 1, "x"), number(3)] == [
        "-", "-", "1.0x", "3.00"]


def test_percent_and_median_spread() -> None:
    """A spread of 10% over three repeats reads as ±5%; one repeat shows no spread."""
    assert [percent(0.125, 1), percent(None), median_spread(12.34, 0.1, 3),
            median_spread(12.34, 0.5, 1)] == ["12.5%", "-", "12.3 ±5% (n=3)", "12.3"]


def test_value_formats_loose_json_fields() -> None:
    """Floats get digits, lists are joined, text passes through, None is '-'."""
    assert [value(0.25), value([0.5, 2], 1), value("adamw"), value(None), value(7)] == [
        "0.250", "0.5, 2", "adamw", "-", "7"]


def test_docstring_examples_hold() -> None:
    """The examples in the module's docstrings are true."""
    assert doctest.testmod(formatting).failed == 0

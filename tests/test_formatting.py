"""The one number formatter: missing values, digits, suffixes, spreads, intervals."""

from __future__ import annotations

import doctest

from specdec import formatting
from specdec.formatting import interval_text, median_spread, number, percent, value


def test_number_shows_missing_as_dash_and_keeps_digits_and_suffix() -> None:
    """None is '-', never 'None' or '0.00'; the suffix follows only real numbers."""
    assert [number(None), number(None, suffix="x"), number(1.005, 1, "x"), number(3)] == [
        "-", "-", "1.0x", "3.00"]


def test_percent_and_median_spread() -> None:
    """A spread of 10% over three repeats reads as ±5%; one repeat shows no spread."""
    assert [percent(0.125, 1), percent(None), median_spread(12.34, 0.1, 3),
            median_spread(12.34, 0.5, 1)] == ["12.5%", "-", "12.3 ±5% (n=3)", "12.3"]


def test_interval_text_reads_estimate_then_ends() -> None:
    """An interval is '1.59x [1.41, 1.77]'; without ends only the estimate, without it '-'."""
    assert [interval_text(1.594, 1.4149, 1.7651), interval_text(0.391, 0.34, 0.45, suffix=""),
            interval_text(1.2, None, 1.3), interval_text(None, 1.0, 2.0)] == [
        "1.59x [1.41, 1.77]", "0.39 [0.34, 0.45]", "1.20x", "-"]


def test_value_formats_loose_json_fields() -> None:
    """Floats get digits, lists are joined, text passes through, None is '-'."""
    assert [value(0.25), value([0.5, 2], 1), value("adamw"), value(None), value(7)] == [
        "0.250", "0.5, 2", "adamw", "-", "7"]


def test_docstring_examples_hold() -> None:
    """The examples in the module's docstrings are true."""
    assert doctest.testmod(formatting).failed == 0

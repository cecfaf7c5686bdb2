"""One way to write bytes and durations, for the report, the HTML and the dashboard."""

from __future__ import annotations

import math

import pytest

from leakyspanner.formatting import BYTE_UNITS, format_bytes, format_duration, units


@pytest.mark.parametrize(("value", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (10_340, "10.1 KB"), (-2 * 2 ** 20, "-2.0 MB"),
    (3.5 * 2 ** 30, "3.5 GB"), (None, "n/a"), (math.nan, "n/a"), (math.inf, "n/a"), (True, "n/a"),
])
def test_bytes_are_written_in_the_largest_unit_that_fits(value: float | None, text: str) -> None:
    assert format_bytes(value) == text


def test_growth_is_signed_and_a_missing_value_can_be_a_dash() -> None:
    assert (format_bytes(512, signed=True), format_bytes(-512, signed=True), format_bytes(0, signed=True)) == \
        ("+512 B", "-512 B", "0 B")
    assert format_bytes(None, missing="–") == "–"


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0042, "4.20 ms"), (0.25, "250.0 ms"), (5.2286999225616455, "5.23 s"), (59.999, "1 min 00 s"),
    (187, "3 min 07 s"), (7500, "2 h 05 min"), (None, "n/a"),
])
def test_durations_are_rounded_for_reading(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_units_the_dashboard_gets_are_the_ones_python_uses() -> None:
    assert units()["bytes"] == [list(u) for u in BYTE_UNITS]

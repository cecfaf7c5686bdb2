"""The growth rate the metrics report: a least-squares slope over a window, on a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from leakyspanner.metrics.state import GrowthRate


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_growth_rate_is_the_slope_over_the_window_and_forgets_older_points():
    clock = _Clock()
    growth = GrowthRate(window_s=60, min_span_s=10, clock=clock)
    assert growth.add(1000) is None  # one point is no slope
    rates = []
    for step in range(1, 13):  # 100 bytes/s for a minute
        clock.now = step * 5.0
        rates.append(growth.add(1000 + 500 * step))
    assert rates[-1] == pytest.approx(100.0)
    for step in range(13, 40):  # then flat: after a window, the old rise is forgotten
        clock.now = step * 5.0
        last = growth.add(7000)
    assert last == pytest.approx(0.0, abs=1e-9)


def test_growth_rate_needs_enough_span_and_ignores_missing_rss():
    clock = _Clock()
    growth = GrowthRate(window_s=60, min_span_s=10, clock=clock)
    for step in range(5):
        clock.now = step * 1.0
        assert growth.add(step * 1000) is None  # 4 s of history: not yet
    clock.now = 20.0
    assert growth.add(None) is None  # a stopped profiler's None adds no point
    clock.now = 21.0
    expected = np.polyfit([0, 1, 2, 3, 4, 21], [0, 1000, 2000, 3000, 4000, 5000], 1)[0]
    assert growth.add(5000) == pytest.approx(expected)  # now 21 s of history: the least-squares slope
    with pytest.raises(ValueError, match="need 0 < min_span_s <= window_s"):
        GrowthRate(window_s=5, min_span_s=10)

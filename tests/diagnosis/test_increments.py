"""Per-interval increments name the endpoint behind fds and native memory under a steady mix."""

from __future__ import annotations

import numpy as np
import pytest
from synth import MB, write_session

from leakyspanner.analysis import load
from leakyspanner.analysis.diagnose import diagnose
from leakyspanner.analysis.evidence import increment_fit

KEYS = [("GET", "/healthz"), ("GET", "/proxy"), ("POST", "/echo"), ("GET", "/routes")]
MIX = np.array([0.40, 0.20, 0.15, 0.25])


def _steady_calls(intervals: int, per_interval: float = 60, seed: int = 1, fixed_total: bool = False) -> np.ndarray:
    """Each interval's calls drawn from one fixed mix: cumulative calls are collinear, increments are not.
    The total per interval varies as real traffic does (Poisson), unless ``fixed_total``."""
    rng = np.random.default_rng(seed)
    totals = np.full(intervals, int(per_interval)) if fixed_total else rng.poisson(per_interval, intervals)
    return np.array([rng.multinomial(t, MIX) for t in totals], dtype=float)


def test_an_fd_kept_per_call_names_its_endpoint_under_a_steady_mix() -> None:
    calls = _steady_calls(25)
    fds = calls[:, 1] * 1.0  # one descriptor per /proxy call, never closed
    fit = increment_fit(calls, fds, KEYS)
    assert fit.identifiable, fit.reason
    assert KEYS[fit.top] == ("GET", "/proxy")
    assert fit.per_call[fit.top] == pytest.approx(1.0, abs=0.05)
    assert fit.low[fit.top] > 0 and fit.top_agreement >= 0.9


@pytest.mark.parametrize("shape", ["proportional", "fixed_total"])
def test_designs_that_cannot_tell_endpoints_apart_are_refused_with_the_reason(shape: str) -> None:
    if shape == "proportional":  # every endpoint's calls move together exactly
        calls = np.outer(np.random.default_rng(2).integers(40, 80, 25).astype(float), MIX)
    else:  # the same total every interval: the calls add up to the intercept
        calls = _steady_calls(25, fixed_total=True)
    fit = increment_fit(calls, calls[:, 1], KEYS)
    assert not fit.identifiable and fit.top is None
    assert "collinear" in fit.reason


def test_too_few_intervals_are_refused() -> None:
    calls = _steady_calls(6)
    fit = increment_fit(calls, calls[:, 1], KEYS)
    assert not fit.identifiable and "intervals" in fit.reason


def test_a_counter_that_only_wobbles_names_no_endpoint() -> None:
    calls = _steady_calls(30)
    noise = np.random.default_rng(3).integers(-2, 3, 30).astype(float)
    fit = increment_fit(calls, noise, KEYS)
    assert not fit.identifiable


def test_verdict_names_the_fd_leaker_with_its_rss_per_call_under_a_steady_mix(tmp_path) -> None:
    n = 40
    calls = _steady_calls(n, seed=4)
    per_fd = 64 * 1024
    fds = 20 + np.cumsum(calls[:, 1])
    rng = np.random.default_rng(5)
    rss = 80 * MB + per_fd * np.cumsum(calls[:, 1]) + rng.normal(0, 32 * 1024, n)
    write_session(tmp_path, rss, calls={route: calls[:, i].astype(int) for i, (_, route) in enumerate(KEYS)},
                  extra=lambda k: {"open_fds": int(fds[k])}, interval_s=1.0)
    v = diagnose(load(tmp_path))
    assert v.leaking and v.suspect is not None
    assert v.suspect.route == "/proxy" and v.attribution == "per-interval open fds steps"
    assert v.suspect.retained_bytes_per_call == pytest.approx(per_fd, rel=0.25)
    assert any("open file descriptors per call" in note for note in v.notes)

"""One series, one MB/hour: the report, the plot annotation, the dashboard and the fix check share a fit."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from synth import MB, write_session  # noqa: E402

from leakyspanner.analysis import load, plot_session_comparison  # noqa: E402
from leakyspanner.analysis.diagnose import compare, diagnose, format_fix_check, format_verdict  # noqa: E402
from leakyspanner.analysis.stats import session_growth, trend_line  # noqa: E402
from leakyspanner.ui.payloads import compare_payload, session_detail  # noqa: E402

SAMPLES = 2_000


def _slow_leak_under_bursts(seed: int = 5) -> np.ndarray:
    """A 2,000-sample RSS series where fits disagree unless they are the same fit: a slow leak,
    a warm-up step, heavy one-sided transient bursts and a quiet stretch in the middle."""
    rng = np.random.default_rng(seed)
    k = np.arange(SAMPLES)
    rss = 200 * MB + 0.02 * MB * k + np.where(k < 300, -30 * MB * (1 - k / 300), 0)
    bursts = rng.random(SAMPLES) < 0.3
    rss = rss + bursts * rng.uniform(5, 40, SAMPLES) * MB + rng.normal(0, 0.5 * MB, SAMPLES)
    rss[900:1100] -= 8 * MB
    return rss


def test_report_plot_and_dashboard_give_one_mb_per_hour_for_one_series(tmp_path) -> None:
    write_session(tmp_path, _slow_leak_under_bursts())
    sessions = load(tmp_path)
    sid = sessions.session_ids[0]
    verdict = diagnose(sessions)
    report = verdict.rss.mb_per_hour
    assert np.isfinite(report) and report > 0
    assert f"{report:+8.1f} MB/hour" in format_verdict(verdict)

    growth = session_growth(sessions).set_index("session_id").loc[sid, "mb_per_hour"]
    ax = plot_session_comparison(sessions)
    try:
        labels = [line.get_label() for line in ax.get_lines()]
    finally:
        plt.close(ax.figure)
    dashboard = session_detail(sessions, sid, verdict)["verdict"]["rss"]["mb_per_hour"]

    assert growth == pytest.approx(report, rel=1e-9)
    assert dashboard == pytest.approx(report, rel=1e-9)
    assert any(label.endswith(f"{report:+,.1f} MB/h") for label in labels), labels
    # and that number is the one shared fit of the series, not a coincidence of two fits
    t = sessions.samples["elapsed_s"].to_numpy(dtype=float)
    assert trend_line(t, sessions.samples["rss_bytes"].to_numpy(dtype=float)).mb_per_hour == pytest.approx(report)


@pytest.mark.parametrize(("before_leaks", "after_leaks", "outcome"), [
    (False, True, "REGRESSION"), (False, False, "NO CHANGE"), (True, False, "FIXED"), (True, True, "NOT FIXED")])
def test_fix_check_and_dashboard_print_the_same_outcome(tmp_path, before_leaks: bool, after_leaks: bool,
                                                        outcome: str) -> None:
    rng = np.random.default_rng(2)
    k = np.arange(120)
    for name, leaks in (("before", before_leaks), ("after", after_leaks)):
        rss = 150 * MB + (0.5 * MB * k if leaks else 0) + rng.normal(0, 0.2 * MB, len(k))
        write_session(tmp_path / name, rss, name=f"leakyspanner_20231114_22132{int(name == 'after')}")
    before, after = load(tmp_path / "before"), load(tmp_path / "after")
    b, a = before.session_ids[0], after.session_ids[0]
    check = compare(before, after, before_id=b, after_id=a)
    dashboard = compare_payload(before, b, after, a)["fixcheck"]
    assert check.outcome == outcome
    assert format_fix_check(check).startswith(f"{outcome}: ")
    assert dashboard["outcome"] == outcome
    assert dashboard["before_mb_per_hour"] == pytest.approx(check.before_mb_per_hour)
    assert dashboard["after_mb_per_hour"] == pytest.approx(check.after_mb_per_hour)

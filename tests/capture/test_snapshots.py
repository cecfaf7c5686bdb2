"""Allocation snapshots taken in a forked child: same answer as inline, safe failure."""

from __future__ import annotations

import os
import sys
import time
import tracemalloc

import pytest
from capture_files import read_jsonl
from fastapi import FastAPI

from leakyspanner import leakyspanner
from leakyspanner.capture import allocations
from leakyspanner.capture.allocations import SiteTracker

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="snapshots fork only on Linux")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def tracing():
    tracemalloc.start(5)
    yield
    tracemalloc.stop()


def _kept_row(record, line):
    rows = [r for r in record["sites"] if r[0] == __file__ and r[1] == line]
    assert rows, f"{__file__}:{line} not among {record['sites']}"
    return rows[0]


def test_forked_snapshot_reports_the_same_sites_and_tracebacks_as_inline(tracing):
    kept = [bytearray(1000) for _ in range(3000)]; line = sys._getframe().f_lineno  # noqa: E702
    records = {mode: SiteTracker(top_n=5, deep_traces=3, mode=mode, rss_bytes=_rss).take()
               for mode in ("inline", "fork")}
    assert records["fork"]["mode"] == "fork" and records["inline"]["mode"] == "inline"
    inline_row, fork_row = _kept_row(records["inline"], line), _kept_row(records["fork"], line)
    assert fork_row[2:4] == inline_row[2:4] and fork_row[3] >= 3000 and fork_row[2] >= 3_000_000
    for record in records.values():
        assert record["frames"] == 5
        top = record["traces"][0]
        assert top["frames"][0] == [__file__, line] and top["count"] >= 3000
    # the app waited only for fork() and the answer, not for the child's work
    assert records["fork"]["stall_s"] < records["fork"]["cost_s"]
    del kept


def test_growth_between_forked_snapshots_is_reported_per_site(tracing):
    tracker = SiteTracker(top_n=5, mode="fork", rss_bytes=_rss)
    kept = []
    tracker.take()
    kept.extend(bytearray(500) for _ in range(2000)); line = sys._getframe().f_lineno  # noqa: E702
    row = _kept_row(tracker.take(), line)
    assert row[4] >= 2000 * 500 and row[5] >= 2000
    del kept


def test_buffered_output_is_written_once_not_again_by_the_child(tracing, tmp_path):
    out = open(tmp_path / "buffered.txt", "w")
    out.write("written once\n")  # still in the parent's buffer while the child lives
    SiteTracker(mode="fork").take()
    out.close()
    assert (tmp_path / "buffered.txt").read_text() == "written once\n"


def _watch_forks(monkeypatch):
    pids = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(allocations.os, "fork", fork)
    return pids


def test_a_hung_child_is_killed_reaped_and_the_snapshot_taken_inline(tracing, monkeypatch):
    def hang(*args):
        time.sleep(60)
        os._exit(0)

    monkeypatch.setattr(allocations, "_child_main", hang)
    monkeypatch.setattr(allocations, "_CHILD_TIMEOUT_S", 0.5)
    pids = _watch_forks(monkeypatch)
    tracker = SiteTracker(mode="fork")
    tracker._inline_s_per_block = 0.0  # no prediction stretching the timeout
    started = time.monotonic()
    record = tracker.take()
    assert time.monotonic() - started < 10
    assert record["mode"] == "inline" and record["blocks"] > 0
    assert tracker.last_error is not None and "TimeoutError" in tracker.last_error
    assert len(pids) == 1 and not os.path.exists(f"/proc/{pids[0]}"), "killed and reaped, no zombie"


def test_after_repeated_child_failures_snapshots_stop_forking(tracing, monkeypatch):
    monkeypatch.setattr(allocations, "_child_main", lambda *args: os._exit(3))
    pids = _watch_forks(monkeypatch)
    tracker = SiteTracker(mode="fork")
    tracker._inline_s_per_block = 0.0  # a small heap: inline is an acceptable fallback
    records = [tracker.take() for _ in range(4)]
    assert [r["mode"] for r in records] == ["inline"] * 4
    assert "ChildProcessError" in (tracker.last_error or "")
    assert len(pids) == allocations._MAX_FORK_FAILURES
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


def test_auto_mode_forks_only_when_that_is_predicted_to_stall_less(tracing):
    tracker = SiteTracker(mode="auto", rss_bytes=lambda: 100 * 2**20)
    tracker._inline_s_per_block = 1e-3  # inline predicted very slow: fork
    assert tracker._choose() == "fork"
    tracker._inline_s_per_block = 1e-12  # inline predicted nearly free: stay inline
    assert tracker._choose() == "inline"
    assert SiteTracker(mode="inline")._choose() == "inline"


def test_a_failed_fork_is_recorded_as_an_event_and_the_session_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(allocations, "_child_main", lambda *args: os._exit(3))
    profiler = leakyspanner(FastAPI(), log_path=tmp_path, level="mid", interval_seconds=3600, allocator="tracemalloc",
                            snapshot_mode="fork")
    kept = [bytearray(100) for _ in range(1000)]
    profiler._sampler.sites._inline_s_per_block = 0.0  # a small heap: inline is an acceptable fallback
    profiler._sampler._snapshot()
    profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    failed = [e for e in records["event"] if e["event"] == "snapshot_fork_failed"]
    assert failed and "ChildProcessError" in failed[0]["detail"]
    assert records["snapshot"] and all(s["mode"] == "inline" for s in records["snapshot"])
    assert records["summary"], "the session closed normally"
    del kept


def test_first_snapshot_is_assumed_to_cost_a_fixed_floor_until_one_is_measured(tracing):
    tracker = SiteTracker(top_n=5, mode="fork", rss_bytes=_rss)
    # a handful of blocks: per block the guess would be microseconds, but a fork's fixed
    # costs are not, so the budget must pay for the floor before the first one is taken
    assert tracker.predicted_cost_s() == allocations._FIRST_SNAPSHOT_MIN_S
    tracker.take()
    # from then on: the measured cost per block times the blocks live now
    assert tracker.predicted_cost_s() == pytest.approx(
        tracker.estimated_blocks() * tracker._inline_s_per_block, rel=0.01)
    assert tracker.predicted_cost_s() != allocations._FIRST_SNAPSHOT_MIN_S


def test_growth_is_reported_when_snapshots_switch_between_fork_and_inline(tracing):
    tracker = SiteTracker(top_n=5, mode="fork", rss_bytes=_rss)
    kept = []
    tracker.take()
    assert isinstance(tracker._previous, bytes), "the app keeps the grouping as bytes, not as objects"
    tracker.mode = "inline"
    kept.extend(bytearray(500) for _ in range(2000)); line = sys._getframe().f_lineno  # noqa: E702
    row = _kept_row(tracker.take(), line)
    assert row[4] >= 1_000_000 and row[5] >= 2000
    tracker.mode = "fork"
    kept.extend(bytearray(500) for _ in range(1000)); line2 = sys._getframe().f_lineno  # noqa: E702
    record = tracker.take()
    assert record["mode"] == "fork"
    assert _kept_row(record, line2)[5] >= 1000
    del kept


def test_a_failed_fork_skips_the_snapshot_when_inline_would_stall_the_app_too_long(tracing, monkeypatch):
    monkeypatch.setattr(allocations, "_child_main", lambda *args: os._exit(3))
    pids = _watch_forks(monkeypatch)
    tracker = SiteTracker(mode="fork")
    tracker._inline_s_per_block = 1.0  # a huge heap: inline would hold the GIL for ages
    assert [tracker.take() for _ in range(3)] == [None, None, None]
    assert "skipped" in (tracker.last_error or "") and len(pids) == allocations._MAX_FORK_FAILURES
    assert tracker._previous is None, "nothing half-taken is kept"


def test_a_skipped_snapshot_is_an_event_and_the_session_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(allocations, "_child_main", lambda *args: os._exit(3))
    profiler = leakyspanner(FastAPI(), log_path=tmp_path, level="mid", interval_seconds=3600, allocator="tracemalloc",
                            snapshot_mode="fork")
    profiler._sampler.sites._inline_s_per_block = 1.0
    profiler._sampler._snapshot()
    profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    failed = [e for e in records["event"] if e["event"] == "snapshot_fork_failed"]
    assert failed and all("skipped" in e["detail"] for e in failed)
    assert not records.get("snapshot") and records["summary"]

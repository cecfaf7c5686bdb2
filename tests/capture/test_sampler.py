"""Sampler ticks driven by hand with a fake reader and clock: alerts, auto mode, tasks."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from capture_files import read_jsonl
from fastapi import FastAPI

from leakyspanner import leakyspanner
from leakyspanner.capture.humanlog import endpoint_line, one_line
from leakyspanner.capture.procmem import ProcessReader, cgroup_memory_limit_bytes
from leakyspanner.capture.sampler import _copy_counters, count_tasks

MB = 1024 * 1024


class FakeReader:
    """Scripted RSS values in place of /proc."""

    source = "fake"

    def __init__(self, rss_mb: list[float]):
        self.values = [int(v * MB) for v in rss_mb]
        self.i = 0

    def read_rss_vms_bytes(self) -> tuple[int, int]:
        value = self.values[min(self.i, len(self.values) - 1)]
        self.i += 1
        return value, 2 * value

    def read_rss_bytes(self) -> int:
        return self.values[min(self.i, len(self.values) - 1)]

    def read_threads(self) -> int:
        return 3

    def read_open_fds(self) -> int:
        return 10

    def close(self) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _tick(sampler) -> None:
    sampler._clock.now += 1.0
    sampler.tick()


def _profiler(tmp_path, level: str, rss_mb: list[float], **kwargs):
    kwargs.setdefault("allocator", "tracemalloc")  # these tests drive tracemalloc's snapshots and windows
    profiler = leakyspanner(FastAPI(), log_path=tmp_path, level=level, interval_seconds=3600,
                            leak_threshold_mb=10, **kwargs)
    sampler = profiler._sampler
    profiler.reader = FakeReader(rss_mb)
    profiler.baseline_rss_bytes = 100 * MB
    profiler.alert_baseline_rss_bytes = 100 * MB  # the process's baseline, which alerts measure from
    sampler._auto_trigger_rss = 100 * MB
    sampler._clock = FakeClock()
    sampler._budget_since = sampler._clock.now
    return profiler, sampler


def test_alert_fires_once_per_crossing_and_rearms_after_dropping_back(tmp_path):
    rss = [100, 105, 115, 120, 130, 104, 103, 125, 126]
    profiler, sampler = _profiler(tmp_path, "basic", rss)
    for _ in rss:
        _tick(sampler)
    profiler.reader.values = [126 * MB]
    profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    alerts = records["alert"]
    assert [a["rss_bytes"] // MB for a in alerts] == [115, 125]
    assert all(a["baseline_rss_bytes"] == 100 * MB and a["threshold_bytes"] == 10 * MB for a in alerts)
    assert profiler.log_file.read_text().count("MEMORY GROWTH ALERT") == 2


def test_auto_level_traces_only_for_a_window_after_growth(tmp_path):
    rss = [100, 101, 102, 115, 116, 117, 118, 119, 120]
    # a budget that lets the first snapshot (assumed >= 0.1 s of work) in at the first tick
    profiler, sampler = _profiler(tmp_path, "auto", rss, auto_window_seconds=3.5,
                                  snapshot_interval_seconds=0.5, snapshot_cpu_budget=0.5)
    assert not tracemalloc.is_tracing(), "auto starts like basic"
    tracing = []
    for _ in rss:
        _tick(sampler)
        tracing.append(tracemalloc.is_tracing())
    profiler.stop()
    assert tracing == [False, False, False, True, True, True, True, False, False]
    records = read_jsonl(profiler.jsonl_file)
    events = [e["event"] for e in records["event"]]
    assert events[:2] == ["tracing_started", "tracing_stopped"]
    assert len(records["snapshot"]) >= 3
    assert not tracemalloc.is_tracing()


def test_auto_level_triggers_again_after_another_threshold_of_growth(tmp_path):
    rss = [100, 111, 112, 113, 114, 115, 116, 117, 118, 119, 125]
    profiler, sampler = _profiler(tmp_path, "auto", rss, auto_window_seconds=2.5)
    for _ in rss:
        _tick(sampler)
    profiler.stop()
    starts = [e for e in read_jsonl(profiler.jsonl_file)["event"] if e["event"] == "tracing_started"]
    assert len(starts) == 2


def test_snapshot_cadence_respects_the_cpu_budget(tmp_path):
    profiler, sampler = _profiler(tmp_path, "mid", [100] * 12, snapshot_interval_seconds=0.01)
    kept = [bytearray(100) for _ in range(20_000)]  # enough live blocks for a predictable cost
    predicted = sampler.sites.predicted_cost_s()
    assert predicted > 0
    # a budget under which the first snapshot's predicted cost takes ~4.5 (fake) seconds to earn
    sampler._snapshot_budget = predicted / 4.5
    taken_at = []
    for i in range(12):
        before = sampler.sites._seq
        _tick(sampler)
        if sampler.sites._seq > before:
            taken_at.append(i + 1)
    profiler.stop()
    snapshots = read_jsonl(profiler.jsonl_file)["snapshot"]
    assert taken_at and 4 <= taken_at[0] <= 6, taken_at
    # each one's measured cost pushes the next at least cost/budget later
    for a, b in zip(snapshots, snapshots[1:-1]):
        assert b["ts"] - a["ts"] >= b["cost_s"] / sampler._snapshot_budget * 0.5 or b is snapshots[-1]
    assert len(snapshots) == len(taken_at) + 1  # plus the closing snapshot taken at stop
    assert all(s["cost_s"] >= s["stall_s"] > 0 and s["take_s"] > 0 for s in snapshots)
    del kept


def test_a_tiny_budget_defers_every_snapshot_but_the_closing_one(tmp_path):
    profiler, sampler = _profiler(tmp_path, "mid", [100] * 12, snapshot_interval_seconds=0.01,
                                  snapshot_cpu_budget=0.00001)
    for _ in range(12):
        _tick(sampler)
    profiler.stop()
    snapshots = read_jsonl(profiler.jsonl_file)["snapshot"]
    assert len(snapshots) == 1 and snapshots[0]["ts"] == sampler._clock.now


def test_snapshot_sites_exclude_leakyspanner_and_report_growth(tmp_path):
    profiler, sampler = _profiler(tmp_path, "mid", [100] * 3, snapshot_interval_seconds=0.01,
                                  snapshot_cpu_budget=0.5)
    kept = []
    _tick(sampler)
    kept.extend(bytearray(1000) for _ in range(2000))
    sampler._next_snapshot_at = 0
    _tick(sampler)
    profiler.stop()
    snapshots = read_jsonl(profiler.jsonl_file)["snapshot"]
    files = {row[0] for snap in snapshots for row in snap["sites"]}
    assert not any("/leakyspanner/capture/" in f for f in files)
    grown = [row for row in snapshots[1]["sites"] if row[0] == __file__]
    assert grown and grown[0][4] >= 2000 * 1000 and grown[0][5] >= 2000
    del kept


def test_deep_snapshots_carry_multi_frame_tracebacks(tmp_path):
    profiler = leakyspanner(FastAPI(), log_path=tmp_path, level="deep", interval_seconds=3600, allocator="tracemalloc")
    kept = [bytearray(500) for _ in range(1000)]
    profiler.stop()
    del kept
    snapshot = read_jsonl(profiler.jsonl_file)["snapshot"][-1]
    assert snapshot["frames"] == 5
    assert snapshot["traces"] and len(snapshot["traces"]) <= 10
    assert any(len(t["frames"]) > 1 for t in snapshot["traces"])
    assert "── top allocations ──" in profiler.log_file.read_text()


def test_tasks_are_counted_by_coroutine_name_from_another_thread():
    async def never_finishes():
        await asyncio.Event().wait()

    async def main():
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(never_finishes()) for _ in range(7)]
        await asyncio.sleep(0)
        total, by_name = await asyncio.to_thread(count_tasks, loop)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return total, by_name

    total, by_name = asyncio.run(main())
    assert by_name[
        "test_tasks_are_counted_by_coroutine_name_from_another_thread.<locals>.never_finishes"] == 7
    assert total == 8  # plus main()


def test_reader_reads_a_checked_in_proc_tree(tmp_path):
    proc = tmp_path / "proc" / "4242"
    (proc / "fd").mkdir(parents=True)
    for i in range(5):
        (proc / "fd" / str(i)).write_text("")
    (proc / "statm").write_text("2000 1000 300 1 0 500 0\n")
    (proc / "stat").write_text("4242 (my app (x)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 9 0 0\n")
    reader = ProcessReader(str(tmp_path / "proc"), 4242)
    import os

    page = os.sysconf("SC_PAGE_SIZE")
    assert reader.read_rss_bytes() == 1000 * page
    assert reader.read_rss_vms_bytes() == (1000 * page, 2000 * page)
    assert reader.read_threads() == 9
    assert reader.read_open_fds() == 5
    reader.close()


def test_cgroup_limit_read_from_v2_and_v1_files(tmp_path):
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_limit_bytes(str(tmp_path)) is None
    (tmp_path / "memory.max").write_text("536870912\n")
    assert cgroup_memory_limit_bytes(str(tmp_path)) == 512 * MB
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(1 << 62))
    assert cgroup_memory_limit_bytes(str(v1)) is None


@pytest.mark.parametrize("hostile", ["/a\n[12:00:00] ENDPOINT GET /x", "/a\r\rb", "/a\x1b[31m", "/a\u2028b", "/a\x85b"])
def test_log_lines_cannot_be_forged_by_control_characters(hostile):
    line = endpoint_line(0.0, "GET", hostile, 5 * MB, 200)
    assert len(line.splitlines()) == 1
    assert "\x1b" not in line and "\r" not in line
    assert len(one_line("x" * 10_000)) <= 201


def test_counter_copies_keep_the_cumulative_counts_and_start_each_maximum_anew():
    key = ("GET", "/a")
    counters = {key: [10, 1, 2.5, 0.75, key]}
    assert _copy_counters(counters) == [(10, 1, 2.5, 0.75, key)]
    assert counters[key] == [10, 1, 2.5, 0.0, key], "only the interval maximum is reset"

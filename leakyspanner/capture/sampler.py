"""Owns the sampling state (sequence, alerts, snapshot budget, auto window), written by the sampler thread (by stop() once it is joined).

The background thread that samples process memory and drives tracemalloc.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import tracemalloc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .allocations import SiteTracker
from .procmem import cgroup_memory_bytes
from .threads import Ticker
from .writer import OBJECT, SAMPLE

if TYPE_CHECKING:
    from .profiler import Profiler

__all__ = ["Sampler", "count_tasks"]

logger = logging.getLogger("leakyspanner")
_TOP_CORO = 20
#: Samples come this often (at most) for the first ``_EARLY_S`` of a session, so a
#: one-minute run has enough points for a verdict; the human log keeps the
#: configured cadence.
_EARLY_INTERVAL_S = 1.0
_EARLY_S = 60.0
#: shutdown stays bounded: the thread's last tick gets this long, a closing snapshot this long
_STOP_JOIN_S = 2.0
_CLOSING_SNAPSHOT_MAX_S = 1.0


def _coro_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return str(name)


def count_tasks(loop: asyncio.AbstractEventLoop | None) -> tuple[int | None, dict[str, int]]:
    """Unfinished tasks of ``loop`` by coroutine name, read from this (other) thread.

    ``asyncio.all_tasks`` retries when the task set changes under it, so the
    loop is never asked to do anything and never waits for us.
    """
    if not isinstance(loop, asyncio.AbstractEventLoop) or loop.is_closed():
        return None, {}  # none yet, or trio (no asyncio tasks to count)
    tasks = asyncio.all_tasks(loop)
    by_name: dict[str, int] = {}
    for task in tasks:
        name = _coro_name(task)
        by_name[name] = by_name.get(name, 0) + 1
    top = dict(sorted(by_name.items(), key=lambda kv: kv[1], reverse=True)[:_TOP_CORO])
    return len(tasks), top


def _copy_counters(counters: dict[Any, list[Any]]) -> list[tuple[Any, ...]]:
    """Copy the request path's endpoint counters and start each one's interval maximum anew.

    Read from this thread while the event loop's thread writes them, without a
    lock: ``list()`` and ``tuple()`` copy under the GIL in one step, and the
    counts are cumulative, so a request counted during the copy shows in the
    next interval instead. Only a duration maximum set between a copy and its
    reset can be missed.
    """
    out = []
    for counter in list(counters.values()):
        out.append(tuple(counter))
        counter[3] = 0.0
    return out


class Sampler:
    """Samples every ``interval_s``; takes allocation snapshots within a CPU budget.

    At ``auto`` level tracemalloc is off until RSS grows ``threshold`` above the
    last trigger point, then on for ``auto_window_s`` and off again.
    """

    def __init__(
        self, profiler: Profiler, interval_s: float, snapshot_interval_s: float,
        snapshot_budget: float, auto_window_s: float, clock: Callable[[], float] = time.time,
    ) -> None:
        self._p = profiler
        self._clock = clock
        self._started_at = clock()
        self.ticker = Ticker("leakyspanner-sampler", self._wait_s, self._guarded_tick)
        # samples
        self._interval_s = interval_s
        self._seq = 0
        self._last_human = -float("inf")
        self._alert_armed = True
        # allocation snapshots
        self._snapshot_interval_s = snapshot_interval_s
        self._snapshot_budget = snapshot_budget
        self._budget_since = clock()  # snapshot work since then must stay within the budget
        self._next_snapshot_at = 0.0
        # auto level's tracing window
        self._auto_window_s = auto_window_s
        self._auto_trigger_rss = profiler.baseline_rss_bytes
        self._auto_until: float | None = None
        reader = profiler.reader
        self.sites = SiteTracker(top_n=profiler.top_stats_count,
                                 deep_traces=profiler.top_stats_count if profiler.level == "deep" else 0,
                                 mode=profiler.snapshot_mode,
                                 rss_bytes=reader.read_rss_bytes if reader is not None else None)

    def start(self) -> None:
        self.ticker.start()

    def stop(self) -> None:
        """Wake the thread at once, take one final sample, idempotent."""
        if not self.ticker.stop(_STOP_JOIN_S):
            return
        self._guarded_tick()
        if self._p._tracing:
            # the closing picture of the session, only if it fits the shutdown bound
            if self.sites.predicted_cost_s() <= _CLOSING_SNAPSHOT_MAX_S:
                self.sites.child_timeout_s = _CLOSING_SNAPSHOT_MAX_S
                self._guarded(self._snapshot)
            else:
                self._p._event("snapshot_skipped", "the closing snapshot would hold shutdown too long")

    def _wait_s(self) -> float:
        """Seconds to the next sample: often early in the session, then the configured interval."""
        if self._clock() - self._started_at < _EARLY_S:
            return min(self._interval_s, _EARLY_INTERVAL_S)
        return self._interval_s

    def _guarded_tick(self) -> None:
        self._guarded(self.tick)

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self._p._internal_error("sampler", exc)

    # -- one tick ----------------------------------------------------------
    def tick(self) -> None:
        p = self._p
        reader = p.reader
        if reader is None:
            return
        now = self._clock()
        rss, vms = reader.read_rss_vms_bytes()
        tracing = tracemalloc.is_tracing()
        traced, traced_peak = tracemalloc.get_traced_memory() if tracing else (None, None)
        stats = gc.get_stats()
        try:
            n_tasks, by_coro = count_tasks(p._tasks_loop())
        except Exception:
            n_tasks, by_coro = None, {}
        record: dict[str, Any] = {
            "kind": "sample", "ts": round(now, 4), "seq": self._seq,
            "rss_bytes": rss, "vms_bytes": vms, "rss_delta_bytes": rss - p.baseline_rss_bytes,
            "gc_count": list(gc.get_count()),
            "gc_collections": [s.get("collections", 0) for s in stats],
            "gc_collected": [s.get("collected", 0) for s in stats],
            "gc_uncollectable": [s.get("uncollectable", 0) for s in stats],
            "gc_garbage": len(gc.garbage),
            "tracing": tracing, "traced_bytes": traced, "traced_peak_bytes": traced_peak,
            "threads": reader.read_threads(), "open_fds": reader.read_open_fds(),
            "asyncio_tasks": n_tasks, "asyncio_tasks_by_coro": by_coro,
            "inflight": p._inflight_total(), "internal_errors": p.internal_errors,
            "cgroup_memory_bytes": cgroup_memory_bytes() if p.cgroup_limit_bytes else None,
            "heap_live_bytes": None,
        }
        heap_record = p._heap.record() if p._heap is not None else None
        if heap_record is not None:
            record["heap_live_bytes"] = heap_record["live_bytes"]
        self._seq += 1
        # the human log keeps the configured cadence while early samples come faster
        human = self.ticker.stopped or now - self._last_human >= 0.95 * self._interval_s
        if human:
            self._last_human = now
        p._buffer.append((SAMPLE, record, _copy_counters(p._counters), human))
        if heap_record is not None:
            p._buffer.append((OBJECT, {"kind": "heap", "ts": round(now, 4), **heap_record}))
        if p._routes_stale():
            p._write_routes()
        self._alerts(now, rss)
        if p.level == "auto" and p.heap_engine == "tracemalloc":
            self._auto(now, rss)
        if p._tracing and self._snapshot_due(now) and not self.ticker.stopped:
            self._snapshot()

    def _snapshot_due(self, now: float) -> bool:
        """Due after the interval, and only once the wall time since the last one
        pays for the predicted cost within the CPU budget (so a first snapshot of
        1M blocks waits ~30 s at 2% instead of being taken whatever it costs)."""
        if now < self._next_snapshot_at:
            return False
        return now - self._budget_since >= self.sites.predicted_cost_s() / self._snapshot_budget

    def _alerts(self, now: float, rss: int) -> None:
        p = self._p
        baseline = p.alert_baseline_rss_bytes  # the process's, not this session's start: see profiler
        growth = rss - baseline
        if growth > p.threshold_bytes and self._alert_armed:
            self._alert_armed = False
            p._buffer.append((OBJECT, {
                "kind": "alert", "ts": round(now, 4), "alert": "memory_growth", "rss_bytes": rss,
                "baseline_rss_bytes": baseline, "growth_bytes": growth,
                "threshold_bytes": p.threshold_bytes,
            }))
            logger.warning(
                "MEMORY GROWTH ALERT: %+.1f MB above baseline (baseline=%.1f MB, current=%.1f MB)",
                growth / 2**20, baseline / 2**20, rss / 2**20,
            )
        elif growth < 0.9 * p.threshold_bytes:
            self._alert_armed = True  # re-armed: the next crossing alerts again

    def _auto(self, now: float, rss: int) -> None:
        p = self._p
        if self._auto_until is None:
            if rss - self._auto_trigger_rss > p.threshold_bytes:
                self._auto_trigger_rss = rss
                self._auto_until = now + self._auto_window_s
                self.sites.reset()
                self._next_snapshot_at = 0.0
                self._budget_since = now
                p._set_tracing(True, f"auto: RSS {rss / 2**20:.1f} MB crossed the threshold")
        elif now >= self._auto_until:
            self._auto_until = None
            self._snapshot()  # the closing snapshot of the window
            p._set_tracing(False, "auto: window over")

    def _snapshot(self) -> None:
        if not tracemalloc.is_tracing():
            return
        taken = self.sites.take()
        now = self._clock()
        if self.sites.last_error is not None:
            self._p._event("snapshot_fork_failed", self.sites.last_error)
        if taken is None:  # skipped: try again once the budget pays for the predicted cost
            cost = self.sites.predicted_cost_s()
        else:
            self._p._buffer.append((OBJECT, {"kind": "snapshot", "ts": round(now, 4), **taken}))
            cost = taken["cost_s"]
        self._budget_since = now
        self._next_snapshot_at = now + max(self._snapshot_interval_s, cost / self._snapshot_budget)

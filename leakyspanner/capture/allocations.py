"""Owns ``SiteTracker``: tracemalloc snapshots and the previous one's grouping, written by the sampler thread only.

tracemalloc snapshots grouped by allocation site, cheaply, off the GIL where it pays.

``tracemalloc.take_snapshot()`` copies every live trace while holding the GIL:
about 0.3 µs per block, so 100k blocks stall the event loop ~30 ms and 1M
blocks ~300 ms, plus as much again to group them. On Linux the snapshot is
therefore taken in a forked child (``mode="fork"``): the child inherits the
tracing tables copy-on-write, groups the traces by site and sends back the
record, and the app is held up only for the ``fork()`` (page tables, about
20 ms per GB of RSS) and for reading the answer. The child also does the
merge with the previous snapshot: the parent keeps that grouping only as the
marshalled bytes the child sent, never as objects, because building tens of
thousands of site tuples in the app under tracemalloc (every allocation
traced) held its GIL for 60-200 ms at 260k blocks. ``auto`` picks
whichever is predicted to stall less, from the last measured costs; a child
that fails or hangs is killed, and that snapshot is taken inline only if
that is predicted to hold the app no longer than ``_MAX_FALLBACK_STALL_S``
(skipped otherwise); after two failures the session stops forking.

``Snapshot.filter_traces`` walks and copies every trace (about 30x the cost
of taking the snapshot), so instead one pass groups the raw traces by their
traceback and leakyspanner's own files are dropped from the groups. The
previous grouping is kept so each snapshot can report growth per site.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import sys
import time
import tracemalloc
import warnings
from typing import Any

from ..schema import SITE_FIELDS

__all__ = ["SNAPSHOT_MODES", "SiteTracker"]

#: How a snapshot is taken; ``auto`` forks when that is predicted to stall less.
SNAPSHOT_MODES = ("auto", "fork", "inline")

# Only the capture side's own files: the bundled demo app's leaks must stay visible.
_CAPTURE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_OWN_PREFIXES = (_CAPTURE_DIR, tracemalloc.__file__)
_Site = tuple[str, int]
# (take_s, blocks, own_blocks, frames, [(file, line, size, count)], [(size, count, frames)])
_Grouped = tuple[float, int, int, int, list[tuple[str, int, int, int]], list[tuple[int, int, Any]]]

_CAN_FORK = sys.platform == "linux" and hasattr(os, "fork")
# Starting guesses, replaced by what this process measures.
_INLINE_S_PER_BLOCK = 1e-6       # CPU for take_snapshot + grouping (0.4-0.6 µs measured)
_FORK_S_PER_BYTE = 20e-3 / 2**30  # fork(): copying page tables
_TM_BYTES_PER_BLOCK = 48          # tracemalloc's own memory per live block, to estimate blocks
# Before the first snapshot has been measured, assume at least this much: under load a
# forked snapshot of 27k blocks cost 56 ms (1 frame) to 123 ms (5 frames) of CPU here,
# fixed costs (fork, the child's start and exit) that a per-block guess misses.
_FIRST_SNAPSHOT_MIN_S = 0.1
_CHILD_TIMEOUT_S = 30.0
_MAX_FORK_FAILURES = 2
#: when forking fails, an inline snapshot is taken instead only if it is predicted to hold the
#: app's GIL no longer than this (the stall budget); a bigger heap skips the snapshot
_MAX_FALLBACK_STALL_S = 0.05

# Python >= 3.12 warns on fork() in a threaded process. The child here runs
# only this module's code and exits with os._exit, so the warning is noise.
warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning,
                        module=__name__)


def _own(filename: str) -> bool:
    return filename.startswith(_OWN_PREFIXES)


def _group_snapshot(deep_traces: int) -> _Grouped:
    """Take a snapshot and group it by site (and, for deep, by whole traceback)."""
    t0 = time.perf_counter()
    snapshot = tracemalloc.take_snapshot()
    take_s = time.perf_counter() - t0
    raw = getattr(getattr(snapshot, "traces", None), "_traces", None)
    if raw is None:  # private attribute gone: fall back to the public, slower path
        raw = [(0, s.size, tuple((f.filename, f.lineno) for f in s.traceback), 1)
               for s in snapshot.statistics("traceback")]
    # Group sizes by traceback into lists first: appending allocates far less
    # than rebuilding ints per trace, and this loop may run under tracemalloc.
    groups: dict[Any, list[int]] = {}
    get = groups.get
    for trace in raw:
        frames = trace[2]
        group = get(frames)
        if group is None:
            groups[frames] = group = []
        group.append(trace[1])
    blocks = len(raw)
    del snapshot, raw
    sites: dict[_Site, list[int]] = {}
    by_trace: list[tuple[int, int, Any]] = []
    for frames, group in groups.items():
        site = frames[0] if frames else ("<unknown>", 0)
        acc = sites.get(site)
        if acc is None:
            sites[site] = acc = [0, 0]
        total = sum(group)
        acc[0] += total
        acc[1] += len(group)
        if deep_traces and frames and not _own(frames[0][0]):
            by_trace.append((total, len(group), frames))
    del groups
    own_blocks = 0
    rows = []
    for (filename, line), (size, count) in sites.items():
        if _own(filename):
            own_blocks += count
        else:
            rows.append((filename, line, size, count))
    by_trace.sort(key=lambda item: item[0], reverse=True)
    return take_s, blocks, own_blocks, tracemalloc.get_traceback_limit(), rows, by_trace[:deep_traces]


def _snapshot(deep_traces: int, top_n: int, previous: bytes | None) -> tuple[dict[str, Any], bytes, float, int]:
    """Take and group a snapshot, merge it with the previous grouping.

    Returns the record's site fields, this grouping as marshalled bytes (the
    next snapshot's ``previous``), ``take_s`` and the block count.
    """
    take_s, blocks, own_blocks, frames_limit, site_rows, traces = _group_snapshot(deep_traces)
    before: dict[_Site, tuple[int, int]] = (
        {(f, ln): (size, count) for f, ln, size, count in marshal.loads(previous)} if previous else {})
    sizes = {(f, ln): size for f, ln, size, _ in site_rows}
    counts = {(f, ln): count for f, ln, _, count in site_rows}
    growth = {site: size - before.get(site, (0, 0))[0] for site, size in sizes.items()}
    for site in before:
        if site not in sizes:
            growth[site] = -before[site][0]
    chosen = sorted(sizes, key=sizes.__getitem__, reverse=True)[:top_n]
    chosen_set = set(chosen)
    for site in sorted(growth, key=growth.__getitem__, reverse=True)[:top_n]:
        if growth[site] > 0 and site not in chosen_set and site in sizes:
            chosen.append(site)
            chosen_set.add(site)
    rows = []
    for site in chosen:
        prev_size, prev_count = before.get(site, (0, 0))
        rows.append([site[0], site[1], sizes[site], counts[site], sizes[site] - prev_size, counts[site] - prev_count])
    record: dict[str, Any] = {
        "traced_bytes": sum(sizes.values()),
        "blocks": blocks - own_blocks,
        "sites_total": len(sizes),
        "frames": frames_limit,
        "site_fields": list(SITE_FIELDS),
        "sites": rows,
    }
    if deep_traces:
        record["traces"] = [
            {"size_bytes": size, "count": count, "frames": [[f, ln] for f, ln in frames]}
            for size, count, frames in traces
        ]
    return record, marshal.dumps(site_rows), take_s, blocks


def _child_main(write_fd: int, deep_traces: int, top_n: int, previous: bytes | None) -> None:
    """In the forked child: snapshot, merge, send the record and grouping, exit without cleanup."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # Not niced: at +10 a child sharing a saturated core with the app took 24 s of
        # wall time for 0.5 s of work at 1M blocks (the sampler waits for it, and a
        # 30 s timeout sends the snapshot inline); the app's stall was no lower.
        record, grouping, take_s, blocks = _snapshot(deep_traces, top_n, previous)
        # this child's CPU time is all of its work
        head = marshal.dumps((record, take_s, blocks, time.process_time()))
        view = memoryview(len(head).to_bytes(8, "little") + head + grouping)
        while view:
            view = view[os.write(write_fd, view):]
        status = 0
    finally:
        os._exit(status)


def _read_child(read_fd: int, pid: int, timeout_s: float) -> bytes:
    """The child's answer, or TimeoutError/ChildProcessError; always reaps the child."""
    chunks = []
    deadline = time.monotonic() + timeout_s
    answered = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(f"snapshot child gave no answer within {timeout_s:.0f} s; killed")
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                answered = True
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        if not answered:  # interrupted (a signal, a timeout): never wait for a child that may hang
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _, wait_status = os.waitpid(pid, 0)
    if wait_status != 0:
        raise ChildProcessError(f"snapshot child exited with status {wait_status}")
    return b"".join(chunks)


class SiteTracker:
    """Takes snapshots and remembers per-site sizes between them."""

    def __init__(self, top_n: int = 10, deep_traces: int = 0, mode: str = "auto",
                 rss_bytes: Any = None) -> None:
        if mode not in SNAPSHOT_MODES:
            raise ValueError(f"snapshot mode must be one of {', '.join(SNAPSHOT_MODES)}; got {mode!r}")
        self.top_n = top_n
        self.deep_traces = deep_traces
        self.mode = mode if _CAN_FORK else "inline"
        self._rss_bytes = rss_bytes  # () -> int, for the fork-cost prediction
        self._previous: bytes | None = None  # the last grouping, marshalled: opaque to the app
        self._seq = 0
        self._inline_s_per_block = _INLINE_S_PER_BLOCK
        self._measured = False  # a snapshot's cost has been learned
        self._fork_s_per_byte = _FORK_S_PER_BYTE
        self._fork_failures = 0
        self.last_error: str | None = None  # why the last fork attempt failed, for an event
        self.child_timeout_s: float | None = None  # a forked child's time limit (None: scaled to its work)

    def reset(self) -> None:
        """Forget the previous snapshot (tracing was switched off in between)."""
        self._previous = None

    # -- predictions ---------------------------------------------------------
    def estimated_blocks(self) -> int:
        """Live traced blocks, estimated from tracemalloc's own memory (no snapshot needed)."""
        return tracemalloc.get_tracemalloc_memory() // _TM_BYTES_PER_BLOCK if tracemalloc.is_tracing() else 0

    def predicted_cost_s(self) -> float:
        """Work the next snapshot will take in all (either process), for the CPU budget."""
        per_block = self.estimated_blocks() * self._inline_s_per_block
        return per_block if self._measured else max(per_block, _FIRST_SNAPSHOT_MIN_S)

    def _choose(self) -> str:
        if self.mode == "inline" or self._fork_failures >= _MAX_FORK_FAILURES:
            return "inline"
        if self.mode == "fork" or self._rss_bytes is None:
            return "fork"
        try:
            fork_stall = self._rss_bytes() * self._fork_s_per_byte
        except Exception:
            return "inline"
        return "fork" if fork_stall < self.estimated_blocks() * self._inline_s_per_block else "inline"

    # -- taking ----------------------------------------------------------------
    def _take_forked(self) -> tuple[dict[str, Any], bytes, float, int, float, float]:
        """(record, grouping, take_s, blocks, stall_s, cpu_s): stall is this thread's
        CPU time with the GIL (fork() and reading the answer), not its wall time,
        which includes waiting for the GIL while the app runs; cpu adds the
        child's CPU time."""
        try:
            rss = self._rss_bytes() if self._rss_bytes is not None else 0
        except Exception:
            rss = 0
        read_fd, write_fd = os.pipe()
        c0 = time.thread_time()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            os.close(read_fd)
            _child_main(write_fd, self.deep_traces, self.top_n, self._previous)
        stall_s = time.thread_time() - c0
        os.close(write_fd)
        if rss > 0:  # learn this machine's fork cost per byte of RSS (moving average)
            self._fork_s_per_byte = 0.5 * self._fork_s_per_byte + 0.5 * stall_s / rss
        timeout_s = self.child_timeout_s or max(_CHILD_TIMEOUT_S, 20 * self.predicted_cost_s())
        payload = _read_child(read_fd, pid, timeout_s)
        c1 = time.thread_time()
        head_len = int.from_bytes(payload[:8], "little")
        record, take_s, blocks, child_cpu_s = marshal.loads(payload[8:8 + head_len])
        grouping = payload[8 + head_len:]
        stall_s += time.thread_time() - c1
        return record, grouping, take_s, blocks, stall_s, stall_s + child_cpu_s

    def _skip_reason(self) -> str | None:
        """Why a fallback inline snapshot is skipped: it would hold the app's GIL too long."""
        if self.mode == "inline":  # asked for: the user chose that price
            return None
        predicted = self.estimated_blocks() * self._inline_s_per_block
        if predicted <= _MAX_FALLBACK_STALL_S:
            return None
        return f"skipped, an inline snapshot would hold the app for about {predicted * 1e3:.0f} ms"

    def take(self) -> dict[str, Any] | None:
        """Take one snapshot and return a schema ``snapshot`` record (minus kind/ts).

        None when forking failed and an inline snapshot would hold the app's
        GIL longer than ``_MAX_FALLBACK_STALL_S``: ``last_error`` says why.
        """
        mode = self._choose()
        result = None
        if mode == "inline" and self._fork_failures >= _MAX_FORK_FAILURES:
            skip = self._skip_reason()
            if skip is not None:
                self.last_error = f"forking failed {self._fork_failures} times; {skip}"
                return None
        if mode == "fork":
            try:
                result = self._take_forked()
                self.last_error = None
            except Exception as exc:
                self._fork_failures += 1
                skip = self._skip_reason()
                self.last_error = f"{type(exc).__name__}: {exc}; {skip or 'this snapshot was taken inline'}"
                if skip is not None:
                    return None
                mode = "inline"
        if result is None:
            c0 = time.thread_time()
            record, grouping, take_s, blocks = _snapshot(self.deep_traces, self.top_n, self._previous)
            stall_s = cpu_s = time.thread_time() - c0
        else:
            record, grouping, take_s, blocks, stall_s, cpu_s = result
        self._previous = grouping
        record = {"seq": self._seq, **record}
        self._seq += 1
        if blocks:  # inline or in the child, the same work
            self._inline_s_per_block = cpu_s / blocks
            self._measured = True
        record["mode"] = mode
        record["take_s"] = round(take_s, 6)
        record["stall_s"] = round(stall_s, 6)
        record["cost_s"] = round(cpu_s, 6)
        return record

"""tracemalloc snapshots grouped by allocation site, cheaply.

``Snapshot.filter_traces`` walks and copies every trace (about 30x the cost
of taking the snapshot), so instead one pass groups the raw traces by their
most recent frame and leakyspanner's own files are dropped from the groups.
The previous grouping is kept so each snapshot can report growth per site.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from typing import Any

__all__ = ["SiteTracker"]

# Only the capture side's own files: the bundled demo app's leaks must stay visible.
_CAPTURE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_OWN_PREFIXES = (_CAPTURE_DIR, tracemalloc.__file__)
_Site = tuple[str, int]


def _own(filename: str) -> bool:
    return filename.startswith(_OWN_PREFIXES)


class SiteTracker:
    """Takes snapshots and remembers per-site sizes between them."""

    def __init__(self, top_n: int = 10, deep_traces: int = 0) -> None:
        self.top_n = top_n
        self.deep_traces = deep_traces
        self._previous: dict[_Site, tuple[int, int]] = {}
        self._seq = 0

    def reset(self) -> None:
        """Forget the previous snapshot (tracing was switched off in between)."""
        self._previous = {}

    def take(self) -> dict[str, Any]:
        """Take one snapshot and return a schema ``snapshot`` record (minus kind/ts)."""
        t0 = time.perf_counter()
        snapshot = tracemalloc.take_snapshot()
        take_s = time.perf_counter() - t0
        raw = getattr(getattr(snapshot, "traces", None), "_traces", None)
        if raw is None:  # private attribute gone: fall back to the public, slower path
            raw = [(0, s.size, tuple((f.filename, f.lineno) for f in s.traceback), 1)
                   for s in snapshot.statistics("traceback")]
        # Group sizes by traceback into lists first: appending allocates far less
        # than rebuilding ints per trace, and this loop runs under tracemalloc.
        groups: dict[tuple[_Site, ...], list[int]] = {}
        get = groups.get
        for trace in raw:
            frames = trace[2]
            group = get(frames)
            if group is None:
                groups[frames] = group = []
            group.append(trace[1])
        sizes: dict[_Site, int] = {}
        counts: dict[_Site, int] = {}
        by_trace: dict[tuple[_Site, ...], list[int]] = {}
        deep = self.deep_traces > 0
        for frames, group in groups.items():
            site = frames[0] if frames else ("<unknown>", 0)
            total = sum(group)
            sizes[site] = sizes.get(site, 0) + total
            counts[site] = counts.get(site, 0) + len(group)
            if deep:
                by_trace[frames] = [total, len(group)]
        del groups
        blocks = len(raw)
        del snapshot, raw
        own_blocks = 0
        for site in [s for s in sizes if _own(s[0])]:
            own_blocks += counts.pop(site)
            sizes.pop(site)
        previous = self._previous
        growth = {site: size - previous.get(site, (0, 0))[0] for site, size in sizes.items()}
        for site in previous:
            if site not in sizes:
                growth[site] = -previous[site][0]
        chosen = sorted(sizes, key=sizes.__getitem__, reverse=True)[: self.top_n]
        chosen_set = set(chosen)
        for site in sorted(growth, key=growth.__getitem__, reverse=True)[: self.top_n]:
            if growth[site] > 0 and site not in chosen_set and site in sizes:
                chosen.append(site)
                chosen_set.add(site)
        rows = []
        for site in chosen:
            prev_size, prev_count = previous.get(site, (0, 0))
            rows.append([site[0], site[1], sizes[site], counts[site],
                         sizes[site] - prev_size, counts[site] - prev_count])
        record: dict[str, Any] = {
            "seq": self._seq,
            "traced_bytes": sum(sizes.values()),
            "blocks": blocks - own_blocks,
            "sites_total": len(sizes),
            "frames": tracemalloc.get_traceback_limit(),
            "site_fields": ["file", "line", "size_bytes", "count", "size_diff_bytes", "count_diff"],
            "sites": rows,
        }
        if deep:
            top = sorted(
                ((acc[0], acc[1], frames) for frames, acc in by_trace.items()
                 if frames and not _own(frames[0][0])),
                key=lambda item: item[0], reverse=True,
            )[: self.deep_traces]
            record["traces"] = [
                {"size_bytes": size, "count": count, "frames": [[f, ln] for f, ln in frames]}
                for size, count, frames in top
            ]
        self._previous = {site: (sizes[site], counts[site]) for site in sizes}
        self._seq += 1
        record["take_s"] = round(take_s, 6)
        record["cost_s"] = round(time.perf_counter() - t0, 6)
        return record

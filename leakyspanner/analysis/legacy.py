"""Translate the human ``.log`` (0.1.x line formats, still written today) into schema records.

Sessions recorded by leakyspanner 0.1.x left only this file, and a session whose
``.jsonl`` was lost still has it, so the loader reads it as well as it can: every
line is mapped to the record the JSONL side would have written, with the fields
the human log never carried left null. Times in the log are local wall-clock
``HH:MM:SS``; dates come from the header's ``started`` line (or a fallback the
caller gives) and roll over at midnight. Numbers are passed on as read, however
large: the loader's door checks them against their fields' ranges and reports
the line of any it leaves out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from leakyspanner import schema

__all__ = ["LegacyLog", "parse_legacy"]

_MB = 1024 * 1024
_KB = 1024
_HALF_DAY_S = 12 * 3600
#: Start dates outside this range (Unix seconds) are not trusted: the loader's timestamps end in 2242.
_START_RANGE = (0.0, 2.0 ** 33 - 2 * 86400)

_CLOCK = r"\[(\d{1,2}):(\d{2}):(\d{2})\]"
_NUM = r"[+-]?\d+(?:\.\d+)?"
_SAMPLE = re.compile(
    rf"^\s*{_CLOCK} RSS=({_NUM})MB\s+VMS=({_NUM})MB\s+delta=({_NUM})MB"
    r"(?:\s+GC=\((\d+),\s*(\d+),\s*(\d+)\))?"
)
_ENDPOINT = re.compile(rf"^\s*{_CLOCK} ENDPOINT (\S+) (.+?)\s+mem_delta=({_NUM})MB(?:\s+status=(\d+))?")
_ALERT = re.compile(rf"^\s*(?:!!|\u26a0\ufe0f?)\s*{_CLOCK}\s+(.*ALERT.*)$")
_ALERT_GROWTH = re.compile(rf"({_NUM}) MB above baseline")
_ALERT_BASELINE = re.compile(rf"baseline=({_NUM}) MB")
_ALERT_CURRENT = re.compile(rf"current=({_NUM}) MB")
_TOP_ALLOCATIONS = re.compile(r"^\s*(?:--|\u2500\u2500) top allocations (?:--|\u2500\u2500)\s*$")
_ALLOCATION = re.compile(rf"^\s+({_NUM})(KB|MB) [x\u00d7] (\d+)\s+(.+):(\d+)\s*$")
_EVENT = re.compile(r"^\s*\[event\] ([^:]+): ?(.*)$")
_VERSION = re.compile(r"^\s*LeakySpanner v(\S+)", re.IGNORECASE)
_STARTED = re.compile(r"^\s*started\s*:\s*(\S+)")
_PLATFORM = re.compile(r"^\s*platform\s*:\s*(.*?)\s*$")
_PYTHON = re.compile(r"\b(?:CPython|PyPy|Python)\s+(\d+\.\d+\S*)")
_LEVEL = re.compile(rf"^\s*level\s*:\s*(\w+)(?:\s+interval=({_NUM})s)?(?:\s+threshold=({_NUM})MB)?")
_BASELINE = re.compile(rf"^\s*baseline\s*:\s*({_NUM}) MB RSS")
_SUMMARY_START = re.compile(r"^\s*LEAKYSPANNER SESSION SUMMARY\s*$")
_SUMMARY_RSS = re.compile(rf"^\s*(Peak|Final|Baseline) RSS\s*:\s*({_NUM}) MB")
_SUMMARY_SAMPLES = re.compile(r"^\s*(?:Snapshots|Samples)\s*:\s*(\d+)")  # 0.1.x said Snapshots
_SUMMARY_REQUESTS = re.compile(r"^\s*Requests\s*:\s*(\d+)\s+dropped=(\d+)\s+internal_errors=(\d+)")
_SUMMARY_ENDPOINTS = re.compile(r"^\s*ENDPOINT MEMORY DELTAS\b")
# Sampled endpoints (0.2) print avg=n/a max=n/a when none was measured, and how many were.
_SUMMARY_ENDPOINT = re.compile(
    rf"^\s+(\S+)\s+(.+?)\s+calls=\s*(\d+)\s+avg=(?:({_NUM})MB|n/a)\s+max=(?:({_NUM})MB|n/a)"
    r"(?:\s+\(RSS measured on (\d+)\))?\s*$"
)
_PID_IN_STEM = re.compile(r"_p(\d+)$")
# A line that starts like a known record but matched no full pattern is reported;
# other lines (separators, headings, kinds added later) are passed over.
_LOOKS_LIKE_RECORD = re.compile(rf"^\s*(?:!!|\u26a0\ufe0f?)?\s*{_CLOCK}\s+(?:RSS=|ENDPOINT|.*ALERT)|^\s+{_NUM}[KM]B [x\u00d7]")


@dataclass
class LegacyLog:
    """A human log translated into schema vocabulary, ready for the loader's frame builders.

    ``requests`` holds columns named like :data:`schema.REQUEST_FIELDS` plus
    ``rss_delta_bytes``, because this log knows a request's delta but not its
    before/after values.
    """

    header: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    requests: dict[str, list[Any]] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    record_lines: list[int] = field(default_factory=list)   # line number of each record
    request_lines: list[int] = field(default_factory=list)  # line number of each request


class _Clock:
    """Turns ``HH:MM:SS`` into Unix seconds, advancing the date at midnight.

    Lines from different threads can be a few seconds out of order, so only a
    jump of more than half a day counts as crossing midnight (forwards or back).
    """

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._day = start.date()
        self._last_s = start.hour * 3600 + start.minute * 60 + start.second

    def ts(self, hour: str, minute: str, second: str) -> float:
        of_day = int(hour) * 3600 + int(minute) * 60 + int(second)
        day = self._day
        if of_day < self._last_s - _HALF_DAY_S:
            day = self._day = self._day + timedelta(days=1)
            self._last_s = of_day
        elif of_day > self._last_s + _HALF_DAY_S:
            day -= timedelta(days=1)  # a late line from before midnight
        else:
            self._last_s = of_day
        try:
            moment = datetime(day.year, day.month, day.day, tzinfo=self._start.tzinfo) + timedelta(seconds=of_day)
        except OverflowError:  # the calendar ends in 9999; the loader reports the value
            return math.inf
        return moment.timestamp()


def _bytes(mb: str | None, unit: int = _MB) -> int | float | None:
    """Bytes from a decimal string of MB (or KB); a float when too large for an integer (inf past float)."""
    if mb is None:
        return None
    value = float(mb) * unit
    return round(value) if abs(value) < 2.0 ** 63 else value


def _int(digits: str) -> int | float:
    """An integer as written; beyond 18 digits a float, since Python refuses to parse 4,300 or more."""
    return int(digits) if len(digits) <= 18 else float(digits)


def _plausible(start: datetime | None) -> datetime | None:
    if start is None:
        return None
    try:
        ts = start.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return start if _START_RANGE[0] <= ts <= _START_RANGE[1] else None


def _start_from_stem(stem: str) -> datetime | None:
    """The local start time encoded in ``leakyspanner_YYYYMMDD_HHMMSS[_pPID]``."""
    if not stem.startswith(schema.STEM_PREFIX):
        return None
    try:
        return datetime.strptime(stem[len(schema.STEM_PREFIX):][:15], "%Y%m%d_%H%M%S")
    except ValueError:
        return None


def parse_legacy(text: str, *, stem: str, fallback_start_ts: float) -> LegacyLog | None:
    """Parse a human log; ``None`` when ``text`` carries no leakyspanner line at all.

    ``fallback_start_ts`` (the file's mtime, say) dates the lines when neither a
    ``started`` header nor a timestamped file name does.
    """
    lines = text.split("\n")
    torn_last = not text.endswith("\n")
    header: dict[str, Any] = {"session_id": stem, "config": {}, "request_fields": list(schema.REQUEST_FIELDS)}
    pid = _PID_IN_STEM.search(stem)
    if pid:
        header["pid"] = _int(pid.group(1))

    # The header block comes first; read it before any timestamp needs a date.
    start: datetime | None = None
    started_line = 0
    for number, line in enumerate(lines[:20], 1):
        if m := _VERSION.match(line):
            header["leakyspanner_version"] = m.group(1)
        elif m := _STARTED.match(line):
            started_line = number
            try:
                start = datetime.fromisoformat(m.group(1))
            except ValueError:
                start = None
        elif m := _PLATFORM.match(line):
            header["platform"] = m.group(1)
            if py := _PYTHON.search(m.group(1)):
                header["python"] = py.group(1)
        elif m := _LEVEL.match(line):
            header["level"] = m.group(1)
            if m.group(2) is not None:
                header["config"]["interval_seconds"] = float(m.group(2))
            if m.group(3) is not None:
                header["config"]["leak_threshold_mb"] = float(m.group(3))
        elif m := _BASELINE.match(line):
            header["baseline_rss_bytes"] = _bytes(m.group(1))
    recognised = "leakyspanner_version" in header
    log = LegacyLog(header=header)
    if started_line and _plausible(start) is None:
        log.skipped.append((started_line, "start date unreadable or out of range; dated from the file instead"))
    start = _plausible(start) or _plausible(_start_from_stem(stem)) or datetime.fromtimestamp(fallback_start_ts)
    header["start_ts"] = start.timestamp()

    clock = _Clock(start)
    requests: dict[str, list[Any]] = {name: [] for name in (*schema.REQUEST_FIELDS, "rss_delta_bytes")}
    summary: dict[str, Any] | None = None
    snapshot: dict[str, Any] | None = None
    in_allocations = in_summary_endpoints = False
    last_ts: float = header["start_ts"]  # lines without a clock (events, allocations) take the latest
    baseline = header.get("baseline_rss_bytes")
    threshold_mb = header["config"].get("leak_threshold_mb")
    samples = snapshots = 0

    summary_line = 0

    def record(number: int, values: dict[str, Any]) -> None:
        log.records.append(values)
        log.record_lines.append(number)

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if in_summary_endpoints and set(line.strip()) == {"="}:
            in_summary_endpoints = False  # the rule that closes the summary
        if torn_last and number == len(lines):
            # Every writer ends its lines with a newline: without one the line may be cut
            # anywhere (status=20 of status=200), so none of it is trusted.
            log.skipped.append((number, "torn last line"))
            break
        if in_allocations and snapshot is not None and (m := _ALLOCATION.match(line)):
            size = _bytes(m.group(1), _KB if m.group(2) == "KB" else _MB)
            snapshot["sites"].append([m.group(4), _int(m.group(5)), size, _int(m.group(3)), None, None])
            continue
        in_allocations = False
        if m := _SAMPLE.match(line):
            last_ts = clock.ts(*m.group(1, 2, 3))
            gc_count = [_int(g) for g in m.group(7, 8, 9)] if m.group(7) is not None else None
            rss, delta = _bytes(m.group(4)), _bytes(m.group(6))
            record(number, {"kind": "sample", "ts": last_ts, "seq": samples, "rss_bytes": rss,
                            "vms_bytes": _bytes(m.group(5)), "rss_delta_bytes": delta, "gc_count": gc_count})
            samples += 1
            if baseline is None and rss is not None and delta is not None:
                baseline = header["baseline_rss_bytes"] = rss - delta
        elif _TOP_ALLOCATIONS.match(line):
            in_allocations = True
            snapshot = {"kind": "snapshot", "ts": last_ts, "seq": snapshots,
                        "site_fields": list(schema.SITE_FIELDS), "sites": []}
            record(number, snapshot)
            snapshots += 1
        elif m := _ENDPOINT.match(line):
            last_ts = clock.ts(*m.group(1, 2, 3))
            row = {"ts": last_ts, "method": m.group(4), "route": m.group(5),
                   "status": _int(m.group(7)) if m.group(7) else None, "rss_delta_bytes": _bytes(m.group(6))}
            for name, values in requests.items():
                values.append(row.get(name))
            log.request_lines.append(number)
        elif m := _ALERT.match(line):
            last_ts = clock.ts(*m.group(1, 2, 3))
            message = m.group(4)
            growth, base, current = (_ALERT_GROWTH.search(message), _ALERT_BASELINE.search(message),
                                     _ALERT_CURRENT.search(message))
            record(number, {
                "kind": "alert", "ts": last_ts,
                "alert": "memory_growth" if "MEMORY GROWTH" in message else message,
                "rss_bytes": _bytes(current.group(1)) if current else None,
                "baseline_rss_bytes": _bytes(base.group(1)) if base else baseline,
                "growth_bytes": _bytes(growth.group(1)) if growth else None,
                "threshold_bytes": None if threshold_mb is None else _bytes(str(threshold_mb)),
            })
        elif m := _EVENT.match(line):
            record(number, {"kind": "event", "ts": last_ts, "event": m.group(1), "detail": m.group(2)})
        elif _SUMMARY_START.match(line):
            summary = {"kind": "summary", "endpoints": [], "baseline_rss_bytes": baseline}
            summary_line = number
        elif summary is not None and (m := _SUMMARY_RSS.match(line)):
            summary[f"{m.group(1).lower()}_rss_bytes"] = _bytes(m.group(2))
        elif summary is not None and (m := _SUMMARY_SAMPLES.match(line)):
            summary["samples"] = _int(m.group(1))
        elif summary is not None and (m := _SUMMARY_REQUESTS.match(line)):  # written since 0.2
            summary.update(zip(("requests_total", "requests_dropped", "internal_errors"), map(_int, m.groups())))
        elif summary is not None and _SUMMARY_ENDPOINTS.match(line):
            in_summary_endpoints = True
        elif summary is not None and (m := _SUMMARY_ENDPOINT.match(line)):
            calls = _int(m.group(3))
            summary["endpoints"].append({"method": m.group(1), "route": m.group(2), "calls": calls,
                                         "avg_delta_bytes": _bytes(m.group(4)),
                                         "max_delta_bytes": _bytes(m.group(5)),
                                         "rss_measured": _int(m.group(6)) if m.group(6) else calls})
        elif in_summary_endpoints and set(line.strip()) != {"="}:
            log.skipped.append((number, "unrecognised summary line"))
        elif _LOOKS_LIKE_RECORD.match(line):
            log.skipped.append((number, "unrecognised log line"))

    # Event lines alone are too generic to claim a file for leakyspanner.
    if not (recognised or requests["ts"] or any(r["kind"] != "event" for r in log.records) or summary):
        return None
    log.requests = requests
    if summary is not None:
        summary["ts"] = last_ts
        summary["duration_s"] = last_ts - header["start_ts"]
        summary.setdefault("requests_total", sum(e["calls"] for e in summary["endpoints"]))
        final, base = summary.get("final_rss_bytes"), summary.get("baseline_rss_bytes")
        summary["net_growth_bytes"] = final - base if final is not None and base is not None else None
        record(summary_line, summary)
    return log

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
import string
from collections.abc import Mapping
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


# ------------------------------------------------------------ line patterns
# Built from the writer's own table (schema.LOG_LINES): a template's text is
# matched with any run of spaces standing for any (at least one) white space,
# none needed beside a colon or before a padded value; a value by its shape;
# each tail is optional; the words 0.1.x wrote differently (``!!`` for the
# warning sign, ``x`` for ``×``, ``Snapshots`` for ``Samples``) are accepted too.

_VARIANT = re.compile("(" + "|".join(map(re.escape, schema.LOG_VARIANTS)) + ")")


def _template_pattern(template: str, values: Mapping[str, str]) -> str:
    out = []
    for text, name, spec, _ in string.Formatter().parse(template):
        out.append(_spaced(text))
        if name is not None:
            padded = (spec or "").lstrip("<>^=+- ")[:1].isdigit()  # spaces may come before the value
            if padded and not out[-1].endswith((r"\s+", r"\s*")):
                out.append(r"\s*")
            out.append(f"(?P<{name}>{schema.LOG_VALUES[values[name]]})")
    return "".join(out)


def _spaced(text: str) -> str:
    """A template's literal text as a pattern (see above)."""
    out = []
    pieces = _VARIANT.split(text)
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append("(?:" + "|".join(map(re.escape, (piece, *schema.LOG_VARIANTS[piece]))) + ")")
            continue
        runs = re.split(r"( +)", piece)
        for j, run in enumerate(runs):
            if j % 2 == 0:
                out.append(re.escape(run))
            else:
                colon = runs[j - 1].endswith(":") or (j + 1 < len(runs) and runs[j + 1].startswith(":"))
                out.append(r"\s*" if colon else r"\s+")
    return "".join(out)


def _line_pattern(line: schema.LogLine) -> re.Pattern[str]:
    body = _template_pattern(line.template.lstrip(" "), line.values)
    tails = "".join(f"(?:{_template_pattern(tail, line.values)})?" for tail in line.tails.values())
    return re.compile(rf"^\s*{body}{tails}\s*$")


_PATTERNS = {kind: _line_pattern(line) for kind, line in schema.LOG_LINES.items()}
_HEADER_KINDS = ("version", "started", "platform", "level", "baseline", "jsonl")
_BODY_KINDS = ("sample", "allocations", "endpoint", "alert", "event", "summary")
_SUMMARY_KINDS = ("peak_rss", "final_rss", "baseline_rss", "net_growth", "samples", "requests", "summary_platform",
                  "endpoints", "summary_endpoint")
_PYTHON = re.compile(r"\b(?:CPython|PyPy|Python)\s+(\d+\.\d+\S*)")
_PID_IN_STEM = re.compile(r"_p(\d+)$")


def _opening(line: schema.LogLine) -> re.Pattern[str]:
    """The start of a line kind, up to the words after its first value (``[12:00:05] RSS=``)."""
    (text, name, spec, _), (after, *_) = list(string.Formatter().parse(line.template))[:2]
    return re.compile(r"^\s*" + _template_pattern(f"{text}{{{name}:{spec}}}{after}".lstrip(" "), line.values))


# A line that starts like a record but matched no full pattern is reported;
# other lines (separators, headings, kinds added later) are passed over.
_RECORD_OPENINGS = [_opening(schema.LOG_LINES[kind]) for kind in ("sample", "endpoint", "alert", "allocation")]


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


class _Reader:
    """Reads a human log line by line; each line kind of ``schema.LOG_LINES`` has its ``_on_<kind>`` method."""

    def __init__(self, stem: str, lines: list[str], fallback_start_ts: float) -> None:
        self.header: dict[str, Any] = {"session_id": stem, "config": {},
                                       "request_fields": list(schema.REQUEST_FIELDS)}
        if pid := _PID_IN_STEM.search(stem):
            self.header["pid"] = _int(pid.group(1))
        self.log = LegacyLog(header=self.header)
        self.requests: dict[str, list[Any]] = {name: [] for name in (*schema.REQUEST_FIELDS, "rss_delta_bytes")}
        self.summary: dict[str, Any] | None = None
        self.summary_line = 0
        self.snapshot: dict[str, Any] | None = None
        self.in_summary_endpoints = self.in_allocations = False
        self.samples = self.snapshots = 0
        self._started: tuple[int, datetime | None] | None = None
        # The header block comes first; read it before any timestamp needs a date.
        for number, line in enumerate(lines[:20], 1):
            self._match(line, number, _HEADER_KINDS)
        self.recognised = "leakyspanner_version" in self.header
        start = self._started[1] if self._started else None
        if self._started and _plausible(start) is None:
            self.log.skipped.append((self._started[0],
                                     "start date unreadable or out of range; dated from the file instead"))
        start = _plausible(start) or _plausible(_start_from_stem(stem)) or datetime.fromtimestamp(fallback_start_ts)
        self.header["start_ts"] = start.timestamp()
        self.clock = _Clock(start)
        self.last_ts: float = self.header["start_ts"]  # lines without a clock (events, allocations) take the latest
        self.baseline = self.header.get("baseline_rss_bytes")
        self.threshold_mb = self.header["config"].get("leak_threshold_mb")

    def _match(self, line: str, number: int, kinds: tuple[str, ...]) -> bool:
        """Hand ``line`` to the first of ``kinds`` whose pattern it matches; False when none does."""
        for kind in kinds:
            if m := _PATTERNS[kind].match(line):
                getattr(self, f"_on_{kind}")(m, number)
                return True
        return False

    def _record(self, number: int, values: dict[str, Any]) -> None:
        self.log.records.append(values)
        self.log.record_lines.append(number)

    def _ts(self, m: re.Match[str]) -> float:
        self.last_ts = self.clock.ts(*m["clock"].split(":"))
        return self.last_ts

    def read(self, lines: list[str], torn_last: bool) -> None:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rule = set(line.strip()) == {"="}
            if rule:
                self.in_summary_endpoints = False  # the rule that closes the summary
            if torn_last and number == len(lines):
                # Every writer ends its lines with a newline: without one the line may be cut
                # anywhere (status=20 of status=200), so none of it is trusted.
                self.log.skipped.append((number, "torn last line"))
                break
            if self.in_allocations and self._match(line, number, ("allocation",)):
                continue
            self.in_allocations = False
            if self._match(line, number, _BODY_KINDS + (_SUMMARY_KINDS if self.summary is not None else ())):
                continue
            if self.in_summary_endpoints and not rule:
                self.log.skipped.append((number, "unrecognised summary line"))
            elif any(opening.match(line) for opening in _RECORD_OPENINGS):
                self.log.skipped.append((number, "unrecognised log line"))

    # -- header block
    def _on_version(self, m: re.Match[str], number: int) -> None:
        self.header["leakyspanner_version"] = m["version"]

    def _on_started(self, m: re.Match[str], number: int) -> None:
        try:
            self._started = (number, datetime.fromisoformat(m["started"]))
        except ValueError:
            self._started = (number, None)

    def _on_platform(self, m: re.Match[str], number: int) -> None:
        self.header["platform"] = m["platform"]
        if py := _PYTHON.search(m["platform"]):
            self.header["python"] = py.group(1)

    def _on_level(self, m: re.Match[str], number: int) -> None:
        self.header["level"] = m["level"]
        if m["interval_s"] is not None:
            self.header["config"]["interval_seconds"] = float(m["interval_s"])
        if m["threshold_mb"] is not None:
            self.header["config"]["leak_threshold_mb"] = float(m["threshold_mb"])

    def _on_baseline(self, m: re.Match[str], number: int) -> None:
        self.header["baseline_rss_bytes"] = _bytes(m["baseline_mb"])

    def _on_jsonl(self, m: re.Match[str], number: int) -> None:
        pass  # the name of the .jsonl beside it: the loader finds that by stem

    # -- body
    def _on_sample(self, m: re.Match[str], number: int) -> None:
        ts = self._ts(m)
        gc_count = [_int(g) for g in re.findall(r"\d+", m["gc"])] if m["gc"] is not None else None
        rss, delta = _bytes(m["rss_mb"]), _bytes(m["delta_mb"])
        self._record(number, {"kind": "sample", "ts": ts, "seq": self.samples, "rss_bytes": rss,
                              "vms_bytes": _bytes(m["vms_mb"]), "rss_delta_bytes": delta, "gc_count": gc_count})
        self.samples += 1
        if self.baseline is None and rss is not None and delta is not None:
            self.baseline = self.header["baseline_rss_bytes"] = rss - delta

    def _on_allocations(self, m: re.Match[str], number: int) -> None:
        self.snapshot = {"kind": "snapshot", "ts": self.last_ts, "seq": self.snapshots,
                         "site_fields": list(schema.SITE_FIELDS), "sites": []}
        self._record(number, self.snapshot)
        self.snapshots += 1
        self.in_allocations = True

    def _on_allocation(self, m: re.Match[str], number: int) -> None:
        assert self.snapshot is not None  # only matched right after an allocations line
        size, unit = m["size"][:-2], m["size"][-2:]
        self.snapshot["sites"].append([m["file"], _int(m["line"]), _bytes(size, _KB if unit == "KB" else _MB),
                                       _int(m["count"]), None, None])

    def _on_endpoint(self, m: re.Match[str], number: int) -> None:
        row = {"ts": self._ts(m), "method": m["method"], "route": m["route"],
               "status": _int(m["status"]) if m["status"] else None, "rss_delta_bytes": _bytes(m["delta_mb"])}
        for name, values in self.requests.items():
            values.append(row.get(name))
        self.log.request_lines.append(number)

    def _on_alert(self, m: re.Match[str], number: int) -> None:
        self._record(number, {
            "kind": "alert", "ts": self._ts(m), "alert": "memory_growth",
            "rss_bytes": _bytes(m["rss_mb"]), "baseline_rss_bytes": _bytes(m["baseline_mb"]),
            "growth_bytes": _bytes(m["growth_mb"]),
            "threshold_bytes": None if self.threshold_mb is None else _bytes(str(self.threshold_mb)),
        })

    def _on_event(self, m: re.Match[str], number: int) -> None:
        self._record(number, {"kind": "event", "ts": self.last_ts, "event": m["event"], "detail": m["detail"]})

    # -- summary
    def _on_summary(self, m: re.Match[str], number: int) -> None:
        self.summary = {"kind": "summary", "endpoints": [], "baseline_rss_bytes": self.baseline}
        self.summary_line = number

    def _summary_bytes(self, name: str, m: re.Match[str]) -> None:
        assert self.summary is not None  # summary kinds are matched only after the summary heading
        self.summary[name] = _bytes(m["mb"])

    def _on_peak_rss(self, m: re.Match[str], number: int) -> None:
        self._summary_bytes("peak_rss_bytes", m)

    def _on_final_rss(self, m: re.Match[str], number: int) -> None:
        self._summary_bytes("final_rss_bytes", m)

    def _on_baseline_rss(self, m: re.Match[str], number: int) -> None:
        self._summary_bytes("baseline_rss_bytes", m)

    def _on_net_growth(self, m: re.Match[str], number: int) -> None:
        self._summary_bytes("net_growth_bytes", m)

    def _on_samples(self, m: re.Match[str], number: int) -> None:
        assert self.summary is not None
        self.summary["samples"] = _int(m["samples"])

    def _on_requests(self, m: re.Match[str], number: int) -> None:  # written since 0.2
        assert self.summary is not None
        for name in ("requests_total", "requests_dropped", "internal_errors"):
            self.summary[name] = _int(m[name])

    def _on_summary_platform(self, m: re.Match[str], number: int) -> None:
        self.header.setdefault("platform", m["platform"])

    def _on_endpoints(self, m: re.Match[str], number: int) -> None:
        self.in_summary_endpoints = True

    def _on_summary_endpoint(self, m: re.Match[str], number: int) -> None:
        assert self.summary is not None
        calls = _int(m["calls"])
        self.summary["endpoints"].append({
            "method": m["method"], "route": m["route"], "calls": calls,
            "avg_delta_bytes": _mb_or_none(m["avg"]), "max_delta_bytes": _mb_or_none(m["max"]),
            "rss_measured": _int(m["measured"]) if m["measured"] else calls,
        })

    def finish(self) -> LegacyLog | None:
        log, summary = self.log, self.summary
        # Event lines alone are too generic to claim a file for leakyspanner.
        if not (self.recognised or self.requests["ts"] or any(r["kind"] != "event" for r in log.records)
                or summary):
            return None
        log.requests = self.requests
        if summary is not None:
            summary["ts"] = self.last_ts
            summary["duration_s"] = self.last_ts - self.header["start_ts"]
            summary.setdefault("requests_total", sum(e["calls"] for e in summary["endpoints"]))
            final, base = summary.get("final_rss_bytes"), summary.get("baseline_rss_bytes")
            if summary.get("net_growth_bytes") is None:
                summary["net_growth_bytes"] = final - base if final is not None and base is not None else None
            self._record(self.summary_line, summary)
        return log


def _mb_or_none(text: str) -> int | float | None:
    return None if text == "n/a" else _bytes(text.removesuffix("MB"))


def parse_legacy(text: str, *, stem: str, fallback_start_ts: float) -> LegacyLog | None:
    """Parse a human log; ``None`` when ``text`` carries no leakyspanner line at all.

    ``fallback_start_ts`` (the file's mtime, say) dates the lines when neither a
    ``started`` header nor a timestamped file name does.
    """
    lines = text.split("\n")
    reader = _Reader(stem, lines, fallback_start_ts)
    reader.read(lines, torn_last=not text.endswith("\n"))
    return reader.finish()

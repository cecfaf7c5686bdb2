from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from leakyspanner import errors, schema
from leakyspanner.analysis import LoadWarning, load
from leakyspanner.analysis.legacy import parse_legacy

MB = 1024 * 1024
SEP = "=" * 70
PLATFORM = "Ubuntu 22.04.3 LTS [venv]  CPython 3.11.7 64bit  mem_reader=/proc/self/status"
START = datetime(2024, 3, 1, 23, 59, 50, 123456)


class SeedLog:
    """Writes lines with the exact f-strings of leakyspanner 0.1.x's tracker."""

    def __init__(self, start: datetime = START, baseline_mb: float = 100.0, threshold_mb: float = 50.0) -> None:
        self.lines: list[str] = []
        self.baseline = baseline_mb
        self.peak = self.final = baseline_mb
        self.snapshots = 0
        self._write(SEP)
        self._write("  LeakySpanner v0.1.1")
        self._write(f"  started  : {start.isoformat()}")
        self._write(f"  platform : {PLATFORM}")
        self._write(f"  level    : deep  interval=5.0s  threshold={threshold_mb}MB")
        self._write(f"  baseline : {baseline_mb:.2f} MB RSS")
        self._write(SEP)

    def _write(self, line: str) -> None:
        self.lines.append(line + "\n")

    def sample(self, at: datetime, rss_mb: float, gc_counts: tuple[int, int, int] = (5, 1, 0),
               allocations: Sequence[tuple[float, int, str, int]] = ()) -> None:
        ts = at.strftime("%H:%M:%S")
        delta = rss_mb - self.baseline
        sign = "+" if delta >= 0 else ""
        self._write(f"[{ts}] RSS={rss_mb:.1f}MB  VMS={rss_mb * 3:.1f}MB  delta={sign}{delta:.1f}MB  GC={gc_counts}")
        if allocations:
            self._write("  -- top allocations --")
            for size_kb, count, file, line in allocations[:5]:
                self._write(f"    {size_kb:.1f}KB x {count}  {file}:{line}")
        self.snapshots += 1
        self.peak, self.final = max(self.peak, rss_mb), rss_mb

    def endpoint(self, at: datetime, method: str, path: str, delta_mb: float, status: int) -> None:
        sign = "+" if delta_mb >= 0 else ""
        self._write(f"  [{at.strftime('%H:%M:%S')}] ENDPOINT {method} {path}  mem_delta={sign}{delta_mb:.2f}MB  "
                    f"status={status}")

    def alert(self, at: datetime, rss_mb: float) -> None:
        delta = rss_mb - self.baseline
        msg = (f"MEMORY GROWTH ALERT: +{delta:.1f} MB above baseline (baseline={self.baseline:.1f} MB, "
               f"current={rss_mb:.1f} MB)")
        self._write(f"\n  !! [{at.strftime('%H:%M:%S')}] {msg}\n")

    def summary(self, endpoints: list[tuple[str, str, int, float, float]]) -> None:
        self._write("\n" + SEP)
        self._write("  LEAKYSPANNER SESSION SUMMARY")
        self._write(SEP)
        self._write(f"  Peak RSS    : {self.peak:.1f} MB")
        self._write(f"  Final RSS   : {self.final:.1f} MB")
        self._write(f"  Baseline RSS: {self.baseline:.1f} MB")
        self._write(f"  Net growth  : {self.final - self.baseline:+.1f} MB")
        self._write(f"  Snapshots   : {self.snapshots}")
        self._write(f"  Platform    : {PLATFORM}")
        self._write("\n  ENDPOINT MEMORY DELTAS (sorted by avg):")
        for method, path, calls, avg, mx in endpoints:
            self._write(f"    {method:6} {path:<40} calls={calls:4}  avg={avg:+.2f}MB  max={mx:+.2f}MB")
        self._write(SEP + "\n")

    def save(self, path: Path) -> Path:
        path.write_text("".join(self.lines), encoding="utf-8")
        return path


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def stamp(seconds: float) -> float:
    """Unix time of the whole-second wall clock the log shows ``seconds`` after START."""
    return at(seconds).replace(microsecond=0).timestamp()


def quiet_load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load(path)


@pytest.fixture
def seed_session(tmp_path: Path) -> Path:
    log = SeedLog()
    log.sample(at(5), 101.0, allocations=[(42.3, 18, "/app/leak.py", 87), (1.5, 2, "C:/app/ok.py", 3)])
    log.endpoint(at(7), "POST", "/items/42", 2.5, 201)
    log.sample(at(10), 160.0)
    log.alert(at(10), 160.0)
    log.endpoint(at(12), "GET", "/health", -1.25, 200)
    log.summary([("POST", "/items/42", 4, 0.10, 2.5), ("GET", "/health", 9, -0.02, 0.0)])
    return log.save(tmp_path / "leakyspanner_20240301_235950.log")


def test_seed_log_fills_samples_with_bytes_and_gc_counts(seed_session):
    samples = quiet_load(seed_session).samples
    assert samples["rss_bytes"].tolist() == [101 * MB, 160 * MB]
    assert samples["vms_bytes"].tolist() == [303 * MB, 480 * MB]
    assert samples["rss_delta_bytes"].tolist() == [1 * MB, 60 * MB]
    assert samples[["gc_count_0", "gc_count_1", "gc_count_2"]].iloc[0].tolist() == [5, 1, 0]
    assert samples["seq"].tolist() == [0, 1]
    assert samples["traced_bytes"].isna().all()  # the human log never carried it


def test_seed_log_reconstructs_datetimes_across_midnight(seed_session):
    loaded = quiet_load(seed_session)
    assert loaded.samples["ts"].tolist() == [stamp(5), stamp(10)]
    assert loaded.samples["time"].dt.tz_convert(None).dt.date.tolist() == [at(5).date(), at(10).date()]
    assert at(10).date() != START.date()  # the session crossed midnight
    assert loaded.sessions["start_ts"].iloc[0] == START.timestamp()


def test_seed_log_endpoint_lines_become_requests_with_their_delta(seed_session):
    requests = quiet_load(seed_session).requests
    assert requests["method"].tolist() == ["POST", "GET"]
    assert requests["route"].tolist() == ["/items/42", "/health"]
    assert requests["status"].tolist() == [201, 200]
    assert requests["rss_delta_bytes"].tolist() == [round(2.5 * MB), round(-1.25 * MB)]
    assert requests["rss_before_bytes"].isna().all() and requests["rss_after_bytes"].isna().all()
    assert requests["ts"].tolist() == [stamp(7), stamp(12)]


def test_seed_log_alerts_carry_growth_baseline_and_threshold(seed_session):
    alerts = quiet_load(seed_session).alerts
    row = alerts.iloc[0]
    assert row["alert"] == "memory_growth"
    assert row["rss_bytes"] == 160 * MB and row["baseline_rss_bytes"] == 100 * MB
    assert row["growth_bytes"] == 60 * MB and row["threshold_bytes"] == 50 * MB
    assert row["ts"] == stamp(10)


def test_seed_log_top_allocations_become_a_snapshot_with_sites(seed_session):
    loaded = quiet_load(seed_session)
    assert loaded.snapshots["ts"].tolist() == [stamp(5)]
    sites = loaded.sites
    assert sites["site"].tolist() == ["/app/leak.py:87", "C:/app/ok.py:3"]
    assert sites["file"].tolist() == ["/app/leak.py", "C:/app/ok.py"]
    assert sites["size_bytes"].tolist() == [round(42.3 * 1024), round(1.5 * 1024)]
    assert sites["count"].tolist() == [18, 2]
    assert sites["size_diff_bytes"].isna().all()


def test_seed_log_summary_fills_the_session_row_and_endpoints(seed_session):
    loaded = quiet_load(seed_session)
    row = loaded.sessions.iloc[0]
    assert row["format"] == "legacy-log" and bool(row["complete"])
    assert row["session_id"] == "leakyspanner_20240301_235950"
    assert row["leakyspanner_version"] == "0.1.1" and row["python"] == "3.11.7" and row["level"] == "deep"
    assert row["platform"] == PLATFORM
    assert row["baseline_rss_bytes"] == 100 * MB
    assert row["peak_rss_bytes"] == 160 * MB and row["final_rss_bytes"] == 160 * MB
    assert row["net_growth_bytes"] == 60 * MB
    assert row["requests_total"] == 13
    assert row["interval_seconds"] == 5.0 and row["leak_threshold_mb"] == 50.0
    assert pd.isna(row["schema_version"])
    endpoints = loaded.endpoints
    assert endpoints["route"].tolist() == ["/items/42", "/health"]
    assert endpoints["calls"].tolist() == [4, 9]
    assert endpoints["avg_delta_bytes"].tolist() == [round(0.10 * MB), round(-0.02 * MB)]


def test_legacy_frames_have_the_same_columns_and_dtypes_as_jsonl_frames(seed_session, write_session):
    legacy = quiet_load(seed_session)
    jsonl = quiet_load(write_session())
    for name in ("sessions", "samples", "tasks", "requests", "intervals", "snapshots", "sites", "traces",
                 "alerts", "events", "endpoints"):
        got, expected = getattr(legacy, name), getattr(jsonl, name)
        assert list(got.columns) == list(expected.columns), name
        assert [str(d) for d in got.dtypes] == [str(d) for d in expected.dtypes], name


def test_new_alert_and_allocation_forms_are_read(tmp_path):
    log = SeedLog(start=datetime(2024, 3, 1, 12, 0, 0))
    log.lines += [
        "[12:00:05] RSS=101.0MB  VMS=303.0MB  delta=+1.0MB  GC=(1, 2, 3)\n",
        "  \u2500\u2500 top allocations \u2500\u2500\n",
        "    10.0KB \u00d7 3  /app/a.py:1\n",
        "\u26a0\ufe0f [12:00:06] MEMORY GROWTH ALERT: +61.0 MB above baseline (baseline=100.0 MB, current=161.0 MB)\n",
    ]
    loaded = quiet_load(log.save(tmp_path / "leakyspanner_20240301_120000.log"))
    assert loaded.sites["site"].tolist() == ["/app/a.py:1"] and loaded.sites["count"].tolist() == [3]
    assert loaded.alerts["growth_bytes"].tolist() == [61 * MB]


def test_log_without_summary_is_incomplete_with_peak_and_final_from_samples(tmp_path):
    log = SeedLog(start=datetime(2024, 3, 1, 12, 0, 0))
    log.sample(datetime(2024, 3, 1, 12, 0, 5), 130.0)
    log.sample(datetime(2024, 3, 1, 12, 0, 10), 120.0)
    row = quiet_load(log.save(tmp_path / "leakyspanner_20240301_120000.log")).sessions.iloc[0]
    assert not bool(row["complete"])
    assert row["peak_rss_bytes"] == 130 * MB and row["final_rss_bytes"] == 120 * MB
    assert row["net_growth_bytes"] == 20 * MB
    assert pd.isna(row["requests_total"])  # endpoint lines only show large deltas: no count to give
    assert row["duration_s"] == 10.0


def test_torn_last_log_line_is_skipped_and_warned(tmp_path):
    log = SeedLog(start=datetime(2024, 3, 1, 12, 0, 0))
    log.sample(datetime(2024, 3, 1, 12, 0, 5), 101.0)
    log.lines.append("  [12:00:07] ENDPOINT GET /x  mem_delta=+2.00MB  status=20")
    path = log.save(tmp_path / "leakyspanner_20240301_120000.log")
    with pytest.warns(LoadWarning, match=r"line 9 \(torn last line\)") as record:
        loaded = load(path)
    assert len(record) == 1
    assert len(loaded.requests) == 0 and len(loaded.samples) == 1


def test_malformed_sample_line_is_reported_and_the_rest_loads(tmp_path):
    log = SeedLog(start=datetime(2024, 3, 1, 12, 0, 0))
    log.lines.append("[12:00:03] RSS=oops\n")
    log.sample(datetime(2024, 3, 1, 12, 0, 5), 101.0)
    with pytest.warns(LoadWarning, match=r"line 8 \(unrecognised log line\)"):
        loaded = load(log.save(tmp_path / "leakyspanner_20240301_120000.log"))
    assert len(loaded.samples) == 1


def test_late_line_from_before_midnight_keeps_its_day():
    text = ("  started  : 2024-03-01T23:59:55\n"
            "[00:00:01] RSS=1.0MB  VMS=2.0MB  delta=+0.0MB  GC=(0, 0, 0)\n"
            "  [23:59:58] ENDPOINT GET /slow  mem_delta=+2.00MB  status=200\n"
            "[00:00:06] RSS=1.0MB  VMS=2.0MB  delta=+0.0MB  GC=(0, 0, 0)\n")
    log = parse_legacy(text, stem="x", fallback_start_ts=0.0)
    assert log is not None
    samples = [r["ts"] for r in log.records if r["kind"] == "sample"]
    assert samples == [datetime(2024, 3, 2, 0, 0, 1).timestamp(), datetime(2024, 3, 2, 0, 0, 6).timestamp()]
    assert log.requests["ts"] == [datetime(2024, 3, 1, 23, 59, 58).timestamp()]


def test_log_without_started_line_is_dated_from_its_file_name(tmp_path):
    path = tmp_path / "leakyspanner_20240301_120000_p77.log"
    path.write_text("[12:00:05] RSS=1.0MB  VMS=2.0MB  delta=+0.0MB  GC=(0, 0, 0)\n")
    loaded = quiet_load(path)
    assert loaded.samples["ts"].tolist() == [datetime(2024, 3, 1, 12, 0, 5).timestamp()]
    assert loaded.sessions["pid"].tolist() == [77]


def test_a_log_file_that_is_not_ours_raises_naming_the_path(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("INFO:     Uvicorn running on http://127.0.0.1:8000\n")
    with pytest.raises(errors.NotALogError, match=str(path)):
        load(path)


def test_parse_legacy_returns_none_for_foreign_text():
    assert parse_legacy("hello\nworld\n", stem="x", fallback_start_ts=0.0) is None


def test_legacy_request_columns_cover_every_request_field():
    log = parse_legacy("  [12:00:07] ENDPOINT GET /x  mem_delta=+2.00MB  status=200\n", stem="x",
                       fallback_start_ts=0.0)
    assert log is not None
    assert set(schema.REQUEST_FIELDS) <= set(log.requests)


def test_the_human_log_of_the_current_capture_side_loads(tmp_path):
    from leakyspanner.capture import humanlog

    start = datetime(2024, 3, 1, 12, 0, 0).timestamp()
    lines = humanlog.header_lines("0.2.0", start, "Linux CPython 3.11.7", "mid", 5.0, 50.0, 100 * MB,
                                  "leakyspanner_20240301_120000.jsonl")
    lines.append(humanlog.sample_line(start + 5, 101 * MB, 300 * MB, MB, (1, 2, 3)))
    lines += humanlog.top_allocation_lines([("/app/big.py", 7, 3 * MB, 4), ("/app/small.py", 9, 2048, 1)])
    lines.append(humanlog.endpoint_line(start + 6, "GET", "/items/{item_id}", 2 * MB, 200))
    lines.append(humanlog.alert_line(start + 7, 61 * MB, 100 * MB, 161 * MB))
    lines.append("  [event] tracing_started: level=mid")
    lines += humanlog.summary_lines({
        "peak_rss_bytes": 161 * MB, "final_rss_bytes": 150 * MB, "baseline_rss_bytes": 100 * MB,
        "net_growth_bytes": 50 * MB, "samples": 1, "requests_total": 40, "requests_dropped": 2,
        "internal_errors": 0,
        "endpoints": [{"method": "GET", "route": "/items/{item_id}", "calls": 40,
                       "avg_delta_bytes": MB // 10, "max_delta_bytes": 2 * MB}],
    }, "Linux CPython 3.11.7")
    path = tmp_path / "leakyspanner_20240301_120000.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    loaded = quiet_load(path)
    row = loaded.sessions.iloc[0]
    assert row["leakyspanner_version"] == "0.2.0" and row["level"] == "mid" and bool(row["complete"])
    assert row["requests_total"] == 40 and row["requests_dropped"] == 2 and row["final_rss_bytes"] == 150 * MB
    assert loaded.samples["rss_bytes"].tolist() == [101 * MB]
    assert loaded.sites["size_bytes"].tolist() == [3 * MB, 2048]
    assert loaded.requests["route"].tolist() == ["/items/{item_id}"]
    assert loaded.requests["rss_delta_bytes"].tolist() == [2 * MB]
    assert loaded.alerts["growth_bytes"].tolist() == [61 * MB]
    assert loaded.events["event"].tolist() == ["tracing_started"]
    assert loaded.samples["ts"].tolist() == [start + 5]


def test_event_lines_alone_do_not_make_a_foreign_file_a_log():
    assert parse_legacy("  [event] deploy: v2\n", stem="x", fallback_start_ts=0.0) is None


def test_lines_without_a_clock_take_the_time_of_the_line_before_or_the_start():
    text = ("  started  : 2024-03-01T12:00:00\n"
            "  [event] tracing_started: level=mid\n"
            "[12:00:05] RSS=1.0MB  VMS=2.0MB  delta=+0.0MB  GC=(0, 0, 0)\n"
            "  [event] tracing_stopped: done\n")
    log = parse_legacy(text, stem="x", fallback_start_ts=0.0)
    assert log is not None
    events = [r["ts"] for r in log.records if r["kind"] == "event"]
    assert events == [datetime(2024, 3, 1, 12, 0, 0).timestamp(), datetime(2024, 3, 1, 12, 0, 5).timestamp()]


# ------------------------------------------------------------------ hostile numbers and dates

def test_a_400_digit_number_is_reported_not_a_crash(tmp_path):
    log = SeedLog(start=datetime(2024, 3, 1, 12, 0, 0))
    log.sample(datetime(2024, 3, 1, 12, 0, 5), 101.0)
    log.lines.append(f"[12:00:07] RSS={'9' * 400}.5MB  VMS=2.0MB  delta=+1.0MB  GC=({'7' * 5000}, 0, 0)\n")
    log.endpoint(datetime(2024, 3, 1, 12, 0, 8), "GET", "/x", float("1" + "0" * 300), 200)
    log.sample(datetime(2024, 3, 1, 12, 0, 10), 102.0)
    with pytest.warns(LoadWarning) as record:
        loaded = load(log.save(tmp_path / "leakyspanner_20240301_120000.log"))
    message = str(record[0].message)
    assert "9 (sample rss_bytes: inf is not" in message and "9 (sample gc_count: item 0: inf" in message
    assert "10 (request rss_delta_bytes: " in message
    assert loaded.samples["rss_bytes"].tolist()[::2] == [101 * MB, 102 * MB]
    assert pd.isna(loaded.samples["rss_bytes"].iloc[1]) and loaded.samples["vms_bytes"].iloc[1] == 2 * MB


def test_a_start_date_in_year_9999_is_reported_and_the_file_name_dates_the_lines(tmp_path):
    log = SeedLog(start=datetime(9999, 12, 31, 23, 59, 59))
    log.lines.append("[00:00:05] RSS=101.0MB  VMS=300.0MB  delta=+1.0MB  GC=(1, 2, 3)\n")
    with pytest.warns(LoadWarning, match=r"line 3 \(start date unreadable or out of range"):
        loaded = load(log.save(tmp_path / "leakyspanner_20240301_000000.log"))
    assert loaded.samples["ts"].tolist() == [datetime(2024, 3, 1, 0, 0, 5).timestamp()]
    assert loaded.sessions["start"].iloc[0] == pd.Timestamp(datetime(2024, 3, 1).timestamp(), unit="s", tz="UTC")


def test_a_year_9999_file_name_falls_back_to_the_file_time(tmp_path):
    path = tmp_path / "leakyspanner_99991231_235959.log"
    path.write_text("[23:59:59] RSS=1.0MB  VMS=2.0MB  delta=+0.0MB  GC=(0, 0, 0)\n"
                    "[00:00:04] RSS=1.0MB  VMS=2.0MB  delta=+0.0MB  GC=(0, 0, 0)\n")
    loaded = quiet_load(path)
    assert loaded.samples["time"].notna().all() and len(loaded.samples) == 2


# ------------------------------------------------------------------ summary of sampled endpoints

def _summary_of(endpoints: list[dict]) -> str:
    from leakyspanner.capture import humanlog

    return "\n".join(["  LeakySpanner v0.2.0", "  started  : 2024-03-01T12:00:00",
                      "[12:00:05] RSS=101.0MB  VMS=300.0MB  delta=+1.0MB  GC=(1, 2, 3)",
                      *humanlog.summary_lines({
                          "peak_rss_bytes": 101 * MB, "final_rss_bytes": 101 * MB, "baseline_rss_bytes": 100 * MB,
                          "net_growth_bytes": MB, "samples": 1, "requests_total": 900, "requests_dropped": 0,
                          "internal_errors": 0, "endpoints": endpoints}, "Linux")]) + "\n"


def test_summary_lines_of_sampled_endpoints_are_read(tmp_path):
    path = tmp_path / "leakyspanner_20240301_120000.log"
    path.write_text(_summary_of([
        {"method": "GET", "route": "/hot", "calls": 800, "rss_measured": 40, "avg_delta_bytes": MB // 4,
         "max_delta_bytes": MB},
        {"method": "POST", "route": "/never measured", "calls": 100, "rss_measured": 0, "avg_delta_bytes": None,
         "max_delta_bytes": None},
        {"method": "GET", "route": "/all", "calls": 5, "avg_delta_bytes": 0, "max_delta_bytes": 0},
    ]), encoding="utf-8")
    endpoints = quiet_load(path).endpoints
    assert endpoints["route"].tolist() == ["/hot", "/never measured", "/all"]
    assert endpoints["calls"].tolist() == [800, 100, 5]
    assert endpoints["rss_measured"].tolist() == [40, 0, 5]
    assert endpoints["avg_delta_bytes"].iloc[0] == MB // 4 and pd.isna(endpoints["avg_delta_bytes"].iloc[1])


def test_an_unreadable_summary_endpoint_line_is_reported_not_dropped(tmp_path):
    text = _summary_of([{"method": "GET", "route": "/a", "calls": 3, "avg_delta_bytes": 0, "max_delta_bytes": 0}])
    text = text.replace("calls=   3", "calls=three")
    path = tmp_path / "leakyspanner_20240301_120000.log"
    path.write_text(text, encoding="utf-8")
    with pytest.warns(LoadWarning, match="unrecognised summary line"):
        loaded = load(path)
    assert len(loaded.endpoints) == 0 and bool(loaded.sessions["complete"].iloc[0])


# ------------------------------------------------------------------ round trip through the one table

def _written_by_today(tmp_path: Path, endpoints: list[dict], route: str = "/items/{item_id}") -> Path:
    """A log with every line kind of ``schema.LOG_LINES``, each written by capture's humanlog."""
    from leakyspanner.capture import humanlog

    start = datetime(2024, 3, 1, 12, 0, 0).timestamp()
    lines = humanlog.header_lines("0.2.0", start, "Linux CPython 3.11.7", "deep", 2.5, 40.0, 100 * MB,
                                  "leakyspanner_20240301_120000.jsonl")
    lines.append(humanlog.sample_line(start + 5, 101 * MB, 300 * MB, MB, (7, 8, 9)))
    lines += humanlog.top_allocation_lines([("C:/app/big.py", 7, 3 * MB, 4), ("/app/small.py", 9, 2048, 1)])
    lines.append(humanlog.endpoint_line(start + 6, "GET", route, -2 * MB, 503))
    lines.append(humanlog.alert_line(start + 7, 61 * MB, 100 * MB, 161 * MB))
    lines.append(humanlog.event_line("tracing_started", "level=deep: 1 frame"))
    lines += humanlog.summary_lines({
        "peak_rss_bytes": 161 * MB, "final_rss_bytes": 150 * MB, "baseline_rss_bytes": 100 * MB,
        "net_growth_bytes": 50 * MB, "samples": 1, "requests_total": 905, "requests_dropped": 2,
        "internal_errors": 3, "endpoints": endpoints}, "Linux CPython 3.11.7")
    path = tmp_path / "leakyspanner_20240301_120000.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_SAMPLED_AND_NOT = [
    {"method": "GET", "route": "/hot", "calls": 800, "rss_measured": 40, "avg_delta_bytes": MB // 4,
     "max_delta_bytes": MB},
    {"method": "POST", "route": "/never measured", "calls": 100, "rss_measured": 0, "avg_delta_bytes": None,
     "max_delta_bytes": None},
    {"method": "DELETE", "route": "/all", "calls": 5, "avg_delta_bytes": -MB // 2, "max_delta_bytes": 0},
]


def test_every_line_kind_written_today_is_read_back_with_its_values(tmp_path):
    loaded = quiet_load(_written_by_today(tmp_path, _SAMPLED_AND_NOT))  # no line skipped: quiet_load would raise
    start = datetime(2024, 3, 1, 12, 0, 0).timestamp()
    row = loaded.sessions.iloc[0]
    assert (row["leakyspanner_version"], row["level"], row["python"]) == ("0.2.0", "deep", "3.11.7")
    assert (row["interval_seconds"], row["leak_threshold_mb"], row["start_ts"]) == (2.5, 40.0, start)
    assert (row["peak_rss_bytes"], row["final_rss_bytes"], row["baseline_rss_bytes"]) == (161 * MB, 150 * MB, 100 * MB)
    assert (row["net_growth_bytes"], row["requests_total"], row["requests_dropped"]) == (50 * MB, 905, 2)
    assert row["internal_errors"] == 3 and bool(row["complete"])
    sample = loaded.samples.iloc[0]
    assert (sample["ts"], sample["rss_bytes"], sample["vms_bytes"]) == (start + 5, 101 * MB, 300 * MB)
    assert (sample["rss_delta_bytes"], sample["gc_count_0"], sample["gc_count_2"]) == (MB, 7, 9)
    assert loaded.sites[["file", "line", "size_bytes", "count"]].values.tolist() == [
        ["C:/app/big.py", 7, 3 * MB, 4], ["/app/small.py", 9, 2048, 1]]
    request = loaded.requests.iloc[0]
    assert (request["ts"], request["method"], request["route"]) == (start + 6, "GET", "/items/{item_id}")
    assert (request["status"], request["rss_delta_bytes"]) == (503, -2 * MB)
    alert = loaded.alerts.iloc[0]
    assert (alert["ts"], alert["alert"], alert["growth_bytes"]) == (start + 7, "memory_growth", 61 * MB)
    assert (alert["baseline_rss_bytes"], alert["rss_bytes"], alert["threshold_bytes"]) == (100 * MB, 161 * MB, 40 * MB)
    assert loaded.events[["event", "detail"]].values.tolist() == [["tracing_started", "level=deep: 1 frame"]]


def test_sampled_and_unsampled_summary_endpoints_round_trip(tmp_path):
    endpoints = quiet_load(_written_by_today(tmp_path, _SAMPLED_AND_NOT)).endpoints
    assert endpoints[["method", "route", "calls", "rss_measured"]].values.tolist() == [
        ["GET", "/hot", 800, 40], ["POST", "/never measured", 100, 0], ["DELETE", "/all", 5, 5]]
    assert endpoints["avg_delta_bytes"].iloc[0] == MB // 4 and endpoints["max_delta_bytes"].iloc[0] == MB
    assert endpoints[["avg_delta_bytes", "max_delta_bytes"]].iloc[1].isna().all()  # written avg=n/a max=n/a
    assert endpoints["avg_delta_bytes"].iloc[2] == -MB // 2


def test_a_route_with_a_newline_and_escape_codes_stays_one_line_and_reads_back_escaped(tmp_path):
    route = "/x\n[12:00:09] RSS=999.0MB  VMS=1.0MB  delta=+0.0MB\x1b[2J"
    path = _written_by_today(tmp_path, [{"method": "GET", "route": route, "calls": 1, "avg_delta_bytes": 0,
                                         "max_delta_bytes": 0}], route=route)
    loaded = quiet_load(path)
    assert loaded.samples["rss_bytes"].tolist() == [101 * MB]  # the forged sample never became a line
    escaped = "/x\\x0a[12:00:09] RSS=999.0MB  VMS=1.0MB  delta=+0.0MB\\x1b[2J"
    assert loaded.requests["route"].tolist() == [escaped] and loaded.endpoints["route"].tolist() == [escaped]


@pytest.mark.parametrize("log", sorted((Path(__file__).parents[2] / "sample_logs").glob("*/*.log")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_log_of_a_recorded_session_says_what_its_jsonl_says(log):
    """Both files of a real session (sample_logs/): every line of the .log is read, and agrees within its rounding."""
    human, jsonl = quiet_load(log), load(log.with_suffix(".jsonl"), warn=False)
    assert len(human.samples) == len(jsonl.samples) > 0
    half_tenth_mb = 0.05 * MB + 1  # the log shows MB with one decimal
    for column in ("rss_bytes", "vms_bytes"):
        assert (human.samples[column] - jsonl.samples[column]).abs().max() <= half_tenth_mb, column
    got, expected = human.sessions.iloc[0], jsonl.sessions.iloc[0]
    for column in ("requests_total", "requests_dropped", "internal_errors", "level"):
        assert got[column] == expected[column], column
    for column in ("peak_rss_bytes", "final_rss_bytes", "baseline_rss_bytes", "net_growth_bytes"):
        assert abs(got[column] - expected[column]) <= half_tenth_mb, column
    columns = ["method", "route", "calls"]  # these schema 1 files have no rss_measured (all were measured)
    assert human.endpoints[columns].astype(str).values.tolist() == jsonl.endpoints[columns].astype(str).values.tolist()

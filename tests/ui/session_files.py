"""Helpers for UI tests: small seeded session files written through the schema, copies of sample_logs."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from leakyspanner import schema

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_LOGS = ROOT / "sample_logs"
XSS_ROUTE = "<script>alert(1)</script>"
XSS_FILE = "/app/<img src=x onerror=alert(2)>.py"
_MB = 1024 * 1024
_KB = 1024


def record(kind: str, **values: Any) -> dict[str, Any]:
    """A record of ``kind``; every field name is checked against the schema."""
    unknown = set(values) - set(schema.FIELDS[kind])
    if unknown:
        raise ValueError(f"{kind} has no field(s) {sorted(unknown)} in leakyspanner.schema.FIELDS")
    return {"kind": kind, **values}


def _line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"


class SessionWriter:
    """Writes a plausible session: a steady leak on one route, noise on the others."""

    def __init__(self, path: Path, *, routes: tuple[tuple[str, str], ...], leak_route: tuple[str, str],
                 leak_bytes: int = 200 * _KB, start_ts: float = 1_780_000_000.0, host: str = "testhost",
                 pid: int = 4242, level: str = "mid", seed: int = 0, threshold_bytes: int = 20 * _MB,
                 leak_file: str | None = None) -> None:
        self.path, self.routes, self.leak_route, self.leak_bytes = path, routes, leak_route, leak_bytes
        self.leak_file = leak_file
        self.start_ts, self.rng, self.threshold = start_ts, random.Random(seed), threshold_bytes
        self.baseline = 50 * _MB
        self.rss, self.traced = self.baseline, 2 * _MB
        self.seq, self.snapshot_seq, self.requests_total, self.alerted = 0, 0, 0, False
        self.leak_sites = 0
        header = record(
            "header", format=schema.FORMAT_NAME, schema_version=schema.SCHEMA_VERSION, session_id=path.stem,
            leakyspanner_version="0.2.0", pid=pid, host=host, python="3.11.7", platform="Linux-test",
            level=level, config={"interval_seconds": 1.0, "leak_threshold_mb": threshold_bytes / _MB},
            start_ts=start_ts, baseline_rss_bytes=self.baseline, baseline_vms_bytes=4 * self.baseline,
            cgroup_memory_limit_bytes=None, memory_reader="statm", request_fields=list(schema.REQUEST_FIELDS))
        path.write_text(_line(header))

    def samples(self, count: int, *, snapshot_every: int = 5) -> SessionWriter:
        """Append ``count`` sampling intervals: requests, per-endpoint intervals, a sample, maybe a snapshot."""
        lines = []
        for _ in range(count):
            ts0 = self.start_ts + self.seq
            ts1 = ts0 + 1.0
            per_route: dict[tuple[str, str], list[int]] = {}
            for method, route in self.routes:
                for k in range(self.rng.randint(3, 6)):
                    leak = self.leak_bytes if (method, route) == self.leak_route else 0
                    noise = self.rng.choice((0, 0, 4096, -4096, 8192))
                    before = self.rss
                    self.rss += leak + noise
                    self.traced += leak
                    ts = ts0 + 0.1 + 0.1 * k
                    lines.append(_line([schema.REQUEST_TAG, ts, method, route, 200, 0.002 + 0.001 * k, before,
                                        self.rss, self.traced - leak, self.traced, 1, 1]))
                    per_route.setdefault((method, route), []).append(leak + noise)
                    self.requests_total += 1
            for (method, route), deltas in per_route.items():
                lines.append(_line(record(
                    "endpoint_interval", ts_start=ts0, ts=ts1, seq=self.seq, method=method, route=route,
                    calls=len(deltas), errors=0, duration_s_sum=0.01 * len(deltas), duration_s_max=0.01,
                    rss_delta_bytes_sum=sum(deltas), rss_delta_bytes_max=max(deltas),
                    traced_delta_bytes_sum=sum(d for d in deltas if d > 8192))))
            lines.append(_line(record(
                "sample", ts=ts1, seq=self.seq, rss_bytes=self.rss, vms_bytes=4 * self.rss,
                rss_delta_bytes=self.rss - self.baseline, gc_count=[10, 2, 1], gc_collections=[5, 1, 0],
                gc_collected=[0, 0, 0], gc_uncollectable=[0, 0, 0], gc_garbage=0, tracing=True,
                traced_bytes=self.traced, traced_peak_bytes=self.traced, threads=4 + self.seq % 2,
                open_fds=20 + self.seq % 3, asyncio_tasks=3 + self.seq % 4,
                asyncio_tasks_by_coro={"RequestResponseCycle.run_asgi": 2, "Server.serve": 1}, inflight=1,
                requests_total=self.requests_total, requests_dropped=0, internal_errors=0, cgroup_memory_bytes=None)))
            if not self.alerted and self.rss - self.baseline > self.threshold:
                self.alerted = True
                lines.append(_line(record("alert", ts=ts1, alert="memory_growth", rss_bytes=self.rss,
                                          baseline_rss_bytes=self.baseline, growth_bytes=self.rss - self.baseline,
                                          threshold_bytes=self.threshold)))
            if self.seq % snapshot_every == 0:
                lines.append(_line(self._snapshot(ts1 + 0.05)))
            self.seq += 1
        with self.path.open("a") as f:
            f.write("".join(lines))
        return self

    def _snapshot(self, ts: float) -> dict[str, Any]:
        grown = self.traced - 2 * _MB
        leak_file = self.leak_file or (XSS_FILE if XSS_ROUTE in self.leak_route[1] else "/app/main.py")
        sites = [[leak_file, 42, grown, grown // 1000,
                  grown - self.leak_sites, (grown - self.leak_sites) // 1000],
                 ["/app/db.py", 7, 300 * _KB, 900, 0, 0],
                 ["<frozen abc>", 106, 98 * _KB, 352, 0, 0]]
        self.leak_sites = grown
        self.snapshot_seq += 1
        return record("snapshot", ts=ts, seq=self.snapshot_seq - 1, traced_bytes=self.traced, blocks=16000,
                      sites_total=1500, frames=1, cost_s=0.01, take_s=0.005, site_fields=list(schema.SITE_FIELDS),
                      sites=sites)

    def finish(self) -> Path:
        """Append the summary that closes a complete session."""
        ts = self.start_ts + self.seq + 0.5
        with self.path.open("a") as f:
            f.write(_line(record(
                "summary", ts=ts, duration_s=ts - self.start_ts, baseline_rss_bytes=self.baseline,
                peak_rss_bytes=self.rss, final_rss_bytes=self.rss, net_growth_bytes=self.rss - self.baseline,
                samples=self.seq, requests_total=self.requests_total, requests_dropped=0, internal_errors=0,
                endpoints=[])))
        return self.path


def write_session(directory: Path, stem: str, *, samples: int = 40, complete: bool = True,
                  routes: tuple[tuple[str, str], ...] = (("GET", "/items/{item_id}"), ("POST", "/upload")),
                  leak_route: tuple[str, str] = ("POST", "/upload"), **kwargs: Any) -> SessionWriter:
    """A session file ``directory/stem.jsonl`` with ``samples`` intervals (completed unless told)."""
    directory.mkdir(parents=True, exist_ok=True)
    writer = SessionWriter(directory / f"{stem}{schema.JSONL_SUFFIX}", routes=routes, leak_route=leak_route, **kwargs)
    writer.samples(samples)
    if complete:
        writer.finish()
    return writer


def three_sessions(tmp_path: Path) -> Path:
    """A leaking, a fixed and an XSS-named session, all complete, under ``tmp_path``."""
    write_session(tmp_path / "leaking", "leakyspanner_20260601_100000", start_ts=1_780_000_000.0)
    write_session(tmp_path / "fixed", "leakyspanner_20260601_110000", leak_bytes=0, start_ts=1_780_003_600.0)
    write_session(tmp_path / "xss", "leakyspanner_20260601_120000", start_ts=1_780_007_200.0,
                  routes=(("GET", "/health"), ("GET", XSS_ROUTE)), leak_route=("GET", XSS_ROUTE),
                  host="<b>evil-host</b>")
    return tmp_path


def copy_samples(target: Path, *names: str) -> list[Path]:
    """Copy sample_logs/<name>/*.jsonl into ``target/<name>``; the names that have sessions."""
    copied = []
    for name in names:
        files = sorted((SAMPLE_LOGS / name).glob(f"*{schema.JSONL_SUFFIX}"))
        if files:
            (target / name).mkdir(parents=True, exist_ok=True)
            for file in files:
                shutil.copy2(file, target / name / file.name)
            copied.append(target / name)
    return copied


def fleet_files() -> Any:
    """tests/fleet/fleet_files.py, loaded by path: hour-long sessions with an exact leak per call."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fleet_files", Path(__file__).parents[1] / "fleet" / "fleet_files.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

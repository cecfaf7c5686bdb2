"""Small seeded sessions for the stats, plot and widget tests, written to disk and loaded back.

Test modules bind the fixtures by assignment (``leaky = plot_fixtures.leaky``)
so pytest finds them without an import that lint would call unused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from leakyspanner import schema
from leakyspanner.analysis import Sessions, load

matplotlib.use("Agg")  # tests never open windows, whatever MPLBACKEND says

MB = 1024 * 1024
KB = 1024
START_TS = 1_750_000_000.0
BASELINE = 100 * MB
SAMPLES = 30
INTERVAL_S = 2.0
THRESHOLD_MB = 20.0
SNAPSHOT_SEQS = (0, 1, 2)  # taken at samples 0, 10 and 20
LEAK_DELTAS = (64 * KB, 128 * KB)  # POST /leak alternates these: average 96 KB
OK_DELTAS = (8 * KB, -4 * KB)      # GET /ok alternates these: average 2 KB


def _record(kind: str, **values: Any) -> dict[str, Any]:
    unknown = set(values) - set(schema.FIELDS[kind])
    assert not unknown, f"not {kind} fields in the schema: {unknown}"
    return {"kind": kind, **values}


def _request(**values: Any) -> list[Any]:
    return [schema.REQUEST_TAG, *(values.get(name) for name in schema.REQUEST_FIELDS)]


def _sites(k: int) -> list[list[Any]]:
    """Snapshot k's sites: leak.py grows, ok.py stays, gone.py only in the first, new.py only in the last."""
    rows = [["app/leak.py", 12, 100 * KB * (k + 1), 10 * (k + 1), 100 * KB, 10], ["app/ok.py", 3, 5000, 5, 0, 0]]
    if k == 0:
        rows.append(["app/gone.py", 7, 3000, 3, 3000, 3])
    if k == len(SNAPSHOT_SEQS) - 1:
        rows.append(["app/new.py", 9, 2048, 2, 2048, 2])
    return rows


def session_records(*, pid: int, growth_per_sample_bytes: int, seed: int, samples: int = SAMPLES,
                    snapshots: bool = True) -> list[Any]:
    """One session: three requests per sample interval, RSS growing linearly with seeded noise."""
    rng = np.random.default_rng(seed)
    records: list[Any] = [_record(
        "header", format=schema.FORMAT_NAME, schema_version=schema.SCHEMA_VERSION,
        session_id=schema.session_stem(START_TS, pid), leakyspanner_version="0.2.0", pid=pid, host="test",
        python="3.11", platform="Linux", level="mid", start_ts=START_TS, baseline_rss_bytes=BASELINE,
        baseline_vms_bytes=400 * MB, memory_reader="statm", request_fields=list(schema.REQUEST_FIELDS),
        config={"interval_seconds": INTERVAL_S, "leak_threshold_mb": THRESHOLD_MB})]
    alerted = False
    for seq in range(samples):
        ts = START_TS + (seq + 1) * INTERVAL_S
        rss = BASELINE + (seq + 1) * growth_per_sample_bytes + int(rng.normal(0, 0.05 * MB))
        traced = MB + (seq + 1) * growth_per_sample_bytes // 2
        for i, (method, route, status, delta) in enumerate((
                ("GET", "/ok", 200, OK_DELTAS[seq % 2]),
                ("POST", "/leak", 200, LEAK_DELTAS[seq % 2]),
                ("GET", "/fail", 500, 0))):
            before = rss - 2 * MB
            records.append(_request(ts=ts - 1 + 0.1 * i, method=method, route=route, status=status,
                                    duration_s=0.01 * (i + 1), rss_before_bytes=before, rss_after_bytes=before + delta,
                                    traced_before_bytes=traced, traced_after_bytes=traced + delta,
                                    inflight_start=1, inflight_end=1))
        records.append(_record("sample", ts=ts, seq=seq, rss_bytes=rss, vms_bytes=400 * MB + rss,
                               rss_delta_bytes=rss - BASELINE, tracing=True, traced_bytes=traced,
                               requests_total=3 * (seq + 1), inflight=0))
        if snapshots and seq % 10 == 0:
            k = seq // 10
            records.append(_record("snapshot", ts=ts, seq=k, traced_bytes=traced, blocks=100, sites_total=4,
                                   frames=1, site_fields=list(schema.SITE_FIELDS), sites=_sites(k)))
        if not alerted and rss - BASELINE > THRESHOLD_MB * MB:
            alerted = True
            records.append(_record("alert", ts=ts, alert="memory_growth", rss_bytes=rss, baseline_rss_bytes=BASELINE,
                                   growth_bytes=rss - BASELINE, threshold_bytes=int(THRESHOLD_MB * MB)))
    return records


def write(directory: Path, records: list[Any]) -> Path:
    path = directory / f"{records[0]['session_id']}{schema.JSONL_SUFFIX}"
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Sessions:
    """Two sessions: a leaking one (1 MB per 2 s sample, alert at 20 MB) then a flat one."""
    directory = tmp_path_factory.mktemp("plot_sessions")
    write(directory, session_records(pid=1, growth_per_sample_bytes=MB, seed=1))
    write(directory, session_records(pid=2, growth_per_sample_bytes=0, seed=2))
    return load(directory)


@pytest.fixture(scope="session")
def leaky(pair: Sessions) -> Sessions:
    """The leaking session of :func:`pair` alone."""
    return pair.select(pair.session_ids[0])


@pytest.fixture(scope="session")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Sessions:
    """A session with a header and nothing else: every plot has to say "no data"."""
    directory = tmp_path_factory.mktemp("bare_session")
    write(directory, session_records(pid=3, growth_per_sample_bytes=0, seed=3, samples=0))
    return load(directory)

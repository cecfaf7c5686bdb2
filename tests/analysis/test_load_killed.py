"""A session killed with SIGKILL: no summary, and request records written after the last sample."""

from __future__ import annotations

import warnings

from leakyspanner import schema
from leakyspanner.analysis import load


def test_killed_session_counts_requests_recorded_after_its_last_sample(tmp_path, synth):
    records = synth.session(samples=3, requests_per_sample=3, complete=False)
    last_ts = max(r["ts"] for r in records if isinstance(r, dict) and r.get("kind") == "sample")
    for i in range(4):  # served after the last sample, then SIGKILL: no sample counted them
        records.append(synth.request(ts=last_ts + 0.5 + i * 0.1, method="GET", route="/users", status=200,
                               duration_s=0.01, rss_before_bytes=1, rss_after_bytes=1,
                               traced_before_bytes=None, traced_after_bytes=None,
                               inflight_start=1, inflight_end=1))
    path = synth.write(tmp_path / f"{records[0]['session_id']}{schema.JSONL_SUFFIX}", records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = load(path).sessions.iloc[0]
    assert not bool(row["complete"])
    assert row["requests_total"] == 9 + 4


def test_complete_session_keeps_the_summarys_total(tmp_path, synth):
    records = synth.session(samples=3, requests_per_sample=3)
    path = synth.write(tmp_path / f"{records[0]['session_id']}{schema.JSONL_SUFFIX}", records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load(path).sessions.iloc[0]["requests_total"] == 9

"""The fleet verdict: the route leaking on most hosts first, the outlier host named, growth
per release; DuckDB over Parquet (local and s3://) and pandas over loaded sessions agree."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fleet_files import write_fleet, write_session
from netutil import free_port

from leakyspanner import cli
from leakyspanner.analysis.load import load
from leakyspanner.fleet import export_parquet, fleet_verdict, read_parquet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six hosts: /orders leaks on five, /export only on web-2 (200 KB a call); logs and their dataset."""
    root = tmp_path_factory.mktemp("fleet")
    write_fleet(root / "logs", hosts=6, leaky_hosts=5, outlier=2)
    export_parquet(load(root / "logs", warn=False), str(root / "ds"))
    return root / "logs", root / "ds"


def test_route_leaking_on_most_hosts_comes_first_and_quiet_routes_do_not_leak(fleet):
    _, dataset = fleet
    verdict = fleet_verdict(str(dataset))
    leaking = verdict.leaking_routes
    assert list(leaking["route"]) == ["/orders/{order_id}", "/export"]
    first = leaking.iloc[0]
    assert (first["hosts_leaking"], first["hosts_serving"]) == (4, 6)  # on web-2 /export dwarfs it
    assert 7000 < first["bytes_per_call"] < 9500
    assert leaking.iloc[1]["hosts_leaking"] == 1
    quiet = verdict.routes.set_index("route").loc[["/items/{item_id}", "/health"], "hosts_leaking"]
    assert (quiet == 0).all()
    assert "web-2" in " ".join(verdict.lines()) and "stands out" in " ".join(verdict.lines())
    assert list(verdict.outliers["host"]) == ["web-2"]


def test_duckdb_over_parquet_and_pandas_over_the_logs_agree(fleet):
    logs, dataset = fleet
    duck = fleet_verdict(str(dataset))
    panda = fleet_verdict(load(logs, warn=False))
    pd.testing.assert_frame_equal(duck.routes, panda.routes, check_dtype=False, rtol=1e-9)
    merged = duck.sessions.merge(panda.sessions, on="session_id")
    assert len(merged) == 6
    assert (merged["growth_bytes_per_h_x"] - merged["growth_bytes_per_h_y"]).abs().max() < 1.0
    assert list(duck.groups["outlier"]) == list(panda.groups["outlier"])


def test_growth_per_release_names_the_release_that_brought_the_leak(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for h in range(4):  # v1 clean on every host, v2 leaks on every host
        write_session(logs, f"leakyspanner_20260101_0000{h}0", f"web-{h}", 1_780_000_000.0 + h, seed=h)
        write_session(logs, f"leakyspanner_20260102_0000{h}0", f"web-{h}", 1_780_090_000.0 + h,
                      {"/orders/{order_id}": 4096}, seed=10 + h)
    sessions = load(logs, warn=False)
    for release, day in (("v1", "20260101"), ("v2", "20260102")):
        export_parquet(sessions.select(*[s for s in sessions.session_ids if day in s]), str(tmp_path / "ds"),
                       release=release)
    verdict = fleet_verdict(str(tmp_path / "ds"), by="release")
    groups = verdict.groups.set_index("release")
    assert groups.loc["v1", "sessions_leaking"] == 0 and groups.loc["v2", "sessions_leaking"] == 4
    assert groups.loc["v2", "median_growth_bytes_per_h"] > 10 * max(groups.loc["v1", "median_growth_bytes_per_h"], 1)
    text = "\n".join(verdict.lines())
    assert "Growth per release" in text and "v2:" in text


def test_heap_evidence_names_a_route_whose_rss_deltas_do_not(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_session(logs, "leakyspanner_20260101_000000", "web-0", 1_780_000_000.0, {"/export": 100_000}, heap=True)
    sessions = load(logs, warn=False)
    # the heap engine saw /export grow, the request deltas were not measured (sampled away)
    blind = dataclasses.replace(sessions, requests=sessions.requests.assign(rss_delta_bytes=pd.NA))
    verdict = fleet_verdict(blind)
    assert list(verdict.leaking_routes["route"]) == ["/export"]


def test_bad_arguments_name_the_valid_values(fleet):
    _, dataset = fleet
    with pytest.raises(ValueError, match="by must be one of 'host', 'release'"):
        fleet_verdict(str(dataset), by="pod")
    with pytest.raises(ValueError, match=r"share must be a fraction in \(0, 1\]"):
        fleet_verdict(str(dataset), share=2)


def test_cli_export_then_fleet_exits_1_on_a_leak_and_escapes_hostile_routes(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_session(logs, "leakyspanner_20260101_000000", "web-\x1b[31m0", 1_780_000_000.0,
                  {"/orders/{order_id}": 4096})
    assert cli.main(["export", str(logs), "--parquet", str(tmp_path / "ds"), "--release", "v9"]) == 0
    assert "1 session(s) written" in capsys.readouterr().out
    assert cli.main(["fleet", str(tmp_path / "ds"), "--by", "host"]) == 1
    out = capsys.readouterr().out
    assert "POST /orders/{order_id} leaks on 1 of 1 hosts" in out
    assert "\x1b" not in out
    assert cli.main(["fleet", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["fleet", str(tmp_path / "ds"), "--growth-threshold", "fast"]) == 2


# ------------------------------------------------------------------------ s3 via moto

@pytest.fixture
def s3_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    pytest.importorskip("flask", reason="moto's server mode is not installed (pip install 'moto[server]')")
    port = free_port()
    log = open(tmp_path / "moto.out", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "moto.out").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="fleet-bucket")
        yield {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_s3_dataset_on_a_local_s3_server_gives_the_same_verdict(fleet, s3_server):
    logs, dataset = fleet
    url = "s3://fleet-bucket/leaks"
    export_parquet(load(logs, warn=False), url, storage_options=s3_server)
    remote = fleet_verdict(url, storage_options=s3_server)
    local = fleet_verdict(str(dataset))
    pd.testing.assert_frame_equal(remote.routes, local.routes)
    assert len(read_parquet(url, hosts=["web-2"], storage_options=s3_server).sessions) == 1

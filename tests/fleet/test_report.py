"""``load()`` and ``leakyspanner report`` read a Parquet dataset (a directory or an fsspec URL) and
give the verdicts the JSON-lines give; a bad dataset path is bad input (exit 2) with a clear message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fleet_files import write_session

from leakyspanner import cli, errors
from leakyspanner.analysis.load import load
from leakyspanner.discovery import dataset_url
from leakyspanner.fleet import DATASET_FILE

ROOT = Path(__file__).resolve().parents[2]
LEAK = {"/orders/{order_id}": 65536}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three hosts' sessions, /orders leaking 64 KB a call on two of them, and their dataset (via the CLI)."""
    root = tmp_path_factory.mktemp("report")
    logs = root / "logs"
    logs.mkdir()
    for h in range(3):
        write_session(logs, f"leakyspanner_20260101_00000{h}", f"web-{h}", 1_780_000_000.0 + h * 3600,
                      LEAK if h < 2 else {}, requests=800, samples=30, seed=h)
    assert cli.main(["-q", "export", str(logs), "--parquet", str(root / "ds")]) == 0
    return logs, root / "ds"


def _report_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, object]]]:
    code = cli.main(["report", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_report_on_an_exported_dataset_gives_the_jsonl_verdicts(exported, capsys):
    logs, ds = exported
    code, from_logs = _report_json(capsys, str(logs))
    assert code == 1 and [v["status"] for v in from_logs] == ["leaking", "leaking", "no leak"]
    assert _report_json(capsys, str(ds)) == (code, from_logs)
    assert _report_json(capsys, ds.as_uri()) == (code, from_logs)  # an fsspec URL: file://
    assert cli.main(["-q", "report", str(ds), "--session", "leakyspanner_20260101_000002"]) == 0
    assert "NO LEAK" in capsys.readouterr().out


def test_load_reads_a_dataset_directory_or_url_into_the_same_sessions(exported):
    logs, ds = exported
    from_logs = load(logs, warn=False)
    for source in (ds, str(ds), ds.as_uri()):
        back = load(source)
        assert back.session_ids == from_logs.session_ids
        assert len(back.requests) == len(from_logs.requests) and len(back.samples) == len(from_logs.samples)


@pytest.mark.parametrize(("make", "message"), [
    (lambda ds, tmp: tmp / "nowhere", "does not exist"),
    (lambda ds, tmp: "nosuchscheme://bucket/leaks", "Protocol not known: nosuchscheme; give a local directory"),
    (lambda ds, tmp: _marker_only(ds, tmp), "partial leakyspanner dataset: .*_schema/sessions.parquet is missing"),
    (lambda ds, tmp: _newer(ds, tmp), "version 99, newer than this leakyspanner reads .*: upgrade leakyspanner"),
], ids=["missing", "unknown-scheme", "partial", "newer"])
def test_a_bad_dataset_path_exits_2_with_a_clear_message(exported, tmp_path, capsys, make, message):
    target = str(make(exported[1], tmp_path))
    assert cli.main(["report", target]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(f"^leakyspanner: .*{message}", captured.err), captured.err


def _marker_only(ds: Path, tmp: Path) -> Path:
    (tmp / "partial").mkdir()
    (tmp / "partial" / DATASET_FILE).write_bytes((ds / DATASET_FILE).read_bytes())
    return tmp / "partial"


def _newer(ds: Path, tmp: Path) -> Path:
    marker = json.loads((ds / DATASET_FILE).read_text())
    (tmp / "newer").mkdir()
    (tmp / "newer" / DATASET_FILE).write_text(json.dumps({**marker, "dataset_version": 99}))
    return tmp / "newer"


def test_a_dataset_among_other_paths_is_refused_with_the_remedy(exported, capsys):
    logs, ds = exported
    assert cli.main(["report", str(logs), str(ds)]) == 2
    assert "is a Parquet dataset: give it on its own" in capsys.readouterr().err
    with pytest.raises(errors.NotALogError):  # load() given a list reads session logs only
        load([logs, ds], warn=False)


def test_without_the_fleet_extra_a_dataset_names_the_pip_line_and_logs_still_load(exported):
    logs, ds = exported
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "from leakyspanner import cli\n"
            f"print('logs', cli.main(['-q', 'report', {str(logs)!r}]))\n"
            "print('fleet imported', any(m.startswith('leakyspanner.fleet') for m in sys.modules))\n"
            f"print('dataset', cli.main(['report', {str(ds)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "logs 1\nfleet imported False\ndataset 2\n" in done.stdout, done.stdout + done.stderr
    assert "pip install 'leakyspanner[fleet]'" in done.stderr


def test_a_dataset_is_told_by_its_marker_or_a_url_and_nothing_else(exported, tmp_path):
    logs, ds = exported
    assert dataset_url(ds) == str(ds) and dataset_url(str(ds)) == str(ds)
    assert dataset_url("s3://bucket/leaks") == "s3://bucket/leaks"
    (tmp_path / "empty").mkdir()
    for other in (logs, logs / "leakyspanner_20260101_000000.jsonl", tmp_path / "empty", tmp_path / "missing",
                  f"{logs}/*.jsonl", [str(ds)], b"/tmp"):
        assert dataset_url(other) is None, other


def test_report_html_of_a_dataset_carries_the_verdict_across_hosts(exported, tmp_path, capsys):
    _, ds = exported
    out = tmp_path / "fleet.html"
    assert cli.main(["-q", "report", str(ds), "--html", str(out)]) == 1
    page = out.read_text(encoding="utf-8")
    block = page.split('<script id="leakyspanner-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    fleet = json.loads(block)["fleet"]
    assert fleet["status"] == "ok" and fleet["hosts"] == 3
    assert [(r["endpoint"], r["hosts_leaking"]) for r in fleet["routes"]["rows"]] == [("POST /orders/{order_id}", 2)]

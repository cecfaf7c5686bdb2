"""Exit codes a CI job can trust, user gates, and a terminal that log strings cannot take over."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leakyspanner import __version__, schema
from leakyspanner.cli import main
from leakyspanner.commands import report, terminal

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ui"))  # the seeded session writers live with the UI tests
from session_files import three_sessions, write_session  # noqa: E402

CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # all but \n


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``leaking/``, ``fixed/`` (no leak, RSS creeping up ~40 MB/h with ~1.7 KB per call) and ``xss/``."""
    return three_sessions(tmp_path_factory.mktemp("cli"))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ exit codes

def test_no_leak_is_0_and_a_leak_is_1(logs, capsys):
    assert _run(capsys, "report", str(logs / "fixed"))[0] == 0
    assert _run(capsys, "report", str(logs / "leaking"))[0] == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["report", "{logs}/leaking", "--session", "nope"], "no session 'nope'"),
    (["report", "{logs}/missing"], "does not exist"),
    (["report", "{logs}/notes.jsonl"], "is not a leakyspanner log"),
    (["report", "{logs}/newer"], "upgrade leakyspanner"),
    (["report", "{logs}/leaking", "--html", "{logs}/no/such/dir/out.html"], "does not exist; create it first"),
    (["report", "{logs}/leaking", "--html", "{logs}"], "that is a directory"),
    (["report", "{logs}/leaking", "--compare", "{logs}/fixed", "{logs}/xss"], "exactly one session on each side"),
    (["report", "{logs}/leaking", "--fail-on-growth", "5MB"], "a growth rate like 5MB/h or 500KB/h"),
    (["report", "{logs}/leaking", "--fail-on-growth", "fast/h"], "a growth rate like 5MB/h"),
    (["report", "{logs}/leaking", "--fail-on-bytes-per-call", "1 KG"], "a size like 1KB"),
    (["inspect", "{logs}", "--port", "70000", "--no-browser"], "a port number from 0 to 65535"),
    (["inspect", "{logs}", "--port", "http", "--no-browser"], "a port number from 0 to 65535"),
    (["report"], "the following arguments are required: path"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_2_with_one_clear_line_and_no_traceback(logs, capsys, argv, says):
    (logs / "notes.jsonl").write_text('{"hello": "world"}\n')
    newer = logs / "newer"
    if not newer.exists():
        write_session(newer, "leakyspanner_20260601_160000", samples=3)
        path = newer / "leakyspanner_20260601_160000.jsonl"
        header, rest = path.read_text().split("\n", 1)
        header = header.replace(f'"schema_version":{schema.SCHEMA_VERSION}', '"schema_version":99')
        path.write_text(header + "\n" + rest)
    code, out, err = _run(capsys, *[a.format(logs=logs) for a in argv])
    assert code == 2, (out, err)
    assert says in err and "Traceback" not in err


def test_html_report_is_written_and_exit_code_still_follows_the_verdict(logs, tmp_path, capsys):
    code, _, err = _run(capsys, "report", str(logs / "leaking"), "--html", str(tmp_path / "r.html"))
    assert code == 1 and "HTML report written to" in err
    assert "<!doctype html>" in (tmp_path / "r.html").read_text().lower()


def test_an_internal_error_is_3_with_a_hint_and_a_traceback_only_on_request(logs, capsys, monkeypatch):
    from leakyspanner.analysis import diagnose as diagnose_module

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(diagnose_module, "diagnose", broken)
    monkeypatch.delenv("LEAKYSPANNER_DEBUG", raising=False)
    code, _, err = _run(capsys, "report", str(logs / "fixed"))
    assert code == 3
    assert "leakyspanner: internal error: ZeroDivisionError: boom" in err and "please report it" in err
    assert "Traceback" not in err and "-v or LEAKYSPANNER_DEBUG=1" in err
    code, _, err = _run(capsys, "-v", "report", str(logs / "fixed"))
    assert code == 3 and "Traceback" in err and "def broken" not in err and "ZeroDivisionError: boom" in err
    monkeypatch.setenv("LEAKYSPANNER_DEBUG", "1")
    code, _, err = _run(capsys, "report", str(logs / "fixed"))
    assert code == 3 and "Traceback" in err


def test_help_documents_the_exit_codes(capsys):
    for argv in (["--help"], ["report", "--help"]):
        code, out, _ = _run(capsys, *argv)
        assert code == 0
        assert "exit codes:" in out and "3  internal error" in out and "2  bad input" in out
    assert "--fail-on-growth" in _run(capsys, "report", "--help")[1]


def test_version_and_no_command(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"leakyspanner {__version__}"
    assert _run(capsys)[0] == 2


def test_python_dash_m_behaves_like_the_entry_point(logs):
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "leakyspanner", *argv], capture_output=True, text=True,
                              env=env, timeout=120)

    assert run("--version").stdout.strip() == f"leakyspanner {__version__}"
    missing = run("report", str(logs / "missing"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    leaking = run("-q", "report", str(logs / "leaking"))
    assert leaking.returncode == 1 and leaking.stdout.count("\n") == 1 and "LEAKING" in leaking.stdout
    assert run("inspect", str(logs), "--port", "70000").returncode == 2


def test_quiet_prints_one_line_per_session_and_no_warnings(logs, tmp_path, capsys):
    torn = tmp_path / "torn"
    write_session(torn, "leakyspanner_20260601_180000", samples=30, complete=False)
    with (torn / "leakyspanner_20260601_180000.jsonl").open("a") as f:
        f.write('{"kind":"sam')
    code, out, err = _run(capsys, "report", str(torn))
    assert "warning: leakyspanner skipped 1 unreadable line" in err
    code, out, err = _run(capsys, "-q", "report", str(torn), str(logs / "leaking"))
    assert code == 1 and err == ""
    assert len(out.splitlines()) == 2 and out.splitlines()[0].startswith("leakyspanner_")


# ------------------------------------------------------------------ gates

def test_growth_gate_fails_a_session_the_verdict_calls_no_leak(logs, capsys):
    code, out, _ = _run(capsys, "report", str(logs / "fixed"), "--fail-on-growth", "5MB/h")
    assert code == 1
    assert "NO LEAK" in out and re.search(r"Gate --fail-on-growth 5\.0 MB/h exceeded: session \S+ RSS grows "
                                         r"[\d.]+ MB/h after warm-up", out)
    code, out, _ = _run(capsys, "report", str(logs / "fixed"), "--fail-on-growth", "1GB/hour")
    assert code == 0 and "Gate --fail-on-growth 1.0 GB/h passed" in out


def test_bytes_per_call_gate_names_the_endpoint(logs, capsys):
    code, out, _ = _run(capsys, "report", str(logs / "fixed"), "--fail-on-bytes-per-call", "1KB")
    assert code == 1
    assert re.search(r"Gate --fail-on-bytes-per-call 1\.0 KB exceeded: session \S+ POST /upload retains "
                     r"[\d.]+ KB per call \(90% band", out)
    code, out, _ = _run(capsys, "report", str(logs / "fixed"), "--fail-on-bytes-per-call", "100KB")
    assert code == 0 and "passed" in out


def test_gates_go_to_stderr_in_json_mode(logs, capsys):
    code, out, err = _run(capsys, "report", str(logs / "fixed"), "--json", "--fail-on-growth", "500KB/h")
    assert code == 1 and json.loads(out)[0]["status"] == "no leak"
    assert "Gate --fail-on-growth 500.0 KB/h exceeded" in err


def test_gates_apply_to_the_after_side_of_a_comparison(logs, capsys):
    code, out, _ = _run(capsys, "report", str(logs / "leaking"), "--compare", str(logs / "fixed"))
    assert code == 0 and "FIXED" in out
    code, out, _ = _run(capsys, "report", str(logs / "leaking"), "--compare", str(logs / "fixed"),
                        "--fail-on-growth", "5MB/h")
    assert code == 1 and "--fail-on-growth 5.0 MB/h exceeded" in out


@pytest.mark.parametrize(("text", "expected"), [
    ("5MB/h", 5 * 1024 ** 2), ("500KB/h", 500 * 1024), ("1 KB/s", 3600 * 1024), ("2MiB/hour", 2 * 1024 ** 2),
    ("100/min", 6000), ("0.5GB/h", 0.5 * 1024 ** 3),
])
def test_growth_rates_parse_to_bytes_per_hour(text, expected):
    assert report.bytes_per_hour(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("1KB", 1024), ("100", 100), ("2.5 mb", 2.5 * 1024 ** 2),
                                                ("1KiB", 1024)])
def test_sizes_parse_to_bytes(text, expected):
    assert report.byte_size(text) == expected


# ------------------------------------------------------------------ compare and HTML

def test_compare_with_html_writes_the_compare_page(logs, tmp_path, capsys):
    out_file = tmp_path / "fix.html"
    code, _, err = _run(capsys, "report", str(logs / "leaking"), "--compare", str(logs / "fixed"), "--html",
                        str(out_file))
    assert code == 0 and "HTML comparison written to" in err
    page = out_file.read_text()
    block = re.search(r'<script id="leakyspanner-compare" type="application/json">(.*?)</script>', page, re.S)
    assert block, "no comparison in the page"
    data = json.loads(block.group(1))
    assert data["fixcheck"]["fixed"] is True
    assert data["before"]["session"]["session_id"] == "leakyspanner_20260601_100000"
    assert data["after"]["session"]["session_id"] == "leakyspanner_20260601_110000"
    embedded = json.loads(re.search(r'<script id="leakyspanner-data" type="application/json">(.*?)</script>',
                                    page, re.S).group(1))
    assert sorted(embedded["details"]) == ["leakyspanner_20260601_100000", "leakyspanner_20260601_110000"]


def test_compare_of_a_session_with_a_copy_of_itself(logs, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    source = next((logs / "fixed").glob("*.jsonl"))
    (copy / source.name).write_bytes(source.read_bytes())
    code, out, _ = _run(capsys, "report", str(logs / "fixed"), "--compare", str(copy), "--html",
                        str(tmp_path / "same.html"))
    assert code == 0 and "Neither session leaks" in out
    assert "leakyspanner-compare" in (tmp_path / "same.html").read_text()


# ------------------------------------------------------------------ terminal safety

HOSTILE_ROUTE = "/x\x1b]0;pwned\x07\x1b[2J\u202eevil\u2066\x9b31m\r\nFAKE LINE"


def test_report_never_prints_control_characters_from_a_log(tmp_path, capsys):
    write_session(tmp_path / "evil", "leakyspanner_20260601_190000", routes=(("GET", "/ok"), ("GET", HOSTILE_ROUTE)),
                  leak_route=("GET", HOSTILE_ROUTE), host="h\x1b[31m")
    for argv in ([], ["-q"], ["--fail-on-bytes-per-call", "1KB"]):
        code, out, err = _run(capsys, *argv[:1] if argv == ["-q"] else [], "report", str(tmp_path / "evil"),
                              *(argv if argv != ["-q"] else []))
        assert code == 1
        assert not CONTROL.search(out) and not CONTROL.search(err), (argv, out)
        assert "FAKE LINE" not in "\n".join(line for line in out.splitlines() if line.startswith("FAKE"))
    code, out, _ = _run(capsys, "report", str(tmp_path / "evil"))
    assert "\\x1b[2J" in out and "\\u202e" in out and "\\x9b" in out and "\\r\\nFAKE LINE" in out
    code, out, _ = _run(capsys, "report", str(tmp_path / "evil"), "--json")
    assert not CONTROL.search(out) and "\\u202e" in out


def test_error_messages_and_load_warnings_are_escaped_too(tmp_path, capsys):
    write_session(tmp_path / "d", "leakyspanner_20260601_190000", samples=30, complete=False)
    evil = tmp_path / "d" / "leakyspanner_\x1b[2J\u202e.jsonl"
    evil.write_text('{"kind":"hea')
    code, _, err = _run(capsys, "report", str(tmp_path / "d"), "--session", "x\x1b]0;t\x07")
    assert code == 2 and not CONTROL.search(err) and "x\\x1b]0;t\\x07" in err
    code, _, err = _run(capsys, "report", str(tmp_path / "d"))
    assert "warning:" in err and "\\x1b[2J\\u202e" in err and not CONTROL.search(err)


def test_escaped_copies_dataclasses_without_touching_the_original():
    from leakyspanner.analysis.verdict import LeakKind

    kind = LeakKind("native", "a\x1bb", {"route": "\u202e"}, ["c\nd"])
    safe = terminal.escaped(kind)
    assert (safe.summary, safe.evidence, safe.remedies) == ("a\\x1bb", {"route": "\\u202e"}, ["c\\nd"])
    assert kind.summary == "a\x1bb"
    assert terminal.printable("a\nb\x85", newlines=True) == "a\nb\\x85"

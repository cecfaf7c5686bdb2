"""README.md's commands, run: what a newcomer copies from it must work as written.

The code blocks are read from README.md itself, so editing a command there
changes what runs here. The fresh-machine commands must be what ``scripts/``
and CI run (not executed here: they build a virtualenv and run the whole suite);
the quick-start snippets run in a fresh interpreter in a scratch folder; the
``leakyspanner`` commands run against a session that the quick-start app writes;
the demo runs with its short-duration flag.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.MULTILINE | re.DOTALL)]
TIMEOUT = 180


def _blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCKS if lang == language]


def _commands(prefix: str) -> list[list[str]]:
    """Every line of README's bash blocks that starts with ``prefix``, split as a shell would (comments off)."""
    out = []
    for body in _blocks("bash"):
        for line in body.splitlines():
            if line.strip().startswith(prefix):
                out.append(shlex.split(line, comments=True))
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "NO_COLOR": "1"}


def _leakyspanner(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``leakyspanner ARGS`` as typed after ``source .venv/bin/activate``: the venv's console script."""
    exe = Path(sys.executable).with_name("leakyspanner")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "leakyspanner"]
    return subprocess.run([*command, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project whose ``leakyspanner_logs/`` holds a session the README's quick-start app wrote."""
    folder = tmp_path_factory.mktemp("readme_project")
    quick_start = next(b for b in _blocks("python") if "leakyspanner(app)" in b)
    driver = textwrap.dedent("""
        from fastapi.testclient import TestClient

        kept = []

        @app.get("/orders/{order_id}")
        def order(order_id: int):
            kept.append(bytearray(20_000))
            return {"order": order_id}

        with TestClient(app) as client:  # runs the lifespan: the session ends with its summary
            for i in range(300):
                assert client.get(f"/orders/{i}").status_code == 200
    """)
    (folder / "main.py").write_text(quick_start + driver)
    done = subprocess.run([sys.executable, "main.py"], cwd=folder, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert list((folder / "leakyspanner_logs").glob("*.jsonl")), "the quick-start app wrote no session"
    return folder


def test_fresh_machine_commands_are_the_scripts_and_the_test_command_is_what_ci_runs() -> None:
    fresh = _commands("bash scripts/")
    assert [c[:2] for c in fresh] == [["bash", "scripts/demo.sh"], ["bash", "scripts/test.sh"]], fresh
    for command in fresh:
        assert (ROOT / command[1]).is_file(), command
    ci = (ROOT / ".ci" / "run").read_text()
    ran = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert ran[-1] == "bash scripts/test.sh", ran
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert 'exec .venv/bin/leakyspanner demo "$@"' in demo  # so README's demo is `leakyspanner demo`
    assert "source .venv/bin/activate" in README and (ROOT / "scripts" / "_venv.sh").read_text().count(".venv") >= 2


def test_install_lines_name_extras_the_package_defines() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = [re.search(r"\[(\w+)\]", " ".join(c)) for c in _commands("pip install")]
    assert named, "README has no pip install line"
    for found in named:
        assert found is None or found.group(1) in extras, found.group(0)
    notebook = _commands("jupyter lab")
    assert notebook and notebook[0][-1].rstrip("/") == "notebooks" and (ROOT / "notebooks").is_dir()
    assert any(dep.startswith("jupyterlab") for dep in extras["notebook"])


def test_attach_signature_in_readme_is_the_real_defaults() -> None:
    from leakyspanner import capture

    block = next(b for b in _blocks("python") if b.lstrip().startswith("leakyspanner(app, *"))
    # "leakyspanner(app, *, a=1, ...)" as a call: the keywords README shows, with their values
    call = ast.parse(re.sub(r",\s*\.\.\.\s*\)", ")", block.replace("*,", "", 1))).body[0].value  # type: ignore[attr-defined]
    shown = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    config = getattr(capture, "CaptureConfig", None)
    if config is None:
        from leakyspanner.capture.config import CaptureConfig as config
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(config)}
    assert {name: defaults.get(name, "<no such option>") for name in shown} == shown


def test_quick_start_analysis_snippet_runs_on_the_session(project: Path) -> None:
    snippet = next(b for b in _blocks("python") if "from leakyspanner.analysis import load" in b)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=project, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "session " in done.stdout and "Memory trend" in done.stdout, done.stdout


def test_report_commands_in_readme_run_on_the_session(project: Path) -> None:
    reports = [c for c in _commands("leakyspanner report") if "--compare" not in c]
    assert reports, "README has no leakyspanner report example"
    for command in reports:
        done = _leakyspanner(command[1:], project)
        assert done.returncode in (0, 1), f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert done.stdout.startswith("session "), done.stdout
        assert "\nNext:\n" in done.stdout, done.stdout
        html = next((command[i + 1] for i, word in enumerate(command) if word == "--html"), None)
        if html:
            assert (project / html).read_text().startswith("<!doctype html>")


def test_inspect_command_in_readme_serves_the_session(project: Path) -> None:
    command = next(c for c in _commands("leakyspanner inspect"))
    exe = Path(sys.executable).with_name("leakyspanner")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "leakyspanner"]
    proc = subprocess.Popen([*base, *command[1:], "--port", "0", "--no-browser"], cwd=project, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert re.search(r"http://127\.0\.0\.1:\d+/", first), first
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_demo_runs_with_a_short_duration(tmp_path: Path) -> None:
    done = _leakyspanner(["demo", "--seconds", "1", "--log-dir", str(tmp_path / "logs")], tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "Verdict: session " in done.stdout and "\nNext" in done.stdout, done.stdout

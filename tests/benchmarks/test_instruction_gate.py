"""The CI instruction gate: it passes on this checkout and fails on a deliberate regression."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(shutil.which("valgrind") is None,
                       reason="needs valgrind (apt-get install valgrind; scripts/test.sh installs it)"),
    pytest.mark.timeout(900),  # well under a minute on an idle host; a loaded 2-core host is slower
]


def _gate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.instructions_gate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=880)


def test_request_path_is_within_the_baseline_margin() -> None:
    gate = _gate()
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "instruction gate ok" in gate.stdout
    assert "baseline" in gate.stdout and "margin" in gate.stdout


def test_one_proc_read_per_request_fails_the_gate() -> None:
    # one layout is enough: the injected read raises every layout by the same amount
    gate = _gate("--inject", "statm-read", "--layouts", "0")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "instruction gate FAIL" in gate.stdout
    assert "--update" in gate.stderr  # says how to accept an intended cost

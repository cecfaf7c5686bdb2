"""The profiler's threads yield the core to the app; the app's own priority is untouched."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from fastapi import FastAPI

from leakyspanner import leakyspanner

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux only")


def _niceness(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


def test_writer_and_sampler_threads_run_niced_and_the_app_threads_do_not(tmp_path):
    app_niceness = _niceness(threading.get_native_id())
    profiler = leakyspanner(FastAPI(), log_path=tmp_path, level="basic", interval_seconds=0.05)
    try:
        ours = {t.name: t for t in threading.enumerate() if t.name.startswith("leakyspanner-")}
        assert set(ours) == {"leakyspanner-writer", "leakyspanner-sampler"}
        deadline = time.monotonic() + 5  # each thread lowers itself as it starts
        while time.monotonic() < deadline and any(
                _niceness(t.native_id) == app_niceness for t in ours.values() if t.native_id):
            time.sleep(0.01)
        for thread in ours.values():
            assert _niceness(thread.native_id) >= min(19, app_niceness + 1), thread.name
        assert _niceness(threading.get_native_id()) == app_niceness
        assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == app_niceness
    finally:
        profiler.stop()

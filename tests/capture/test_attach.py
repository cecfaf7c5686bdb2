"""Attaching: argument checks at attach time, enabled=False, import hygiene, public API."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from fastapi import FastAPI

import leakyspanner
from leakyspanner import Profiler
from leakyspanner.capture import LeakyspannerMiddleware


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": "verbose"}, "'basic', 'mid', 'deep', 'auto'"),
        ({"interval_seconds": 0}, "interval_seconds must be a number >= 0.01, got 0"),
        ({"interval_seconds": "5"}, "interval_seconds must be a number"),
        ({"leak_threshold_mb": -1}, "leak_threshold_mb must be a number >= 0"),
        ({"top_stats_count": 2.5}, "top_stats_count must be an integer >= 1"),
        ({"enabled": "maybe"}, "enabled must be True, False or one of '1', 'true'"),
        ({"log_path": 42}, "log_path must be a str or path"),
        ({"snapshot_every": 3}, "valid arguments: enabled, log_path, level"),
            ({"allocator": "jemalloc"}, "allocator must be one of 'auto', 'sampler', 'tracemalloc'"),
            ({"sample_bytes": 0}, "sample_bytes must be an integer >= 1"),
        ({"snapshot_mode": "thread"}, "snapshot_mode must be one of 'auto', 'fork', 'inline'"),
        ({"traceback_frames": 0}, "traceback_frames must be an integer >= 1"),
        ({"traceback_frames": 500}, "traceback_frames must be an integer from 1 to 100"),
        ({"request_rss_interval_seconds": -0.001}, "request_rss_interval_seconds must be a number >= 0"),
    ],
)
def test_bad_argument_fails_at_attach_naming_valid_values(tmp_path, kwargs, message):
    app = FastAPI()
    kwargs.setdefault("log_path", tmp_path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        leakyspanner.leakyspanner(app, **kwargs)
    assert app.user_middleware == []
    assert not list(tmp_path.iterdir())


def test_non_asgi_app_is_refused_with_remedy(tmp_path):
    with pytest.raises(ValueError, match="ASGI application"):
        leakyspanner.leakyspanner(object(), log_path=tmp_path)


def test_disabled_leaves_app_exactly_as_it_was(tmp_path):
    app = FastAPI()
    before = list(app.user_middleware)
    threads_before = threading.active_count()
    assert leakyspanner.leakyspanner(app, enabled=False, log_path=tmp_path / "logs") is None
    assert app.user_middleware == before
    assert threading.active_count() == threads_before
    assert not (tmp_path / "logs").exists()


def test_attach_wraps_the_whole_stack_in_one_pure_asgi_middleware_and_starts_session(tmp_path):
    app = FastAPI()
    profiler = leakyspanner.leakyspanner(app, log_path=tmp_path, level="basic")

    async def passthrough(scope, receive, send):  # added later, still inside ours
        await send({"type": "noop"})

    app.add_middleware(type("Later", (), {"__init__": lambda self, app: None, "__call__": passthrough}))
    try:
        assert isinstance(profiler, Profiler)
        stack = app.build_middleware_stack()
        assert isinstance(stack, LeakyspannerMiddleware) and stack.profiler is profiler
        assert LeakyspannerMiddleware not in [m.cls for m in app.user_middleware]
        assert profiler.active and profiler.jsonl_file.exists() and profiler.log_file.exists()
        names = {t.name for t in threading.enumerate()}
        assert {"leakyspanner-sampler", "leakyspanner-writer"} <= names
    finally:
        profiler.stop()
    assert not profiler.active


def test_stop_is_idempotent_and_summary_written_once(tmp_path):
    profiler = leakyspanner.leakyspanner(FastAPI(), log_path=tmp_path, level="basic")
    profiler.stop()
    profiler.stop()
    assert profiler.jsonl_file.read_text().count('"kind":"summary"') == 1
    assert profiler.log_file.read_text().count("LEAKYSPANNER SESSION SUMMARY") == 1


def test_importing_capture_loads_nothing_heavy():
    code = (
        "import sys, leakyspanner, leakyspanner.capture, leakyspanner.schema;"
        "heavy = {'pandas','numpy','matplotlib','ipywidgets','starlette','fastapi','psutil','httpx'};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module_name", ["leakyspanner", "leakyspanner.capture", "leakyspanner.schema",
                                         "leakyspanner.errors"])
def test_all_lists_exactly_the_public_names(module_name):
    import importlib

    module = importlib.import_module(module_name)
    public = {n for n, v in vars(module).items()
              if not n.startswith("_") and not isinstance(v, type(sys)) and n not in {"annotations"}
              and getattr(v, "__module__", module_name).startswith("leakyspanner")}
    assert sorted(module.__all__) == list(module.__all__)
    assert public <= set(module.__all__), public - set(module.__all__)

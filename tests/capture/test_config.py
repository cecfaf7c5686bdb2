"""CaptureConfig: one definition of every parameter, the environment's place in it, exclusions."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from capture_files import ping_app, read_jsonl

from leakyspanner import CaptureConfig, CaptureStats, Profiler, leakyspanner
from leakyspanner.capture.middleware import LeakyspannerMiddleware

ROOT = Path(__file__).resolve().parents[2]


_app = ping_app


def test_keyword_beats_environment_beats_default():
    env = {"LEAKYSPANNER_LEVEL": "basic", "LEAKYSPANNER_INTERVAL_SECONDS": "0.5"}
    assert CaptureConfig.resolve({}, {}).level == "mid"
    from_env = CaptureConfig.resolve({}, env)
    assert (from_env.level, from_env.interval_seconds) == ("basic", 0.5)
    explicit = CaptureConfig.resolve({"level": "deep"}, env)
    assert (explicit.level, explicit.interval_seconds) == ("deep", 0.5)


def test_every_parameter_has_its_environment_variable():
    for field in dataclasses.fields(CaptureConfig):
        if field.name in ("enabled", "exclude_paths", "log_path", "level"):
            continue
        value = field.default if field.default is not None else 7
        config = CaptureConfig.resolve({}, {f"LEAKYSPANNER_{field.name.upper()}": str(value)})
        assert getattr(config, field.name) == value, field.name


@pytest.mark.parametrize("text", ["1", "true", "YES", "On", " true "])
def test_enabled_accepts_the_usual_true_strings(text):
    assert CaptureConfig(enabled=text).enabled is True


@pytest.mark.parametrize("text", ["0", "False", "no", "OFF"])
def test_enabled_accepts_the_usual_false_strings(text):
    assert CaptureConfig(enabled=text).enabled is False


def test_enabled_of_another_string_names_the_accepted_ones():
    with pytest.raises(ValueError, match="'1', 'true', 'yes', 'on', '0', 'false', 'no', 'off'"):
        CaptureConfig(enabled="maybe")


def test_environment_kill_switch_wins_over_code_saying_enabled(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKYSPANNER_ENABLED", "off")
    app = _app()
    assert leakyspanner(app, enabled=True, log_path=tmp_path) is None
    assert app.build_middleware_stack.__name__ == "build_middleware_stack"
    assert not hasattr(app.build_middleware_stack, "__wrapped__")
    assert not list(tmp_path.iterdir())


def test_environment_cannot_switch_on_what_code_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKYSPANNER_ENABLED", "1")
    assert leakyspanner(_app(), enabled="false", log_path=tmp_path) is None


def test_attach_with_no_arguments_takes_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKYSPANNER_LOG_PATH", str(tmp_path / "env_logs"))
    monkeypatch.setenv("LEAKYSPANNER_LEVEL", "basic")
    profiler = leakyspanner(_app())
    assert profiler is not None
    try:
        assert profiler.level == "basic"
        assert profiler.jsonl_file is not None and profiler.jsonl_file.parent == tmp_path / "env_logs"
        assert read_jsonl(profiler.jsonl_file)["header"][0]["config"]["level"] == "basic"
    finally:
        profiler.stop()


@pytest.mark.parametrize(("variable", "value"), [("LEAKYSPANNER_INTERVAL_SECONDS", "fast"),
                                                  ("LEAKYSPANNER_LEVEL", "verbose"),
                                                  ("LEAKYSPANNER_ENABLED", "perhaps"),
                                                  ("LEAKYSPANNER_TOP_STATS_COUNT", "2.5"),
                                                  ("LEAKYSPANNER_EXCLUDE_PATHS", "health")])
def test_bad_environment_value_fails_at_attach_naming_the_variable(tmp_path, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    app = _app()
    with pytest.raises(ValueError, match=variable):
        leakyspanner(app, log_path=tmp_path)
    assert not list(tmp_path.iterdir())


def test_unknown_argument_names_every_valid_one(tmp_path):
    with pytest.raises(ValueError, match="unknown argument.* snapshot_every; valid arguments: enabled, log_path"):
        leakyspanner(_app(), log_path=tmp_path, snapshot_every=3)


def test_config_is_frozen_and_shared_by_value():
    config = CaptureConfig(level="basic", exclude_paths=["/health"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.level = "deep"  # type: ignore[misc]
    assert config == CaptureConfig(level="basic", exclude_paths=("/health",))
    assert hash(config) == hash(CaptureConfig(level="basic", exclude_paths=("/health",)))


def test_a_config_object_and_keyword_options_do_not_mix():
    with pytest.raises(ValueError, match="either config= or keyword options"):
        Profiler(_app(), CaptureConfig(), level="basic")


def test_the_parameter_table_in_the_docs_is_the_configs_own():
    """Regenerate with the command the docs give."""
    docs = (ROOT / "docs" / "internals.md").read_text()
    assert CaptureConfig.markdown_table() in docs
    command = 'python -c "import leakyspanner; print(leakyspanner.CaptureConfig.markdown_table())"'
    assert command.replace('"', "") in docs.replace('"', "").replace("`", "")
    printed = subprocess.run([sys.executable, "-c", command.split('"')[1]], capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout
    assert printed.strip() == CaptureConfig.markdown_table()
    for name in CaptureConfig.fields():
        assert f"LEAKYSPANNER_{name.upper()}" in docs


@pytest.mark.parametrize("entry", ["health", "", "/*", 5])
def test_bad_exclusion_is_refused_with_the_accepted_forms(entry):
    with pytest.raises(ValueError, match="exclude_paths"):
        CaptureConfig(exclude_paths=(entry,))


def test_without_exclusions_the_stack_is_the_middleware_alone(tmp_path):
    app = _app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    assert profiler is not None
    try:
        assert isinstance(app.build_middleware_stack(), LeakyspannerMiddleware)
    finally:
        profiler.stop()


def test_excluded_paths_bypass_capture_over_real_http(serve, tmp_path):
    server = serve("""
        from fastapi import FastAPI
        from leakyspanner import leakyspanner
        app = FastAPI()

        @app.get("/health")
        def health():
            return "ok"

        @app.get("/healthz")
        def healthz():
            return "ok"

        @app.get("/static/{name}")
        def static(name: str):
            return name

        @app.get("/metrics-{x}")
        def metrics(x: str):
            return x

        @app.get("/items")
        def items():
            return []

        leakyspanner(app, level="basic", log_path="logs", interval_seconds=0.2,
                     request_rss_interval_seconds=0, exclude_paths=["/health", "/static/", "/metrics*"])
        """)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path in ["/health", "/static/a.css", "/metrics-x", "/healthz", "/items", "/items"]:
            assert client.get(path).status_code == 200
    server.stop()
    (jsonl,) = (tmp_path / "logs").glob("*.jsonl")
    records = read_jsonl(jsonl)
    counted = {(e["route"], e["calls"]) for e in records["summary"][0]["endpoints"]}
    assert counted == {("/healthz", 1), ("/items", 2)}  # "/health" is exact: "/healthz" is not excluded
    assert records["summary"][0]["requests_total"] == 3
    assert records["header"][0]["config"]["exclude_paths"] == ["/health", "/static/", "/metrics*"]


def test_profiler_is_a_context_manager(tmp_path):
    with Profiler(_app(), level="basic", log_path=tmp_path) as profiler:
        assert profiler.active
    assert not profiler.active
    assert profiler.jsonl_file is not None and len(read_jsonl(profiler.jsonl_file)["summary"]) == 1


def test_profiler_is_an_async_context_manager(tmp_path):
    import asyncio

    async def main() -> Profiler:
        async with Profiler(_app(), level="basic", log_path=tmp_path) as profiler:
            assert profiler.active
        return profiler

    profiler = asyncio.run(main())
    assert not profiler.active and len(read_jsonl(profiler.jsonl_file)["summary"]) == 1


def test_stats_is_typed_and_still_reads_like_a_dict(tmp_path):
    with Profiler(_app(), level="basic", log_path=tmp_path) as profiler:
        stats = profiler.stats()
        assert isinstance(stats, CaptureStats)
        assert stats["requests_total"] == stats.requests_total == 0
        assert stats["active"] is True and stats.apps == 1
        assert set(stats.keys()) == set(stats.as_dict())
        with pytest.raises(KeyError):
            stats["no_such_number"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.active = False  # type: ignore[misc]


def test_start_says_once_at_info_where_the_files_are(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="leakyspanner"):
        with Profiler(_app(), level="basic", log_path=tmp_path) as profiler:
            time.sleep(0)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "leakyspanner"]
    starts = [line for line in lines if "capturing" in line]
    assert len(starts) == 1
    assert str(profiler.log_file) in starts[0] and str(profiler.jsonl_file) in starts[0]

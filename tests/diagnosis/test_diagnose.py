"""Diagnosis statistics on synthetic sessions whose truth is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synth import MB, noisy, write_session

from leakyspanner.analysis import load
from leakyspanner.analysis.diagnose import compare, diagnose, format_fix_check, format_verdict
from leakyspanner.cli import main

N = 120


def _verdict(tmp_path, rss, **kwargs):
    write_session(tmp_path, rss, **kwargs)
    return diagnose(load(tmp_path))


def test_steady_growth_is_leaking_with_its_rate(tmp_path):
    rss = noisy(100 * MB + np.arange(N) * 0.5 * MB, 0.3 * MB)
    v = _verdict(tmp_path, rss)
    assert v.status == "leaking" and v.leaking
    # 0.5 MB per 5 s sample = 360 MB/hour
    assert v.rss.mb_per_hour == pytest.approx(360, rel=0.1)
    assert v.rss.slope_low_bytes_per_s <= v.rss.slope_bytes_per_s <= v.rss.slope_high_bytes_per_s


def test_growth_that_levels_off_is_a_plateau_not_a_leak(tmp_path):
    t = np.arange(N)
    rss = noisy(100 * MB + 40 * MB * (1 - np.exp(-t / 12)), 0.2 * MB)
    v = _verdict(tmp_path, rss)
    assert v.status == "plateau" and not v.leaking
    assert "levelled off" in v.headline


def test_sawtooth_without_lasting_growth_is_not_a_leak(tmp_path):
    rss = 100 * MB + (np.arange(N) % 20) * 1 * MB
    v = _verdict(tmp_path, rss)
    assert v.status == "sawtooth" and not v.leaking


def test_flat_noise_is_no_leak(tmp_path):
    v = _verdict(tmp_path, noisy(np.full(N, 200 * MB), 1 * MB))
    assert v.status == "no leak" and not v.leaking


def test_too_few_samples_say_so(tmp_path):
    v = _verdict(tmp_path, [100 * MB, 101 * MB, 102 * MB])
    assert v.status == "not enough data" and not v.leaking


def test_attribution_finds_the_leaker_among_busier_endpoints(tmp_path):
    rng = np.random.default_rng(7)
    phases = np.repeat(rng.choice([0, 2, 8, 20], size=N // 6 + 1), 6)[:N]
    leaker = rng.poisson(phases)
    busy = rng.poisson(40, N)
    other = rng.poisson(10 + phases // 2)
    per_call = 50_000
    rss = noisy(100 * MB + np.cumsum(leaker) * per_call, 0.2 * MB)
    v = _verdict(tmp_path, rss, calls={"/upload": leaker, "/health": busy, "/search": other})
    first = v.endpoints[0]
    assert first.route == "/upload" and first.significant
    assert first.retained_bytes_per_call == pytest.approx(per_call, rel=0.15)
    assert first.low_bytes_per_call <= first.retained_bytes_per_call <= first.high_bytes_per_call
    assert not any(e.significant for e in v.endpoints[1:])
    assert "GET /upload retains" in v.headline


def test_native_growth_is_told_apart_from_python_heap(tmp_path):
    rss = noisy(100 * MB + np.arange(N) * 0.5 * MB, 0.2 * MB)
    traced = noisy(np.full(N, 10 * MB), 0.05 * MB, seed=1)
    v = _verdict(tmp_path, rss, traced=traced)
    assert v.kinds[0].kind == "native"
    assert any("MALLOC_ARENA_MAX" in r for r in v.kinds[0].remedies)
    heap = _verdict(tmp_path / "heap", rss, traced=noisy(10 * MB + np.arange(N) * 0.45 * MB, 0.05 * MB))
    assert heap.kinds[0].kind == "python_heap"


@pytest.mark.parametrize(("column", "kind"), [("open_fds", "file_descriptors"), ("threads", "threads"),
                                              ("asyncio_tasks", "asyncio_tasks")])
def test_growing_resources_are_named(tmp_path, column, kind):
    v = _verdict(tmp_path, np.full(N, 100 * MB), extra=lambda k: {column: 10 + 3 * k})
    assert v.leaking and kind in [k.kind for k in v.kinds]


def test_uncollectable_garbage_is_named(tmp_path):
    v = _verdict(tmp_path, np.full(N, 100 * MB), extra=lambda k: {"gc_garbage": k // 10})
    assert "gc_uncollectable" in [k.kind for k in v.kinds]


def test_fix_check_says_the_growth_went_away(tmp_path):
    write_session(tmp_path / "before", noisy(100 * MB + np.arange(N) * 0.5 * MB, 0.2 * MB))
    write_session(tmp_path / "after", noisy(np.full(N, 100 * MB), 0.2 * MB), name="leakyspanner_20231115_000000")
    check = compare(load(tmp_path / "before"), load(tmp_path / "after"))
    assert check.fixed and check.before_status == "leaking" and check.after_status != "leaking"
    assert format_fix_check(check).startswith("FIXED")
    assert json.loads(json.dumps(check.to_dict()))["fixed"] is True


def test_verdict_is_json_ready_and_readable(tmp_path):
    v = _verdict(tmp_path, [100 * MB] * 3)
    data = json.loads(json.dumps(v.to_dict()))
    assert data["status"] == "not enough data"
    assert "Not enough data" in format_verdict(v)


def test_report_exit_codes_gate_a_ci_load_test(tmp_path, capsys):
    write_session(tmp_path / "leak", noisy(100 * MB + np.arange(N) * 0.5 * MB, 0.2 * MB))
    write_session(tmp_path / "flat", noisy(np.full(N, 100 * MB), 0.2 * MB))
    assert main(["report", str(tmp_path / "leak")]) == 1
    assert "LEAKING" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "flat"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["leaking"] is False
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "leak"), "--compare", str(tmp_path / "flat")]) == 0

"""The verdict on apps it was not written for, with a newcomer's settings (CI subset).

Each scenario of ``unseen/`` runs under a real uvicorn with ``leakyspanner(app,
log_path=...)`` and nothing else (so the level is the default, mid), a steady
mix from 8 clients for a few seconds, and must: name the leaker first, give
its bytes per call within ±25% of the server's RSS growth per call measured
from outside, name the leaking line where a Python stack reaches it, name the
right kind; a control must not be called leaking. The full grid (shapes,
levels, 30 s) is ``python -m benchmarks.bench_diagnosis``.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from unseen.harness import SHAPES, leak_lines, outside_bytes_per_call, run, score, weights
from unseen.scenarios import SCENARIOS

#: Scenarios the current diagnosis gets wrong, with what it gets wrong. Delete an entry
#: once the diagnosis gets it right (they are non-strict: an unexpected pass is reported).
EXPECTED_TO_FAIL: dict[str, str] = {
    "tasks": "right endpoint and line; the leaked tasks cost 2.7-2.8x their sampled live bytes in RSS (small "
             "objects pin pymalloc's pools) and at 12 s the RSS/heap scaling does not always reach it",
    "metrics_labels": "borderline at 12 s: right endpoint and line, bytes/call 0.8-1.3x the outside RSS figure "
                      "across runs (the 12 s outside figure itself moves by about 20%)",
}

SECONDS = 12.0  # of traffic per scenario: 11 scenarios in about 3 minutes on 2 cores


class VerdictMiss(AssertionError):
    """The verdict missed a criterion (what EXPECTED_TO_FAIL excuses; a harness failure is not excused)."""


def _params() -> list[object]:
    out = []
    for name in SCENARIOS:
        reason = EXPECTED_TO_FAIL.get(name)
        marks = [pytest.mark.xfail(strict=False, raises=VerdictMiss, reason=reason)] if reason is not None else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_verdict_on_unseen_app_with_default_settings(name: str, tmp_path) -> None:
    s = SCENARIOS[name]
    result = run(name, shape="steady", duration_s=SECONDS, workdir=tmp_path, keep_series=False)
    # the harness itself must have worked, whatever the verdict
    assert result["error"] is None, result.get("traceback")
    assert not result["errors"], result["errors"]
    requests = result["requests"]
    assert requests.get(s.busiest, 0) > requests.get(s.measured or s.busiest, 0) or s.measured == s.busiest
    unknown = {e.name for e in s.endpoints} - set(result["profiled_endpoints"])
    assert not unknown, f"the scenario names endpoints leakyspanner calls otherwise: {unknown}"
    if not s.control:
        assert result["outside_bytes_per_call"] > 0, result["outside"]
    missed = [k for k, ok in result["criteria"].items() if ok is False]
    summary = {k: result.get(k) for k in ("status", "first_named", "first_named_bytes_per_call",
                                          "outside_bytes_per_call", "ratio_to_outside", "line_rank", "kinds",
                                          "top_endpoints", "top_sites", "headline", "session_level")}
    if missed:
        raise VerdictMiss(f"{name}: missed {missed}\n{json.dumps(summary, indent=1, default=str)}")


# -- the harness's own arithmetic (fast: no server) ----------------------------------------------
@dataclasses.dataclass
class _Endpoint:
    method: str
    route: str
    retained_bytes_per_call: float
    significant: bool = True


@dataclasses.dataclass
class _Site:
    site: str
    file: str
    line: int
    caused_by: str | None = None


@dataclasses.dataclass
class _Kind:
    kind: str


@dataclasses.dataclass
class _Verdict:
    status: str
    leaking: bool
    endpoints: list[_Endpoint]
    sites: list[_Site]
    kinds: list[_Kind]

    @property
    def suspect(self) -> _Endpoint | None:
        return next((e for e in self.endpoints if e.significant), None)


def test_outside_figure_is_the_floor_slope_per_call_despite_transient_spikes() -> None:
    rng = random.Random(3)
    readings, calls = [], 0
    for i in range(150):  # 30 s at 0.2 s; 40 KB per call; +20 MB held a third of the time
        calls += rng.randint(2, 6)
        spike = 20 * 2**20 if (i // 4) % 3 == 0 else 0
        readings.append((i * 0.2, 50 * 2**20 + 40_000 * calls + spike + rng.randint(0, 2**16), calls))
    outside = outside_bytes_per_call(readings, 30.0)
    assert outside["bytes_per_call"] == pytest.approx(40_000, rel=0.1)


def test_a_leak_line_named_only_as_the_caused_by_frame_counts() -> None:
    s = SCENARIOS["exception_frames"]
    lines = leak_lines(s)
    app_file, app_line = lines[0]
    verdict = _Verdict("leaking", True, [_Endpoint("POST", "/webhooks/payments", 30_000)],
                       [_Site("/usr/lib/python3.11/json/decoder.py:353", "/usr/lib/python3.11/json/decoder.py", 353,
                              caused_by=f"{app_file}:{app_line}")], [_Kind("python_heap")])
    result = score(s, verdict, {"bytes_per_call": 36_000.0}, lines)
    assert result["criteria"] == {"endpoint": True, "bytes": True, "line": True, "kind": True, "not_leaking": None}
    assert result["line_rank"] == 1


def test_a_wrong_suspect_fails_endpoint_and_bytes_and_a_leaking_control_fails() -> None:
    s = SCENARIOS["global_list"]
    verdict = _Verdict("leaking", True, [_Endpoint("GET", "/reports/daily", 24_000)], [], [_Kind("python_heap")])
    criteria = score(s, verdict, {"bytes_per_call": 24_000.0}, leak_lines(s))["criteria"]
    assert (criteria["endpoint"], criteria["bytes"], criteria["line"], criteria["kind"]) == (False, False, False, True)
    control = score(SCENARIOS["bounded_cache"], verdict, {"bytes_per_call": 0.0}, [])
    assert control["criteria"]["not_leaking"] is False and not control["passed"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_leaker_is_never_the_busiest_in_either_shape(name: str) -> None:
    s = SCENARIOS[name]
    names = [e.name for e in s.endpoints]
    for shape in SHAPES:
        for t in range(0, 30):
            mix = weights(s, shape, float(t), 30.0)
            assert max(range(len(names)), key=mix.__getitem__) == names.index(s.busiest), (shape, t, mix)
    if not s.control:
        assert s.leaker in names and s.leaker != s.busiest
    if s.python_stack and not s.control:
        assert leak_lines(s), f"{s.module} has no # LEAK line"

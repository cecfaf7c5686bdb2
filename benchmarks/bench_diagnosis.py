"""Score the diagnosis on apps it was not written for: every scenario x shape x level.

    python -m benchmarks.bench_diagnosis                      # all scenarios, steady+varying, mid+auto+basic, 30 s
    python -m benchmarks.bench_diagnosis --levels mid,basic --scenarios global_list,no_leak --duration 15
    python -m benchmarks.bench_diagnosis --report-only        # rewrite the table from the JSON
    python -m benchmarks.bench_diagnosis --keep /tmp/grid     # also keep every run's session there
    python -m benchmarks.bench_diagnosis --replay /tmp/grid --out /tmp/r.json --table /tmp/r.md
                                       # score today's diagnose() on the kept sessions (no traffic, ~1 min)

Each run serves one app from ``tests/diagnosis/unseen/apps`` under a real
uvicorn, drives it with 8 closed-loop clients, measures the server's RSS
from outside and scores ``diagnose()`` against it (see
``tests/diagnosis/unseen/harness.py``). Runs go one at a time: client and
server share the machine's cores. Writes ``benchmarks/results/diagnosis.json``
after every run (a crash keeps what was measured) and ``docs/diagnosis_scores.md``
at the end. ``basic`` has no allocation data: its row is reported, not required to pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from . import _common as common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]

sys.path.insert(0, str(common.REPO_ROOT / "tests" / "diagnosis"))
from unseen.harness import CRITERIA, SHAPES, TOLERANCE, leak_lines, run, score  # noqa: E402
from unseen.scenarios import SCENARIOS  # noqa: E402

NAME = "diagnosis"
RESULTS = common.RESULTS_DIR / f"{NAME}.json"
TABLE = common.REPO_ROOT / "docs" / "diagnosis_scores.md"
LEVELS = ("mid", "auto", "basic")
_MARK = {True: "yes", False: "**no**", None: "-"}


def _split(value: str, known: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return items


def _kb(value: float | None) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value / 1024:.1f} KB"


def _named(r: dict[str, Any]) -> str:
    first = r.get("first_named")
    if r.get("control"):
        return first or "none"
    if first is None:
        return "**none**"
    return first if first == r.get("leaker") else f"**{first}**"


def _ratio(r: dict[str, Any]) -> str:
    ratio = r.get("ratio_to_outside")
    return f"{ratio:.2f}" if isinstance(ratio, (int, float)) else "n/a"


def _line(r: dict[str, Any]) -> str:
    if not r.get("python_stack") or r.get("control"):
        return "-"
    rank = r.get("line_rank")
    return f"site #{rank}" if rank else "**not found**"


def _rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        c = r.get("criteria") or {}
        truth = "control" if r.get("control") else r.get("leaker") or ""
        verdict = r.get("status") or "?"
        if r.get("error"):
            verdict = f"error: {str(r['error'])[:60]}"
        rows.append([
            r["scenario"], r["shape"], r["level"], truth, verdict, _named(r),
            _kb(r.get("first_named_bytes_per_call")), _kb(r.get("outside_bytes_per_call")), _ratio(r), _line(r),
            ", ".join(r.get("kinds") or []) or "none",
            *(_MARK[c.get(k)] for k in CRITERIA), "PASS" if r.get("passed") else "fail",
        ])
    return rows


def _scores(results: list[dict[str, Any]]) -> list[str]:
    """One line per (level, shape), then all levels that are required to pass."""
    lines = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["level"], r["shape"]), []).append(r)
    for (level, shape), rs in sorted(groups.items()):
        leaks = [r for r in rs if not r.get("control")]
        controls = [r for r in rs if r.get("control")]
        first = sum(bool((r.get("criteria") or {}).get("endpoint")) for r in leaks)
        within = sum(bool((r.get("criteria") or {}).get("bytes")) for r in leaks)
        with_stack = [r for r in leaks if r.get("python_stack")]
        line = sum(bool((r.get("criteria") or {}).get("line")) for r in with_stack)
        kind = sum(bool((r.get("criteria") or {}).get("kind")) for r in leaks)
        quiet = sum(bool((r.get("criteria") or {}).get("not_leaking")) for r in controls)
        passed = sum(bool(r.get("passed")) for r in rs)
        note = " (basic: stated, not required to pass)" if level == "basic" else ""
        lines.append(f"- **{level}, {shape}**{note}: named the leaker first in {first} of {len(leaks)}; "
                     f"bytes/call within ±{TOLERANCE:.0%} in {within} of {len(leaks)}; leaking line in {line} of "
                     f"{len(with_stack)}; kind in {kind} of {len(leaks)}; controls not leaking {quiet} of "
                     f"{len(controls)}; all criteria {passed} of {len(rs)}.")
    return lines


def write_table(data: dict[str, Any], path: Path = TABLE) -> Path:
    """``docs/diagnosis_scores.md`` from a diagnosis result file's contents."""
    results = data.get("runs", [])
    env = data.get("environment", {})
    settings = data.get("settings", {})
    headers = ["scenario", "shape", "level", "truth", "verdict", "named first", "its bytes/call", "outside bytes/call",
               "ratio", "line", "kinds", *CRITERIA, "result"]
    what = "\n".join(f"| `{s.name}` | {s.what} | {s.leaker or 'none (control)'} |" for s in SCENARIOS.values())
    replayed = ""
    if settings.get("replayed_from"):
        replayed = ("\nThe verdicts were re-scored with `--replay` (the diagnosis as of "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(settings.get('replayed_at') or 0))} UTC) on the "
                    "sessions the grid run kept with `--keep`: same traffic, same outside truth.")
    text = f"""# Diagnosis scores on unseen apps

Generated by `python -m benchmarks.bench_diagnosis` ({time.strftime('%Y-%m-%d %H:%M', time.gmtime(env.get('ts', 0)))} UTC,
{env.get('cpus', '?')} CPUs, Python {env.get('python', '?')}); numbers in `benchmarks/results/diagnosis.json`.
Settings: {settings.get('duration_s', '?')} s of traffic per run, 8 closed-loop clients,
interval {settings.get('interval_s') or "leakyspanner's default"}, allocator {settings.get('allocator') or 'default'}.
Rerun after every change to the diagnosis.{replayed}

Each app (`tests/diagnosis/unseen/apps/`) has a cheap busiest endpoint, a transient 4-6 MB allocator
and one leaker (never the busiest). **steady**: each request's endpoint drawn from fixed weights;
**varying**: the leaker's share ramps 0.25x -> 1.75x -> 0.25x twice. The outside truth is the server's
RSS read from `/proc/PID/statm` every 0.2 s: the floor per window over the last 2/3 of the run,
Theil-Sen against the leaker's completed calls.

Criteria: **endpoint** the verdict names the leaker first (its suspect); **bytes** its bytes per call
within ±{TOLERANCE:.0%} of the outside figure; **line** a `# LEAK` line of the app among the top 3 growing
sites (allocating line or any app-frame field; only where a Python stack reaches the leak);
**kind** the first kind is the right one (and every required kind is named); **not_leaking** a
control is not called leaking.

## Scores

{chr(10).join(_scores(results))}

## Runs

{common.table(headers, _rows(results))}

## Scenarios

| scenario | leak | leaker |
| --- | --- | --- |
{what}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="steady,varying")
    parser.add_argument("--levels", default=",".join(LEVELS), help="mid,auto,basic (any leakyspanner level)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic per run (default 30)")
    parser.add_argument("--interval", type=float, default=None,
                        help="interval_seconds for the profiled app (default: leakyspanner's default)")
    parser.add_argument("--allocator", default=None, help="allocator= for the profiled app, when it knows one")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--report-only", action="store_true", help="rewrite the table from --out and exit")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run's session and result under this directory (for --replay)")
    parser.add_argument("--replay", type=Path, default=None,
                        help="re-diagnose the sessions a --keep run left here and score them (no traffic)")
    args = parser.parse_args(argv)
    if args.report_only:
        write_table(json.loads(args.out.read_text()), args.table)
        print(args.table.read_text())
        return 0
    if args.replay is not None:
        return _replay(args.replay, args.out, args.table)
    scenarios = _split(args.scenarios, list(SCENARIOS), "scenario")
    shapes = _split(args.shapes, SHAPES, "shape")
    levels = [v.strip() for v in args.levels.split(",") if v.strip()]
    settings = {"duration_s": args.duration, "interval_s": args.interval, "allocator": args.allocator,
                "clients": args.clients, "seed": args.seed, "scenarios": scenarios, "shapes": shapes, "levels": levels}
    runs: list[dict[str, Any]] = []
    total = len(scenarios) * len(shapes) * len(levels)
    if not total:
        raise SystemExit("nothing to run: no scenario, shape or level selected")
    path = args.out
    for name in scenarios:
        for shape in shapes:
            for level in levels:
                print(f"[{len(runs) + 1}/{total}] {name} {shape} {level} ...", flush=True)
                workdir = args.keep / f"{name}-{shape}-{level}" if args.keep is not None else None
                try:
                    result = run(name, level=level, shape=shape, duration_s=args.duration,
                                 interval_s=args.interval, allocator=args.allocator, clients=args.clients,
                                 seed=args.seed, workdir=workdir)
                except Exception as exc:  # the server did not start, or the harness broke: record, go on
                    s = SCENARIOS[name]
                    result = {"scenario": name, "shape": shape, "level": level, "leaker": s.leaker,
                              "control": s.control, "python_stack": s.python_stack, "status": "error",
                              "error": f"{type(exc).__name__}: {exc}"[:2000], "criteria": {}, "passed": False}
                runs.append(result)
                if workdir is not None:
                    (workdir / "result.json").write_text(json.dumps(_finite(result), indent=1) + "\n")
                c = result.get("criteria") or {}
                print(f"    {result.get('status')}: named {result.get('first_named')} "
                      f"{_kb(result.get('first_named_bytes_per_call'))} vs outside "
                      f"{_kb(result.get('outside_bytes_per_call'))}; line {result.get('line_rank')}; "
                      f"kinds {result.get('kinds')}; {c}; {result.get('requests_per_s')} req/s, "
                      f"{result.get('wall_s')} s" + (f"; ERROR {result['error']}" if result.get("error") else ""),
                      flush=True)
                data = _finite({"settings": settings, "runs": runs})
                path = common.write_result(NAME, data) if args.out == RESULTS else _write(args.out, data)
    written = json.loads(path.read_text())
    write_table(written, args.table)
    print("\n".join(_scores(runs)))
    print(f"wrote {path} and {args.table}")
    return 0


def _replay(root: Path, out: Path, table_path: Path) -> int:
    """Score today's ``diagnose()`` on sessions kept by ``--keep``: the traffic and outside truth are as recorded."""
    from leakyspanner.analysis import load
    from leakyspanner.analysis.diagnose import diagnose

    runs = []
    for path in sorted(root.glob("*/result.json")):
        old = json.loads(path.read_text())
        s = SCENARIOS[old["scenario"]]
        started = time.perf_counter()
        try:
            verdict = diagnose(load(path.parent / "logs"))
            new = {**old, **score(s, verdict, old.get("outside") or {}, leak_lines(s)), "error": None}
        except Exception as exc:  # report, go on: one broken session must not hide the rest
            new = {**old, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000], "passed": False}
        new["diagnose_s"] = round(time.perf_counter() - started, 2)
        runs.append(new)
        print(f"{old['scenario']} {old['shape']} {old['level']}: {old.get('status')} -> {new.get('status')}; "
              f"named {new.get('first_named')} {_kb(new.get('first_named_bytes_per_call'))} vs outside "
              f"{_kb(new.get('outside_bytes_per_call'))}; {new.get('criteria')} "
              f"({'PASS' if new.get('passed') else 'fail'}, was {'PASS' if old.get('passed') else 'fail'})",
              flush=True)
    if not runs:
        raise SystemExit(f"no */result.json under {root}: keep sessions first with --keep {root}")
    first = runs[0]
    settings = {"duration_s": first.get("duration_s"), "interval_s": first.get("interval_s"),
                "allocator": first.get("allocator"), "clients": first.get("clients"),
                "replayed_from": str(root), "replayed_at": time.time()}
    data = _finite({"settings": settings, "runs": runs})
    _write(out, data)
    write_table(json.loads(out.read_text()), table_path)
    print("\n".join(_scores(runs)))
    return 0


def _finite(value: Any) -> Any:
    """NaN and infinities become None, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": NAME, "environment": common.environment(), **data}, indent=1) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())

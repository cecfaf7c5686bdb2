"""A/B in process: this checkout's capture against an older commit's, moments apart.

A change to the request path moves its cost by a microsecond or two, less than
this host drifts between two runs of the same code. So both versions run in
one process: the older commit's ``leakyspanner/`` is extracted with
``git archive`` under another package name, and the bare app, the older
profiler and this checkout's are built once and kept, each profiler's writer
thread stopped. Short windows (~30 ms of bare's time) alternate between them
in a shuffled order, each draining its own records on this thread so it pays
for them. Reported: the median over rounds of each one's CPU per request
minus bare's in the same round, and of the older one's minus ours. For mid
and deep, tracemalloc is started first (1 or 5 frames) so all three run under
the same tracing.

    python -m benchmarks.bench_ab --ref 0637866 [--level basic] [--kinds tiny,stream]
        [--request-rss-interval-seconds 1e9]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

try:
    from . import _common as common
    from . import apps
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]
    import apps  # type: ignore[no-redef]

_REPO = Path(__file__).resolve().parent.parent
_AS = "leakyspanner_ab"  # the older commit's package, imported under this name
_FRAMES = {"basic": 0, "mid": 1, "deep": 5}
_WINDOW_S = 0.03
_WARMUP = 30


def _extract(ref: str, into: Path) -> str:
    """The older commit's package as ``leakyspanner_ab`` under ``into``; returns the full commit id."""
    commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"--ref {ref!r} is not a commit of {_REPO}: {commit.stderr.strip()}")
    archive = subprocess.run(["git", "-C", str(_REPO), "archive", "--format=tar", commit.stdout.strip(),
                              "leakyspanner"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python before 3.10.12 / 3.11.4; git archive of our own repo is trusted input
            tar.extractall(into)  # noqa: S202
    (into / "leakyspanner").rename(into / _AS)
    # absolute self-imports would silently load this checkout's code instead of the older one
    package = into / _AS
    for path in [*package.glob("*.py"), *(package / "capture").glob("*.py")]:  # what capture imports
        for line in path.read_text().splitlines():
            if line.startswith(("from leakyspanner", "import leakyspanner")):
                raise SystemExit(f"{ref}: {path.relative_to(into)} imports leakyspanner absolutely; "
                                 "an A/B against it would measure this checkout twice")
    return commit.stdout.strip()


def _build(version: str, level: str, profiler_kw: dict[str, Any]) -> Any:
    app = apps.make_app("bare")
    if version == "bare":
        return app
    module = importlib.import_module(_AS if version == "ref" else "leakyspanner")
    profiler = module.leakyspanner(app, log_path=tempfile.mkdtemp(prefix=f"leakyspanner-ab-{version}-"),
                                   level=level, interval_seconds=3600.0, **profiler_kw)
    profiler._writer.ticker.stop()  # this thread drains, inside each window
    app.state.profiler = profiler
    return app


async def _run(level: str, kinds: list[str], rounds: int, seed: int, profiler_kw: dict[str, Any]) -> dict[str, Any]:
    built = {v: _build(v, level, profiler_kw) for v in ("bare", "ref", "ours")}
    counts: dict[str, int] = {}
    requests = {}
    for kind in kinds:
        method, path = apps.ENDPOINTS[kind]
        body = apps.VALIDATE_BODY if method == "POST" else b""
        requests[kind] = (common.http_scope(method, path, body), body)
    try:
        for kind, (scope, body) in requests.items():
            for app in built.values():
                for _ in range(_WARMUP):
                    await common.call_asgi(app, scope, body)
            t0 = time.perf_counter()
            for _ in range(_WARMUP):
                await common.call_asgi(built["bare"], scope, body)
            counts[kind] = max(5, int(_WINDOW_S / ((time.perf_counter() - t0) / _WARMUP)))
        cpu = await common.paired_windows(built, requests, counts, rounds, random.Random(seed))
    finally:
        for app in built.values():
            if app.state.profiler is not None:
                app.state.profiler.stop()
                shutil.rmtree(app.state.profiler.log_path, ignore_errors=True)
    return {"requests_per_window": counts, "cpu_us": cpu}


def summarize(cpu: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in cpu["bare"]:
        row: dict[str, Any] = {"bare_us": round(common.median(cpu["bare"][kind]), 2), "rounds": len(cpu["bare"][kind])}
        for version in ("ref", "ours"):
            q1, med, q3 = common.quartiles([v - b for v, b in zip(cpu[version][kind], cpu["bare"][kind])])
            row[f"{version}_extra_us"] = [round(q1, 2), round(med, 2), round(q3, 2)]
        diffs = [r - o for r, o in zip(cpu["ref"][kind], cpu["ours"][kind])]
        q1, med, q3 = common.quartiles(diffs)
        row["ref_minus_ours_us"] = [round(q1, 2), round(med, 2), round(q3, 2)]
        row["ours_cheaper_share"] = round(sum(d > 0 for d in diffs) / len(diffs), 3)
        out[kind] = row
    return out


def render(summary: dict[str, dict[str, Any]], ref: str) -> str:
    def q(v: list[float]) -> str:
        return f"{v[1]:+.2f} ({v[0]:+.2f} .. {v[2]:+.2f})"

    rows = [[kind, f"{r['bare_us']:.1f}", q(r["ref_extra_us"]), q(r["ours_extra_us"]), q(r["ref_minus_ours_us"]),
             f"{r['ours_cheaper_share']:.0%}", r["rounds"]] for kind, r in summary.items()]
    return common.table(["endpoint", "bare µs/req", f"{ref[:7]} − bare µs/req", "ours − bare µs/req",
                         f"{ref[:7]} − ours µs/req", "rounds ours cheaper", "rounds"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="the older commit (any git revision)")
    parser.add_argument("--level", default="basic", choices=sorted(_FRAMES), help="capture level (default basic)")
    parser.add_argument("--kinds", default=",".join(apps.ENDPOINTS), help="comma-separated endpoint kinds")
    parser.add_argument("--rounds", type=int, default=60, help="rounds (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="shuffle seed")
    parser.add_argument("--request-rss-interval-seconds", type=float, metavar="S",
                        help="passed to both profilers; 1e9 never reads RSS after the first 0.1 s, which isolates "
                             "the request path (default: the library's; windows alternate with idle gaps, which "
                             "the RSS sampling counts as a low rate, so more requests are measured than under "
                             "steady load)")
    args = parser.parse_args(argv)
    profiler_kw = ({} if args.request_rss_interval_seconds is None
                   else {"request_rss_interval_seconds": args.request_rss_interval_seconds})
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in apps.ENDPOINTS]
    if bad:
        parser.error(f"unknown kind(s) {bad}; choose from {', '.join(apps.ENDPOINTS)}")
    if tracemalloc.is_tracing():
        parser.error("tracemalloc is already tracing; run without PYTHONTRACEMALLOC")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="leakyspanner-ab-") as tmp:
        commit = _extract(args.ref, Path(tmp))
        sys.path.insert(0, tmp)
        if _FRAMES[args.level]:
            tracemalloc.start(_FRAMES[args.level])
        try:
            raw = asyncio.run(_run(args.level, kinds, args.rounds, args.seed, profiler_kw))
        finally:
            tracemalloc.stop()
            sys.path.remove(tmp)
    summary = summarize(raw["cpu_us"])
    path = common.write_result(f"ab_{args.level}", {
        "ref": commit, "level": args.level, "rounds": args.rounds, "kinds": kinds, "profiler_kw": profiler_kw,
        "elapsed_s": round(time.monotonic() - t0, 1), "summary": summary, **raw,
    })
    print(render(summary, commit))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

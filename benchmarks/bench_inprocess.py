"""Per-request cost of each capture level, in process, with no network.

Each app is called directly through a hand-written ASGI ``receive``/``send``.
Configs are interleaved in rounds (order shuffled per round); a round builds a
fresh app per config, runs every endpoint kind ``N`` times and stops the
profiler again, so tracemalloc (process-global) is only on inside the mid/deep
windows. The cost of a window is the process CPU time (every thread, so the
background writer's formatting of these very requests is included) from the
first request until the writer has taken the last record, divided by ``N``.
``bare+tm1``/``bare+tm5``/``bare+tm10`` are the bare app with tracemalloc
started by hand (1, 5 and 10 frames): the floor under mid (1) and deep (5)
that no middleware can avoid, and under the seed's 10-frame deep.
The sampler interval is 60 s by default so its ticks and allocation snapshots
stay out of the windows: this is the request path plus the writer; bench_stall
measures the snapshots and bench_e2e everything together. A slow window (deep
tracing) stops after 4x the bare window time, with at least 5 requests.

Paired windows (``--paired-rounds``, the configs without tracemalloc, plus
basic with RSS never read and read on every request): every
app is built once and kept, their writer threads stopped, and short windows
(~30 ms of bare's time) alternate between them in a shuffled order, each
window draining its own records on this thread so it pays for them. The
statistic is the median over rounds of each config's CPU per request minus
bare's in the same round: on a host whose speed drifts by a third within
seconds, only differences taken moments apart resolve a few microseconds.
Each app sees bursts with idle gaps, which its RSS sampling counts as a low
request rate, so plain basic measures more requests here than under steady
load; RESULTS.md composes basic's cost at a steady rate from its two ends.

    python -m benchmarks.bench_inprocess [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from typing import Any

try:
    from . import _common as common
    from . import apps
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]
    import apps  # type: ignore[no-redef]

CONFIGS = ("bare", "empty", "basic", "mid", "deep", "auto", "bare+tm1", "bare+tm5", "bare+tm10")
#: no tracemalloc, so the apps can live side by side; basic-no-rss never reads RSS and
#: basic-rss-all reads it for every request: the two ends of basic's cost
PAIRED_CONFIGS = ("bare", "empty", "basic", "auto", "auto-tracemalloc", "basic-no-rss", "basic-rss-all",
                  "basic-py", "basic-no-rss-py")
# bare+tmN: the bare app with tracemalloc.start(N) around its window, the part of mid (1 frame)
# and deep (5 frames; the seed's deep used 10) that is tracemalloc's own and no middleware can avoid
TRACING_CONFIGS = ("mid", "deep", "bare+tm1", "bare+tm5", "bare+tm10")
_WARMUP = 30
_MIN_REQUESTS = 5
_CAP = 4.0  # a window may take this many times the bare window before it is cut short
# A fresh profiler measures RSS on every request for its first 0.1 s (it has no rate to
# sample by yet); a long-running server spends a negligible share of its life there.
_RSS_SETTLE_S = 0.15
_PAIRED_WINDOW_S = 0.03  # bare's time per paired window


def _request(kind: str) -> tuple[dict[str, Any], bytes]:
    method, path = apps.ENDPOINTS[kind]
    body = apps.VALIDATE_BODY if method == "POST" else b""
    return common.http_scope(method, path, body), body


async def _calibrate(window_s: float) -> dict[str, int]:
    """Requests per window for each endpoint kind, sized so bare takes about ``window_s``."""
    app = apps.make_app("bare")
    counts = {}
    for kind in apps.ENDPOINTS:
        scope, body = _request(kind)
        for _ in range(_WARMUP):
            await common.call_asgi(app, scope, body)
        t0 = time.perf_counter()
        for _ in range(100):
            await common.call_asgi(app, scope, body)
        per_request = (time.perf_counter() - t0) / 100
        counts[kind] = max(50, int(window_s / per_request))
    return counts


async def _wait_written(profiler: Any, total: int, timeout_s: float = 30.0) -> None:
    """Until every request is counted and the writer has taken every record (measured ones only)."""
    deadline = time.monotonic() + timeout_s
    while profiler.stats()["requests_total"] < total or profiler.stats()["buffered"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"writer did not catch up: {profiler.stats()}")
        await asyncio.sleep(0.002)


async def _window(
    config: str, counts: dict[str, int], order: list[str], window_s: float, interval_s: float,
) -> dict[str, Any]:
    """One config's window: fresh app, every endpoint kind, profiler stopped after."""
    log_dir = tempfile.mkdtemp(prefix=f"leakyspanner-bench-{config}-")
    gc.collect()
    if config.startswith("bare+tm"):
        app = apps.make_app("bare")
        tracemalloc.start(int(config.removeprefix("bare+tm")))
    else:
        app = apps.make_app(config, log_dir=log_dir, interval_seconds=interval_s)
    profiler = app.state.profiler
    out: dict[str, Any] = {}
    try:
        warm_until = time.perf_counter() + _RSS_SETTLE_S
        for kind in order:
            scope, body = _request(kind)
            for _ in range(_WARMUP if config not in TRACING_CONFIGS else _MIN_REQUESTS):
                await common.call_asgi(app, scope, body)
        if profiler is not None and config not in TRACING_CONFIGS:
            scope, body = _request("tiny")
            while time.perf_counter() < warm_until:  # past the first window, where every request is measured
                await common.call_asgi(app, scope, body)
        tracing = tracemalloc.is_tracing()
        if tracing != (config in TRACING_CONFIGS):
            raise RuntimeError(f"{config}: tracemalloc.is_tracing() is {tracing} inside its window")
        for kind in order:
            scope, body = _request(kind)
            written = profiler.stats()["requests_total"] if profiler else 0
            c0, w0 = time.process_time(), time.perf_counter()
            deadline = w0 + _CAP * window_s
            n = 0
            while n < counts[kind]:
                await common.call_asgi(app, scope, body)
                n += 1
                if n >= _MIN_REQUESTS and not n & 7 and time.perf_counter() > deadline:
                    break
            w1 = time.perf_counter()
            if profiler is not None:
                await _wait_written(profiler, written + n)
            c1 = time.process_time()
            out[kind] = {"cpu_us": (c1 - c0) / n * 1e6, "wall_us": (w1 - w0) / n * 1e6, "n": n, "tracing": tracing}
    finally:
        if profiler is not None:
            profiler.stop()
        if config.startswith("bare+tm"):
            tracemalloc.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    if tracemalloc.is_tracing():
        raise RuntimeError(f"{config}: tracemalloc still tracing after profiler.stop()")
    return out


async def _run(configs: list[str], rounds: int, window_s: float, interval_s: float, seed: int) -> dict[str, Any]:
    if tracemalloc.is_tracing():
        raise RuntimeError("tracemalloc is already tracing; run without PYTHONTRACEMALLOC")
    counts = await _calibrate(window_s)
    rng = random.Random(seed)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {c: {k: [] for k in apps.ENDPOINTS} for c in configs}
    for r in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        for config in order:
            kinds = list(apps.ENDPOINTS)
            rng.shuffle(kinds)
            for kind, value in (await _window(config, counts, kinds, window_s, interval_s)).items():
                samples[config][kind].append(value)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return {"requests_per_window": counts, "samples": samples}


async def _paired(configs: list[str], counts: dict[str, int], rounds: int, seed: int) -> dict[str, Any]:
    """Interleaved short windows of long-lived apps; per round, CPU µs per request of each config."""
    built = {c: apps.make_app(c, interval_seconds=3600.0) for c in configs}
    log_dirs = [app.state.log_dir for app in built.values() if app.state.log_dir]
    try:
        for app in built.values():
            profiler = app.state.profiler
            if profiler is not None:  # this thread drains, inside each window
                profiler._writer.ticker.stop()
            for kind in apps.ENDPOINTS:
                scope, body = _request(kind)
                for _ in range(_WARMUP):
                    await common.call_asgi(app, scope, body)
        await asyncio.sleep(_RSS_SETTLE_S)
        requests = {kind: _request(kind) for kind in apps.ENDPOINTS}
        before = {c: app.state.profiler.stats() for c, app in built.items() if app.state.profiler is not None}
        per_round = await common.paired_windows(built, requests, counts, rounds, random.Random(seed))
        # the share of requests RSS was read for: bursts with idle gaps look like a low rate to the
        # sampling, so it is higher here than under steady load (each costs two /proc reads and a record)
        measured = {}
        for c, b in before.items():
            a = built[c].state.profiler.stats()
            n = a.requests_total - b.requests_total
            measured[c] = {"requests": n, "measured": a.request_records - b.request_records,
                           "share": round((a.request_records - b.request_records) / n, 4) if n else None,
                           "request_path": a.request_path}
        return {"rounds": rounds, "requests_per_window": counts, "cpu_us": per_round, "measured": measured}
    finally:
        for app in built.values():
            if app.state.profiler is not None:
                app.state.profiler.stop()
        for log_dir in log_dirs:
            shutil.rmtree(log_dir, ignore_errors=True)


def summarize_paired(paired: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per config and kind: median and quartiles of (config − bare) CPU µs per request over the rounds."""
    cpu = paired["cpu_us"]
    out: dict[str, dict[str, Any]] = {}
    for config, kinds in cpu.items():
        out[config] = {}
        for kind, values in kinds.items():
            diffs = [v - b for v, b in zip(values, cpu["bare"][kind])]
            q1, med, q3 = common.quartiles(diffs)
            out[config][kind] = {"extra_us_over_bare": round(med, 2), "quartiles": [round(q1, 2), round(q3, 2)],
                                 "bare_us": round(common.median(cpu["bare"][kind]), 2), "rounds": len(values)}
    return out


def render_paired(summary: dict[str, dict[str, Any]]) -> str:
    rows = [[config, kind, f"{v['extra_us_over_bare']:+.2f}", f"{v['quartiles'][0]:+.2f} .. {v['quartiles'][1]:+.2f}",
             f"{v['bare_us']:.1f}", v["rounds"]]
            for config, kinds in summary.items() if config != "bare" for kind, v in kinds.items()]
    return common.table(["config", "endpoint", "extra CPU µs/req over bare (median of rounds)", "quartiles",
                         "bare µs/req (median)", "rounds"], rows)


def summarize(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Best (lowest) µs/request of the rounds per config and kind, with ratios to bare and empty.

    Interference from the rest of the machine only ever adds time, and on this
    VM it added up to 60% to single windows, enough to make the median of five
    rank bare above an empty middleware; the minimum is the steady estimate of
    what the code itself costs (timeit's reasoning). The median is kept too.
    """
    med = {c: {k: min(s["cpu_us"] for s in v) for k, v in kinds.items()} for c, kinds in samples.items()}
    out: dict[str, dict[str, Any]] = {}
    for config, kinds in med.items():
        out[config] = {}
        for kind, us in kinds.items():
            bare = med.get("bare", {}).get(kind)
            empty = med.get("empty", {}).get(kind)
            out[config][kind] = {
                "us_per_request": round(us, 2),
                "median_us_per_request": round(common.median([s["cpu_us"] for s in samples[config][kind]]), 2),
                "wall_us_per_request": round(common.median([s["wall_us"] for s in samples[config][kind]]), 2),
                "ratio_to_bare": common.ratio(us, bare) if bare else None,
                "ratio_to_empty": common.ratio(us, empty) if empty else None,
                "extra_us_over_bare": round(us - bare, 2) if bare else None,
                "tracing": any(s["tracing"] for s in samples[config][kind]),
            }
    return out


def render(summary: dict[str, dict[str, Any]]) -> str:
    rows = []
    for config, kinds in summary.items():
        for kind, v in kinds.items():
            rows.append([config, kind, f"{v['us_per_request']:.1f}", v["ratio_to_bare"], v["ratio_to_empty"],
                         f"{v['extra_us_over_bare']:+.1f}" if v["extra_us_over_bare"] is not None else None,
                         "on" if v["tracing"] else "off"])
    return common.table(["config", "endpoint", "µs/req (CPU, best round)", "× bare", "× empty", "extra µs",
                         "tracemalloc"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds (~20 s)")
    parser.add_argument("--rounds", type=int, help="rounds (default 9, quick 3)")
    parser.add_argument("--window-s", type=float, help="bare seconds per endpoint window (default 0.2)")
    parser.add_argument("--interval-s", type=float, default=60.0,
                        help="profiler interval_seconds (default 60: no sampler tick inside a window)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configs")
    parser.add_argument("--seed", type=int, default=1, help="shuffle seed")
    parser.add_argument("--paired-rounds", type=int,
                        help="rounds of paired short windows for bare/empty/basic/auto (default 80, quick 10; 0: none)")
    parser.add_argument("--no-seed", action="store_true", help="accepted for run_all; the seed is not run here")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        parser.error(f"unknown config(s) {bad}; choose from {', '.join(CONFIGS)}")
    rounds = args.rounds or (3 if args.quick else 9)
    window_s = args.window_s or (0.08 if args.quick else 0.2)
    t0 = time.monotonic()
    raw = asyncio.run(_run(configs, rounds, window_s, args.interval_s, args.seed))
    summary = summarize(raw["samples"])
    paired_rounds = args.paired_rounds if args.paired_rounds is not None else (10 if args.quick else 80)
    paired_configs = [c for c in PAIRED_CONFIGS
                      if c in configs or c.startswith(("basic-", "auto-")) and c.split("-")[0] in configs]
    paired = None
    if paired_rounds and "bare" in paired_configs and len(paired_configs) > 1:
        counts = {k: max(20, int(n * _PAIRED_WINDOW_S / window_s)) for k, n in raw["requests_per_window"].items()}
        paired = asyncio.run(_paired(paired_configs, counts, paired_rounds, args.seed))
        paired["summary"] = summarize_paired(paired)
    path = common.write_result("inprocess", {
        "rounds": rounds, "window_s": window_s, "interval_s": args.interval_s, "quick": args.quick, "configs": configs,
        "elapsed_s": round(time.monotonic() - t0, 1), "summary": summary, "paired": paired, **raw,
    })
    print(render(summary))
    if paired:
        print(f"\npaired short windows, {paired_rounds} rounds:\n" + render_paired(paired["summary"]))
        print("RSS-measured share of the paired requests: " + ", ".join(
            f"{c} {v['share']:.1%}" for c, v in paired["measured"].items() if v["share"] is not None))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

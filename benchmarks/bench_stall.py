"""Event-loop stalls while allocation snapshots are taken, with many live traced blocks.

Each (level, live blocks) pair gets its own uvicorn process. Before the app is
built the process creates N live blocks (a global list of ``object()``), with
tracemalloc already on for the tracing levels, so every block is traced. A
1 ms asyncio ticker measures how late it wakes up while wrk loads ``/tiny``
(4 connections, so a loop iteration holds at most 4 requests) and the sampler (``interval_seconds=0.5``, ``snapshot_interval_seconds=0.5``,
default CPU budget 2%, default ``snapshot_mode="auto"``) takes snapshots.
``auto`` is measured with tracing on: its threshold is 1 MB and the server
grows 32 MB at startup, so the first sampler tick switches tracing on.

The first snapshot waits until the time since tracing began pays for its
predicted cost at 2% (about 30 s at 1M blocks), so for tracing levels the
window runs in ``duration`` chunks until a snapshot has finished inside it
(at most ``_MAX_WINDOW_S``): every tracing row includes at least one
snapshot. The snapshot ``mode``/``stall_s``/``cost_s``/``take_s`` come from
the session's .jsonl records inside the measured window: ``stall_s`` is what
the app's threads waited for (all of it inline; ``fork()`` and reading the
answer when forked), ``cost_s`` all the work in either process.

    python -m benchmarks.bench_stall [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

try:
    from . import _common as common
    from . import apps
except ImportError:  # run as a script, or as the server's factory module from benchmarks/
    import _common as common  # type: ignore[no-redef]
    import apps  # type: ignore[no-redef]

LEVELS = ("bare", "basic", "mid", "deep", "auto")
#: the p99 budget's paired rounds: auto-idle is auto with no growth, so tracemalloc stays off
P99_CONFIGS = ("bare", "basic", "auto-idle")
P99_BLOCKS = 100_000
BLOCK_COUNTS = (10_000, 100_000, 1_000_000)
_FRAMES = {"mid": 1, "deep": 5, "auto": 1}
_PERIOD_S = 0.001
# few connections: under saturation the ticker would mostly measure how many requests one
# loop iteration runs (connections x per-request time), not the stalls snapshots cause
_CONNECTIONS = 4
_PROFILER_KW = {"snapshot_interval_seconds": 0.5}
_MAX_WINDOW_S = 150

_live_blocks: list[object] = []  # the live traced blocks: kept for the life of the server


class Ticker:
    """A 1 ms asyncio ticker that records how late each wake-up is."""

    def __init__(self) -> None:
        self.late_s: list[tuple[float, float]] = []
        self.active = False
        self.started_ts = 0.0

    async def run(self) -> None:
        clock = time.perf_counter
        while True:
            t = clock()
            await asyncio.sleep(_PERIOD_S)
            late = clock() - t - _PERIOD_S
            if self.active:
                self.late_s.append((time.time(), late))

    def start(self) -> dict[str, float]:
        self.late_s = []
        self.active = True
        self.started_ts = time.time()
        return {"ts": self.started_ts}

    def stop(self) -> dict[str, Any]:
        self.active = False
        late = [v for _, v in self.late_s]
        worst = sorted(self.late_s, key=lambda tv: tv[1], reverse=True)[:5]
        return {
            "start_ts": self.started_ts, "stop_ts": time.time(), "ticks": len(late),
            "max_ms": round(max(late, default=0) * 1e3, 3),
            "p99_ms": round(common.percentile(late, 99) * 1e3, 3) if late else None,
            "p50_ms": round(common.percentile(late, 50) * 1e3, 3) if late else None,
            "worst": [[round(ts, 4), round(v * 1e3, 3)] for ts, v in worst],
        }


def stall_app() -> Any:
    """uvicorn factory run inside the server: live blocks first, then the app, then the ticker."""
    config = os.environ.get("BENCH_CONFIG", "bare")
    level = "auto" if config == "auto-idle" else config
    blocks = int(os.environ.get("BENCH_LIVE_BLOCKS", "0"))
    if config in _FRAMES:
        tracemalloc.start(_FRAMES[config])  # so the blocks below are traced
    _live_blocks[:] = [object() for _ in range(blocks)]
    ticker = Ticker()
    ballast: list[bytes] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(ticker.run())
        if config == "auto":
            ballast.append(b"x" * (32 << 20))  # RSS growth past the 1 MB threshold: tracing goes on
        yield
        task.cancel()

    kw: dict[str, Any] = dict(_PROFILER_KW)
    if config == "auto":
        kw.update(leak_threshold_mb=1, auto_window_seconds=3600)
    app = apps.make_app(level, log_dir=os.environ.get("BENCH_LOG_DIR"), interval_seconds=0.5,
                        lifespan=lifespan, **({} if config == "bare" else kw))

    @app.get("/_stall/start")
    async def start() -> dict[str, float]:
        return ticker.start()

    @app.get("/_stall/stop")
    async def stop() -> dict[str, Any]:
        return ticker.stop()

    @app.get("/_stall/tracing")
    async def tracing() -> dict[str, bool]:
        profiler = app.state.profiler
        return {"tracing": bool(profiler and profiler.stats()["tracing"])}

    return app


def _snapshots(log_dir: str, start_ts: float, stop_ts: float) -> list[dict[str, Any]]:
    """Snapshot records whose work (``ts - cost_s`` to ``ts``) overlaps the window, with that overlap."""
    out = []
    for path in Path(log_dir).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.startswith('{"kind":"snapshot"'):
                record = json.loads(line)
                overlap = min(record["ts"], stop_ts) - max(record["ts"] - record["cost_s"], start_ts)
                if overlap > 0:
                    stall = record.get("stall_s", record["cost_s"])
                    out.append({**{k: record.get(k) for k in ("ts", "blocks", "take_s", "cost_s", "mode")},
                                "stall_s": stall, "in_window_s": round(overlap, 6),
                                # the app-side part in the window, pro rata for a snapshot cut by it
                                "stall_in_window_s": round(stall * overlap / max(record["cost_s"], 1e-9), 6)})
    return out


def _one(config: str, blocks: int, duration_s: int) -> dict[str, Any]:
    log_dir = tempfile.mkdtemp(prefix=f"leakyspanner-bench-stall-{config}-")
    env = {"BENCH_CONFIG": config, "BENCH_LIVE_BLOCKS": str(blocks), "BENCH_LOG_DIR": log_dir}
    server = common.start_server(sys.executable, "bench_stall:stall_app", env, ready_timeout=120)
    try:
        if config == "auto":  # wait for the sampler to switch tracing on
            deadline = time.monotonic() + 10
            while not json.loads(common.http_get(server.port, "/_stall/tracing")[1])["tracing"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("auto did not switch tracing on within 10 s")
                time.sleep(0.05)
        started = json.loads(common.http_get(server.port, "/_stall/start")[1])["ts"]
        loads = []
        while True:  # tracing levels: until a snapshot finished inside the window
            loads.append(common.run_wrk(f"http://127.0.0.1:{server.port}/tiny", duration_s,
                                        connections=_CONNECTIONS))
            if (config not in _FRAMES or _snapshots(log_dir, started, time.time() - 0.5)
                    or time.time() - started > _MAX_WINDOW_S):
                break
        stall = json.loads(common.http_get(server.port, "/_stall/stop", timeout=60)[1])
        load = {"rps": sum(x["rps"] for x in loads) / len(loads)}
        if config in _FRAMES:  # a snapshot still running when the window closed: wait for its record
            deadline = time.monotonic() + 180
            while not _snapshots(log_dir, stall["start_ts"], stall["stop_ts"]) and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        server.stop(timeout=60)
        Path(server.stderr_path).unlink(missing_ok=True)
    snaps = _snapshots(log_dir, stall["start_ts"], stall["stop_ts"])
    shutil.rmtree(log_dir, ignore_errors=True)
    wall = stall["stop_ts"] - stall["start_ts"]
    in_window = sum(s["in_window_s"] for s in snaps)
    return {
        "config": config, "live_blocks": blocks, "wall_s": round(wall, 3), "rps": load["rps"],
        "stall_max_ms": stall["max_ms"], "stall_p99_ms": stall["p99_ms"], "stall_p50_ms": stall["p50_ms"],
        "worst_stalls": stall["worst"], "ticks": stall["ticks"], "snapshots": len(snaps),
        "snapshot_cost_s": [s["cost_s"] for s in snaps], "snapshot_take_s": [s["take_s"] for s in snaps],
        "snapshot_blocks": [s["blocks"] for s in snaps], "snapshot_modes": [s["mode"] for s in snaps],
        "snapshot_stall_s": [s["stall_s"] for s in snaps],
        # snapshot work inside the window over the window's wall time, in either process (cost_s is
        # wall time, so under load it includes waiting for the GIL) and in the app's own threads
        "snapshot_cpu_share": round(in_window / wall, 4) if wall > 0 else None,
        "snapshot_stall_share": round(sum(s["stall_in_window_s"] for s in snaps) / wall, 4) if wall > 0 else None,
    }


def p99_rounds(rounds: int, duration_s: int) -> dict[str, Any]:
    """The p99 budget on paired rounds: bare, basic and auto-idle, order reversed every other round.

    One run's p99 moves by ±0.3 ms here (bare against itself), as much as the
    effect being judged, so each round gives basic's and auto-idle's p99 minus
    bare's in the same round, and the median over rounds is what counts.
    """
    p99: dict[str, list[float]] = {c: [] for c in P99_CONFIGS}
    for i in range(rounds):
        for config in (P99_CONFIGS if i % 2 == 0 else P99_CONFIGS[::-1]):
            p99[config].append(_one(config, P99_BLOCKS, duration_s)["stall_p99_ms"])
        print(f"  p99 round {i + 1}/{rounds} done", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"rounds": rounds, "live_blocks": P99_BLOCKS, "p99_ms": p99, "summary": {}}
    for config in P99_CONFIGS:
        diffs = [a - b for a, b in zip(p99[config], p99["bare"])]
        out["summary"][config] = {
            "median_p99_ms": round(statistics.median(p99[config]), 3),
            "median_diff_to_bare_ms": round(statistics.median(diffs), 3),
            "diff_quartiles_ms": [round(q, 3) for q in common.quartiles(diffs)[::2]],
        }
    return out


def render_p99(result: dict[str, Any]) -> str:
    rows = [[config, f"{v['median_p99_ms']:.2f}", "" if config == "bare" else f"{v['median_diff_to_bare_ms']:+.2f}",
             "" if config == "bare" else "{:+.2f} .. {:+.2f}".format(*v["diff_quartiles_ms"]),
             " ".join(f"{x:.2f}" for x in result["p99_ms"][config])]
            for config, v in result["summary"].items()]
    return common.table(["config", "p99 ms (median of rounds)", "p99 − bare's, same round (median)",
                         "quartiles", "each round"], rows)


def render(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        snaps = r["snapshots"]
        rows.append([r["config"], f"{r['live_blocks']:,}", f"{r['wall_s']:.0f}", snaps,
                     "/".join(sorted(set(r.get("snapshot_modes") or []))) if snaps else "",
                     f"{max(r.get('snapshot_stall_s') or [0]) * 1e3:.1f}" if snaps else "",
                     f"{max(r['snapshot_cost_s'], default=0) * 1e3:.1f}" if snaps else "",
                     f"{r.get('snapshot_stall_share', 0) * 100:.2f}%", f"{r['snapshot_cpu_share'] * 100:.2f}%",
                     f"{r['stall_p50_ms']:.2f}", f"{r['stall_p99_ms']:.2f}", f"{r['stall_max_ms']:.1f}",
                     f"{r['rps']:.0f}"])
    return common.table(["config", "live blocks", "window s", "snapshots", "mode", "max app stall ms",
                         "max cost ms", "app share", "work share", "ticker p50 ms", "ticker p99 ms",
                         "ticker max ms", "req/s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k blocks only, 3 s runs (~30 s)")
    parser.add_argument("--duration", type=int, help="wrk seconds per run (default 6, quick 3)")
    parser.add_argument("--blocks", help="comma-separated live block counts (default 10000,100000,1000000)")
    parser.add_argument("--configs", default=",".join(LEVELS), help="comma-separated levels")
    parser.add_argument("--p99-rounds", type=int, help="paired bare/basic/auto-idle rounds for the p99 budget "
                        "(default 5, quick 1; 0 skips them)")
    parser.add_argument("--no-seed", action="store_true", help="accepted for run_all; the seed is not run here")
    args = parser.parse_args(argv)
    if common.wrk_path() is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    counts = [int(b) for b in args.blocks.split(",")] if args.blocks else (
        [100_000] if args.quick else list(BLOCK_COUNTS))
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in LEVELS + P99_CONFIGS]
    if bad:
        parser.error(f"unknown level(s) {bad}; choose from {', '.join(LEVELS)}")
    duration = args.duration or (3 if args.quick else 6)
    t0 = time.monotonic()
    runs = []
    for blocks in counts:
        for config in configs:
            runs.append(_one(config, blocks, duration))
            print(f"  {config} {blocks:,} blocks done ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    rounds = args.p99_rounds if args.p99_rounds is not None else (1 if args.quick else 5)
    paired = p99_rounds(rounds, duration) if rounds > 0 else None
    path = common.write_result("stall", {
        "duration_s": duration, "quick": args.quick, "ticker_period_s": _PERIOD_S, "connections": _CONNECTIONS,
        "profiler_kw": {"interval_seconds": 0.5, **_PROFILER_KW}, "runs": runs, "p99_rounds": paired,
        "elapsed_s": round(time.monotonic() - t0, 1),
    })
    print(render(runs))
    if paired:
        print("\n" + render_p99(paired))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

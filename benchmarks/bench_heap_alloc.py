"""What the sampled heap engine (``leakyspanner.capture._heap``) adds to each allocation.

Four measurements, all in one process except the instruction counts:

* **ns per allocation**: a tight loop of small allocations (``[None] * 4``, one
  block; ``bytearray(64)``, two) with the engine off, with its hooks installed
  but never sampling (``hooks``: sample_bytes 2**50, so the countdown never
  reaches zero and the free path sees an empty table), and sampling at the
  default rate and at 64 KiB with a 100 MB kept heap (so frees probe a live
  table). Configs alternate in shuffled rounds; the best round is reported
  (noise only adds time) with the median beside it. Times are the thread's CPU
  time, so being descheduled on a busy host does not count. Blocks per iteration are
  counted by the engine itself (sample_bytes 1 samples every block).
* **instructions per allocation**: the same loops under ``valgrind
  --tool=cachegrind --cache-sim=no``, N and 6N iterations after the same
  start-up, so ``(I(6N) - I(N)) / 5N`` leaves only the loop.
* **stack capture**: the extra time of a sampled allocation at a depth of 140
  Python frames, for max_frames 8, 32 (the default) and 128; ``fresh`` makes
  new frames for every sample (a request's frames: where the engine walks
  them through the public API, frame objects get made), ``stable`` samples
  again and again from the same frames. At the default depth also in
  instructions (cachegrind, N and 6N samples as above). The report names the
  walk the build uses (``stats()["frame_walk"]``).
* **snapshot**: ``snapshot()`` with 100k live samples in 1 and in 1000 groups.

    python -m benchmarks.bench_heap_alloc [--quick]
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any

try:
    from . import _common as common
except ImportError:  # run as a script (and as the valgrind driver): benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]

from leakyspanner.capture import heap

_THIS = Path(__file__).resolve()
_TAG: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_heap_tag", default=None)
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")

#: config → sample_bytes (None: engine off)
CONFIGS: dict[str, int | None] = {"off": None, "hooks": 2**50, "default": heap.DEFAULT_SAMPLE_BYTES,
                                  "64KiB": 64 * 1024}
VALGRIND_CONFIGS = ("off", "hooks", "default")


def _list4(n: int) -> None:
    for _ in repeat(None, n):
        _ = [None] * 4


def _bytearray64(n: int) -> None:
    for _ in repeat(None, n):
        bytearray(64)


KINDS: dict[str, Callable[[int], None]] = {"list4": _list4, "bytearray64": _bytearray64}


def _kept_heap(megabytes: int) -> list[bytes]:
    """Live blocks, so the free path probes a table that is not empty."""
    return [bytes(1000) for _ in range(megabytes * 1000)]


def _start(config: str) -> None:
    sample_bytes = CONFIGS[config]
    if sample_bytes is not None:
        heap.start(sample_bytes, heap.DEFAULT_MAX_FRAMES, _TAG)


def blocks_per_iteration(kind: str, n: int = 20_000) -> float:
    """Blocks the loop allocates per iteration: with sample_bytes 1 every block is a sample."""
    heap.start(1, 1, _TAG)
    before = heap.stats()["samples_total"]
    KINDS[kind](n)
    total = heap.stats()["samples_total"] - before
    heap.stop()
    return round(total / n, 2)


def time_allocations(n: int, rounds: int, kept_mb: int) -> dict[str, Any]:
    """ns per iteration of each loop in each config, shuffled rounds."""
    rng = random.Random(1)
    kept = _kept_heap(kept_mb)
    ns: dict[str, dict[str, list[float]]] = {k: {c: [] for c in CONFIGS} for k in KINDS}
    live: dict[str, int] = {}
    gc.disable()
    try:
        for _ in range(rounds):
            for kind, loop in KINDS.items():
                order = list(CONFIGS)
                rng.shuffle(order)
                for config in order:
                    _start(config)
                    if config != "off" and CONFIGS[config] != 2**50:
                        # the kept heap was allocated before start(): re-make a share so it is sampled
                        kept[: len(kept) // 2] = _kept_heap(kept_mb // 2)
                        live[config] = heap.stats()["live_samples"]
                    loop(n // 10)  # warm-up
                    t0 = time.thread_time_ns()
                    loop(n)
                    ns[kind][config].append((time.thread_time_ns() - t0) / n)
                    if config != "off":
                        heap.stop()
    finally:
        gc.enable()
    del kept
    result: dict[str, Any] = {"n": n, "rounds": rounds, "kept_heap_mb": kept_mb, "live_samples": live, "kinds": {}}
    for kind in KINDS:
        blocks = blocks_per_iteration(kind)
        best_off = min(ns[kind]["off"])
        result["kinds"][kind] = {"blocks_per_iteration": blocks, "configs": {
            c: {"best_ns_per_iter": round(min(v), 2), "median_ns_per_iter": round(statistics.median(v), 2),
                "best_ns_per_block": round(min(v) / blocks, 2),
                "added_ns_per_block": round((min(v) - best_off) / blocks, 2)}
            for c, v in ns[kind].items()}}
    return result


_SAMPLED_SIZE = 64 * 1024  # at a 1 KiB mean every such block is sampled
_DEPTH = 140


def _fresh_rec(d: int) -> bytearray:
    return _fresh_rec(d - 1) if d else bytearray(_SAMPLED_SIZE)


def _stable_rec(d: int, n: int) -> None:
    if d:
        return _stable_rec(d - 1, n)
    for _ in repeat(None, n):
        bytearray(_SAMPLED_SIZE)
    return None


def _stack_loop(frames: str, n: int) -> None:
    """n sampled allocations at _DEPTH frames: new frames each time, or the same ones."""
    if frames == "fresh":
        for _ in repeat(None, n):
            _fresh_rec(_DEPTH)
    else:
        _stable_rec(_DEPTH, n)


def _sample_cost(max_frames: int, frames: str, n: int) -> tuple[float, int]:
    """(µs added per sample, samples), off and on runs alternating, best of each."""
    off, on = [], []
    samples = 0
    for _ in range(7):
        t0 = time.thread_time_ns()
        _stack_loop(frames, n)
        off.append(time.thread_time_ns() - t0)
        heap.start(1024, max_frames, _TAG)
        t0 = time.thread_time_ns()
        _stack_loop(frames, n)
        on.append(time.thread_time_ns() - t0)
        samples = heap.stats()["samples_total"]
        heap.stop()
    return round((min(on) - min(off)) / samples / 1000, 2), samples


def time_stack_capture(n: int) -> list[dict[str, Any]]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 1000))
    rows = []
    try:
        for max_frames in (8, heap.DEFAULT_MAX_FRAMES, 128):
            for frames in ("fresh", "stable"):
                us, samples = _sample_cost(max_frames, frames, n)
                rows.append({"max_frames": max_frames, "depth": _DEPTH, "frames": frames,
                             "us_per_sample": us, "samples": samples})
    finally:
        sys.setrecursionlimit(limit)
    return rows


def _fill(keep: list[bytes], route: object, count: int) -> None:
    _TAG.set(heap.RequestTag({"route": route}, 1))
    keep.extend(bytes(1000) for _ in range(count))


def time_snapshot(live: int) -> list[dict[str, Any]]:
    rows = []
    for groups in (1, 1000):
        routes = [object() for _ in range(groups)]
        heap.start(64, heap.DEFAULT_MAX_FRAMES, _TAG)  # 1000-byte blocks at a 64-byte mean: all sampled
        keep: list[bytes] = []
        for route in routes:
            contextvars.copy_context().run(_fill, keep, route, live // groups)
        stats = heap.stats()
        times = []
        for _ in range(5):
            t0 = time.thread_time_ns()
            snap = heap.snapshot()
            times.append((time.thread_time_ns() - t0) / 1e6)
        t0 = time.thread_time_ns()
        heap.stats()
        stats_ms = (time.thread_time_ns() - t0) / 1e6
        heap.stop()
        rows.append({"groups": groups, "live_samples": stats["live_samples"], "rows": len(snap),
                     "best_ms": round(min(times), 2), "median_ms": round(statistics.median(times), 2),
                     "stats_ms": round(stats_ms, 3), "engine_bytes": stats["engine_bytes"]})
        del keep, snap
    return rows


# -- instructions under cachegrind -------------------------------------------------------------------
def drive(config: str, kind: str, n: int) -> None:
    """The valgrind driver: set up, warm up, run n iterations, exit without teardown."""
    if config.startswith("stack-"):  # stack-off / stack-on, kind fresh / stable
        sys.setrecursionlimit(1000)
        if config == "stack-on":
            heap.start(1024, heap.DEFAULT_MAX_FRAMES, _TAG)
        _stack_loop(kind, 10)
        _stack_loop(kind, n)
        print(json.dumps({"samples": heap.stats()["samples_total"] if config == "stack-on" else 0}), flush=True)
        os._exit(0)
    kept = _kept_heap(5)
    _start(config)
    if config not in ("off", "hooks"):
        kept[:] = _kept_heap(5)  # sampled: the free path probes a live table
    gc.disable()
    KINDS[kind](1000)
    KINDS[kind](n)
    print(json.dumps({"live_samples": heap.stats()["live_samples"] if config != "off" else 0}), flush=True)
    os._exit(0)  # teardown skipped: the same in both runs, and slow under valgrind


def _instructions(config: str, kind: str, n: int) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONTRACEMALLOC", None)
    proc = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={os.devnull}",
         sys.executable, str(_THIS), "--drive", config, "--kind", kind, "--n", str(n)],
        env=env, capture_output=True, text=True, timeout=1800)
    match = _IREFS.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"{config}/{kind} n={n} under valgrind exited {proc.returncode}: {proc.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def count_instructions(n: int, n_stack: int, blocks: dict[str, float]) -> dict[str, Any]:
    import concurrent.futures

    jobs = [(c, k, m) for c in VALGRIND_CONFIGS for k in KINDS for m in (n, 6 * n)]
    jobs += [(c, k, m) for c in ("stack-off", "stack-on") for k in ("fresh", "stable") for m in (n_stack, 6 * n_stack)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {key: pool.submit(_instructions, *key) for key in jobs}
        counts = {key: f.result() for key, f in futures.items()}

    def per(config: str, kind: str, m: int) -> float:
        return (counts[(config, kind, 6 * m)] - counts[(config, kind, m)]) / (5 * m)

    result: dict[str, Any] = {"n": n, "kinds": {}, "stack": {"n": n_stack, "depth": _DEPTH,
                                                            "max_frames": heap.DEFAULT_MAX_FRAMES}}
    for kind in KINDS:
        per_iter = {c: per(c, kind, n) for c in VALGRIND_CONFIGS}
        result["kinds"][kind] = {c: {"per_iteration": round(v, 1), "per_block": round(v / blocks[kind], 1),
                                     "added_per_block": round((v - per_iter["off"]) / blocks[kind], 1)}
                                 for c, v in per_iter.items()}
    for frames in ("fresh", "stable"):
        # one sampled 64 KiB block per iteration (its 56-byte object now and then too)
        result["stack"][frames] = round(per("stack-on", frames, n_stack) - per("stack-off", frames, n_stack))
    return result


# -- report ---------------------------------------------------------------------------------------------
def render(data: dict[str, Any]) -> str:
    alloc = data["allocations"]
    instr = data.get("instructions") or {"kinds": {}}
    rows = []
    for kind, entry in alloc["kinds"].items():
        for config, v in entry["configs"].items():
            ins = instr["kinds"].get(kind, {}).get(config, {})
            rows.append([kind, config, entry["blocks_per_iteration"], v["best_ns_per_block"], v["median_ns_per_iter"],
                         v["added_ns_per_block"], ins.get("per_block"), ins.get("added_per_block")])
    out = [common.table(["loop", "config", "blocks/iter", "ns/block (best)", "ns/iter (median)",
                         "+ns/block vs off", "instr/block", "+instr/block"], rows)]
    stack_instr = instr.get("stack", {})
    out.append(f"\nstack capture reads {data.get('frame_walk')}")
    out.append(common.table(
        ["max_frames", "depth", "frames", "µs per sample", "samples", "instr per sample"],
        [[r["max_frames"], r["depth"], r["frames"], r["us_per_sample"], r["samples"],
          stack_instr.get(r["frames"]) if r["max_frames"] == stack_instr.get("max_frames") else None]
         for r in data["stacks"]]))
    out.append("\n" + common.table(
        ["groups", "live samples", "rows", "snapshot ms (best)", "median", "stats() ms", "engine bytes"],
        [[r["groups"], r["live_samples"], r["rows"], r["best_ms"], r["median_ms"], r["stats_ms"], r["engine_bytes"]]
         for r in data["snapshot"]]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and rounds (~1 min)")
    parser.add_argument("--no-valgrind", action="store_true", help="skip the instruction counts")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not heap.AVAILABLE:
        print(f"heap engine unavailable: {heap.UNAVAILABLE_REASON}", file=sys.stderr)
        return 1
    if args.drive:
        drive(args.drive, args.kind, args.n)
    t0 = time.monotonic()
    heap.start(2**50, 1, _TAG)
    frame_walk = heap.stats().get("frame_walk")  # how this build reads a sample's frames
    heap.stop()
    data: dict[str, Any] = {
        "frame_walk": frame_walk,
        "allocations": time_allocations(200_000 if args.quick else 1_000_000, 5 if args.quick else 15,
                                        kept_mb=100),
        "stacks": time_stack_capture(500 if args.quick else 3000),
        "snapshot": time_snapshot(100_000),
    }
    blocks = {k: v["blocks_per_iteration"] for k, v in data["allocations"]["kinds"].items()}
    if args.no_valgrind or not shutil.which("valgrind"):
        data["instructions"] = None
    else:
        data["instructions"] = count_instructions(5_000 if args.quick else 20_000, 200 if args.quick else 1000, blocks)
        data["instructions"]["method"] = "valgrind --tool=cachegrind --cache-sim=no; (I(6N) - I(N)) / 5N"
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    path = common.write_result("heap_alloc", {"quick": args.quick, **data})
    print(render(data))
    print(f"\nwrote {path} in {data['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How often ``leak_check`` is right: false alarms on endpoints that keep nothing or fill a
bounded cache, and detections on one that keeps 1 KB per call.

Three endpoints of one FastAPI app, each checked ``--runs`` times (50) in this process with
the check's defaults (1000 calls, limit 512 B per call):

* ``clean``: answers a small JSON body and keeps nothing;
* ``cache``: an ``lru_cache(maxsize=512)`` of 2 KB values, cleared before each run and called
  with a new key every call, so it fills during the first third of each run (1 MB) and then
  only evicts: the warming cache the check must not call a leak;
* ``leak``: appends ``bytes(1024)`` (1057 bytes with the object header) to a list per call.

Reports failures/detections, the estimated bytes per call (median and range) and the
seconds per check (median and max, wall clock; CPU seconds beside it).

    python -m benchmarks.bench_leak_check [--runs 50] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import resource
import statistics
import sys
import time
from typing import Any

try:
    from . import _common as common
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

from fastapi import FastAPI

from leakyspanner.leakcheck import DEFAULT_LIMIT, LeakCheck, leak_check

app = FastAPI()
KEPT: list[bytes] = []
_keys = itertools.count()


@app.get("/clean/{i}")
async def clean(i: int) -> dict[str, Any]:
    return {"i": i, "pad": "x" * 200}


@functools.lru_cache(maxsize=512)
def _value(key: int) -> bytes:
    return bytes(2048)


@app.get("/cache/{key}")
async def cache(key: int) -> dict[str, int]:
    return {"n": len(_value(key))}


@app.post("/leak")
async def leak(body: dict[str, Any]) -> dict[str, int]:
    KEPT.append(bytes(1024))
    return {"n": len(KEPT)}


def _check(name: str, check: LeakCheck) -> Any:
    if name == "clean":
        return check.measure("GET", lambda i: f"/clean/{i}")
    if name == "cache":
        _value.cache_clear()
        return check.measure("GET", lambda i: f"/cache/{next(_keys)}")
    return check.measure("POST", "/leak", json={"sku": "A1", "qty": 1})


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="checks per endpoint (default 50)")
    parser.add_argument("--quick", action="store_true", help="5 runs per endpoint")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else args.runs
    check = leak_check(app)
    results: dict[str, Any] = {}
    rows = []
    for name in ("clean", "cache", "leak"):
        flagged, per_call, late, wall, cpu = 0, [], [], [], []
        for _ in range(runs):
            t0, c0 = time.perf_counter(), _cpu()
            report = _check(name, check)
            wall.append(time.perf_counter() - t0)
            cpu.append(_cpu() - c0)
            flagged += report.leaking
            per_call.append(round(report.per_call_bytes, 1))
            late.append(round(report.late_per_call_bytes, 1))
        KEPT.clear()
        print(f"{name}: {flagged}/{runs} flagged", file=sys.stderr, flush=True)
        results[name] = {"runs": runs, "flagged": flagged, "per_call_bytes": per_call,
                         "late_per_call_bytes": late, "wall_s": [round(w, 3) for w in wall],
                         "cpu_s": [round(c, 3) for c in cpu], "engine": report.engine}
        rows.append([name, f"{flagged}/{runs}", f"{statistics.median(per_call):.0f}",
                     f"{min(per_call):.0f} .. {max(per_call):.0f}", f"{statistics.median(late):.0f}",
                     f"{statistics.median(wall):.2f} / {max(wall):.2f}", f"{statistics.median(cpu):.2f}"])
    path = common.write_result("leak_check", {"limit": DEFAULT_LIMIT, "times": check.times, "results": results})
    print(common.table(["endpoint", "flagged", "B/call median", "B/call range", "later half median",
                        "wall s median / max", "CPU s median"], rows))
    print(f"\nlimit {DEFAULT_LIMIT} per call, {check.times} calls per check; written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

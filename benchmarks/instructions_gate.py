"""CI gate: basic's extra instructions per tiny request over bare may not outgrow the baseline.

A short cachegrind run of the request path (bench_instructions' driver, tiny
endpoint, basic with RSS never read) on a private copy of the package. Each
layout runs two processes that both build the bare app and the basic app and
warm both up; process A then times N bare and 6N basic requests, process B
6N bare and N basic, so

    extra per request = (I(A) - I(B)) / 5N

with start-up and warm-up cancelled. A layout is a hash seed (other dict
orders, other addresses, so other hits in CPython's method cache and dicts);
the gate takes the lowest of three, since such collisions only add.

It fails (exit 1) when that exceeds the baseline's by more than
``max(10% of the baseline's extra, 1,500)`` instructions: ten times the
spread of repeated runs and twice the spread between layouts (see
benchmarks/README.md), and a fifteenth of one ``/proc`` file read per
request. Refresh the baseline on purpose, after a change that is meant to
cost (or save) instructions, or after an upgrade of Python, FastAPI,
Starlette, pydantic or valgrind:

    python -m benchmarks.instructions_gate            # check (~30 s on an idle 2-core host)
    python -m benchmarks.instructions_gate --update   # rewrite benchmarks/instructions_baseline.json
    python -m benchmarks.instructions_gate --inject statm-read   # a deliberate regression: must fail
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    from . import bench_instructions as bench
except ImportError:  # imported by the driver (benchmarks/ on sys.path) for --inject
    import bench_instructions as bench  # type: ignore[no-redef]

BASELINE = Path(__file__).resolve().parent / "instructions_baseline.json"
CONFIGS = ("bare", "basic-no-rss")
KIND = "tiny"
N = 100  # A: 100 bare + 600 basic, B: 600 bare + 100 basic timed requests
LAYOUTS = (0, 1, 2)
#: the allowed growth of basic's extra: the larger of a share of it and a floor. The floor
#: is above the spread between layouts (~0.7k, see benchmarks/README.md); the share keeps
#: it proportionate should the request path grow
MARGIN_SHARE = 0.10
MARGIN_MIN = 1500
#: --inject: a wrapper the basic app gets inside the profiler, a regression to catch
INJECTIONS = {"statm-read": "instructions_gate:StatmReadMiddleware"}


class StatmReadMiddleware:
    """A pure-ASGI middleware that reads ``/proc/self/statm`` once per request: the injected regression."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with open("/proc/self/statm", "rb") as f:
            f.read()
        await self.app(scope, receive, send)


def request_path() -> str:
    """The request path basic runs here by default: "c" (the extension is built) or "python"."""
    from leakyspanner.capture.middleware import resolve_request_path

    return resolve_request_path("auto")


def margin(baseline_extra: float) -> int:
    return round(max(MARGIN_SHARE * baseline_extra, MARGIN_MIN))


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("fastapi", "starlette", "pydantic"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    return {**out, "valgrind": valgrind.removeprefix("valgrind-")}


def measure(run: bench.Run, n: int = N, layouts: tuple[int, ...] = LAYOUTS, jobs: int | None = None
            ) -> dict[str, Any]:
    """basic's extra instructions per tiny request over bare, per layout and the lowest."""
    reason = bench.check(run, CONFIGS[1], KIND)  # natively first: a clear error, and bytecode caches
    if reason:
        raise SystemExit(f"instruction gate: cannot build {CONFIGS[1]}: {reason}")
    names = ",".join(CONFIGS)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = {(layout, ab): pool.submit(bench.count, run, names, KIND, counts, None, layout)
                   for layout in layouts for ab, counts in (("a", f"{n},{6 * n}"), ("b", f"{6 * n},{n}"))}
        extra = {layout: (futures[layout, "a"].result()[0] - futures[layout, "b"].result()[0]) / (5 * n)
                 for layout in layouts}
    return {"extra_per_request": round(min(extra.values())), "by_layout": {str(k): round(v) for k, v in extra.items()},
            "n": n, "kind": KIND, "configs": list(CONFIGS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help=f"rewrite {BASELINE.name} from this run")
    parser.add_argument("--inject", choices=sorted(INJECTIONS), help="add a deliberate regression to basic")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="baseline file (default: %(default)s)")
    parser.add_argument("--n", type=int, default=N, help="timed requests of the short block (default %(default)s)")
    parser.add_argument("--layouts", default=",".join(map(str, LAYOUTS)), help="hash seeds (default %(default)s)")
    parser.add_argument("--package-dir", help="measure another copy of leakyspanner (a directory holding it)")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind"):
        print("instruction gate: valgrind is not installed (Debian: apt-get install -y valgrind)", file=sys.stderr)
        return 2
    if args.update and args.inject:
        parser.error("--update with --inject would make the regression the baseline")
    t0 = time.monotonic()
    with bench.snapshot(str(Path(args.package_dir).resolve()) if args.package_dir else None) as copy:
        run = bench.Run(package_dir=copy, wrap=INJECTIONS.get(args.inject or ""))
        result = measure(run, args.n, tuple(int(x) for x in args.layouts.split(",")))
    elapsed = time.monotonic() - t0
    extra = result["extra_per_request"]
    layouts = ", ".join(f"{k}: {v:,}" for k, v in result["by_layout"].items())
    versions = _versions()
    if args.update:
        args.baseline.write_text(json.dumps({**result, "request_path": request_path(), "versions": versions,
                                             "margin_share": MARGIN_SHARE, "margin_min": MARGIN_MIN},
                                            indent=1) + "\n")
        print(f"instruction gate: baseline written to {args.baseline}: basic's extra over bare "
              f"{extra:,} instructions per tiny request (layouts {layouts}) in {elapsed:.0f} s")
        return 0
    try:
        baseline = json.loads(args.baseline.read_text())
        base = int(baseline["extra_per_request"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"instruction gate: no usable baseline at {args.baseline} ({exc}); "
              "create it with `python -m benchmarks.instructions_gate --update`", file=sys.stderr)
        return 2
    allowed = margin(base)
    limit = base + allowed
    verdict = "FAIL" if extra > limit else "ok"
    print(f"instruction gate {verdict}: basic's extra instructions per tiny request over bare: {extra:,} "
          f"(layouts {layouts}); baseline {base:,}, margin {allowed:,} (max({MARGIN_SHARE:.0%}, "
          f"{MARGIN_MIN:,})), limit {limit:,}; {extra - base:+,} against the baseline; {elapsed:.0f} s")
    drift = {k: (v, versions.get(k)) for k, v in baseline.get("versions", {}).items() if versions.get(k) != v}
    if drift:
        print("  measured with other versions than the baseline: "
              + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in drift.items()))
    path, base_path = request_path(), baseline.get("request_path", "python")
    if path != base_path:
        print(f"  basic ran the {path} request path, the baseline the {base_path} one"
              + (" (is the C extension leakyspanner.capture._reqpath built? pip install -e . builds it)"
                 if path == "python" else ""), file=sys.stderr)
    if extra > limit:
        print(f"  the request path costs {extra - limit:,} instructions per request more than allowed. If that is "
              "intended, refresh the baseline: python -m benchmarks.instructions_gate --update "
              "(see benchmarks/README.md)", file=sys.stderr)
        return 1
    if extra < base - allowed:
        print("  cheaper than the baseline by more than the margin: --update tightens the gate")
    return 0


if __name__ == "__main__":
    sys.exit(main())

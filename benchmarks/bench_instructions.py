"""Instructions per request under cachegrind: an overhead figure that does not drift with the host.

Wall time on a shared 2-core VM moves by ±10% between two runs of the same code,
more than the budgets it is meant to judge; the instructions a request executes
do not. Each configuration's driver (this file with ``--drive``) runs under
``valgrind --tool=cachegrind --cache-sim=no`` twice, with N and 6N timed
requests after the same start-up and warm-up, so start-up cancels in

    instructions per request = (I(6N) - I(N)) / 5N

The driver is bench_inprocess's (``_common.call_asgi``: a prebuilt scope, a
``receive`` that hands over the body and then blocks, a ``send`` that counts
bytes, one event loop, no sockets), the same for every configuration. What
would make two runs differ is pinned: addresses (``setarch -R``: CPython's
method cache is indexed by addresses, and a colliding hot lookup costs a tiny
request ~2.5k instructions); the hash seed (a "layout": ``--layouts 0,1,2``
runs several and reports the lowest); bytecode caches (written to a temp
directory by a native run first, only read under valgrind); the profiler's sampler and writer threads, stopped before the
first request, the driver draining the records itself after the timed
requests (a measured request's formatting counts; no sample, snapshot or heap
read does, and no thread wakes on a clock that valgrind slows 50-fold); RSS
sampling, at one end or the other (``request_rss_interval_seconds`` 86,400 or 0,
see ``CONFIGS``), the driver asserting from the profiler's counts that none
or all of the timed requests were measured; the sampled heap engine's gap, set
to the steady one (a session's first minutes sample denser). Not pinned: that
engine draws its gaps from a clock-seeded generator, so mid, deep and auto on
it move with the number of allocations sampled. Tracing configs (``heavy``)
run a tenth of the requests. Valgrind counts user-space
instructions only: a syscall costs its wrapper's instructions here, and its
kernel time only in wall time.

``--callgrind CONFIG`` shows where CONFIG's extra instructions over bare go:
callgrind's per-C-function self cost, (6N - N) / 5N for both, CONFIG minus
bare; then the Python functions whose bytecode count per request grew
(CPython's eval loop hides Python function names from callgrind, so these
are counted natively with an opcode trace).

    python -m benchmarks.bench_instructions [--quick] [--configs bare,empty,basic-no-rss] [--kinds tiny]
    python -m benchmarks.bench_instructions --callgrind basic-no-rss [--kind tiny]
    python -m benchmarks.bench_instructions --package-dir /tmp/proto ...   # a copy of leakyspanner instead
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from . import _common as common
    from . import apps
except ImportError:  # run as a script (the driver): benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]
    import apps  # type: ignore[no-redef]

_THIS = Path(__file__).resolve()
_NO_RSS = {"request_rss_interval_seconds": 86_400}  # the most allowed: one a day


@dataclass(frozen=True)
class Config:
    """One configuration: the app bare, behind an empty middleware, or with a profiler attached."""

    level: str | None = None  # None: no profiler
    kw: dict[str, Any] = field(default_factory=dict)
    empty_middleware: bool = False
    #: RSS-measured requests the timed part must have: "none", "all", or None (not checked)
    measured: str | None = None
    tracing: bool | None = None  # tracemalloc on in the timed part (None: not checked)
    seed: bool = False  # leakyspanner 0.1.2, in benchmarks/.seed-venv
    heavy: bool = False  # millions of instructions per request: a tenth of the requests
    note: str = ""


#: One line per configuration. RSS never read (a day between reads, after a warm-up past
#: the first 0.1 s window, where a fresh profiler measures every request) isolates the
#: request path; 0 measures every request. A keyword the installed package rejects skips
#: the config with a note.
CONFIGS: dict[str, Config] = {
    "bare": Config(note="no middleware"),
    "empty": Config(empty_middleware=True, note="an empty pure-ASGI middleware"),
    "basic-no-rss": Config("basic", _NO_RSS, measured="none", tracing=False, note="basic, RSS never read"),
    "basic-rss-all": Config("basic", {"request_rss_interval_seconds": 0}, measured="all", tracing=False,
                            note="basic, RSS read and a record written for every request"),
    "basic-no-rss-py": Config("basic", {**_NO_RSS, "request_path": "python"}, measured="none", tracing=False,
                              note="basic on the pure-Python request path, RSS never read"),
    "auto-idle": Config("auto", _NO_RSS, measured="none", tracing=False,
                        note="auto with no growth, RSS never read (the sampled heap engine runs: mid's cost)"),
    "auto-idle-tracemalloc": Config("auto", {**_NO_RSS, "allocator": "tracemalloc"}, measured="none",
                                    tracing=False, note="auto with no growth on the tracemalloc engine: "
                                                        "tracing off, basic's request path"),
    "mid": Config("mid", _NO_RSS, measured="none", note="the default allocator engine, RSS never read"),
    "deep": Config("deep", _NO_RSS, measured="none", note="the default allocator engine, RSS never read"),
    "mid-sampler": Config("mid", {**_NO_RSS, "allocator": "sampler"}, measured="none", tracing=False,
                          note="the sampled heap engine"),
    "deep-sampler": Config("deep", {**_NO_RSS, "allocator": "sampler"}, measured="none", tracing=False,
                           note="the sampled heap engine"),
    "mid-tracemalloc": Config("mid", {**_NO_RSS, "allocator": "tracemalloc"}, measured="none", tracing=True,
                              heavy=True, note="tracemalloc, 1 frame"),
    "deep-tracemalloc": Config("deep", {**_NO_RSS, "allocator": "tracemalloc"}, measured="none", tracing=True,
                               heavy=True, note="tracemalloc, 5 frames"),
    "seed-basic": Config("basic", seed=True, note="leakyspanner 0.1.2 (reads RSS on every request)"),
    "seed-mid": Config("mid", seed=True, heavy=True, note="leakyspanner 0.1.2, tracemalloc 5 frames"),
    "seed-deep": Config("deep", seed=True, heavy=True, note="leakyspanner 0.1.2, tracemalloc 10 frames"),
}
KINDS = ("tiny", "validate", "stream")
#: timed requests in the short run (the long one runs 6x as many)
_N = {"tiny": 100, "validate": 100, "stream": 40}
_N_QUICK = {"tiny": 40, "validate": 40, "stream": 16}
_WARMUP = 30
_MEASURED_PER_S = 200  # basic's default target: 1 / request_rss_interval_seconds (0.005 s)
_BARE_RPS_FALLBACK = 5000.0  # when benchmarks/results/e2e.json has no bare rate
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


# -- the driver: one process, one config, one endpoint kind ------------------
def _request(kind: str) -> tuple[dict[str, Any], bytes]:
    method, path = apps.ENDPOINTS[kind]
    body = apps.VALIDATE_BODY if method == "POST" else b""
    return common.http_scope(method, path, body), body


def _load_wrapper(spec: str) -> Any:
    """``module:Class`` from benchmarks/ (the gate's injected regression)."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _build(name: str, log_dir: str, wrap: str | None) -> tuple[Any, Any]:
    """The app and its profiler (or None), writer and sampler threads quiet."""
    config = CONFIGS[name]
    if config.seed:
        app = apps.make_app(f"seed-{config.level}", log_dir=log_dir, interval_seconds=3600.0)
        tracker = app.state.profiler
        tracker.start()  # the seed starts in the lifespan, which this driver does not run
        while not tracker._snapshots:  # its watcher's first sample, taken at once, out of the way
            time.sleep(0.01)
        return app, None
    if config.level is None:
        return apps.make_app("empty" if config.empty_middleware else "bare"), None
    from leakyspanner import leakyspanner

    app = apps.make_app("bare")
    if wrap:  # added first, so it sits inside the profiler's middleware: part of the app
        app.add_middleware(_load_wrapper(wrap))
    try:
        profiler = leakyspanner(app, log_path=log_dir, level=config.level, interval_seconds=3600.0, **config.kw)
    except (TypeError, ValueError) as exc:
        print(json.dumps({"skip": f"leakyspanner(level={config.level!r}, **{config.kw}) rejected: {exc}"}))
        sys.stdout.flush()
        os._exit(3)
    # Both threads stopped before the first request: the sampler ticks every second early in a
    # session whatever interval_seconds says, and its records would land in the count at a rate
    # set by the wall clock, which valgrind slows 50-fold; this thread drains the writer's records
    for thread_owner in (profiler._sampler, profiler._writer):
        thread_owner.ticker.stop()
    if getattr(profiler, "_heap", None) is not None:
        # the sampled heap engine samples denser for a session's first minutes, until the sampler
        # thread (stopped here) switches it to the steady gap; measure the steady state
        from leakyspanner.capture import heap

        heap.set_sample_bytes(profiler.sample_bytes)
    return app, profiler


async def _drive(built: list[tuple[Any, Any]], kind: str, ns: list[int], opcodes: dict[Any, int] | None
                 ) -> list[tuple[int, int]]:
    """Warm every app up, then ``ns[i]`` timed requests to app i in turn.

    Returns, per app, (requests its profiler counted, RSS-measured ones) among its timed requests.
    """
    scope, body = _request(kind)
    for app, _ in built:
        for _ in range(_WARMUP):
            await common.call_asgi(app, scope, body)
    # past the profiler's first 0.1 s window, where every request is measured: the next
    # request opens a window whose probability comes from the rate seen, ~1e-8 at a day
    time.sleep(0.12)
    for app, _ in built:
        await common.call_asgi(app, scope, body)
    before = []
    for app, profiler in built:
        if profiler is not None:
            profiler._writer.drain()
            # no new sampling window during the timed requests: a window opens every 0.1 s of
            # wall time, which valgrind stretches 50-fold and the host's load by more, so the
            # count of openings (~1.5k instructions each) would follow the clock. The window
            # the next request opens keeps its probability (~1e-8 at a day, 1 at 0 s).
            _pin_window(profiler, app)
        before.append(profiler.stats() if profiler is not None else None)
    # a full collection at a point that start-up's few stray allocations (a pid's digits, a
    # timestamp) move in or out of the timed part costs ~500k instructions: collect now and
    # freeze what survives, so the timed part's collections are its own
    gc.collect()
    gc.freeze()
    if opcodes is not None:
        _trace_opcodes(opcodes, True)
    for (app, _), n in zip(built, ns):
        for _ in range(n):
            await common.call_asgi(app, scope, body)
    if opcodes is not None:
        _trace_opcodes(opcodes, False)
    out = []
    for (_, profiler), b, n in zip(built, before, ns):
        if profiler is None:
            out.append((n, 0))
            continue
        profiler._writer.drain()  # the measured requests' records, formatted on this thread
        a = profiler.stats()
        out.append((a["requests_total"] - b["requests_total"], a["request_records"] - b["request_records"]))
    return out


def _pin_window(profiler: Any, app: Any) -> None:
    """Keep the profiler's current RSS-sampling window open for good (if it has one).

    The pure-Python request path keeps the window on the profiler, the C one on the
    middleware's ``request_path`` object.
    """
    if hasattr(profiler, "_window_end"):
        profiler._window_end = math.inf
    request_path = getattr(getattr(app, "middleware_stack", None), "request_path", None)
    if request_path is not None:
        request_path.window_end = math.inf


def _trace_opcodes(counts: dict[Any, int], on: bool) -> None:
    """Count executed bytecodes per code object while on (the driver's ``--opcodes``)."""

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[code] = counts.get(code, 0) + 1
        return tracer

    sys.settrace(tracer if on else None)
    if on:  # the frames already running (this coroutine and the loop under it) from their next opcode
        frame = sys._getframe(1)
        while frame is not None:
            frame.f_trace, frame.f_trace_opcodes = tracer, True
            frame = frame.f_back


def drive(names: list[str], kind: str, ns: list[int], wrap: str | None, opcodes: bool) -> int:
    """The driver process: warm up, the timed requests, check the counts, print one JSON line.

    Several configs (``--drive bare,basic-no-rss --n 50,300``) share one process, built
    and warmed up alike, their timed requests one block after the other; ``wrap`` goes
    inside every profiler in it. tracemalloc is process-wide, so mix no tracing config
    with others.
    """
    import tracemalloc

    log_dir = tempfile.mkdtemp(prefix="leakyspanner-instr-")
    built = [_build(name, os.path.join(log_dir, str(i)), wrap) for i, name in enumerate(names)]
    counts: dict[Any, int] | None = {} if opcodes else None
    results = asyncio.run(_drive(built, kind, ns, counts))
    tracing = tracemalloc.is_tracing()
    runs, problems = [], []
    for name, (app, _), n, (counted, measured) in zip(names, built, ns, results):
        config = CONFIGS[name]
        if config.seed:  # 0.1.2 reads RSS at both ends of every request
            untimed = _WARMUP + 1  # the warm-up and the request after the pause
            counted = measured = sum(s.call_count for s in app.state.profiler._endpoint_stats.values()) - untimed
        runs.append({"config": name, "n": n, "counted": counted, "measured": measured})
        if counted != n:
            problems.append(f"{name}: the profiler counted {counted} of {n} timed requests")
        if config.measured is not None and measured != {"none": 0, "all": n}[config.measured]:
            problems.append(f"{name}: {measured} of {n} timed requests were RSS-measured, expected {config.measured}")
        if config.tracing is not None and tracing != config.tracing:
            problems.append(f"{name}: tracemalloc tracing is {tracing}, expected {config.tracing}")
    out: dict[str, Any] = {"kind": kind, "runs": runs, "tracing": tracing}
    if counts is not None:
        out["opcodes"] = {f"{c.co_filename}:{c.co_firstlineno} {c.co_qualname}": k for c, k in counts.items()}
    if problems:
        out["error"] = "; ".join(problems)
    print(json.dumps(out))
    sys.stdout.flush()
    shutil.rmtree(log_dir, ignore_errors=True)
    os._exit(2 if problems else 0)  # teardown skipped: the same in every run, and slow under valgrind


# -- the parent: valgrind runs and their differences ---------------------------
@contextlib.contextmanager
def snapshot(package_dir: str | None = None) -> Iterator[str]:
    """A private copy of ``leakyspanner`` (this checkout's, or the one in ``package_dir``).

    Every run of one invocation measures the same code even while someone edits the
    checkout, and reads bytecode caches the native check run wrote next to it: a
    source file touched between two runs would otherwise be compiled (~3M
    instructions) in one of them and not the other.
    """
    source = Path(package_dir or common.REPO_ROOT) / "leakyspanner"
    if not source.is_dir():
        raise SystemExit(f"no leakyspanner package in {source.parent}")
    with tempfile.TemporaryDirectory(prefix="leakyspanner-instructions-") as tmp:
        shutil.copytree(source, Path(tmp) / "leakyspanner", ignore=shutil.ignore_patterns("__pycache__"))
        yield tmp


@dataclass
class Run:
    """How to start a driver: which Python, which copy of the package, what extra middleware."""

    package_dir: str | None = None  # a directory holding leakyspanner, first on the driver's path
    wrap: str | None = None
    seed_python: str | None = None

    def command(self, names: str, kind: str, ns: str, *extra: str, layout: int = 0
                ) -> tuple[list[str], dict[str, str]]:
        """``names``/``ns``: one config and count, or comma-separated ones sharing a process."""
        seed = any(CONFIGS[name].seed for name in names.split(","))
        python = self.seed_python if seed else sys.executable
        cmd = [str(python), str(_THIS), "--drive", names, "--kind", kind, "--n", ns, *extra]
        if self.wrap:
            cmd += ["--wrap", self.wrap]
        # the layout is the hash seed: another seed, other dict orders, other addresses
        env = {**os.environ, "PYTHONHASHSEED": str(layout)}
        if self.package_dir:  # bytecode caches of everything the driver imports, beside the copy
            env["PYTHONPYCACHEPREFIX"] = os.path.join(self.package_dir, "pycache")
        env.pop("PYTHONTRACEMALLOC", None)
        env.pop("PYTHONPATH", None)
        if self.package_dir and not seed:
            env["PYTHONPATH"] = self.package_dir
        return cmd, env


def _parse_driver(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def check(run: Run, name: str, kind: str) -> str | None:
    """Run the driver natively once (and write bytecode caches); a reason to skip, or None."""
    cmd, env = run.command(name, kind, "3")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(cmd, cwd=common.BENCH_DIR, env=env, capture_output=True, text=True, timeout=300)
    out = _parse_driver(proc.stdout)
    if proc.returncode == 3 and "skip" in out:
        return str(out["skip"])
    if proc.returncode != 0:
        raise RuntimeError(f"driver {name}/{kind} failed natively (exit {proc.returncode}): "
                           f"{out.get('error') or proc.stderr[-3000:]}")
    return None


def _no_aslr() -> list[str]:
    """``setarch -R``: the same addresses in every run (they decide CPython's method-cache hits)."""
    return ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []


def count(run: Run, names: str, kind: str, ns: int | str, tool: list[str] | None = None,
          layout: int = 0) -> tuple[int, dict[str, Any]]:
    """Instructions of one driver run under valgrind (``names``/``ns`` as in ``Run.command``), and its report."""
    tool = tool or ["--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={os.devnull}"]
    cmd, env = run.command(names, kind, str(ns), layout=layout)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # every run sees the same caches
    proc = subprocess.run([*_no_aslr(), "valgrind", *tool, *cmd], cwd=common.BENCH_DIR, env=env,
                          capture_output=True, text=True, timeout=3600)
    out = _parse_driver(proc.stdout)
    match = _IREFS.search(proc.stderr)
    if proc.returncode != 0 or (match is None and "cachegrind" in tool[0]):
        raise RuntimeError(f"{names}/{kind} n={ns} under valgrind exited {proc.returncode}: "
                           f"{out.get('error') or proc.stderr[-3000:]}")
    return (int(match.group(1).replace(",", "")) if match else 0), out


def per_request(pairs: dict[int, tuple[int, int, dict[str, Any]]], n: int) -> dict[str, Any]:
    """(I(6N) - I(N)) / 5N per layout, and the lowest: collisions in CPython's method cache only add."""
    by_layout = {layout: (i_6n - i_n) / (5 * n) for layout, (i_n, i_6n, _) in pairs.items()}
    out = next(iter(pairs.values()))[2]
    return {"n": n, "per_request": round(min(by_layout.values())),
            "by_layout": {str(k): round(v) for k, v in by_layout.items()},
            "i_n_i_6n": {str(k): [i_n, i_6n] for k, (i_n, i_6n, _) in pairs.items()},
            "measured_per_n": out["runs"][0]["measured"], "tracing": out["tracing"]}


def bare_rates() -> tuple[dict[str, float], str]:
    """Bare's requests/s per endpoint kind, for composing basic at 200 measured requests/s."""
    path = common.RESULTS_DIR / "e2e.json"
    try:
        results = json.loads(path.read_text())["results"]
        bare = next(iter(results.values()))["summary"]["bare"]
        return {k: float(bare[k]["rps"]) for k in KINDS if k in bare}, f"bare's e2e req/s in {path.name}"
    except (OSError, KeyError, ValueError, StopIteration):
        return {}, f"{_BARE_RPS_FALLBACK:.0f} req/s (no {path.name})"


def compose(table: dict[str, dict[str, Any]], rates: dict[str, float]) -> dict[str, Any]:
    """basic at a steady rate: the request path plus the measured share of a measured request's extra."""
    out = {}
    for kind in table.get("basic-no-rss", {}):
        if kind not in table.get("basic-rss-all", {}):
            continue
        rate = rates.get(kind, _BARE_RPS_FALLBACK)
        share = min(1.0, _MEASURED_PER_S / rate)
        lo, hi = table["basic-no-rss"][kind]["per_request"], table["basic-rss-all"][kind]["per_request"]
        out[kind] = {"per_request": round(lo + share * (hi - lo)), "measured_share": round(share, 4),
                     "bare_rps": rate}
    return out


def render(table: dict[str, dict[str, Any]], kinds: list[str]) -> str:
    rows = []
    for name, by_kind in table.items():
        cells: list[Any] = [name]
        for kind in kinds:
            v, bare = by_kind.get(kind), table.get("bare", {}).get(kind)
            if v is None or bare is None:
                cells += [None, None]
                continue
            extra = v["per_request"] - bare["per_request"]
            cells += [f"{v['per_request']:,}", f"{extra:+,} ({v['per_request'] / bare['per_request']:.3f}x)"]
        rows.append(cells)
    headers = ["config"] + [h for k in kinds for h in (f"{k} instr/req", f"{k} extra (x bare)")]
    return common.table(headers, rows)


def run_table(run: Run, names: list[str], kinds: list[str], ns: dict[str, int], jobs: int,
              layouts: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Every config and kind: a native check (skips what the package rejects), then the valgrind pairs."""
    skipped: dict[str, str] = {}
    for name in names:
        reason = ("no seed venv (benchmarks/.seed-venv): --seed creates it" if CONFIGS[name].seed
                  and not run.seed_python else check(run, name, kinds[0]))
        if reason:
            skipped[name] = reason
            print(f"  {name}: skipped ({reason})", file=sys.stderr, flush=True)
    todo = [(name, kind) for name in names if name not in skipped for kind in kinds]
    ns_of = {(name, kind): max(2, ns[kind] // 10) if CONFIGS[name].heavy else ns[kind] for name, kind in todo}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {(name, kind, layout, k): pool.submit(count, run, name, kind, k * ns_of[name, kind], None, layout)
                   for name, kind in todo for layout in layouts for k in (1, 6)}
        table: dict[str, dict[str, Any]] = {}
        for name, kind in todo:
            pairs = {}
            for layout in layouts:
                (i_n, out), (i_6n, _) = futures[name, kind, layout, 1].result(), futures[name, kind, layout, 6].result()
                pairs[layout] = (i_n, i_6n, out)
            table.setdefault(name, {})[kind] = per_request(pairs, ns_of[name, kind])
            print(f"  {name} {kind}: {table[name][kind]['per_request']:,}", file=sys.stderr, flush=True)
    return {"table": table, "skipped": skipped}


# -- callgrind: where the extra instructions go ---------------------------------
_FN_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$")


def _self_costs(path: str) -> dict[str, int]:
    """Self cost (instructions) per C function from a callgrind output file."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", path],
                          capture_output=True, text=True, check=True).stdout
    costs: dict[str, int] = {}
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        m = _FN_LINE.match(line) if started else None
        if m:
            name = re.sub(r"\s*\[.*\]$", "", m.group(2)).removeprefix("???:")
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def _callgrind_run(run: Run, name: str, kind: str, n: int, tmp: str) -> dict[str, int]:
    out = os.path.join(tmp, f"callgrind.{name}.{n}.out")
    count(run, name, kind, n, ["--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"])
    return _self_costs(out)


def _opcodes_per_request(run: Run, name: str, kind: str, n: int) -> dict[str, float]:
    cmd, env = run.command(name, kind, str(n), "--opcodes")
    proc = subprocess.run(cmd, cwd=common.BENCH_DIR, env=env, capture_output=True, text=True, timeout=600)
    out = _parse_driver(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"opcode count of {name} failed: {out.get('error') or proc.stderr[-3000:]}")
    return {fn: c / n for fn, c in out["opcodes"].items()}


def _short(fn: str) -> str:
    """A path without the directories that say nothing: the build tree, the venv, the copy."""
    fn = re.sub(r"^\S*?/(Python-[\d.]+|site-packages|leakyspanner-instructions-[^/]+)/", "", fn)
    return fn.replace(str(common.REPO_ROOT) + "/", "")


def callgrind_report(run: Run, name: str, kind: str, n: int, top: int) -> dict[str, Any]:
    """Per C function (callgrind self cost) and per Python function (bytecodes), ``name`` minus bare."""
    for config in ("bare", name):
        reason = check(run, config, kind)
        if reason:
            raise SystemExit(f"{config}: {reason}")
    with tempfile.TemporaryDirectory(prefix="leakyspanner-callgrind-") as tmp, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {(c, k): pool.submit(_callgrind_run, run, c, kind, k * n, tmp) for c in ("bare", name) for k in (1, 6)}
        per = {c: {fn: (futures[c, 6].result().get(fn, 0) - futures[c, 1].result().get(fn, 0)) / (5 * n)
                   for fn in set(futures[c, 1].result()) | set(futures[c, 6].result())} for c in ("bare", name)}
    base, other = per["bare"], per[name]
    diff = {fn: other.get(fn, 0.0) - base.get(fn, 0.0) for fn in set(base) | set(other)}
    c_rows = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]
    ops_base = _opcodes_per_request(run, "bare", kind, n)
    ops_other = _opcodes_per_request(run, name, kind, n)
    ops = {fn: ops_other.get(fn, 0.0) - ops_base.get(fn, 0.0) for fn in set(ops_base) | set(ops_other)}
    py_rows = sorted(((fn, d) for fn, d in ops.items() if abs(d) >= 0.5), key=lambda kv: -abs(kv[1]))[:top]
    return {
        "config": name, "kind": kind, "n": n,
        "total_per_request": {"bare": round(sum(base.values())), name: round(sum(other.values()))},
        "c_functions": [[_short(fn), round(d)] for fn, d in c_rows],
        "python_opcodes_per_request": {"bare": round(sum(ops_base.values()), 1),
                                       name: round(sum(ops_other.values()), 1)},
        "python_functions": [[_short(fn), round(d, 1)] for fn, d in py_rows],
    }


def render_callgrind(report: dict[str, Any]) -> str:
    name = report["config"]
    totals, ops = report["total_per_request"], report["python_opcodes_per_request"]
    head = (f"{name} vs bare on {report['kind']}: {totals[name]:,} vs {totals['bare']:,} instructions per request "
            f"({totals[name] - totals['bare']:+,}); {ops[name]:,} vs {ops['bare']:,} Python bytecodes "
            f"({ops[name] - ops['bare']:+,.1f})")
    c_table = common.table(["C function (callgrind self cost)", "extra instr/req"],
                           [[fn, f"{d:+,}"] for fn, d in report["c_functions"]])
    py_table = common.table(["Python function", "extra bytecodes/req"],
                            [[fn, f"{d:+,.1f}"] for fn, d in report["python_functions"]])
    return f"{head}\n\n{c_table}\n\n{py_table}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configs (default: all)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated endpoint kinds")
    parser.add_argument("--quick", action="store_true", help="fewer requests per run (N=40, stream 16)")
    parser.add_argument("--n", help="timed requests of the short run, every kind (the long run: 6x)")
    parser.add_argument("--layouts", default="0",
                        help="hash seeds to run each config with; the table shows the lowest (default 0)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="valgrind runs at once")
    parser.add_argument("--package-dir", help="a directory holding another copy of leakyspanner to measure")
    parser.add_argument("--seed", action="store_true", help="create the seed venv if it is missing")
    parser.add_argument("--no-seed", action="store_true", help="skip leakyspanner 0.1.2")
    parser.add_argument("--callgrind", metavar="CONFIG", help="where CONFIG's extra instructions over bare go")
    parser.add_argument("--kind", default="tiny", help="endpoint kind of --callgrind (and --drive)")
    parser.add_argument("--top", type=int, default=25, help="rows of --callgrind's tables")
    parser.add_argument("--name", default="instructions", help="results/<name>.json")
    # the driver, started by this script under valgrind
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--wrap", help=argparse.SUPPRESS)
    parser.add_argument("--opcodes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        return drive(args.drive.split(","), args.kind, [int(n) for n in (args.n or "1").split(",")], args.wrap,
                     args.opcodes)
    if not shutil.which("valgrind"):
        parser.error("valgrind is not installed (Debian: apt-get install -y valgrind)")
    names = [c for c in args.configs.split(",") if c]
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [c for c in names + ([args.callgrind] if args.callgrind else []) if c not in CONFIGS]
    bad += [k for k in kinds + [args.kind] if k not in KINDS]
    if bad:
        parser.error(f"unknown config(s) or kind(s) {bad}; configs: {', '.join(CONFIGS)}; kinds: {', '.join(KINDS)}")
    if args.no_seed:
        names = [c for c in names if not CONFIGS[c].seed]
    package_dir = str(Path(args.package_dir).resolve()) if args.package_dir else None
    seed = common.seed_python(create=args.seed) if any(CONFIGS[c].seed for c in names) else None
    with snapshot(package_dir) as copy:
        return _main(args, names, kinds, Run(package_dir=copy, seed_python=seed), package_dir)


def _main(args: argparse.Namespace, names: list[str], kinds: list[str], run: Run, package_dir: str | None) -> int:
    ns = {k: int(args.n) if args.n else (_N_QUICK if args.quick else _N)[k] for k in KINDS}
    t0 = time.monotonic()
    if args.callgrind:
        report = callgrind_report(run, args.callgrind, args.kind, ns[args.kind], args.top)
        path = common.write_result(f"{args.name}_callgrind_{args.callgrind}", {
            "package_dir": package_dir, "elapsed_s": round(time.monotonic() - t0, 1), **report})
        print(render_callgrind(report))
        print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
        return 0
    if "bare" not in names:
        names.insert(0, "bare")
    layouts = tuple(int(x) for x in args.layouts.split(","))
    result = run_table(run, names, kinds, ns, args.jobs, layouts)
    rates, rate_source = bare_rates()
    composed = compose(result["table"], rates)
    if composed:
        result["table"][f"basic@{_MEASURED_PER_S}/s"] = composed
    path = common.write_result(args.name, {
        "method": "setarch -R valgrind --tool=cachegrind --cache-sim=no; (I(6N) - I(N)) / 5N, the lowest over "
                  "the layouts (PYTHONHASHSEED values)", "layouts": list(layouts),
        "n": ns, "package_dir": package_dir, "elapsed_s": round(time.monotonic() - t0, 1),
        "composed": {"measured_per_s": _MEASURED_PER_S, "bare_rps_source": rate_source,
                     "formula": "basic-no-rss + measured_share * (basic-rss-all - basic-no-rss), "
                                "measured_share = measured_per_s / bare_rps"},
        "notes": {name: CONFIGS[name].note for name in result["table"] if name in CONFIGS},
        **result,
    })
    print(render(result["table"], kinds))
    if composed:
        print(f"\nbasic@{_MEASURED_PER_S}/s: basic-no-rss plus {_MEASURED_PER_S}/s ÷ bare's rate "
              f"({rate_source}) of basic-rss-all's extra")
    for name, reason in result["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

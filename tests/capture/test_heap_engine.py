"""The C heap engine: unbiased estimates, request tags, stacks, and safety next to other hooks."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from leakyspanner.capture import heap

if not heap.AVAILABLE:
    pytest.skip(heap.UNAVAILABLE_REASON or "heap engine unavailable", allow_module_level=True)

from leakyspanner.capture import _heap  # noqa: E402

TAG: contextvars.ContextVar[Any] = contextvars.ContextVar("test_heap_tag", default=None)
BIG = 1 << 20


class _Route:
    """Stands in for a Starlette route: only its identity matters."""


def _big() -> bytearray:
    return bytearray(BIG)  # the allocation the stack tests look for


_BIG_LINE = _big.__code__.co_firstlineno + 1


def _in_request(tag: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh context whose tag variable holds ``tag``, as the middleware does."""

    def body() -> Any:
        TAG.set(tag)
        return fn()

    return contextvars.copy_context().run(body)


def _rows_at(line: int, func: str = "_big") -> list[tuple[int, int, int, int, int, int]]:
    """Snapshot rows whose innermost frame is ``func`` at ``line`` of this file."""
    rows = []
    for row in _heap.snapshot():
        frames = _heap.stack(row[2])
        if frames and frames[0][0] == __file__ and frames[0][1] == line and frames[0][2].endswith(func):
            rows.append(row)
    return rows


def _big_buffers() -> int:
    """Live 1 MiB buffers sampled at _big's line, by estimated bytes: a bytearray is two blocks,
    and its 56-byte object is sampled too now and then (1.4% at a 4 KiB mean), worth ~5 KB."""
    return round(sum(r[5] for r in _rows_at(_BIG_LINE)) / BIG)


def _tag_bytes(route_id: int, method: int) -> int:
    return sum(r[5] for r in _heap.snapshot() if r[0] == route_id and r[1] == method)


@pytest.fixture
def engine() -> Iterator[Any]:
    assert not _heap.running(), "a previous test left the heap engine running"
    yield _heap
    _heap.stop()
    assert not _heap.running()


# -- estimates -------------------------------------------------------------------------------------
# With mean gap M, an allocation of s bytes is sampled with p = 1 - exp(-s/M) and counted as s/p,
# so n objects estimate n*s with variance n * s^2 * (1-p)/p. At M = 4096:
#   100-byte bytes (s = 133), n = 100k:  p = 0.032, sd = 1.7% of 13.3 MB: ±10% is 5.7 sd
#   4000-byte bytes (s = 4033), n = 10k: p = 0.626, sd = 0.8% of 40 MB:   ±10% is 13 sd
#   1 MiB bytearrays, n = 50:           p = 1 (to 1e-111), sd = 0:       exact but for headers
# The object counts have the same relative sd. Each case is 10k calls of a "request".
# The engine estimates what the blocks occupy (pymalloc rounds 133 up to 144, +8%: against
# getsizeof() alone the tiny case would sit 1 sd from the bound), so the truth is counted the same way.
# A bytearray is two blocks, the 56-byte object (rarely sampled: too noisy to count) and its buffer.
def _footprint(size: int) -> int:
    """What pymalloc occupies for a block of ``size`` bytes (16-byte classes up to 512); bigger
    blocks as requested (glibc's header and rounding add under 0.5% at the sizes used here)."""
    return (size + 15) // 16 * 16 if size <= 512 else size


@pytest.mark.parametrize(
    ("make", "per_call", "keep_every", "single_block"),
    [
        pytest.param(lambda: bytes(100), 10, 1, True, id="tiny"),
        pytest.param(lambda: bytes(4000), 1, 1, True, id="medium"),
        pytest.param(lambda: bytearray(BIG), 1, 200, False, id="1MiB"),
    ],
)
def test_live_bytes_of_a_tag_are_estimated_within_10_percent(engine: Any, make: Callable[[], Any], per_call: int,
                                                             keep_every: int, single_block: bool) -> None:
    calls = 10_000
    keep: list[Any] = [None] * (calls // keep_every * per_call)  # allocated before the tag
    route = _Route()
    tag = _heap.RequestTag({"route": route}, heap.METHOD_CODES["POST"])
    engine.start(4096, 8, TAG)

    def requests() -> None:
        slot = 0
        for call in range(calls):
            for _ in range(per_call):
                obj = make()
                if call % keep_every == 0:
                    keep[slot] = obj
                    slot += 1

    _in_request(tag, requests)
    true_bytes = sum(_footprint(sys.getsizeof(obj)) for obj in keep)
    rows = [r for r in _heap.snapshot() if r[0] == id(route)]
    est_bytes = sum(r[5] for r in rows)
    est_count = sum(r[4] for r in rows)
    assert {r[1] for r in rows} == {heap.METHOD_CODES["POST"]}
    assert abs(est_bytes - true_bytes) <= 0.1 * true_bytes, (est_bytes, true_bytes)
    if single_block:
        assert abs(est_count - len(keep)) <= 0.1 * len(keep), (est_count, len(keep))
    else:
        assert sum(r[3] for r in rows) >= len(keep)  # every buffer sampled

    keep.clear()
    assert _tag_bytes(id(route), heap.METHOD_CODES["POST"]) < 0.01 * true_bytes


def test_a_reallocated_block_counts_at_its_new_size_and_leaves_when_freed(engine: Any) -> None:
    route = _Route()
    engine.start(4096, 4, TAG)

    def grow() -> bytearray:
        block = bytearray(BIG)
        block.extend(bytes(BIG))  # realloc to 2 MiB
        return block

    block = _in_request(_heap.RequestTag({"route": route}, 1), grow)
    est = _tag_bytes(id(route), 1)
    assert 2 * BIG <= est < 2 * BIG + 64 * 1024  # the old 1 MiB block is gone from the estimate
    del block
    assert _tag_bytes(id(route), 1) < 64 * 1024


def test_stats_agree_with_the_snapshot(engine: Any) -> None:
    engine.start(4096, 8, TAG)
    keep = [bytes(500) for _ in range(20_000)]
    rows = engine.snapshot()
    stats = engine.stats()
    # building the snapshot's list and the stats dict allocates too, and may be sampled
    assert abs(stats["live_samples"] - sum(r[3] for r in rows)) <= 5
    assert abs(stats["live_est_bytes"] - sum(r[5] for r in rows)) <= 0.01 * stats["live_est_bytes"]
    assert stats["samples_total"] >= stats["live_samples"]
    assert stats["sample_bytes"] == 4096 and stats["max_frames"] == 8 and stats["max_samples"] == 1 << 20
    assert stats["running"] and stats["hooked"] and stats["reached"]
    assert stats["stacks"] >= 1 and stats["engine_bytes"] > 0
    del keep
    engine.stop()
    stats = engine.stats()
    assert not stats["running"] and not stats["hooked"]
    assert stats["live_samples"] == 0 and stats["engine_bytes"] == 0
    assert engine.snapshot() == []


# -- tags ------------------------------------------------------------------------------------------
def test_route_comes_from_scope_route_then_endpoint_then_close(engine: Any) -> None:
    route, endpoint = _Route(), _Route()
    engine.start(4096, 4, TAG)
    keep = [
        _in_request(_heap.RequestTag({"route": route, "endpoint": endpoint}, 1), _big),
        _in_request(_heap.RequestTag({"endpoint": endpoint}, 2), _big),
        _in_request(_heap.RequestTag({"type": "http"}, 6), _big),
    ]
    closed = _heap.RequestTag({"route": route}, 3)
    closed.close(12345)
    keep += [_in_request(closed, _big), _big()]
    tags = {(r[0], r[1]) for r in _rows_at(_BIG_LINE) if r[5] >= BIG}
    assert tags == {(id(route), 1), (id(endpoint), 2), (0, 6), (12345, 3), (0, 0)}
    assert len(keep) == 5


def test_anything_but_a_request_tag_in_the_variable_is_untagged(engine: Any) -> None:
    engine.start(4096, 4, TAG)
    keep = _in_request("not a tag", _big)
    assert {(r[0], r[1]) for r in _rows_at(_BIG_LINE)} == {(0, 0)}
    del keep


def test_a_task_spawned_by_the_request_inherits_its_tag(engine: Any) -> None:
    route = _Route()
    tag = _heap.RequestTag({"route": route}, heap.METHOD_CODES["GET"])
    engine.start(4096, 4, TAG)

    async def request() -> list[bytearray]:
        TAG.set(tag)
        first = await _spawned()
        tag.close(777)  # the response is sent; the task the request left behind keeps going
        return [first, await _spawned()]

    async def _spawned() -> bytearray:
        return await asyncio.create_task(_async_big())

    async def _async_big() -> bytearray:
        return _big()

    keep = contextvars.copy_context().run(asyncio.run, request())
    tags = {(r[0], r[1]) for r in _rows_at(_BIG_LINE) if r[5] >= BIG}
    assert tags == {(id(route), heap.METHOD_CODES["GET"]), (777, heap.METHOD_CODES["GET"])}
    assert len(keep) == 2


def test_close_drops_the_scope_and_keeps_only_the_route_id() -> None:
    route = _Route()
    ref = weakref.ref(route)
    scope = {"route": route, "type": "http"}
    refs_before = sys.getrefcount(scope)
    tag = _heap.RequestTag(scope, 2)
    assert sys.getrefcount(scope) == refs_before + 1
    del scope, route
    assert ref() is not None and tag.route_id == id(ref()) and not tag.closed
    tag.close(99)
    assert ref() is None
    assert tag.closed and tag.route_id == 99 and tag.method_code == 2
    with pytest.raises(AttributeError):
        tag.route_id = 1  # type: ignore[misc]


def test_a_tag_in_a_reference_cycle_is_collected() -> None:
    scope: dict[str, Any] = {"type": "http"}
    scope["state"] = _heap.RequestTag(scope, 1)
    holder = _Route()
    scope["route"] = holder
    ref = weakref.ref(holder)
    del scope, holder
    gc.collect()
    assert ref() is None


# -- stacks ----------------------------------------------------------------------------------------
def _nested(depth: int) -> bytearray:
    if depth == 0:
        return bytearray(BIG)
    return _nested(depth - 1)


def test_a_sample_names_its_file_line_and_qualname_innermost_first(engine: Any) -> None:
    engine.start(4096, 5, TAG)

    def inner() -> bytearray:
        return bytearray(BIG)

    line = inner.__code__.co_firstlineno + 1
    keep = [inner(), _nested(20)]
    (row,) = _rows_at(line, "inner")
    frames = _heap.stack(row[2])
    qualname = f"{test_a_sample_names_its_file_line_and_qualname_innermost_first.__name__}.<locals>.inner"
    assert frames[0] == (__file__, line, qualname if sys.version_info >= (3, 11) else "inner")
    assert frames[1][2].endswith("test_a_sample_names_its_file_line_and_qualname_innermost_first")
    (row,) = _rows_at(_nested.__code__.co_firstlineno + 2, "_nested")
    frames = _heap.stack(row[2])
    assert len(frames) == 5  # max_frames
    assert [f[2] for f in frames] == ["_nested"] * 5
    assert frames[1][1] == _nested.__code__.co_firstlineno + 3
    assert len(keep) == 2


def _frames_of(func: str, line: int) -> tuple[tuple[str, int, str], ...]:
    """The one sampled stack whose innermost frame is ``func`` at ``line`` (of any file)."""
    found = {_heap.stack(r[2]) for r in _heap.snapshot()}
    (frames,) = {f for f in found if f and f[0][2].endswith(func) and f[0][1] == line}
    return frames


def test_a_sample_in_a_coroutine_names_the_awaiting_frames_and_their_lines(engine: Any) -> None:
    async def endpoint() -> bytearray:
        await asyncio.sleep(0)  # suspended and resumed: the frame now runs from its coroutine
        return bytearray(BIG)

    async def server() -> bytearray:
        return await endpoint()

    engine.start(4096, 8, TAG)
    keep = asyncio.run(server())
    line = endpoint.__code__.co_firstlineno + 2
    frames = _frames_of("endpoint", line)
    assert frames[0] == (__file__, line, endpoint.__qualname__ if sys.version_info >= (3, 11) else "endpoint")
    assert frames[1][:2] == (__file__, server.__code__.co_firstlineno + 1)
    assert frames[1][2].endswith("server")
    assert len(keep) == BIG


def test_a_sample_in_a_generator_names_it_and_the_loop_that_drives_it(engine: Any) -> None:
    def chunks() -> Iterator[bytearray]:
        for _ in range(3):
            yield bytearray(BIG)

    engine.start(4096, 8, TAG)
    keep = [chunk for chunk in chunks()]  # the comprehension is its own frame before 3.12
    frames = _frames_of("chunks", chunks.__code__.co_firstlineno + 2)
    assert frames[0][0] == __file__
    driver = sys._getframe().f_code
    assert (__file__, driver.co_firstlineno + 6) in {f[:2] for f in frames[1:3]}
    assert len(keep) == 3


def test_frames_under_deep_recursion_stop_at_max_frames_with_every_line_right(engine: Any) -> None:
    engine.start(4096, 32, TAG)
    keep = _nested(200)
    (row,) = _rows_at(_nested.__code__.co_firstlineno + 2, "_nested")
    frames = _heap.stack(row[2])
    assert frames == ((__file__, _nested.__code__.co_firstlineno + 2, "_nested"),
                      *[(__file__, _nested.__code__.co_firstlineno + 3, "_nested")] * 31)
    assert len(keep) == BIG


def test_code_made_by_exec_is_released_once_only_the_engine_holds_it(engine: Any) -> None:
    namespace: dict[str, Any] = {}
    source = "def made():\n    first = bytearray(1 << 20)\n    return first, bytearray(1 << 20)\n"
    exec(compile(source, "<made by exec>", "exec"), namespace)  # two sites: two records of one code
    code_ref = weakref.ref(namespace["made"].__code__)
    engine.start(4096, 4, TAG)
    keep = namespace["made"]()
    assert engine.stats()["pinned_codes"] >= 2
    namespace.clear()
    gc.collect()
    assert code_ref() is not None  # the engine still holds it: its line is not known yet
    rows = engine.snapshot()  # the tick lets go of code objects only the engine holds
    assert code_ref() is None
    frames = {_heap.stack(r[2])[0] for r in rows}
    assert {("<made by exec>", 2, "made"), ("<made by exec>", 3, "made")} <= frames
    again = _big()  # sampling and interning go on after the release
    assert len(_rows_at(_BIG_LINE)) == 1 and len(again) == len(keep[0]) == BIG


def test_stack_ids_are_checked(engine: Any) -> None:
    with pytest.raises(ValueError, match="stack_id 5"):
        _heap.stack(5)  # not running
    engine.start(4096, 4, TAG)
    assert _heap.stack(0) == (("<too many stacks>", 0, ""),)
    with pytest.raises(ValueError, match="stack_id 1000000"):
        _heap.stack(1_000_000)
    with pytest.raises(ValueError, match="stack_id -1"):
        _heap.stack(-1)
    with pytest.raises(TypeError, match="str"):
        _heap.stack("1")


def test_sampling_where_exceptions_are_raised_and_caught_leaves_them_intact(engine: Any) -> None:
    engine.start(16, 8, TAG)  # nearly every block sampled: exceptions, tracebacks, frames on unwind

    def fail(i: int) -> None:
        raise ValueError(i, "x" * (i % 100))

    for i in range(2000):
        try:
            fail(i)
        except ValueError as exc:
            assert exc.args[0] == i and exc.__traceback__ is not None
    assert engine.stats()["samples_total"] > 2000


# -- living next to other allocator hooks ----------------------------------------------------------
def test_engine_and_tracemalloc_coexist_in_either_order(engine: Any) -> None:
    engine.start(4096, 4, TAG)
    tracemalloc.start()
    try:
        keep = [_big(), [bytes(100) for _ in range(1000)]]
        stats = engine.stats()
        assert stats["running"] and not stats["hooked"] and stats["reached"]  # tracemalloc wraps us
        engine.stop()  # stays installed, passing through
        stats = engine.stats()
        assert not stats["running"] and stats["reached"] and stats["live_samples"] == 0
        keep.append([bytes(100) for _ in range(1000)])
        keep.clear()
    finally:
        tracemalloc.stop()  # restores our pass-through hook
    assert engine.stats()["hooked"]
    engine.start(4096, 4, TAG)  # reuses that install
    keep = [_big()]
    assert _big_buffers() == 1
    engine.stop()
    assert not engine.stats()["hooked"] and not engine.stats()["reached"]  # fully uninstalled

    tracemalloc.start()
    try:
        engine.start(4096, 4, TAG)
        traced_before = tracemalloc.get_traced_memory()[0]
        keep.append(_big())
        assert tracemalloc.get_traced_memory()[0] - traced_before >= BIG
        assert _big_buffers() == 1  # the earlier one was made before this start
        assert engine.stats()["hooked"]
        engine.stop()
        assert not engine.stats()["hooked"]
        traced_before = tracemalloc.get_traced_memory()[0]
        keep.append(_big())  # tracemalloc's hook is the current one again
        assert tracemalloc.get_traced_memory()[0] - traced_before >= BIG
        keep.clear()
    finally:
        tracemalloc.stop()


def test_a_tool_that_cuts_the_engine_out_is_reported_and_start_reinstalls(engine: Any) -> None:
    tracemalloc.start()
    try:
        engine.start(4096, 4, TAG)
    finally:
        tracemalloc.stop()  # restores the allocator it found: ours is no longer called
    stats = engine.stats()
    assert stats["running"] and not stats["hooked"] and not stats["reached"]
    engine.stop()
    engine.start(4096, 4, TAG)
    assert engine.stats()["reached"]
    keep = _big()
    assert _big_buffers() == 1
    del keep


def test_threads_allocate_while_another_takes_snapshots(engine: Any) -> None:
    engine.start(1024, 16, TAG)
    done = threading.Event()
    errors: list[BaseException] = []
    snapshots = 0

    def allocate(seed: int) -> None:
        try:
            tag = _heap.RequestTag({"route": _Route()}, seed % 11 + 1)
            TAG.set(tag)
            kept: list[Any] = []
            for i in range(3000):
                kept.append(bytearray((i * 7919 + seed) % 5000) if i % 3 else [None] * (i % 50))
                if len(kept) > 200:
                    del kept[:100]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def snapshot() -> None:
        nonlocal snapshots
        while not done.is_set():
            for row in _heap.snapshot():
                assert row[3] >= 1 and row[4] >= 1 and row[5] >= 0
                _heap.stack(row[2])
            snapshots += 1

    workers = [threading.Thread(target=allocate, args=(n,), name=f"heap-test-{n}") for n in range(8)]
    reader = threading.Thread(target=snapshot, name="heap-test-reader")
    reader.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    reader.join()
    assert not errors
    assert snapshots > 0
    stats = engine.stats()
    assert stats["samples_total"] > 1000 and stats["samples_dropped"] == 0
    assert abs(stats["live_samples"] - sum(r[3] for r in engine.snapshot())) <= 5  # the calls allocate too


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# 3.12+ warns about fork() with threads alive; the child here only allocates and exits.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_allocates_snapshots_and_exits_cleanly(engine: Any) -> None:
    engine.start(4096, 8, TAG)
    keep = [bytes(1000) for _ in range(5000)]
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            junk = [bytes(1000) for _ in range(5000)]
            rows = _heap.snapshot()
            del junk
            stats = _heap.stats()
            if rows and stats["running"] and stats["live_samples"] > 0:
                _heap.stop()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    more = [bytes(1000) for _ in range(5000)]
    assert engine.stats()["live_samples"] > 0 and engine.snapshot()
    del keep, more


def test_the_sample_table_is_bounded(engine: Any) -> None:
    engine.start(64, 4, TAG, max_samples=100)
    keep = [bytes(100) for _ in range(20_000)]
    stats = engine.stats()
    assert stats["live_samples"] <= 100
    assert stats["samples_dropped"] > 1000
    assert stats["engine_bytes"] < 1 << 20
    del keep


# -- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sample_bytes": 0}, ValueError, "sample_bytes must be in 1.*got 0"),
        ({"sample_bytes": "4096"}, TypeError, "sample_bytes must be an int, got str"),
        ({"max_frames": 0}, ValueError, "max_frames must be in 1..128, got 0"),
        ({"max_frames": 129}, ValueError, "max_frames must be in 1..128, got 129"),
        ({"max_samples": 0}, ValueError, "max_samples must be in 1.*got 0"),
        ({"tag_var": "tag"}, ValueError, "tag_var must be a contextvars.ContextVar, got str"),
    ],
)
def test_bad_arguments_name_the_value(engine: Any, kwargs: dict[str, Any], error: type[Exception],
                                      match: str) -> None:
    args = {"sample_bytes": 4096, "max_frames": 8, "tag_var": TAG, **kwargs}
    with pytest.raises(error, match=match):
        engine.start(**args)
    assert not engine.running() and not engine.stats()["hooked"]


def test_starting_twice_raises_and_stop_is_idempotent(engine: Any) -> None:
    engine.start(4096, 8, TAG)
    with pytest.raises(RuntimeError, match="already running"):
        engine.start(4096, 8, TAG)
    assert engine.running()
    engine.stop()
    engine.stop()
    assert not engine.running()


def test_request_tag_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="scope dict, got list"):
        _heap.RequestTag([], 1)
    with pytest.raises(ValueError, match="0..255, got 300"):
        _heap.RequestTag({}, 300)
    tag = _heap.RequestTag({}, 1)
    with pytest.raises(ValueError, match="got -1"):
        tag.close(-1)
    with pytest.raises(TypeError):
        tag.close("route")
    assert tag.route_id == 0 and not tag.closed


# -- the wrapper -----------------------------------------------------------------------------------
def test_wrapper_exports_are_sorted_and_method_names_invert_codes() -> None:
    assert heap.__all__ == sorted(heap.__all__)
    assert all(hasattr(heap, name) for name in heap.__all__)
    assert heap.METHOD_NAMES[0] == ""
    assert all(heap.METHOD_NAMES[code] == name for name, code in heap.METHOD_CODES.items())


def test_wrapper_runs_the_engine(engine: Any) -> None:
    heap.start(heap.DEFAULT_SAMPLE_BYTES, heap.DEFAULT_MAX_FRAMES, TAG)
    assert heap.running() and heap.stats()["sample_bytes"] == heap.DEFAULT_SAMPLE_BYTES
    assert isinstance(heap.snapshot(), list) and heap.stack(0)[0][0] == "<too many stacks>"
    heap.stop()
    assert not heap.running()


def test_wrapper_says_why_when_the_engine_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_engine", None)
    monkeypatch.setattr(heap, "UNAVAILABLE_REASON", "no compiler")
    for call in (heap.stop, heap.running, heap.snapshot, heap.stats):
        with pytest.raises(RuntimeError, match="no compiler"):
            call()
    with pytest.raises(RuntimeError, match="no compiler"):
        heap._UnavailableRequestTag({}, 1)

"""The pytest plugin, as a user meets it: registered by installing leakyspanner, a fixture and a
marker, and failures that name the endpoint, bytes per call and the line."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from leakyspanner.capture import heap

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(not heap.AVAILABLE, reason=f"sampled heap engine: {heap.UNAVAILABLE_REASON}")

APP = '''
import functools
import pytest
from fastapi import FastAPI

app = FastAPI()
KEPT = []

@app.post("/orders")
async def orders(order: dict):
    KEPT.append(bytes(1024))
    return {"n": len(KEPT)}

@app.get("/items/{i}")
async def item(i: int):
    return {"i": i, "pad": "x" * 100}

@functools.lru_cache(maxsize=16)
def price(key):
    return bytes(65536)

@app.get("/prices/{key}")
async def prices(key: int):
    return {"n": len(price(key))}
'''


def test_installing_leakyspanner_registers_the_plugin_under_pytest11():
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("leakyspanner") == "leakyspanner.pytest_plugin"


def test_leaking_endpoint_fails_naming_endpoint_bytes_per_call_and_the_line(pytester):
    pytester.makepyfile(test_orders=APP + '''
def test_orders_do_not_leak(leak_check):
    leak_check(app).call("POST", "/orders", json={"sku": "A1"}, times=200)
''')
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*LeakFound: POST /orders (orders at test_orders.py:8) retains * per call (limit 512 B)*",
        "*growing lines:*",
        "*B/call  test_orders.py:10 in orders*",
    ])
    assert "asyncio" not in result.stdout.str().split("def test_orders_do_not_leak")[1].split("LeakFound")[0], \
        "the failure shows the test's line, not the event loop's frames"


def test_clean_endpoint_and_a_warming_bounded_cache_pass(pytester):
    pytester.makepyfile(test_clean=APP + '''
def test_items(leak_check):
    report = leak_check(app).call("GET", lambda i: f"/items/{i}", times=150)
    assert report.calls == 150 and not report.leaking

def test_cache_that_fills_then_evicts(leak_check):
    # 16 entries of 64 KB: it fills during the first calls, more than the limit per call over the
    # whole run, then only evicts: the later half's flat line is what keeps it from being a leak
    report = leak_check(app).call("GET", lambda i: f"/prices/{i}", times=150, warmup=5)
    assert report.per_call_bytes > report.limit_bytes and report.late_per_call_bytes < report.limit_bytes
    assert not report.leaking
''')
    pytester.runpytest().assert_outcomes(passed=2)


def test_marker_sets_the_limit_for_the_fixture(pytester):
    pytester.makepyfile(test_marker=APP + '''
@pytest.mark.leakyspanner(max_retained_per_call="4 KiB", times=150)
def test_generous_limit(leak_check):
    report = leak_check(app).call("POST", "/orders", json={})
    assert report.limit_bytes == 4096 and report.calls == 150 and report.per_call_bytes > 512

@pytest.mark.leakyspanner(max_retained_per_call="4 KiB", times=150)
def test_call_options_win_over_the_marker(leak_check):
    leak_check(app).call("POST", "/orders", json={}, max_retained_per_call="100")
''')
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*retains * per call (limit 100 B)*"])


def test_bad_marker_values_fail_naming_the_accepted_forms(pytester):
    pytester.makepyfile(test_bad=APP + '''
@pytest.mark.leakyspanner(max_retained_per_call="lots")
def test_bad_size(leak_check):
    leak_check(app).call("GET", "/items/1")

@pytest.mark.leakyspanner(max_retained="1 KB")
def test_unknown_option(leak_check):
    leak_check(app).call("GET", "/items/1")
''')
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*max_retained_per_call must be a number of bytes (512) or a string like *\"1 KiB\" (each 1024 bytes)*'lots'*",
        "*unknown leak check option(s) max_retained; valid options: max_retained_per_call, times*",
    ])


def test_marker_is_registered_so_strict_markers_accepts_it(pytester):
    pytester.makepyfile(test_strict='''
import pytest

@pytest.mark.leakyspanner(times=10)
def test_nothing():
    pass
''')
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)

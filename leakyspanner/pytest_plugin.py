"""The pytest plugin (entry point ``pytest11``: ``leakyspanner``): a ``leak_check`` fixture and a
``leakyspanner`` marker that sets its defaults for one test.

    @pytest.mark.leakyspanner(max_retained_per_call="1 KB", times=2000)
    def test_orders_do_not_leak(leak_check):
        leak_check(app).call("POST", "/orders", json={"sku": "A1"})

Loaded in every pytest run where leakyspanner is installed, so it imports nothing
until a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["leak_check", "pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "leakyspanner(max_retained_per_call='512 B', times=1000, warmup=None, batches=16, allocator='auto'): "
        "defaults for the leak_check fixture in this test (sizes: 512, '1 KB', '1 KiB', '2.5 MB')",
    )


@pytest.fixture
def leak_check(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``leak_check(app, **options).call(method, path, **httpx_kwargs)``: fails the test when the
    endpoint keeps more than ``max_retained_per_call`` per call; options from the
    ``leakyspanner`` marker first, then the call's own."""
    from .leakcheck import leak_check as make

    marker = request.node.get_closest_marker("leakyspanner")
    defaults: dict[str, Any] = {}
    if marker is not None:
        if marker.args:
            raise ValueError(f"@pytest.mark.leakyspanner takes keyword arguments only, got {marker.args!r}; "
                             "e.g. @pytest.mark.leakyspanner(max_retained_per_call='1 KB')")
        defaults = dict(marker.kwargs)
        make(lambda scope, receive, send: None, **defaults)  # a bad marker fails here, naming the option

    def check(app: Any, **options: Any) -> Any:
        return make(app, **{**defaults, **options})

    return check

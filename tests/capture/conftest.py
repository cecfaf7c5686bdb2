"""Both request paths (the C extension and pure Python) run the behaviour tests of the request path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from leakyspanner.capture.middleware import REQUEST_PATH_C_REASON

#: modules whose every test runs once per request path: what a request does to the app and to the files
_BOTH_PATHS = {"test_middleware", "test_writer", "test_uvicorn", "test_safety", "test_reqpath"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.rpartition(".")[2] in _BOTH_PATHS:
        metafunc.parametrize("request_path", ["c", "python"], scope="function")


@pytest.fixture
def request_path() -> str:
    """Outside the modules above: whatever ``auto`` picks."""
    return "auto"


@pytest.fixture(autouse=True)
def _use_request_path(request_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every profiler built in the test (and in servers it starts) takes this request path."""
    if request_path == "c" and REQUEST_PATH_C_REASON is not None:
        pytest.skip(f"the C request path is not built: {REQUEST_PATH_C_REASON}")
    if request_path != "auto":
        monkeypatch.setenv("LEAKYSPANNER_REQUEST_PATH", request_path)
    yield

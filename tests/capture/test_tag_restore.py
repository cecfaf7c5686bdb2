"""The request tag is restored with ``set``, never ``reset``: a sampled allocation must never read a freed tag.

CPython's ``PyContextVar_Get`` caches a borrowed pointer to the value it returns.
``reset`` to "unset" deletes the variable from the context; when that deletion
allocates and the heap engine samples the allocation, the engine's read re-caches
the old tag, and nothing invalidates the cache before the tag is freed: the next
sample in that task reads freed memory (a segfault, found by the pytest plugin's
leak check). Both request paths restore the previous value with ``set`` instead.
These run in a child process at one sample per allocated byte, so a crash is a
failed test, not a dead test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from leakyspanner.capture import heap
from leakyspanner.capture.middleware import REQUEST_PATH_C_REASON

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not heap.AVAILABLE, reason=f"heap engine not built: {heap.UNAVAILABLE_REASON}")

_SERVED = textwrap.dedent(
    """
    import contextvars, sys
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
    from leakyspanner import leakyspanner

    other = contextvars.ContextVar("other")
    other.set(1)  # a second variable: deleting the tag from the context's mapping then allocates

    async def hello(request):
        junk = [bytearray(64) for _ in range(4)]  # sampled allocations after the request's tag
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", hello)])
    leakyspanner(app, level="mid", sample_bytes=1, log_path=sys.argv[1], request_path=sys.argv[2])
    with TestClient(app) as client:
        for _ in range(400):
            assert client.get("/").status_code == 200
    print("served")
    """
)


@pytest.mark.parametrize("request_path", ["c", "python"])
def test_requests_sampled_at_every_byte_never_read_a_freed_tag(tmp_path: Path, request_path: str) -> None:
    if request_path == "c" and REQUEST_PATH_C_REASON is not None:
        pytest.skip(f"the C request path is not built: {REQUEST_PATH_C_REASON}")
    script = tmp_path / "served.py"
    script.write_text(_SERVED)
    done = subprocess.run([sys.executable, "-X", "dev", str(script), str(tmp_path / "logs"), request_path],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served" in done.stdout


def test_restoring_the_tag_with_set_survives_sampling_inside_the_context_update(tmp_path: Path) -> None:
    """The pattern both paths use, at the engine's own level, 20,000 times."""
    script = tmp_path / "restore.py"
    script.write_text(textwrap.dedent(
        """
        import contextvars
        from leakyspanner.capture import heap
        from leakyspanner.capture.heapsites import TAG_VAR
        other = contextvars.ContextVar("other")
        other.set(1)
        heap.start(1, 8, TAG_VAR)
        try:
            for _ in range(20000):
                tag = heap.RequestTag({}, 1)
                prev = TAG_VAR.get()
                TAG_VAR.set(tag)
                TAG_VAR.set(prev)
                del tag
                junk = [bytearray(64) for _ in range(4)]
        finally:
            heap.stop()
        print("restored")
        """
    ))
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "restored" in done.stdout

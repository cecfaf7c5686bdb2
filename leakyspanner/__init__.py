"""leakyspanner: find memory leaks in FastAPI/Starlette apps.

    from leakyspanner import leakyspanner
    leakyspanner(app)

Importing this package loads only the standard library (the capture side);
analysis lives in ``leakyspanner.analysis`` behind the ``[analysis]`` extra.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .capture.config import CaptureConfig  # noqa: E402
from .capture.middleware import LeakyspannerMiddleware  # noqa: E402
from .capture.profiler import CaptureStats, Profiler, leakyspanner  # noqa: E402

__all__ = ["CaptureConfig", "CaptureStats", "LeakyspannerMiddleware", "Profiler", "__version__", "leakyspanner"]

"""The capture side: standard library only (psutil where /proc is absent)."""

from __future__ import annotations

from .middleware import LeakyspannerMiddleware
from .profiler import Profiler, leakyspanner

__all__ = ["LeakyspannerMiddleware", "Profiler", "leakyspanner"]

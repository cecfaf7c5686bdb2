"""The capture side's public names; owns no state (standard library only, psutil where /proc is absent)."""

from __future__ import annotations

from .config import CaptureConfig
from .middleware import LeakyspannerMiddleware
from .profiler import CaptureStats, Profiler, leakyspanner

__all__ = ["CaptureConfig", "CaptureStats", "LeakyspannerMiddleware", "Profiler", "leakyspanner"]

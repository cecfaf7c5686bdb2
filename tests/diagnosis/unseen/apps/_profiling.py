"""How every app here attaches leakyspanner: ``leakyspanner(app)`` plus what the harness sets.

The harness talks to the app only through the environment, so the profiled
process is an ordinary uvicorn process and a setting left unset keeps the
library's default (the CI subset sets nothing but the log path).
"""

from __future__ import annotations

import os
from typing import Any

from leakyspanner import leakyspanner

__all__ = ["ENV_ALLOCATOR", "ENV_INTERVAL_S", "ENV_LEVEL", "ENV_LOG_PATH", "attach"]

ENV_LOG_PATH = "UNSEEN_LOG_PATH"
ENV_LEVEL = "UNSEEN_LEVEL"
ENV_INTERVAL_S = "UNSEEN_INTERVAL_S"
ENV_ALLOCATOR = "UNSEEN_ALLOCATOR"


def attach(app: Any) -> Any:
    """``leakyspanner(app, log_path=...)`` with the level, interval and engine the harness asked for."""
    settings: dict[str, Any] = {"log_path": os.environ.get(ENV_LOG_PATH, "./leakyspanner_logs")}
    if os.environ.get(ENV_LEVEL):
        settings["level"] = os.environ[ENV_LEVEL]
    if os.environ.get(ENV_INTERVAL_S):
        settings["interval_seconds"] = float(os.environ[ENV_INTERVAL_S])
    allocator = os.environ.get(ENV_ALLOCATOR)
    if allocator:
        try:
            return leakyspanner(app, allocator=allocator, **settings)
        except ValueError:
            # a leakyspanner with a single engine does not know the keyword: it is that engine
            pass
    return leakyspanner(app, **settings)

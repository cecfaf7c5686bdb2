"""Owns no state: lowers the priority of the calling thread (each ``threads.Ticker`` thread calls it first).

Background work yields the core to the app: a lower priority for our threads.

The writer and sampler threads need about 1% of a core between them. Where they share a core with the event loop (one vCPU, a pinned
worker, a CPU quota) every slice they take is a slice the loop waits for. A
higher niceness (Linux sets it per thread) makes the scheduler run the app's
threads first; at +10 ours still get about a tenth of a contended core.
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["BACKGROUND_NICENESS", "lower_this_thread"]

BACKGROUND_NICENESS = 10


def lower_this_thread(increment: int = BACKGROUND_NICENESS) -> None:
    """Raise the calling thread's niceness by ``increment`` (Linux only); never raises."""
    if sys.platform != "linux":
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except (OSError, AttributeError):
        pass

"""Owns each background loop's thread and stop flag, set by its owner's ``start()`` and ``stop()``.

The capture side's background loops: one named daemon thread each.

The sampler and the writer each hold one ``Ticker``; the thread it starts is
the only one that calls their ``tick``/``drain`` between ``start()`` and
``stop()``. After ``stop()`` the owner's own thread does the final round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from . import niceness

__all__ = ["Ticker"]


class Ticker:
    """Calls ``tick()`` every ``wait_s()`` seconds on a thread named ``name`` until stopped.

    ``tick`` guards itself: an exception escaping it ends the thread.
    """

    __slots__ = ("_name", "_wait_s", "_tick", "_stopped", "_thread")

    def __init__(self, name: str, wait_s: Callable[[], float], tick: Callable[[], None]) -> None:
        self._name = name
        self._wait_s = wait_s
        self._tick = tick
        self._stopped = threading.Event()  # set once, by stop(): wakes the waiting thread at once
        self._thread: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        niceness.lower_this_thread()  # the event loop goes first on a shared core
        while not self._stopped.wait(self._wait_s()):
            self._tick()

    def stop(self, join_s: float | None = None) -> bool:
        """Wake the thread and wait for it (at most ``join_s``); False when already stopped.

        Shutdown stays bounded: the owner's final round runs after this
        whether or not the thread finished its last tick in time.
        """
        if self._stopped.is_set():
            return False
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=join_s)
        return True

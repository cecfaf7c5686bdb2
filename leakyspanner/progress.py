"""A progress bar for long work (loading big sessions, reports on many, the demo's traffic).

Drawn on stderr when it is a terminal or inside a Jupyter kernel, and only once the work has
taken longer than ``delay_s`` (half a second), so quick work prints nothing; silent when
stderr is piped. ``LEAKYSPANNER_PROGRESS=0`` turns it off, ``=1`` on. Standard library only:
the analysis extra does not carry tqdm, and one line redrawn with ``\\r`` is all it takes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TextIO, TypeVar

__all__ = ["Bar", "interactive", "progress", "ticking"]

_T = TypeVar("_T")
_ENV = "LEAKYSPANNER_PROGRESS"
_WIDTH = 24
_REDRAW_S = 0.1


def interactive(stream: TextIO) -> bool:
    """Whether a bar belongs on ``stream``: a terminal or a notebook, unless the environment says."""
    forced = os.environ.get(_ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    # a notebook's stderr is ipykernel's OutStream; ipykernel merely imported (a test run, a
    # library) does not make a piped stream interactive
    return type(stream).__module__.startswith("ipykernel")


class Bar:
    """One bar: ``update(amount)`` as work is done, ``close()`` (or ``with``) at the end."""

    def __init__(self, total: float, desc: str, *, unit: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None, delay_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(float(total), 0.0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = interactive(self.stream) if enabled is None else enabled
        self.done = 0.0
        self.count = 0
        self.delay_s = delay_s
        self._clock = clock
        self._start = clock()
        self._drawn_at: float | None = None
        self._lock = threading.Lock()

    def update(self, amount: float = 1.0, items: int = 1) -> None:
        with self._lock:
            self.done += amount
            self.count += items
            self._draw()

    def set(self, done: float) -> None:
        with self._lock:
            self.done = done
            self._draw()

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        elapsed = now - self._start
        if elapsed < self.delay_s or (not final and self._drawn_at is not None and now - self._drawn_at < _REDRAW_S):
            return
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(share * _WIDTH)
        counted = f"  {self.count} {self.unit}" if self.unit else ""
        line = f"\r{self.desc} [{'#' * filled}{'-' * (_WIDTH - filled)}] {share:4.0%}{counted}  {elapsed:.1f} s"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False
            return
        self._drawn_at = now

    def close(self) -> None:
        """Finish the line, if one was drawn, so the next output starts on its own line."""
        with self._lock:
            if self._drawn_at is not None:
                self._draw(final=True)
                try:
                    self.stream.write("\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
                self._drawn_at = None
            self.enabled = False

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def progress(items: Iterable[_T], desc: str, *, unit: str = "", weight: Callable[[_T], float] | None = None,
             stream: TextIO | None = None, enabled: bool | None = None) -> Iterator[_T]:
    """Yield ``items`` while a bar shows how far through them the loop is (by ``weight``, e.g. bytes)."""
    items = list(items)
    weights = [float(weight(item)) if weight else 1.0 for item in items]
    with Bar(sum(weights), desc, unit=unit, stream=stream, enabled=enabled) as bar:
        for item, amount in zip(items, weights):
            yield item
            bar.update(amount)


class ticking:
    """A bar that fills with elapsed time over ``seconds`` while blocking work runs (the demo's traffic)."""

    def __init__(self, seconds: float, desc: str, *, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.bar = Bar(seconds, desc, stream=stream, enabled=enabled)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="leakyspanner-progress", daemon=True)

    def _tick(self) -> None:
        start = time.monotonic()
        while not self._stopped.wait(0.2):
            self.bar.set(time.monotonic() - start)

    def __enter__(self) -> Bar:
        if self.bar.enabled:
            self._thread.start()
        return self.bar

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.close()

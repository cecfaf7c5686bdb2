"""Owns ``ProcessReader``'s /proc descriptors, opened once at start and read by the event loop and the sampler.

Process readings for the request path and the sampler.

On Linux everything comes from /proc through descriptors opened once, so a
reading is one ``pread`` (about a microsecond). Elsewhere psutil is used.
The proc root and pid are arguments so tests can point them at fixtures.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ProcessReader", "cgroup_memory_limit_bytes", "cgroup_memory_bytes"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _statm_rss_reader(fd: int) -> Callable[[], int]:
    """The request-path reading: one pread, names bound as closure locals for speed."""
    pread = os.pread
    page = _PAGE_SIZE

    def read_rss_bytes() -> int:
        # statm: size resident shared text lib data dt (pages)
        return int(pread(fd, 64, 0).split(None, 2)[1]) * page

    return read_rss_bytes


class ProcessReader:
    """Reads RSS, VMS, threads and fds of one process; never raises after construction."""

    def __init__(self, proc_root: str = "/proc", pid: int | str = "self") -> None:
        self._proc = os.path.join(proc_root, str(pid))
        self._statm_fd: int | None = None
        self._psutil_process: Any = None
        try:
            self._statm_fd = os.open(os.path.join(self._proc, "statm"), os.O_RDONLY)
            self.source = "statm"
        except OSError:
            import psutil  # only where /proc is absent

            self._psutil_process = psutil.Process(None if pid == "self" else int(pid))
            self.source = "psutil"
        self.read_rss_bytes: Callable[[], int] = (
            _statm_rss_reader(self._statm_fd) if self._statm_fd is not None else self._rss_psutil
        )

    def _rss_psutil(self) -> int:
        return int(self._psutil_process.memory_info().rss)

    def read_rss_vms_bytes(self) -> tuple[int, int]:
        if self._statm_fd is not None:
            fields = os.pread(self._statm_fd, 128, 0).split()
            return int(fields[1]) * _PAGE_SIZE, int(fields[0]) * _PAGE_SIZE
        info = self._psutil_process.memory_info()
        return int(info.rss), int(info.vms)

    def read_threads(self) -> int:
        try:
            with open(os.path.join(self._proc, "stat"), "rb") as f:
                stat = f.read()
            # fields after the ")" of the command name; num_threads is field 20
            return int(stat.rsplit(b")", 1)[1].split()[17])
        except (OSError, ValueError, IndexError):
            if self._psutil_process is not None:
                return int(self._psutil_process.num_threads())
            return threading.active_count()

    def read_open_fds(self) -> int | None:
        try:
            return len(os.listdir(os.path.join(self._proc, "fd")))
        except OSError:
            if self._psutil_process is not None:
                try:
                    return int(self._psutil_process.num_fds())
                except Exception:
                    return None
            return None

    def close(self) -> None:
        if self._statm_fd is not None:
            try:
                os.close(self._statm_fd)
            except OSError:
                pass
            self._statm_fd = None
            self.read_rss_bytes = self._rss_after_close

    def _rss_after_close(self) -> int:
        """A reading after :meth:`close` (a request finishing during shutdown): 0, never an error."""
        return 0


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    # cgroup v1 reports "no limit" as a huge page-aligned number
    return None if value >= 1 << 60 else value


def cgroup_memory_limit_bytes(cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """The container memory limit if a cgroup (v2 or v1) sets one."""
    return _read_int(os.path.join(cgroup_root, "memory.max")) or _read_int(
        os.path.join(cgroup_root, "memory", "memory.limit_in_bytes")
    )


def cgroup_memory_bytes(cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """The cgroup's current memory usage, when there is a cgroup to ask."""
    return _read_int(os.path.join(cgroup_root, "memory.current")) or _read_int(
        os.path.join(cgroup_root, "memory", "memory.usage_in_bytes")
    )

"""Owns ``CaptureConfig``, every capture parameter: frozen once built at attach time, read by every thread.

Every capture parameter, spelled once: names, defaults, checks, environment variables.

``CaptureConfig`` is frozen and validates itself, so a bad value fails where it
is given (attach time), naming the valid values. ``CaptureConfig.resolve``
merges the three sources with one precedence: explicit keyword arguments, then
``LEAKYSPANNER_<NAME>`` environment variables, then the defaults below; the one
exception is ``LEAKYSPANNER_ENABLED`` set false, the operator's kill switch,
which disables capture whatever the code says.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from ..schema import LEVELS
from . import heap
from .allocations import SNAPSHOT_MODES
from .middleware import REQUEST_PATHS, resolve_request_path

__all__ = ["ALLOCATORS", "CaptureConfig", "ENV_PREFIX", "parse_enabled"]

#: Which engine finds the allocation sites: ``auto`` takes the sampled heap engine
#: (C extension) where it is built and tracemalloc elsewhere.
ALLOCATORS = ("auto", "sampler", "tracemalloc")
ENV_PREFIX = "LEAKYSPANNER_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_enabled(value: object, name: str = "enabled") -> bool:
    """A bool, or one of the usual strings in any case ("1", "true", "yes", "on", "0", ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"{name} must be True, False or one of {', '.join(map(repr, _TRUE + _FALSE))} "
                     f"(any case), got {value!r}")


def _check_number(name: str, value: object, *, minimum: float, integer: bool = False,
                  maximum: float = 1e15) -> None:
    """Finite, in range, the right type: inf or 1e300 would kill a thread later, not fail here."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
        expected = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {expected} >= {minimum}, got {value!r}")
    if not math.isfinite(value) or value > maximum:
        raise ValueError(f"{name} must be a finite number <= {maximum:g}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


_T = TypeVar("_T")


def _field(default: _T, doc: str) -> _T:
    """A parameter with its one line of documentation (docs/internals.md's table is made from these)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    """The parameters of a capture session, each with its default and documentation."""

    # the session: whether, where, how deep, what it never sees
    enabled: bool = _field(True,
        'False leaves the app exactly as it was (no middleware, no thread); strings "1/true/yes/on" and "0/false/no/off" (any case) are accepted too')
    log_path: str = _field("./leakyspanner_logs",
        'the directory the ``.log`` and ``.jsonl`` files go to (created if missing)')
    level: str = _field("mid",
        '``basic``, ``mid``, ``deep`` or ``auto`` (see the level table)')
    exclude_paths: tuple[str, ...] = _field((),
        'exact request paths (``/health``) and prefixes (``/static/``, ``/metrics*``) capture never sees')
    # memory samples and request records
    interval_seconds: float = _field(5.0,
        'seconds between memory samples (the first minute samples every second at most)')
    leak_threshold_mb: float = _field(50.0,
        "RSS growth above the process baseline that raises the growth alert (and starts auto's window)")
    request_rss_interval_seconds: float = _field(0.005,
        'about one request per this many seconds has RSS read and a record written (0: every request)')
    request_path: str = _field("auto",
        'the per-request bookkeeping: ``auto`` (the C extension where it is built), ``c`` or ``python``')
    max_buffered_records: int = _field(50_000,
        'request records waiting for the writer before new ones are dropped (and counted)')
    # allocation sites: the sampled heap engine, or tracemalloc snapshots
    allocator: str = _field("auto",
        'the engine that finds allocation sites: ``auto``, ``sampler`` or ``tracemalloc``')
    sample_bytes: int | None = _field(None,
        "the sampled heap engine's mean bytes between samples (default 256 KiB; deep 32 KiB)")
    top_stats_count: int = _field(10,
        'allocation sites kept per snapshot')
    snapshot_interval_seconds: float | None = _field(None,
        'seconds between allocation snapshots (default: interval_seconds)')
    snapshot_mode: str = _field("auto",
        'where tracemalloc snapshots are taken: ``auto``, ``fork`` or ``inline``')
    snapshot_cpu_budget: float = _field(0.02,
        'the share of one CPU allocation snapshots may take')
    traceback_frames: int | None = _field(None,
        'tracemalloc frames per traceback, 1-100 (default 1; deep 5)')
    auto_window_seconds: float | None = _field(None,
        'how long auto level traces once triggered (default: 10 intervals)')

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalising a frozen instance, once, here
        set_(self, "enabled", parse_enabled(self.enabled))
        if not isinstance(self.log_path, (str, os.PathLike)):
            raise ValueError(f"log_path must be a str or path, got {self.log_path!r}")
        set_(self, "log_path", os.fspath(self.log_path))
        _check_choice("level", self.level, LEVELS)
        _check_choice("snapshot_mode", self.snapshot_mode, SNAPSHOT_MODES)
        _check_choice("allocator", self.allocator, ALLOCATORS)
        _check_choice("request_path", self.request_path, REQUEST_PATHS)
        resolve_request_path(self.request_path)  # 'c' where it is not built fails here, saying why
        if self.sample_bytes is not None:
            _check_number("sample_bytes", self.sample_bytes, minimum=1, integer=True)
        if self.allocator == "sampler" and not heap.AVAILABLE:
            raise ValueError(f"allocator='sampler' is not available here: {heap.UNAVAILABLE_REASON}; "
                             "use allocator='auto' (falls back to tracemalloc) or 'tracemalloc'")
        _check_number("interval_seconds", self.interval_seconds, minimum=0.01, maximum=86_400)
        _check_number("leak_threshold_mb", self.leak_threshold_mb, minimum=0, maximum=1e9)
        _check_number("top_stats_count", self.top_stats_count, minimum=1, integer=True)
        _check_number("snapshot_cpu_budget", self.snapshot_cpu_budget, minimum=1e-6)
        _check_number("max_buffered_records", self.max_buffered_records, minimum=1, integer=True)
        if self.traceback_frames is not None:
            _check_number("traceback_frames", self.traceback_frames, minimum=1, integer=True)
            if self.traceback_frames > 100:
                raise ValueError(f"traceback_frames must be an integer from 1 to 100, got {self.traceback_frames!r}")
        _check_number("request_rss_interval_seconds", self.request_rss_interval_seconds, minimum=0, maximum=86_400)
        if self.snapshot_interval_seconds is not None:
            _check_number("snapshot_interval_seconds", self.snapshot_interval_seconds, minimum=0.01, maximum=86_400)
        if self.auto_window_seconds is not None:
            _check_number("auto_window_seconds", self.auto_window_seconds, minimum=0.01, maximum=30 * 86_400)
        set_(self, "exclude_paths", _check_paths(self.exclude_paths))

    # -- building one -------------------------------------------------------
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The parameter names, in documentation order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def resolve(cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> CaptureConfig:
        """Keyword ``options`` over ``LEAKYSPANNER_*`` variables over defaults.

        Unknown option names and bad values raise ``ValueError``; a bad
        environment value names its variable.
        """
        names = cls.fields()
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(unknown)}; valid arguments: {', '.join(names)}")
        environ = os.environ if environ is None else environ
        values = dict(options)
        for field in dataclasses.fields(cls):
            variable = ENV_PREFIX + field.name.upper()
            text = environ.get(variable)
            if text is None:
                continue
            try:
                from_env = _parse_env(field.name, text, field.type)
                cls(**{field.name: from_env})  # this one value's checks, with the variable's name on failure
            except ValueError as exc:
                raise ValueError(f"environment variable {variable}={text!r}: {exc}") from None
            if field.name == "enabled":  # the kill switch: code cannot switch it back on
                values["enabled"] = parse_enabled(values.get("enabled", True)) and bool(from_env)
            elif field.name not in values:
                values[field.name] = from_env
        return cls(**values)

    @classmethod
    def markdown_table(cls) -> str:
        """The parameter table of docs/internals.md; regenerate it with
        ``python -c "import leakyspanner; print(leakyspanner.CaptureConfig.markdown_table())"``."""
        rows = ["| parameter | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
        for field in dataclasses.fields(cls):
            rows.append(f"| `{field.name}` | `{ENV_PREFIX}{field.name.upper()}` | `{field.default!r}` | "
                        f"{field.metadata['doc']} |")
        return "\n".join(rows)

    def header(self) -> dict[str, Any]:
        """What the session header records (JSON values)."""
        out = dataclasses.asdict(self)
        out["exclude_paths"] = list(self.exclude_paths)
        return out


def _check_paths(paths: object) -> tuple[str, ...]:
    if isinstance(paths, str):
        paths = (paths,)
    if not isinstance(paths, (tuple, list, set, frozenset)):
        raise ValueError(f"exclude_paths must be a list of paths like '/health', '/static/' or '/metrics*', "
                         f"got {paths!r}")
    out = []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/") or path == "/*":
            raise ValueError(f"exclude_paths entries must start with '/' (exact '/health', prefix '/static/' "
                             f"or '/metrics*'; '/*' would exclude everything), got {path!r}")
        out.append(path)
    return tuple(out)


def _parse_env(name: str, text: str, kind: object) -> Any:
    """The environment's text as the field's type (annotations are strings here)."""
    kind = str(kind)
    text = text.strip()
    if name == "enabled":
        return parse_enabled(text)
    if name == "exclude_paths":
        return tuple(p.strip() for p in text.split(",") if p.strip())
    if "None" in kind and text.lower() in ("", "none"):
        return None
    if kind.startswith("int"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if kind.startswith("float"):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {text!r}") from None
    return text

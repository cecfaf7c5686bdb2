"""The package's exceptions: one base class, so callers can catch them all."""

from __future__ import annotations

__all__ = ["InputError", "LeakyspannerError", "MissingExtraError", "NotALogError", "SchemaVersionError",
           "require_extra"]


class LeakyspannerError(Exception):
    """Base class of every error leakyspanner raises on purpose."""


class InputError(LeakyspannerError, ValueError):
    """A value the user gave (a session id, an output path, an option) cannot be used as given."""


class NotALogError(LeakyspannerError, ValueError):
    """A path holds no leakyspanner session."""


class SchemaVersionError(LeakyspannerError):
    """A file was written by a newer leakyspanner than this reader understands."""


class MissingExtraError(LeakyspannerError, ImportError):
    """An optional dependency group is not installed."""


def require_extra(extra: str, *modules: str) -> None:
    """Import ``modules`` or fail with the exact pip line that installs them."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MissingExtraError(
                f"{name} is needed for this feature: pip install 'leakyspanner[{extra}]'"
            ) from exc

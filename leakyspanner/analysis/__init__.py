"""Sessions as pandas DataFrames: the base every plot, widget and diagnosis builds on.

Needs the ``analysis`` extra; importing this package without pandas fails with
the pip line that installs it.
"""

from leakyspanner.errors import require_extra

require_extra("analysis", "pandas")

from leakyspanner.analysis.load import LoadWarning, Sessions, load  # noqa: E402

__all__ = ["LoadWarning", "Sessions", "load"]

# Plots, statistics, the diagnosis and the explorer load on first use, so importing the package stays light.
_LAZY = {
    **dict.fromkeys(["plot_endpoint_deltas", "plot_rss_trend", "plot_session_comparison", "plot_site_diff"],
                    "leakyspanner.analysis.plots"),
    **dict.fromkeys(["align_elapsed", "downsample", "endpoint_comparison", "endpoint_label", "endpoint_table",
                     "session_growth", "site_diff", "smooth"], "leakyspanner.analysis.stats"),
    **dict.fromkeys(["compare", "diagnose", "diagnose_all", "format_fix_check", "format_verdict"],
                    "leakyspanner.analysis.diagnose"),
    "explore": "leakyspanner.analysis.widgets",
}
# explore needs the notebook extra, so a star import leaves it out.
__all__ = sorted([*__all__, *(name for name in _LAZY if name != "explore")])


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

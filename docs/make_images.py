"""Draw the README's pictures from sample_logs/: ``python docs/make_images.py``.

One PNG per plot function in docs/images/, from the leaking session (and the
fixed one for the comparison). Rerun after ``python sample_logs/generate.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_logs"
IMAGES = Path(__file__).resolve().parent / "images"
DPI = 100


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leakyspanner.analysis import load, plots

    leaking = load(SAMPLES / "leaking")
    both = load([SAMPLES / "leaking", SAMPLES / "fixed"])
    labels = dict(zip(both.session_ids, ["leaking", "fixed"]))
    pictures = {
        "rss_trend.png": lambda: plots.plot_rss_trend(leaking, labels=dict(zip(leaking.session_ids, ["leaking"]))),
        "endpoint_deltas.png": lambda: plots.plot_endpoint_deltas(leaking),
        "site_diff.png": lambda: plots.plot_site_diff(leaking, 0, -1),
        "session_comparison.png": lambda: plots.plot_session_comparison(both, labels=labels),
    }
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, draw in pictures.items():
        ax = draw()
        ax.figure.savefig(IMAGES / name, dpi=DPI)
        plt.close(ax.figure)
        print(IMAGES.relative_to(ROOT) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

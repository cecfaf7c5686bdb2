"""An interactive explorer for Jupyter: controls wired to the plot functions, nothing more.

Needs the ``notebook`` extra. Each plot is drawn on its own
:class:`matplotlib.figure.Figure` (never pyplot, so no figure leaks into the
notebook) and shown as a PNG in an :class:`ipywidgets.Output` area.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leakyspanner.errors import require_extra

require_extra("notebook", "ipywidgets")

import ipywidgets as widgets  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from leakyspanner import schema  # noqa: E402
from leakyspanner.analysis import plots  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from leakyspanner.analysis.load import Sessions

__all__ = ["Explorer", "explore"]

_FIGSIZE = (9.0, 4.2)
_DPI = 90


def _snapshot_choices(sessions: Sessions, session_id: str | None) -> list[tuple[str, int]]:
    snaps = sessions.snapshots[sessions.snapshots["session_id"] == session_id]
    return [(f"#{int(seq)} at {float(t):.0f} s", int(seq)) for seq, t in zip(snaps["seq"], snaps["elapsed_s"])]


class Explorer(widgets.VBox):  # type: ignore[misc]  # ipywidgets ships no type hints
    """The widget :func:`explore` returns; its controls are attributes so code can drive them.

    ``renders`` counts redraws per plot (``"trend"``, ``"endpoints"``,
    ``"sites"``) and ``axes`` holds each plot's latest Axes.
    """

    def __init__(self, sessions: Sessions) -> None:
        super().__init__()
        self.sessions = sessions
        self.renders: Counter[str] = Counter()
        self.axes: dict[str, Axes] = {}
        self._quiet = False
        ids = sessions.session_ids
        self.session_picker = widgets.SelectMultiple(
            options=[(sid.removeprefix(schema.STEM_PREFIX), sid) for sid in ids], value=tuple(ids),
            rows=min(max(len(ids), 2), 6), description="sessions")
        end = float(np.nanmax([sessions.samples["elapsed_s"].max(), sessions.requests["elapsed_s"].max(), 1.0]))
        self.time_range = widgets.FloatRangeSlider(
            min=0.0, max=end, value=(0.0, end), step=max(round(end / 500, 1), 0.1), readout_format=".0f",
            continuous_update=False, description="elapsed (s)", layout=widgets.Layout(width="60%"))
        self.endpoint_picker = widgets.SelectMultiple(options=[], rows=6, description="endpoints")
        self.kind_picker = widgets.ToggleButtons(options=["box", "violin", "hist"], value="box")
        self.snapshot_a = widgets.Dropdown(options=[], description="snapshot A")
        self.snapshot_b = widgets.Dropdown(options=[], description="snapshot B")
        self.trend_output = widgets.Output()
        self.endpoints_output = widgets.Output()
        self.sites_output = widgets.Output()

        self.session_picker.observe(self._on_sessions, names="value")
        self.time_range.observe(lambda _: self._render("trend", "endpoints"), names="value")
        for control in (self.endpoint_picker, self.kind_picker):
            control.observe(lambda _: self._render("endpoints"), names="value")
        for control in (self.snapshot_a, self.snapshot_b):
            control.observe(lambda _: self._render("sites"), names="value")

        self.children = (
            widgets.HBox([self.session_picker, self.time_range]),
            self.trend_output,
            widgets.HBox([self.endpoint_picker, self.kind_picker]),
            self.endpoints_output,
            widgets.HBox([self.snapshot_a, self.snapshot_b]),
            self.sites_output,
        )
        self._on_sessions(None)

    # ------------------------------------------------------------- wiring

    @property
    def picked(self) -> Sessions | None:
        """The sessions picked (all of them in one object), or None when none is."""
        ids = list(self.session_picker.value)
        return self.sessions.select(*ids) if ids else None

    @property
    def sites_session(self) -> str | None:
        """The picked session the allocation diff is about: the first one with snapshots."""
        with_snapshots = set(self.sessions.snapshots["session_id"])
        return next((sid for sid in self.session_picker.value if sid in with_snapshots), None)

    def _on_sessions(self, _: object) -> None:
        """New sessions picked: offer their endpoints and snapshots, then redraw everything once."""
        self._quiet = True
        try:
            picked = self.picked
            routes = sorted({str(r) for r in picked.requests["route"]}) if picked is not None else []
            self.endpoint_picker.value = tuple(r for r in self.endpoint_picker.value if r in routes)
            self.endpoint_picker.options = routes
            choices = _snapshot_choices(self.sessions, self.sites_session)
            self.snapshot_a.options = choices
            self.snapshot_b.options = choices
            if choices:
                self.snapshot_a.value, self.snapshot_b.value = choices[0][1], choices[-1][1]
        finally:
            self._quiet = False
        self._render("trend", "endpoints", "sites")

    def _render(self, *names: str) -> None:
        if self._quiet:
            return
        picked = self.picked
        for name in names:
            output = {"trend": self.trend_output, "endpoints": self.endpoints_output,
                      "sites": self.sites_output}[name]
            if picked is None:
                output.outputs = ({"output_type": "stream", "name": "stdout", "text": "Pick a session.\n"},)
            else:
                self._draw(name, output, getattr(self, f"_draw_{name}"), picked)
            self.renders[name] += 1

    def _draw(self, name: str, output: widgets.Output, draw: Callable[[Sessions, Axes], Any],
              picked: Sessions) -> None:
        fig = Figure(figsize=_FIGSIZE, layout="constrained")
        ax = fig.add_subplot()
        try:
            draw(picked, ax)
        except ValueError as exc:  # a bad combination of controls: say so where the plot would be
            output.outputs = ({"output_type": "stream", "name": "stderr", "text": f"{exc}\n"},)
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=_DPI)
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        output.outputs = ({"output_type": "display_data", "metadata": {},
                           "data": {"image/png": png, "text/plain": ax.get_title()}},)
        self.axes[name] = ax

    def _draw_trend(self, picked: Sessions, ax: Axes) -> None:
        plots.plot_rss_trend(picked, time_range=self.time_range.value, ax=ax)

    def _draw_endpoints(self, picked: Sessions, ax: Axes) -> None:
        start, end = self.time_range.value
        routes = list(self.endpoint_picker.value) or None
        single = picked.session_ids[0] if len(picked) == 1 else None
        plots.plot_endpoint_deltas(picked.between(start, end), session_id=single, routes=routes,
                                   kind=self.kind_picker.value, ax=ax)

    def _draw_sites(self, picked: Sessions, ax: Axes) -> None:
        # Without snapshots the pickers are empty and the plot says so itself.
        a, b = self.snapshot_a.value, self.snapshot_b.value
        plots.plot_site_diff(picked, 0 if a is None else a, -1 if b is None else b,
                             session_id=self.sites_session or picked.session_ids[0], ax=ax)

def explore(sessions: Sessions) -> Explorer:
    """An interactive view of ``sessions``: pick sessions, a time range, endpoints and two snapshots.

    Shows the memory trend, per-endpoint RSS changes and the allocation diff
    between snapshot A and B, redrawn whenever a control changes.
    """
    return Explorer(sessions)

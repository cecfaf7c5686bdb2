"""The explorer redraws the right plot when a control changes, driven from code."""

from __future__ import annotations

import base64
import subprocess
import sys

import ipywidgets
import plot_fixtures
import pytest

from leakyspanner.analysis import widgets

pair = plot_fixtures.pair
bare = plot_fixtures.bare


def close(widget: ipywidgets.Widget) -> None:
    for child in getattr(widget, "children", ()):
        close(child)
    widget.close()


@pytest.fixture
def ui(pair):
    explorer = widgets.explore(pair)
    yield explorer
    close(explorer)


def test_explore_draws_every_plot_once(ui, pair):
    assert isinstance(ui, ipywidgets.Widget)
    assert dict(ui.renders) == {"trend": 1, "endpoints": 1, "sites": 1}
    assert ui.session_picker.value == tuple(pair.session_ids)
    assert ui.axes["trend"].get_title() == "Memory over time"
    png = ui.trend_output.outputs[0]["data"]["image/png"]
    assert base64.b64decode(png).startswith(b"\x89PNG")


def test_picking_one_session_redraws_each_plot_for_it(ui, pair):
    second = pair.session_ids[1]
    ui.session_picker.value = (second,)
    assert dict(ui.renders) == {"trend": 2, "endpoints": 2, "sites": 2}
    short = second.removeprefix("leakyspanner_")
    assert ui.axes["trend"].get_title() == f"Memory over time: {short}"
    assert ui.axes["endpoints"].get_title().endswith(short)


def test_time_range_redraws_trend_and_endpoints_only(ui):
    ui.time_range.value = (10.0, 20.0)
    assert dict(ui.renders) == {"trend": 2, "endpoints": 2, "sites": 1}
    xs = [x for ln in ui.axes["trend"].get_lines() if ln.get_label().endswith("RSS") for x in ln.get_xdata()]
    assert min(xs) >= 10 and max(xs) <= 20


def test_endpoint_picker_and_kind_redraw_the_endpoint_plot(ui):
    assert ui.endpoint_picker.options == ("/fail", "/leak", "/ok")
    ui.endpoint_picker.value = ("/leak",)
    ui.kind_picker.value = "hist"
    assert ui.renders["endpoints"] == 3 and ui.renders["trend"] == 1
    legend = [t.get_text() for t in ui.axes["endpoints"].get_legend().get_texts()]
    assert legend == ["POST /leak  (60 calls)"]


def test_snapshot_pickers_redraw_the_allocation_diff(ui):
    assert [value for _, value in ui.snapshot_a.options] == [0, 1, 2]
    assert (ui.snapshot_a.value, ui.snapshot_b.value) == (0, 2)
    ui.snapshot_a.value = 1
    assert ui.renders["sites"] == 2 and ui.renders["trend"] == 1
    assert ui.axes["sites"].get_title().startswith("Allocation growth: snapshot #1 ")


def test_no_session_picked_says_so(ui):
    ui.session_picker.value = ()
    assert ui.trend_output.outputs[0]["text"] == "Pick a session.\n"
    assert ui.renders["trend"] == 2


def test_a_session_without_data_shows_notes(bare):
    ui = widgets.explore(bare)
    notes = [t.get_text() for t in ui.axes["sites"].texts]
    assert notes == ["no tracemalloc snapshots"] and ui.snapshot_a.options == ()
    assert [t.get_text() for t in ui.axes["trend"].texts] == ["no data"]
    close(ui)


def test_without_ipywidgets_explore_fails_with_the_install_line():
    code = ("import sys; sys.modules['ipywidgets'] = None\n"
            "try:\n    import leakyspanner.analysis.widgets\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MissingExtraError" in out and "pip install 'leakyspanner[notebook]'" in out

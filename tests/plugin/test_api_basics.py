"""CLI and API basics a profiler user expects: ``python -m``, the diagnosis importable from
``leakyspanner.analysis``, plot keywords reaching matplotlib, numpydoc docstrings, progress bars."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leakyspanner.progress import Bar, progress, ticking

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_python_dash_m_leakyspanner_is_the_same_command():
    console = Path(sys.executable).with_name("leakyspanner")
    for args in (["--version"], ["run", "--help"]):
        as_module = _run(sys.executable, "-m", "leakyspanner", *args)
        assert as_module.returncode == 0, as_module.stderr
        if console.exists():
            assert _run(str(console), *args).stdout == as_module.stdout
    assert re.fullmatch(r"leakyspanner \d+\.\d+\.\d+\S*\n", _run(sys.executable, "-m", "leakyspanner", "--version").stdout)
    bad = _run(sys.executable, "-m", "leakyspanner", "no-such-command")
    assert bad.returncode == 2 and "usage: leakyspanner" in bad.stderr


def test_diagnose_and_compare_are_importable_from_the_analysis_package():
    from leakyspanner import analysis
    from leakyspanner.analysis import compare, diagnose, diagnose_all, format_verdict
    from leakyspanner.analysis import diagnose as diagnose_module_function
    from leakyspanner.analysis.diagnose import compare as compare_in_module

    assert compare is compare_in_module and diagnose is diagnose_module_function
    assert callable(diagnose_all) and callable(format_verdict)
    assert {"compare", "diagnose"} <= set(analysis.__all__)


# ------------------------------------------------------------------ plots

@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("_plot_fixtures", ROOT / "tests" / "analysis" / "plot_fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    from leakyspanner.analysis import load

    directory = tmp_path_factory.mktemp("kwargs")
    fixtures.write(directory, fixtures.session_records(pid=1, growth_per_sample_bytes=fixtures.MB, seed=1))
    return load(directory)


def test_plot_keywords_reach_matplotlib_over_our_styling(leaky):
    from leakyspanner.analysis import plots

    ax = plots.plot_rss_trend(leaky, lw=4.5, color="purple", alpha=0.3)
    rss = next(line for line in ax.get_lines() if line.get_label() == "RSS")
    assert (rss.get_linewidth(), rss.get_color(), rss.get_alpha()) == (4.5, "purple", 0.3)
    ax = plots.plot_session_comparison(leaky, lw=3.5)
    assert 3.5 in {line.get_linewidth() for line in ax.get_lines()}
    ax = plots.plot_site_diff(leaky, 0, -1, color="olive", alpha=0.5)
    assert ax.patches and all(p.get_alpha() == 0.5 for p in ax.patches)
    ax = plots.plot_endpoint_deltas(leaky, kind="hist", lw=2.5)
    assert ax.patches and {p.get_linewidth() for p in ax.patches} == {2.5}
    ax = plots.plot_endpoint_deltas(leaky, kind="box", whis=(0, 100))  # a boxplot-only keyword
    assert ax.lines


def test_plot_functions_carry_numpydoc_sections_naming_every_parameter():
    from leakyspanner.analysis import plots

    for name in plots.__all__:
        function = getattr(plots, name)
        doc = inspect.getdoc(function)
        for section in ("Parameters\n----------", "Returns\n-------"):
            assert section in doc, f"{name} lacks {section.splitlines()[0]}"
        documented = doc.split("Parameters\n----------")[1].split("Returns\n-------")[0]
        for parameter in inspect.signature(function).parameters.values():
            shown = "**kwargs" if parameter.kind is parameter.VAR_KEYWORD else parameter.name
            assert re.search(rf"(^|[ ,]){re.escape(shown)}\b", documented, re.M), f"{name}: {shown} undocumented"


# ------------------------------------------------------------------ progress

class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bar_draws_on_a_terminal_after_the_delay_and_ends_its_line(monkeypatch):
    monkeypatch.delenv("LEAKYSPANNER_PROGRESS", raising=False)
    stream, clock = _Terminal(), _Clock()
    with Bar(4, "loading", unit="files", stream=stream, clock=clock) as bar:
        bar.update()
        assert stream.getvalue() == "", "quick work prints nothing"
        clock.now = 2.0
        bar.update()
        assert stream.getvalue() == "\rloading [############------------]  50%  2 files  2.0 s"
        clock.now = 3.0
        bar.update(2, items=2)
    assert stream.getvalue().endswith("\rloading [########################] 100%  4 files  3.0 s\n")


def test_bar_is_silent_when_piped_and_follows_the_environment(monkeypatch):
    monkeypatch.delenv("LEAKYSPANNER_PROGRESS", raising=False)
    piped, clock = io.StringIO(), _Clock()
    with Bar(1, "x", stream=piped, clock=clock) as bar:
        clock.now = 5.0
        bar.update()
    assert piped.getvalue() == ""
    monkeypatch.setenv("LEAKYSPANNER_PROGRESS", "1")
    assert Bar(1, "x", stream=io.StringIO()).enabled
    monkeypatch.setenv("LEAKYSPANNER_PROGRESS", "0")
    assert not Bar(1, "x", stream=_Terminal()).enabled


def test_progress_yields_every_item_and_ticking_leaves_no_thread():
    assert list(progress(range(5), "x", stream=_Terminal(), weight=lambda i: i)) == [0, 1, 2, 3, 4]
    with ticking(0.05, "traffic", stream=_Terminal(), enabled=True) as bar:
        assert bar.enabled


def test_report_piped_prints_no_bar():
    # a subprocess: its stderr is a pipe, as in CI
    result = _run(sys.executable, "-m", "leakyspanner", "report", str(ROOT / "sample_logs" / "fixed"))
    assert result.returncode in (0, 1), result.stderr
    assert "\r" not in result.stderr and "[#" not in result.stderr


@pytest.mark.parametrize("name", ["leakyspanner.leakcheck", "leakyspanner.launch", "leakyspanner.progress",
                                  "leakyspanner.pytest_plugin", "leakyspanner.commands.run"])
def test_public_names_are_sorted_and_exist(name):
    module = importlib.import_module(name)
    assert module.__all__ == sorted(module.__all__)
    assert all(hasattr(module, public) for public in module.__all__)

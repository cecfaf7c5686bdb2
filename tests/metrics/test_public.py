"""The extras stay out of capture, and every public module's ``__all__`` is sorted and true."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

MODULES = ("leakyspanner.metrics", "leakyspanner.metrics.state", "leakyspanner.metrics.prometheus",
           "leakyspanner.metrics.otel", "leakyspanner.fleet", "leakyspanner.fleet.parquet",
           "leakyspanner.fleet.verdict", "leakyspanner.commands.export", "leakyspanner.commands.fleet")


def test_attaching_imports_none_of_the_extras():
    code = ("import sys, leakyspanner, leakyspanner.capture\n"
            "extras = ('prometheus_client', 'opentelemetry', 'pyarrow', 'duckdb', 'fsspec', 'pandas')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in extras))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_names_every_public_definition(name):
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__)
    assert all(hasattr(module, item) for item in module.__all__)
    defined = {n for n, v in vars(module).items() if not n.startswith("_")
               and (inspect.isfunction(v) or inspect.isclass(v)) and getattr(v, "__module__", None) == name}
    assert defined <= set(module.__all__), defined - set(module.__all__)

"""Every notebook runs top to bottom in a real kernel, from notebooks/, against sample_logs/."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
TIMEOUT_S = 180


def test_there_are_notebooks():
    assert [p.name for p in PATHS][:3] == ["01_quickstart.ipynb", "02_hunting_a_leak.ipynb", "03_fix_check.ipynb"]


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_without_errors(path):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:  # pragma: no cover - depends on how the venv was made
        pytest.fail("no python3 kernel: run `.venv/bin/python -m ipykernel install --sys-prefix`")
    if not (ROOT / "sample_logs" / "leaking").is_dir():
        pytest.fail("sample_logs/ is missing: run `python sample_logs/generate.py`")
    book = nbformat.read(path, as_version=4)
    # The python3 kernelspec starts "python", which jupyter_client replaces with this interpreter.
    client = NotebookClient(book, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs)

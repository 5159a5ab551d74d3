"""The notebooks: each is saved executed, teaches with goals and a checked prediction, and its widget
panels respond when driven (values set, Run pressed) in a real kernel.

Running them top to bottom is nbval's job:
    pytest --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/
Here only the cells tagged `setup` and `panel` run, followed by a driver cell per notebook.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["00_start_here", "01_data_parallel", "02_allreduce", "03_parameter_server", "04_model_parallel", "05_compare_and_choose"]

# per notebook: which panels to drive and the values a learner would pick
DRIVES = {
    "00_start_here": {"panel": {"world_size": 3}},
    "01_data_parallel": {"scaling_panel": {"max_world_size": 2, "global_batch": 96}, "ladder_panel": {"world_size": 3}},
    "02_allreduce": {"ring_panel": {"world_size": 3}},
    "03_parameter_server": {"ps_panel": {"world_size": 2, "max_staleness": 1}},
    "04_model_parallel": {"pipe_panel": {"microbatches": 2, "schedule": "1f1b"}},
    "05_compare_and_choose": {"playground": {"world_size": 2}},
}

DRIVER = """
def _drive(panel, values):
    panel.button.click()
    assert panel.error is None, panel.error
    before = panel.frame
    panel.set(**values)
    panel.button.click()
    assert panel.error is None, panel.error
    assert panel.frame is not None and not panel.frame.equals(before), "the panel's output did not change"
    assert panel.output.outputs or panel.figure is not None

for _name, _values in {drives!r}.items():
    _drive(globals()[_name], _values)
print("drove", sorted({drives!r}))
"""


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_teaches_and_is_saved_executed(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "Learning goals" in nb.cells[0].source
    text = [c.source for c in nb.cells]
    try_this = next(i for i, s in enumerate(text) if "Try this" in s)
    assert any(c.cell_type == "code" and "assert" in c.source for c in nb.cells[try_this + 1 :]), (
        "the prediction is never checked"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "save the notebook executed (nbconvert --execute --inplace)"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no figure saved"
    assert any("panel" in _tags(c) for c in code) and any("setup" in _tags(c) for c in code)


def test_dpkit_imports_without_ipywidgets() -> None:
    code = "import sys, dpkit, dpkit.viz.plots; assert 'ipywidgets' not in sys.modules, 'dpkit core imported ipywidgets'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_widgets_respond_when_driven(name: str) -> None:
    from nbclient import NotebookClient

    nb = _read(name)
    nb.cells = [c for c in nb.cells if c.cell_type == "code" and _tags(c) & {"setup", "panel"}]
    for c in nb.cells:
        c.outputs, c.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(DRIVER.format(drives=DRIVES[name])))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    assert "drove" in nb.cells[-1].outputs[-1].text

"""The notebooks: each is saved executed, teaches with goals and a checked prediction, and its widget
panels respond when driven (values set, Run pressed) in a real kernel.

Running them top to bottom is nbval's job:
    pytest --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/
Here only the cells tagged `setup` and `panel` run, followed by a driver cell per notebook.

The driven notebooks run under nbclient with its Output-widget mimic off. The mimic answers each output a cell
shows inside an Output widget (Panel.run shows its figure and table so) with a comm message on the shell
channel, while nbclient awaits the cell's execute_reply on that socket; jupyter_client's Session.send sends
through a blocking shadow of the asyncio socket, and that send consumes the socket's edge-triggered wake-up
(ZMQ_FD). A reply that had just arrived then sits unread until the cell timeout, when nbclient's last look
finds it and the cell passes, late: the one ~300 s stall per suite run of issue 18.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = [
    "00_start_here",
    "01_data_parallel",
    "02_allreduce",
    "03_parameter_server",
    "04_model_parallel",
    "05_compare_and_choose",
    "06_memory",
    "07_learning",
    "08_sending_less",
    "09_failures",
]

# per notebook: which panels to drive and the values a learner would pick
DRIVES = {
    "00_start_here": {"panel": {"world_size": 3}},
    "01_data_parallel": {"scaling_panel": {"grad_sync": "flat"}, "ladder_panel": {"world_size": 3}},
    "02_allreduce": {"ring_panel": {"world_size": 3}},
    "03_parameter_server": {"ps_panel": {"world_size": 2, "max_staleness": 1}},
    "04_model_parallel": {"pipe_panel": {"microbatches": 2, "schedule": "1f1b"}},
    "05_compare_and_choose": {"playground": {"world_size": 2}},
    "06_memory": {"fit_panel": {"strategy": "ZeRO-3", "budget_mb": 16}},
    "07_learning": {"learning_panel": {"global_batch": 128}},
    "08_sending_less": {"panel": {"technique": "local SGD", "knob": 8}},
    "09_failures": {"interval_panel": {"mtbf_steps": 1000}},
}

CELL_TIMEOUT_S = 120  # each cell here takes 1-30 s on 2 busy cores: one past this has hung
IOPUB_TIMEOUT_S = 10  # a cell's last outputs and idle status follow its execute_reply within this
REPLY_AFTER_IDLE_S = 10  # ipykernel sends the reply next to the idle status: one missing this long is lost

DRIVER = """
def _drive(panel, values):
    panel.button.click()
    assert panel.error is None, panel.error
    before = panel.frame
    panel.set(**values)
    panel.button.click()
    assert panel.error is None, panel.error
    assert panel.frame is not None and not panel.frame.equals(before), "the panel's output did not change"
    assert panel.figure is not None

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


@pytest.mark.slow
def test_dpkit_imports_without_ipywidgets() -> None:
    code = "import sys, dpkit, dpkit.viz.plots; assert 'ipywidgets' not in sys.modules, 'dpkit core imported ipywidgets'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _execute(nb: nbformat.NotebookNode, name: str, where: list[str]) -> None:
    """Run `nb` in a new python3 kernel. A failure names the notebook and the cell (`where[i]` describes
    cell i) and comes as soon as it is known, not at a timeout: an error or a dead kernel at once, a cell
    that hangs after CELL_TIMEOUT_S, outputs missing after the reply after IOPUB_TIMEOUT_S, and a reply
    missing after the kernel went idle after REPLY_AFTER_IDLE_S (nbclient would wait out the cell timeout
    and then pass, since its last look at the socket finds the stranded reply)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    class Client(NotebookClient):
        cell_index: int | None = None
        started = idle_at = 0.0
        replied = lost_reply = False

        def process_message(self, msg, cell, cell_index):
            if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                self.idle_at = time.monotonic()
            return super().process_message(msg, cell, cell_index)

    def cell_execute(cell, cell_index) -> None:
        client.cell_index, client.started, client.idle_at, client.replied = cell_index, time.monotonic(), 0.0, False

    def cell_executed(cell, cell_index, execute_reply) -> None:
        client.replied = True

    client = Client(
        nb,
        timeout=CELL_TIMEOUT_S,
        iopub_timeout=IOPUB_TIMEOUT_S,
        raise_on_iopub_timeout=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        on_cell_execute=cell_execute,
        on_cell_executed=cell_executed,
    )
    client.widget_registry = {}  # no Output-widget mimic: it sends on the shell channel mid-cell (module docstring)

    async def run() -> None:
        task = asyncio.ensure_future(client.async_execute())
        while not task.done():
            await asyncio.wait([task], timeout=1.0)
            if client.idle_at and not client.replied and time.monotonic() - client.idle_at > REPLY_AFTER_IDLE_S:
                client.lost_reply = True
                task.cancel()  # nbclient then shuts the kernel down
                await asyncio.gather(task, return_exceptions=True)
                return
        task.result()

    try:
        asyncio.run(run())  # a new event loop per notebook: nothing carries over from the previous kernel
    except (CellExecutionError, TimeoutError, RuntimeError) as exc:  # a cell raised or timed out, the kernel died
        pytest.fail(f"{_at(client, name, where)}: {type(exc).__name__}: {exc}", pytrace=False)
    if client.lost_reply:
        pytest.fail(
            f"{_at(client, name, where)}: the kernel finished the cell (status idle over {REPLY_AFTER_IDLE_S} s ago) but "
            "its execute_reply never reached the client; most likely something sent on the shell channel while the reply "
            "was awaited there (module docstring). nbclient would have waited out the cell timeout, then passed.",
            pytrace=False,
        )


def _at(client, name: str, where: list[str]) -> str:
    if client.cell_index is None:
        return f"{name}, starting the kernel"
    return f"{name}, {where[client.cell_index]}, after {time.monotonic() - client.started:.0f} s"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_widgets_respond_when_driven(name: str) -> None:
    nb = _read(name)
    kept = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and _tags(c) & {"setup", "panel"}]
    where = [f"cell {i} ({'/'.join(sorted(_tags(c)))}) {c.source.splitlines()[0]!r}" for i, c in kept]
    nb.cells = [c for _, c in kept]
    for c in nb.cells:
        c.outputs, c.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(DRIVER.format(drives=DRIVES[name])))
    where.append("the driver cell this test appends (set values, press Run)")
    _execute(nb, name, where)
    outputs = nb.cells[-1].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: pressing Run showed no figure"
    assert "drove" in outputs[-1].text

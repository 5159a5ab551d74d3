"""How a function written in a notebook cell reaches the ranks: as the text of a small module file.

A rank is a separate process: it cannot receive a closure from the notebook, only import a module. So
check() copies the function's source (inspect.getsource) under a fixed preamble into a module file in a
temporary folder; the rank puts that folder on sys.path and imports the module. The price: the function
must be self-contained, using only what the preamble imports (and what it defines inside itself).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

PREAMBLE = "import math\n\nimport torch\nimport torch.distributed as dist\n\n\n"
PREAMBLE_LINES = PREAMBLE.count("\n")


class SourceError(ValueError):
    """The function cannot be turned into a module file (a lambda, a built-in, source not available)."""


def function_source(fn: Callable) -> str:
    """The function's own source, dedented, without decorators; why it cannot be had if it cannot."""
    if not inspect.isfunction(fn):
        raise SourceError(f"{fn!r} is not a Python function: write it with `def` in a cell")
    if fn.__name__ == "<lambda>":
        raise SourceError("a lambda cannot be sent to the ranks: write the function with `def`")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise SourceError(f"cannot read the source of {fn.__name__} ({exc}): define it in a notebook cell or a .py file") from exc
    lines = source.splitlines()
    while lines and lines[0].lstrip().startswith("@"):
        lines.pop(0)  # a decorator would have to exist in the rank too
    return "\n".join(lines) + "\n"


def write_module(fn: Callable, folder: str | Path) -> str:
    """Write fn under PREAMBLE to a fresh module in `folder`; returns the module's name."""
    name = f"learner_{fn.__name__}_{uuid.uuid4().hex[:8]}"
    Path(folder, f"{name}.py").write_text(PREAMBLE + function_source(fn))
    return name


def load_function(folder: str, module: str, name: str) -> Callable:
    """Rank side: import `module` from `folder` and return its function `name`."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return getattr(importlib.import_module(module), name)


def learner_lines(traceback: str, folder: str) -> list[str]:
    """The traceback's lines inside the learner's module, as 'line N of your function `name`: code'."""
    pattern = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')
    out = []
    for path, line, func, code in pattern.findall(traceback):
        if Path(path).parent == Path(folder) and Path(path).name.startswith("learner_"):
            out.append(f"line {int(line) - PREAMBLE_LINES} of your function {func} (`{code.strip()}`)")
    return out

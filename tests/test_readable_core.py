"""A core a learner can read: each strategy's rank-side class and each hand-written collective fits on one screen
and holds only the algorithm.

The table below lists, per module, the classes (and, for the collectives in comm/, the functions) a learner opens to
see the algorithm. Each must be at most MAX_LINES long and contain no measurement or emulation code: no recorder
calls (timing is the layer of dpkit.runtime.recorder and the helpers of dpkit.strategies.base: timed_step with
other_compute, forward, backward, optimizer_step), no emulated link (the group's transport paces messages: only
dpkit/comm/emulation/ knows whether a link is set), no memory accounting of its own (a strategy declares what it
holds in held_tensors(); dpkit.runtime.memory reads the bytes off). Docstrings and comments may name what lives
elsewhere. To add a strategy, add a row; a module that does not exist (yet) is skipped, not failed.
tests/test_comm_algorithms.py checks the same collectives once more by the names their code uses.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 150

#: module (relative to the repository) -> its rank-side classes, or the functions of a hand-written collective
CORE: dict[str, tuple[str, ...]] = {
    # strategies
    "dpkit/strategies/single.py": ("SingleProcess",),
    "dpkit/strategies/data_parallel.py": ("DataParallel",),
    "dpkit/strategies/grad_sync.py": ("PerTensorSync", "FlatSync", "BucketedOverlapSync"),
    "dpkit/strategies/local_sgd.py": ("LocalSGD",),
    "dpkit/strategies/zero/stage1.py": ("ZeRO1",),
    "dpkit/strategies/zero/stage2.py": ("ZeRO2",),
    "dpkit/strategies/zero/stage3.py": ("ZeRO3",),
    "dpkit/strategies/zero/fsdp2.py": ("FSDP2",),
    "dpkit/strategies/parameter_server/server.py": ("ParameterServer",),
    "dpkit/strategies/parameter_server/worker.py": ("PushPullWorker",),
    "dpkit/strategies/pipeline.py": ("PipelineStage",),
    "dpkit/strategies/hybrid.py": ("HybridStage",),
    "dpkit/strategies/tensor_parallel.py": ("TensorParallel", "ParallelFeedForward", "ParallelAttention"),
    "dpkit/strategies/tp_layers.py": ("CopyToParallel", "ReduceFromParallel", "ColumnParallelLinear", "RowParallelLinear"),
    # hand-written collectives: the textbook ring first, then its pipelined form (and the steps it runs)
    "dpkit/comm/ring.py": (
        "ring_allreduce",
        "ring_reduce_scatter",
        "ring_all_gather",
        "pipelined_ring_allreduce",
        "_ring_steps",
        "ring_whole_allreduce",
    ),
    "dpkit/comm/tree.py": ("tree_allreduce",),
    "dpkit/comm/reduce_broadcast.py": ("reduce_broadcast_allreduce",),
    "dpkit/comm/hierarchical.py": ("node_views", "hierarchical_allreduce"),
}

#: where an emulated link may be asked about (the transport that emulates it)
EMULATION = "dpkit/comm/emulation/"

#: what measurement or emulation code looks like inside a class
FORBIDDEN = {
    "a recorder call": re.compile(r"\brec\.|\brecorder\b|\.span\(|\bclock\b"),
    "an emulated link": re.compile(r"\blink\b"),
    "memory accounting of its own": re.compile(r"def memory_state\b|peak_buffer|_buffers\("),
}


def rank_side_classes() -> list:
    return [pytest.param(module, cls, id=f"{module}::{cls}") for module, classes in CORE.items() for cls in classes]


def class_source(module: str, cls: str) -> tuple[str, int]:
    """The source of the top-level class or function `cls` of `module`, and its length in lines."""
    path = ROOT / module
    if not path.exists():
        pytest.skip(f"{module} does not exist (yet)")
    source = path.read_text()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == cls:
            assert node.end_lineno is not None
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            lines = source.splitlines()[first - 1 : node.end_lineno]
            return "\n".join(lines), len(lines)
    raise AssertionError(f"{module} has no class or function {cls}")


def code_only(source: str) -> str:
    """`source` without its docstrings and comments (prose may name what lives elsewhere)."""
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            doc = node.body[0]
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                assert doc.end_lineno is not None
                for i in range(doc.lineno - 1, doc.end_lineno):
                    lines[i] = ""
    return "\n".join(line.split("#", 1)[0] for line in lines)


def sizes() -> dict[str, int]:
    """Lines of every listed class that exists (the table the issue asks for)."""
    out = {}
    for module, classes in CORE.items():
        if (ROOT / module).exists():
            for cls in classes:
                out[f"{module}::{cls}"] = class_source(module, cls)[1]
    return out


@pytest.mark.parametrize(("module", "cls"), rank_side_classes())
def test_rank_side_class_fits_on_one_screen(module: str, cls: str) -> None:
    _, lines = class_source(module, cls)
    assert lines <= MAX_LINES, f"{cls} in {module} is {lines} lines (at most {MAX_LINES})"


@pytest.mark.parametrize(("module", "cls"), rank_side_classes())
def test_rank_side_class_holds_only_the_algorithm(module: str, cls: str) -> None:
    source, _ = class_source(module, cls)
    code = code_only(source)
    for what, pattern in FORBIDDEN.items():
        found = pattern.search(code)
        assert found is None, f"{cls} in {module} contains {what}: {found.group(0)!r}"


def test_the_size_table(capsys) -> None:
    table = sizes()
    assert table, "no listed module exists"
    with capsys.disabled():
        print(
            "\nrank-side classes and hand-written collectives (lines):",
            *(f"  {n:4d}  {name}" for name, n in sorted(table.items())),
            sep="\n",
        )
    assert max(table.values()) <= MAX_LINES


def test_the_checks_catch_what_they_look_for() -> None:
    """The patterns are not vacuous: they find recorder, link and memory code where there is some."""
    samples = {
        "a recorder call": 'with self.rec.span("compute", "forward"):',
        "an emulated link": "if self.comm.link is None:",
        "memory accounting of its own": "def memory_state(self) -> dict[str, int]:",
    }
    for what, line in samples.items():
        assert FORBIDDEN[what].search(line), what
    prose = 'class A:\n    """Sent over the link."""\n    x = 1  # the recorder times it\n    y = self.rec.span'
    assert "link" not in code_only(prose) and "recorder" not in code_only(prose) and "rec.span" in code_only(prose)


def test_every_strategy_class_is_in_the_table() -> None:
    """A Strategy subclass added under dpkit/strategies/ without a row here fails: every strategy is measured."""
    listed = {(module, cls) for module, classes in CORE.items() for cls in classes}
    found = set()
    for path in (ROOT / "dpkit" / "strategies").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases} if isinstance(node, ast.ClassDef) else set()
            if bases & {"Strategy", "PipelineStage", "DataParallel", "ZeRO1", "ZeRO2"}:
                found.add((str(path.relative_to(ROOT)), node.name))
    assert found, "no strategy class found"
    assert found <= listed, f"strategies missing from CORE: {sorted(found - listed)}"


def test_no_code_outside_the_emulation_asks_whether_a_link_is_set() -> None:
    """`grep -rn "link is None\\|link is not None" dpkit` finds nothing outside dpkit/comm/emulation/."""
    pattern = re.compile(r"link is None|link is not None")
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in sorted((ROOT / "dpkit").rglob("*.py"))
        if not str(path.relative_to(ROOT)).startswith(EMULATION)
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "only the emulation may ask whether a link is set:\n" + "\n".join(hits)
    assert any(pattern.search(p.read_text()) for p in (ROOT / EMULATION).rglob("*.py")), "the check looks at nothing"

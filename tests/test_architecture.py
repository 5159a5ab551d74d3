"""The architecture holds: no import cycles, strategy knowledge only in strategies/, every message through Comm.

These read the source with ast (no extra tools), so they fail the moment a shortcut creeps back in.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from dpkit import RunConfig
from dpkit.config import SYNCS
from dpkit.strategies.registry import PARALLELISMS, SPECS, spec_for

PACKAGE = Path(__file__).resolve().parent.parent / "dpkit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dpkit module `module` imports when it runs (function-level imports count; `if TYPE_CHECKING:` does not)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dpkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "dpkit":
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)  # `from . import x` imports module x
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        imports = _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {m for m in imports if m in files and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):  # `from . import sibling` runs the parent package first: how packages work
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 30, "the graph misses modules"
    assert "dpkit.strategies.registry" in graph["dpkit.config"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _compares_a_strategy_name(tree: ast.AST) -> list[int]:
    """Lines where `<x>.parallelism` (or `.sync`, `.schedule`) is compared with a string or a tuple of strings."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = any(isinstance(s, ast.Attribute) and s.attr in ("parallelism", "sync", "schedule") for s in sides)
            literal = any(
                (isinstance(s, ast.Constant) and isinstance(s.value, str))
                or (isinstance(s, (ast.Tuple, ast.List, ast.Set)) and all(isinstance(e, ast.Constant) for e in s.elts))
                for s in sides
            )
            if named and literal:
                lines.append(node.lineno)
    return lines


def test_no_module_outside_strategies_compares_parallelism_to_a_name() -> None:
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if "strategies" in path.relative_to(PACKAGE).parts:
            continue
        lines = _compares_a_strategy_name(ast.parse(path.read_text()))
        if lines:
            offenders[str(path.relative_to(PACKAGE.parent))] = lines
    assert not offenders, f"strategy names tested outside dpkit/strategies/ (ask the spec instead): {offenders}"
    assert _compares_a_strategy_name(ast.parse("if cfg.parallelism == 'data': pass"))  # the check itself works


def test_strategies_never_call_torch_distributed() -> None:
    pattern = re.compile(r"torch\.distributed|import torch\.distributed|dist\.")
    hits = [
        f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for path in (PACKAGE / "strategies").rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "strategies must send every message through dpkit.comm.Comm:\n" + "\n".join(hits)


def test_every_parallelism_and_sync_selects_exactly_one_strategy() -> None:
    assert set(PARALLELISMS) == {"none", "data", "pipeline", "tensor", "hybrid"}
    for parallelism, sync in itertools.product(PARALLELISMS, SYNCS):
        cfg = RunConfig(parallelism=parallelism, sync=sync, world_size=1 if parallelism == "none" else 2, data_parallel_size=2)
        chosen = [spec for spec in SPECS if spec.selects(cfg)]
        assert len(chosen) == 1, (parallelism, sync, [s.name for s in chosen])
        assert spec_for(cfg) is chosen[0]
        assert len(chosen[0].roles(cfg)) == cfg.num_processes


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_spec_lives_next_to_its_strategy(spec) -> None:
    module = type(spec).__module__
    assert module.startswith("dpkit.strategies.") and module != "dpkit.strategies.registry"
    assert spec.description and spec.parallelism in PARALLELISMS

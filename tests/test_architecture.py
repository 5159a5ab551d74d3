"""The architecture holds: imports point down a declared order of layers, no import cycles, config and the specs
reach no algorithm, strategy knowledge only in strategies/, every message through Comm.

These read the source with ast (no extra tools), so they fail the moment a shortcut creeps back in.
"""

from __future__ import annotations

import ast
import functools
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
    return {name for name, _ in _imports_where(tree, module, is_package)}


def _imports_where(tree: ast.AST, module: str, is_package: bool) -> set[tuple[str, bool]]:
    """(dpkit module or name imported, whether the import is inside a function) for every import that runs."""
    found: set[tuple[str, bool]] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Import):
            found.update((a.name, in_function) for a in node.names if a.name.split(".")[0] == "dpkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "dpkit":
                found.add((target, in_function))
                found.update((f"{target}.{a.name}", in_function) for a in node.names)  # `from . import x`: module x
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree, False)
    return found


def _files() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


@functools.cache
def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the dpkit modules it imports (with module_level_only, those imported when it is imported)."""
    files = _files()
    graph = {}
    for name, path in files.items():
        imports = _imports_where(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {m for m, lazy in imports if m in files and m != name and not (lazy and module_level_only)}
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
def test_each_spec_lives_in_specs_apart_from_its_algorithm(spec) -> None:
    module = type(spec).__module__
    assert module.startswith("dpkit.strategies.specs."), module
    assert spec.description and spec.parallelism in PARALLELISMS


# ---- the declared order of layers (docs/design.md draws it) -----------------------------------------
#: top to bottom; a module may import its own layer and the layers below it, never one above. A module belongs to
#: the layer of the longest prefix naming it ("dpkit.strategies" as a package, its __init__, holds make_strategy
#: and the registry's names only, so it sits with the specs). Where it differs from the picture in
#: /work/shared/DESIGN.md (viz, benchmarks -> analysis -> api -> runtime -> strategies -> comm -> cost ->
#: config/workloads) it says what is true today, and docs/design.md draws it and says why:
#: - results.py (RunResult) is what the runtime hands back: runtime layer, below the api;
#: - measurement (the recorder's compute regions, the memory meter and Held) wraps the strategies when a rank
#:   runs (the training loop calls timed_step inside the meter's step), but the strategies speak its vocabulary
#:   (RankContext's Recorder, the base helpers' regions, held_tensors() -> Held), so in imports it sits below
#:   them; it imports comm (scratch bytes) and cost (the memory fields' names), so it sits above those;
#: - the specs sit below config (config learns its fields from them) and above comm and cost (their hooks price
#:   a step with the cost model and name comm's collectives), with config above them;
#: - buffers, cores and gloo_loop import nothing of dpkit: the bottom, with the workloads.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "entry points",
        (
            "dpkit",
            "dpkit.cli",
            "dpkit.demo",
            "dpkit.worker",
            "dpkit.viz",
            "dpkit.benchmarks",
            "dpkit.exercises",
            "dpkit.lessons",
            "dpkit.verdict",
            "dpkit.link_check",
        ),
    ),
    ("analysis", ("dpkit.analysis",)),
    ("api", ("dpkit.api", "dpkit.measure")),
    ("runtime", ("dpkit.runtime", "dpkit.results")),
    ("strategies", ("dpkit.strategies.",)),
    ("measurement", ("dpkit.runtime.recorder", "dpkit.runtime.memory")),
    ("config", ("dpkit.config", "dpkit.config_args")),
    ("specs", ("dpkit.strategies", "dpkit.strategies.spec", "dpkit.strategies.registry", "dpkit.strategies.specs")),
    ("comm", ("dpkit.comm",)),
    ("cost", ("dpkit.cost",)),
    (
        "workloads and the machine",
        ("dpkit.workloads", "dpkit.data", "dpkit.buffers", "dpkit.runtime.cores", "dpkit.runtime.gloo_loop"),
    ),
)

#: the only imports allowed to point up: a spec imports its algorithm inside build() (and inside the hooks that
#: need the algorithm's own arithmetic: where a pipeline may be cut, ZeRO's units, the servers' shards, the
#: tensors tensor parallelism splits), so that only building a strategy imports it. (spec module, algorithm module)
LAZY_SPEC_IMPORTS = {
    ("dpkit.strategies.specs.single", "dpkit.strategies.single"),
    ("dpkit.strategies.specs.data_parallel", "dpkit.strategies.data_parallel"),
    ("dpkit.strategies.specs.local_sgd", "dpkit.strategies.local_sgd"),
    ("dpkit.strategies.specs.zero", "dpkit.strategies.zero.layout"),
    ("dpkit.strategies.specs.zero", "dpkit.strategies.zero.stage1"),
    ("dpkit.strategies.specs.zero", "dpkit.strategies.zero.stage2"),
    ("dpkit.strategies.specs.zero", "dpkit.strategies.zero.stage3"),
    ("dpkit.strategies.specs.zero", "dpkit.strategies.zero.fsdp2"),
    ("dpkit.strategies.specs.parameter_server", "dpkit.strategies.parameter_server.backup"),
    ("dpkit.strategies.specs.parameter_server", "dpkit.strategies.parameter_server.layout"),
    ("dpkit.strategies.specs.parameter_server", "dpkit.strategies.parameter_server.server"),
    ("dpkit.strategies.specs.parameter_server", "dpkit.strategies.parameter_server.worker"),
    ("dpkit.strategies.specs.pipeline", "dpkit.strategies.pipeline"),
    ("dpkit.strategies.specs.pipeline", "dpkit.strategies.pipeline_cut"),
    ("dpkit.strategies.specs.tensor_parallel", "dpkit.strategies.tensor_parallel"),
    ("dpkit.strategies.specs.hybrid", "dpkit.strategies.pipeline_cut"),
    ("dpkit.strategies.specs.hybrid", "dpkit.strategies.hybrid"),
}


def layer_of(module: str) -> int:
    """The index in LAYERS (0 = top) of the layer `module` belongs to: its longest matching prefix. A prefix
    matches itself and the modules under it; one ending in "." only the modules under it."""
    best, depth = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            under = module.startswith(prefix if prefix.endswith(".") else prefix + ".") and prefix != "dpkit"
            if (module == prefix or under) and len(prefix) > depth:
                best, depth = i, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/design.md)")
    return best


def upward_imports(graph: dict[str, set[str]], lazy: set[tuple[str, str]] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Every import that points to a layer above the importer's, except the listed lazy ones."""
    return sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) < layer_of(module)
        and (module, target) not in lazy
        and not module.startswith(target + ".")  # a module's own package runs first: how packages work
    )


def test_imports_point_down_the_declared_layers() -> None:
    everywhere, module_level = import_graph(), import_graph(module_level_only=True)
    lazy_used = {(m, t) for m, ts in everywhere.items() for t in ts if (m, t) in LAZY_SPEC_IMPORTS and t not in module_level[m]}
    assert not upward_imports(module_level), "imports that point up the layers:\n" + "\n".join(upward_imports(module_level))
    assert not upward_imports(everywhere, lazy_used), "function-level imports that point up the layers:\n" + "\n".join(
        upward_imports(everywhere, lazy_used)
    )
    assert lazy_used == LAZY_SPEC_IMPORTS, f"LAZY_SPEC_IMPORTS lists imports no spec makes now: {LAZY_SPEC_IMPORTS - lazy_used}"


def test_every_module_is_in_a_layer_and_the_check_finds_an_upward_import() -> None:
    for module in _files():
        layer_of(module)
    assert upward_imports({"dpkit.cost.model": {"dpkit.api"}}) == ["dpkit.cost.model (cost) imports dpkit.api (api)"]
    assert not upward_imports({"dpkit.api": {"dpkit.cost.model"}})
    assert upward_imports({"dpkit.strategies.specs.single": {"dpkit.strategies.single"}})  # unlisted, it is upward


def _reached(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules importing `start` runs, parent packages included (importing a.b runs a/__init__ first), all but
    the root package's __init__, which imports everything for `import dpkit` users."""
    files, seen, todo = set(graph), set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = {".".join(module.split(".")[:i]) for i in range(2, len(module.split(".")))}
        todo.extend((graph[module] | parents) & files)
    return seen - {start}


def algorithm_modules() -> set[str]:
    return {m for m in _files() if LAYERS[layer_of(m)][0] == "strategies" and m != "dpkit.strategies"}


@pytest.mark.parametrize("start", ["dpkit.config", "dpkit.strategies.registry"])
def test_config_and_the_specs_reach_no_algorithm_module(start: str) -> None:
    assert len(algorithm_modules()) > 8
    reached = _reached(import_graph(module_level_only=True), start)
    assert not reached & algorithm_modules(), f"importing {start} imports algorithms: {sorted(reached & algorithm_modules())}"
    assert {"dpkit.strategies.specs.pipeline", "dpkit.strategies.spec"} <= _reached(import_graph(True), "dpkit.config")


def test_docs_design_draws_the_declared_layers_in_order() -> None:
    """docs/design.md's drawing names every layer of LAYERS, top to bottom, in the same order."""
    text = (PACKAGE.parent / "docs" / "design.md").read_text()
    drawing = text[text.index("The layers, top to bottom") :].split("```")[1]
    starts = [line.strip() for line in drawing.splitlines() if line.strip() and not line.strip().startswith("|")]
    found = [name for name, _ in LAYERS if any(line.startswith(name) for line in starts)]
    assert found == [name for name, _ in LAYERS], f"docs/design.md draws {found}"
    positions = [next(i for i, line in enumerate(starts) if line.startswith(name)) for name, _ in LAYERS]
    assert positions == sorted(positions), "docs/design.md draws the layers in another order than LAYERS"

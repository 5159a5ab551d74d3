"""docs/reading.md names real code: every file in its table exists and defines every name in its row.

Read with ast (nothing is imported), so a renamed function or a moved file fails here with the row to update.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reading.md"
CONCEPTS = (
    "ring", "tree", "bucketing", "ZeRO-1", "ZeRO-2", "ZeRO-3", "push and pull", "GPipe", "1F1B", "Megatron f and g",
    "reduce-broadcast", "emulated link", "the training loop",
)  # fmt: skip


def rows(text: str) -> list[tuple[str, str, list[str]]]:
    """(concept, file, names) of every table row below the header."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("Concept", "") or set(cells[0]) <= {"-"}:
            continue
        (file,) = re.findall(r"`([^`]+)`", cells[1]) or [""]
        out.append((cells[0], file, re.findall(r"`([^`]+)`", cells[2])))
    return out


def defined_names(source: str) -> set[str]:
    """Top-level functions, classes and assigned names, and `Class.method` for each method."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}.{item.name}" for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def stale(entries: list[tuple[str, str, list[str]]], root: Path) -> list[str]:
    """One sentence per stale entry: which row, which file or name, what to do."""
    problems = []
    for concept, file, names in entries:
        path = root / file
        if not file or not path.is_file():
            problems.append(f"docs/reading.md row {concept!r}: file {file!r} does not exist (moved? update the row)")
            continue
        have = defined_names(path.read_text())
        for name in names:
            if name not in have:
                problems.append(f"docs/reading.md row {concept!r}: {file} defines no {name!r} (renamed? update the row)")
        if not names:
            problems.append(f"docs/reading.md row {concept!r}: names nothing to read in {file}")
    return problems


def test_every_named_file_and_function_exists() -> None:
    entries = rows(DOC.read_text())
    assert len(entries) >= 20, "the table was not read"
    problems = stale(entries, ROOT)
    assert not problems, "stale entries in docs/reading.md:\n" + "\n".join(problems)


@pytest.mark.parametrize("concept", CONCEPTS)
def test_every_concept_of_the_course_has_a_row(concept: str) -> None:
    assert any(concept in row for row, _, _ in rows(DOC.read_text())), f"docs/reading.md has no row for {concept!r}"


def test_a_stale_entry_is_named(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("class A:\n    def f(self):\n        pass\n\ndef g():\n    pass\nX = 1\n")
    assert not stale([("ok", "m.py", ["A", "A.f", "g", "X"])], tmp_path)
    assert stale([("ring", "m.py", ["A.h"])], tmp_path) == [
        "docs/reading.md row 'ring': m.py defines no 'A.h' (renamed? update the row)"
    ]
    assert "file 'gone.py' does not exist" in stale([("tree", "gone.py", ["g"])], tmp_path)[0]

"""check(name, fn): run a learner's function on real ranks, compare with dpkit's reference, answer in words.

For each world size the exercise lists, one launch runs every size (dpkit.exercises.ranks.run_cases);
this process then compares what each rank ended with against the reference and the exercise's rules.
It stops at the first world size with a problem and reports the first problem it found: which rank,
which step, expected against got. A rank that raises or hangs ends the launch (launch() kills every
rank), and becomes a report too: the kernel never hangs. If everything passed, one more launch times
the learner's version against the built-in one.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from ..runtime.cores import cores_available
from ..runtime.launch import RankFailedError, RunStuckError, RunTimeoutError, launch
from .base import RankExercise, compare, read_progress
from .catalog import exercise
from .deadlock import deadlock
from .process_group import kill_process_groups
from .report import CheckReport
from .source import learner_lines, write_module

CASES_TARGET = "dpkit.exercises.ranks:run_cases"
TIMING_TARGET = "dpkit.exercises.ranks:time_cases"


def check(
    name: str,
    fn: Callable | Sequence[Callable],
    *,
    timeout_s: float = 30.0,
    repeats: int = 5,
    timing: bool = True,
    world_sizes: Sequence[int] | None = None,
) -> CheckReport:
    """Check the learner's `fn` for exercise `name` (a tuple of functions where the exercise needs several,
    e.g. (worker, server)). A launch that takes longer than `timeout_s` counts as hung. `timing=False`
    skips the timing; `world_sizes` overrides the exercise's."""
    ex = exercise(name)
    fns = [fn] if callable(fn) else list(fn)
    if not isinstance(ex, RankExercise):
        report = ex.check(fns[0], timeout_s=timeout_s)
        report.checked = checked_what(fns)
        return report
    if len(fns) != len(ex.functions):
        raise TypeError(f"check({name!r}, ...) needs {len(ex.functions)} function(s): {', '.join(ex.functions)}")
    worlds = list(world_sizes or ex.world_sizes)
    if not worlds or min(worlds) < 2:
        raise ValueError(f"world_sizes must be 2 or more ranks each, not {worlds}")
    with tempfile.TemporaryDirectory(prefix="dpkit-exercise-") as folder:
        functions = [(write_module(f, folder), f.__name__) for f in fns]
        rows: list[dict] = []
        problem = None
        for world in worlds:
            out = Path(folder, f"world{world}")
            out.mkdir()
            payload = {"exercise": name, "folder": folder, "functions": functions, "sizes": list(ex.sizes)}
            problem = _launch(ex, CASES_TARGET, payload, world, out, folder, timeout_s, rows)
            if problem is None:
                problem = _compare(ex, world, out, rows)
            if problem is not None:
                break
        timed = None
        if problem is None and timing:
            timed, problem = _time(ex, folder, functions, worlds, repeats, timeout_s, rows)
    cases = pd.DataFrame(rows)
    if problem is not None:
        return CheckReport(name, False, problem, cases, None, checked_what(fns))
    sizes = ", ".join(ex.size_label(s) for s in ex.sizes)
    message = f"All ranks match dpkit's reference at world sizes {', '.join(map(str, worlds))} with {sizes}."
    last = cases.iloc[-1]  # the largest world size and size
    message += f" At world size {last['world_size']} with {last['size']}, rank {last['rank']} sent {last['bytes_sent']} bytes ({last['bytes_source']})."
    return CheckReport(name, True, message, cases, timed, checked_what(fns))


def checked_what(fns: Sequence[Callable]) -> str:
    """Whose function(s) a report is about, in words: 'the reference solution (exercises/solutions/x.py)' when they
    come from the shipped solutions (a notebook saved with that output must not pass for the learner's), else
    'your function(s) name (file)'."""
    files = {Path(getattr(getattr(f, "__code__", None), "co_filename", "?")) for f in fns}
    names = ", ".join(getattr(f, "__name__", "?") for f in fns)
    if all(f.parent.name == "solutions" for f in files):
        return f"the reference solution ({', '.join(sorted(f'exercises/solutions/{f.name}' for f in files))}), not yours"
    where = (
        "this notebook"
        if any(f.name.startswith("<") or "ipykernel" in str(f) for f in files)
        else ", ".join(sorted(f.name for f in files))
    )
    return f"your {names} ({where})"


# ---- one launch ---------------------------------------------------------------------------------
def _who(ex: RankExercise, world: int, rank: int) -> str:
    role = ex.roles(world)[rank]
    return f"Rank {rank}" + (f" ({role})" if role != f"rank {rank}" else "")


def _size(ex: RankExercise, progress: dict) -> str | None:
    """The size a rank's progress file names, in words (None before the first case)."""
    if progress.get("timing"):
        return ex.timing_label()
    return ex.size_label(progress["size"]) if "size" in progress else None


def _where(ex: RankExercise, world: int, progress: dict) -> str:
    size = _size(ex, progress)
    where = f"world size {world}" + (f", {size}" if size else "")
    if progress.get("timing"):
        where += ", while being timed (larger than the checked cases)"
    return where


def _launch(
    ex: RankExercise, target: str, payload: dict, world: int, out: Path, folder: str, timeout_s: float, rows: list[dict]
) -> str | None:
    """Run one launch; None if every rank finished, else what went wrong, in words (a row is added for it).
    Whatever the learner's function started is killed after (each rank's process group)."""
    try:
        launch(
            target,
            payload,
            world,
            out,
            threads_per_rank=1,
            timeout_s=timeout_s,
            roles=ex.roles(world),
            watch=lambda: deadlock(out, world),
        )
        left = [r for r in range(world) if not _returned(out, target, r)]
        return _exited(ex, world, left, out, rows) if left else None
    except RankFailedError as exc:
        early = [r for r, code in enumerate(exc.exitcodes) if code == 0 and not _returned(out, target, r)]
        if early:  # a rank that ended itself (os._exit(0)): the others' errors ("Connection closed by peer") follow
            return _exited(ex, world, early, out, rows, exc)
        error = (exc.traceback.strip().splitlines() or [str(exc)])[-1].replace("dpkit.exercises.net.", "")
        if "timed out" in error.lower():  # the backend's own timeout ("Timed out waiting ... for recv"): a hang as well
            return _hung(ex, world, [exc.rank], out, timeout_s, rows)
        progress = read_progress(out, exc.rank)
        lines = learner_lines(exc.traceback, folder)
        if exc.traceback:
            text = f"{_who(ex, world, exc.rank)} raised {error}"
        else:  # no traceback: the process ended itself with a code, or was killed
            text = f"{_who(ex, world, exc.rank)} {str(exc).split(';')[0].split(') ', 1)[-1]}"
        text += f" at {lines[-1]}" if lines else ""
        text += f", in {_where(ex, world, progress)}."
        if "NotImplementedError" in error:
            text += " The skeleton is not filled in yet."
        elif "NameError" in error:
            text += " The function must be self-contained: it sees torch, dist, math and its arguments only (define helpers inside it)."
        rows.append({"world_size": world, "size": _size(ex, progress), "rank": exc.rank, "passed": False, "problem": text})
        return text
    except RunStuckError as exc:
        progress = read_progress(out, exc.ranks[0]) if exc.ranks else {}
        text = f"Deadlock ({_where(ex, world, progress)}): {exc}"
        rows.append({"world_size": world, "size": _size(ex, progress), "rank": None, "passed": False, "problem": text})
        return text
    except RunTimeoutError as exc:
        return _hung(ex, world, exc.ranks, out, timeout_s, rows)
    finally:
        kill_process_groups(out, world)


def _returned(out: Path, target: str, rank: int) -> bool:
    """Whether the rank got to the end of the launch target (its results are written)."""
    if target == CASES_TARGET:
        return Path(out, f"rank{rank}.pt").exists()
    return rank != 0 or Path(out, "times.json").exists()


def _exited(
    ex: RankExercise, world: int, ranks: list[int], out: Path, rows: list[dict], exc: RankFailedError | None = None
) -> str:
    """A report for ranks whose process ended (os._exit, sys.exit with no error) before the function returned."""
    who = ", ".join(_who(ex, world, r) for r in ranks)
    progress = read_progress(out, ranks[0])
    text = (
        f"{who} ended {'its' if len(ranks) == 1 else 'their'} own process before your function returned "
        f"(os._exit or a similar call?), in {_where(ex, world, progress)}; it was last "
        f"{progress.get('doing', 'starting')}. A rank's function must return: the checker reads what it ended with."
    )
    if exc is not None:
        others = [r for r in range(world) if r not in ranks and exc.exitcodes[r] not in (0, None)]
        if others:
            text += f" The other rank(s) {others} then failed because their peer was gone (not their mistake)."
    rows.append({"world_size": world, "size": _size(ex, progress), "rank": ranks[0], "passed": False, "problem": text})
    return text


def _hung(ex: RankExercise, world: int, ranks: list[int], out: Path, timeout_s: float, rows: list[dict]) -> str:
    doing = {r: read_progress(out, r) for r in ranks}
    progress = next((p for p in doing.values() if p), {})
    waits = "; ".join(f"rank {r} was {p.get('doing', 'not started yet')}" for r, p in doing.items())
    if all(p.get("doing", "").startswith("running") for p in doing.values()):
        why = "Your function was still running its own code, not waiting for a message: look for a loop that never ends."
    elif any(p.get("doing", "").startswith("in net.send") for p in doing.values()):
        why = (
            "A send waits until the receiver posts the matching receive: two ranks that both send to each other "
            "first wait forever. Post the receive first with net.irecv (or send with net.isend), then wait."
        )
    else:
        why = (
            "A receive waits until its sender sends: check that every recv has a matching send on the other rank, "
            "and that two ranks never both wait to receive from each other first."
        )
    text = f"Nothing came back within {timeout_s:g} s ({_where(ex, world, progress)}): {waits}. {why}"
    rows.append(
        {"world_size": world, "size": _size(ex, progress), "rank": ranks[0] if ranks else None, "passed": False, "problem": text}
    )
    return text


# ---- comparing --------------------------------------------------------------------------------
def _compare(ex: RankExercise, world: int, out: Path, rows: list[dict]) -> str | None:
    """Compare every rank's outputs with the reference; one row per (size, rank); the first problem, in words."""
    records = [torch.load(Path(out, f"rank{r}.pt")) for r in range(world)]
    first = None
    for index, size in enumerate(ex.sizes):
        expected = ex.expected(world, size)
        for rank in range(world):
            record = records[rank][index]
            problem = _problem(ex, world, size, rank, record, expected[rank])
            sent = record["bytes_sent"] + record["formula_bytes"]
            source = "counted" if not record["formula_bytes"] else ("formula" if not record["bytes_sent"] else "counted+formula")
            rows.append(
                {
                    "world_size": world,
                    "size": ex.size_label(size),
                    "rank": rank,
                    "role": ex.roles(world)[rank],
                    "passed": problem is None,
                    "bytes_sent": sent,
                    "bytes_source": source,
                    "bytes_ideal": ex.expected_bytes(world, size, rank),
                    "calls": ", ".join(f"{k} x{v}" for k, v in sorted(record["calls"].items())),
                    "problem": problem or "",
                }
            )
            if problem is not None and first is None:
                first = problem
    return first


def _problem(ex: RankExercise, world: int, size: int, rank: int, record: dict, expected: list) -> str | None:
    who = f"{_who(ex, world, rank)}, world size {world}, {ex.size_label(size)}"
    got = record["items"]
    for item, ((label, want), (_, have)) in enumerate(zip(expected, got, strict=True)):
        found = compare(want, have, ex.rtol, ex.atol)
        if found is not None:
            hint = ex.hint(world, size, rank, item, want, have) if found.index >= 0 else ""
            return f"{who}, {label}: {found.text}." + (f" {hint}" if hint else "")
    if record["unfinished"]:
        return (
            f"{who}: your function returned with {', '.join(record['unfinished'])} not waited for; "
            "call .wait() on every request net.isend/net.irecv return before returning (or reading the tensor)."
        )
    rule = ex.check_record(world, size, rank, record)
    return f"{who}: {rule}" if rule else None


# ---- timing -----------------------------------------------------------------------------------
def _time(
    ex: RankExercise, folder: str, functions: list, worlds: list[int], repeats: int, timeout_s: float, rows: list[dict]
) -> tuple[dict | None, str | None]:
    """(timing, None), or (None, problem) if the learner's version fails on the larger timing case."""
    cores = cores_available()
    world = min(max(worlds), max(2, cores))
    out = Path(folder, "timing")
    out.mkdir()
    payload = {"exercise": ex.name, "folder": folder, "functions": functions, "size": ex.timing_size, "repeats": repeats}
    problem = _launch(ex, TIMING_TARGET, payload, world, out, folder, timeout_s, rows)
    if problem is not None:
        return None, f"Your function passed the checked sizes, but {problem[0].lower()}{problem[1:]}"
    result = json.loads(Path(out, "times.json").read_text())
    return {
        **result,
        "world_size": world,
        "cpu_count": cores,
        "size": ex.timing_label(),
        "repeats": repeats,
        "builtin": ex.builtin,
    }, None

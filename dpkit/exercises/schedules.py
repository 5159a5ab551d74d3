"""Exercise 4: write the GPipe and 1F1B pipeline schedules; checked without ranks, by simulation.

fn(kind, m, p, s) returns stage s's actions, [("F" | "B", micro-batch), ...]. Three checks per (kind, m, p):
the actions make sense (each forward and backward once, a backward after its forward); the stages run
together without deadlock, simulated the way dpkit runs them (a receive blocks until the neighbour has
sent, sends never block); and the schedule is dpkit's (dpkit.strategies.pipeline.schedule), with the
activation peak it promises: m micro-batches in flight under GPipe, at most p - s on stage s under 1F1B.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..strategies.pipeline import peak_in_flight, schedule
from .process_group import own_process_group, rows_from_child
from .report import CheckReport
from .source import load_function

Action = tuple[str, int]
KINDS = ("gpipe", "1f1b")
PIPELINES = [(1, 2), (4, 2), (2, 4), (3, 3), (4, 4), (8, 3), (6, 4)]  # (m, p), m < p included
TICKS = {"F": 1, "B": 2}  # simulated duration: a backward costs about two forwards


def _needs(action: Action, s: int, p: int) -> tuple[int, Action] | None:
    """The (stage, action) whose message this action receives: F(i) needs stage s-1's F(i), B(i) stage s+1's B(i)."""
    kind, i = action
    if kind == "F":
        return (s - 1, ("F", i)) if s > 0 else None
    return (s + 1, ("B", i)) if s < p - 1 else None


def simulate(stages: list[list[Action]]) -> tuple[int | None, list[str]]:
    """(finish tick, []) if the stages run through; (None, what each stuck stage waits for) on a deadlock."""
    p = len(stages)
    done: dict[tuple[int, Action], int] = {}
    position, free = [0] * p, [0] * p
    progress = True
    while progress:
        progress = False
        for s, actions in enumerate(stages):
            while position[s] < len(actions):
                action = actions[position[s]]
                need = _needs(action, s, p)
                if need is not None and need not in done:
                    break
                start = max(free[s], done[need] if need is not None else 0)
                free[s] = done[(s, action)] = start + TICKS[action[0]]
                position[s] += 1
                progress = True
    stuck = []
    for s, actions in enumerate(stages):
        if position[s] < len(actions):
            action = actions[position[s]]
            need = _needs(action, s, p)
            assert need is not None
            stuck.append(f"stage {s} waits at action #{position[s]} {action} for stage {need[0]}'s {need[1]}")
    return (max(free), []) if not stuck else (None, stuck)


def structure_problem(actions: object, m: int, s: int) -> str | None:
    """What is wrong with one stage's list as a list of actions, or None."""
    if not isinstance(actions, list | tuple):
        return f"stage {s}: the function returned {type(actions).__name__}, not a list of actions"
    seen: set[Action] = set()
    for k, a in enumerate(actions):
        if not (isinstance(a, list | tuple) and len(a) == 2 and a[0] in ("F", "B") and isinstance(a[1], int)):
            return f"stage {s}, action #{k} is {a!r}: an action is a pair ('F' or 'B', micro-batch index)"
        kind, i = a
        if not 0 <= i < m:
            return f"stage {s}, action #{k} {(kind, i)} names micro-batch {i}, but there are only m={m} (0..{m - 1})"
        if (kind, i) in seen:
            return f"stage {s}, action #{k} runs {(kind, i)} a second time"
        if kind == "B" and ("F", i) not in seen:
            return f"stage {s}, action #{k} runs ('B', {i}) before ('F', {i}): a backward needs its forward's activations"
        seen.add((kind, i))
    missing = [(kind, i) for kind in ("F", "B") for i in range(m) if (kind, i) not in seen]
    if missing:
        return f"stage {s} never runs {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    return None


def _raised(fn: Callable, exc: BaseException) -> str:
    """'ValueError: ... at line N of your function' for an exception raised in fn."""
    where = ""
    code = getattr(fn, "__code__", None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if code is not None and frame.filename == code.co_filename and frame.lineno is not None:
            where = f" at line {frame.lineno - code.co_firstlineno + 1} of your function (`{(frame.line or '').strip()}`)"
    return f"{type(exc).__name__}: {exc}{where}"


def _check_one(fn: Callable, kind: str, m: int, p: int) -> dict:
    row: dict = {"kind": kind, "m": m, "p": p, "passed": False, "problem": ""}
    reference = [schedule(kind, m, p, s) for s in range(p)]
    row["reference peak per stage"] = [peak_in_flight(a) for a in reference]
    row["reference ticks"] = simulate(reference)[0]
    stages = []
    for s in range(p):
        try:
            actions = fn(kind, m, p, s)
        except Exception as exc:  # noqa: BLE001 - the learner's error becomes the report
            row["problem"] = f"fn({kind!r}, m={m}, p={p}, s={s}) raised {_raised(fn, exc)}."
            return row
        problem = structure_problem(actions, m, s)
        if problem:
            row["problem"] = problem + "."
            return row
        stages.append([(str(a[0]), int(a[1])) for a in actions])
    row["your peak per stage"] = [peak_in_flight(a) for a in stages]
    ticks, stuck = simulate(stages)
    row["your ticks"] = ticks
    if stuck:
        row["problem"] = "Deadlock: " + "; ".join(stuck) + ". Each waits for a message the other would send only later."
        return row
    for s, (yours, ref) in enumerate(zip(stages, reference, strict=True)):
        if yours != ref:
            k = next(
                (k for k, (a, b) in enumerate(zip(yours, ref, strict=True)) if a != b), 0
            )  # same length: both run every action once
            peak, ref_peak = peak_in_flight(yours), peak_in_flight(ref)
            text = f"stage {s}, action #{k} should be {ref[k]} but is {yours[k]}"
            if peak != ref_peak:
                text += f"; your stage {s} keeps {peak} micro-batches of activations at the peak where {kind} keeps {ref_peak}"
            if kind == "1f1b":
                text += f" (stage s warms up with min(p - s - 1, m) = {min(p - s - 1, m)} forwards here)"
            row["problem"] = text + "."
            return row
    row["passed"] = True
    return row


def run_in_rank(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: check the learner's function in a process of its own, which the checker can kill (a
    function that never returns, or ends its process, must not take the notebook's kernel with it)."""
    own_process_group(out_dir, rank)
    fn = load_function(payload["folder"], *payload["function"])
    rows = [_check_one(fn, kind, m, p) for kind in KINDS for m, p in PIPELINES]
    Path(out_dir, "rows.json").write_text(json.dumps(rows))


class PipelineSchedule:
    """fn(kind, m, p, s) -> stage s's actions for kind 'gpipe' and '1f1b'; checked by simulation in one child
    process, under a time limit."""

    name = "pipeline_schedule"
    functions = ("fn",)

    def check(self, fn: Callable, timeout_s: float = 30.0) -> CheckReport:
        rows, problem = rows_from_child(f"{__name__}:run_in_rank", fn, timeout_s, returns="a list of actions")
        if rows is None:
            return CheckReport(self.name, False, f"{fn.__name__}: {problem}", pd.DataFrame(), None)
        cases = pd.DataFrame(rows)
        failed = [r for r in rows if not r["passed"]]
        if failed:
            first = failed[0]
            message = f"{first['kind']} with m={first['m']} micro-batches on p={first['p']} stages: {first['problem']}"
        else:
            message = (
                f"Your gpipe and 1f1b schedules match dpkit's for all {len(PIPELINES)} (m, p) pairs and run without deadlock. "
                "GPipe keeps m micro-batches of activations at the peak on every stage, 1F1B at most p - s on stage s, "
                f"and both take the same simulated time (F = {TICKS['F']} tick, B = {TICKS['B']})."
            )
        return CheckReport(self.name, not failed, message, cases, None)

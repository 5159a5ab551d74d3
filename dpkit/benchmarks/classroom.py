"""A room, simulated: N learners click the same panel at once on one machine; how long each waits and gets an answer.

Each learner is its own process (a kernel), started and warmed up (dpkit imported, its forkserver running, one run done) before
the click; at the click every learner runs a panel's worth of runs one after another (the lesson's compute-bound
workload at world sizes 1 and 2, twice each, 1 thread per rank: 4 runs), all against one queue folder. The room
clicks once with core slots (DPKIT_QUEUE_SLOTS=cores: a run holds only its cores) and once with the whole-machine
queue (DPKIT_QUEUE_SLOTS=machine: one run at a time), in alternating order over the rounds.

Measured per learner: its wait (the sum of its runs' queue_wait_s) and its answer time (click to its last run's
end). From the runs' measured lengths (machine queue: each run alone), `simulate` predicts the same room on other
machines. The model: every learner clicks at t = 0 and runs its panel's runs one after another; a run needing c
cores (processes x threads) and lasting its measured time starts when every run queued before it has started and
c cores are free (first come, first served, nobody passes); whole-machine queue: every run needs every core. Runs
on disjoint cores do not slow each other (shared memory bandwidth and the learners' own Python aside), and a run
is no shorter on a bigger machine (1 thread per rank). The model is checked against the room measured here.

Writes classroom_runs.csv (every run), classroom_learners.csv (wait and answer per learner), classroom.csv
(measured and predicted rooms: total, median and worst wait and answer) and classroom.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..config import RunConfig

LESSON = RunConfig(
    parallelism="data", model="mlp", hidden=128, layers=2, global_batch=960, steps=4, warmup=1, grad_sync="bucketed",
    threads_per_rank=1, timeout_s=600,
)  # fmt: skip
PANEL = (1, 1, 2, 2)  # world sizes of one click: the experiment panel's largest world size 2, 2 runs per point
MODES = ("cores", "machine")
PREDICT = ((30, 32), (30, 64))  # learners, cores


def _now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # shared by every process on the machine


def learner(home: str, me: str, modes: str, panel: str) -> None:
    """One learner's kernel (command-line strings): warm up, then at each go-<round> file run the panel's runs,
    queued, under that round's mode (modes: "cores,machine,..."; panel: world sizes "1,1,2,2")."""
    from ..api import run
    from ..runtime import queue as q
    from ..runtime.launch import start_forkserver

    start_forkserver()
    run(LESSON.replace(world_size=max(int(w) for w in panel.split(",")), steps=2))  # warm: a kernel that ran once
    folder, who = Path(home), int(me)
    (folder / f"ready-{who}").write_text("")
    for rnd, mode in enumerate(modes.split(",")):
        go = folder / f"go-{rnd}"
        while not go.exists():
            time.sleep(0.01)
        os.environ[q.SLOTS_ENV] = mode
        rows = []
        for i, world in enumerate(int(w) for w in panel.split(",")):
            start = _now()
            result = run(LESSON.replace(world_size=world))
            end = _now()
            meta = result.meta
            rows.append({
                "round": rnd, "slots": mode, "learner": who, "run": i, "world_size": world,
                "cores_needed": world * (LESSON.threads_per_rank or 1), "start": start, "end": end,
                "wait_s": meta["queue_wait_s"], "run_s": end - start - meta["queue_wait_s"],
                "queue_cores": " ".join(map(str, meta["queue_cores"] or [])), "runs_beside": meta["queue_runs_beside"],
                "step_time_s": result.summary.get("step_time_s"),
            })  # fmt: skip
        (folder / f"runs-{rnd}-{who}.json").write_text(json.dumps(rows))


def simulate(learners: int, cores: int, panel: list[tuple[int, float]], slots: bool) -> pd.DataFrame:
    """The model above: each learner's wait_s and answer_s when `learners` click at once on `cores` cores and each
    runs `panel` ((cores needed, seconds) per run) in order; slots=False: the whole-machine queue."""
    queue: deque[tuple[float, int, int]] = deque((0.0, lrn, 0) for lrn in range(learners))  # (arrival, learner, run)
    running: list[tuple[float, int, int, int]] = []  # (end, learner, run, cores held)
    free, t = cores, 0.0
    wait, answer = [0.0] * learners, [0.0] * learners
    while queue or running:
        while queue:
            arrival, lrn, i = queue[0]
            need = min(panel[i][0], cores) if slots else cores
            if need > free:
                break  # nobody passes the run at the head
            queue.popleft()
            free -= need
            wait[lrn] += t - arrival
            heapq.heappush(running, (t + panel[i][1], lrn, i, need))
        t, lrn, i, need = heapq.heappop(running)
        free += need
        if i + 1 < len(panel):
            queue.append((t, lrn, i + 1))
        else:
            answer[lrn] = t
    return pd.DataFrame({"learner": range(learners), "wait_s": wait, "answer_s": answer})


def room(frame: pd.DataFrame) -> dict:
    """Total, median and worst wait and answer of a room (one row per learner)."""
    return {
        "total_wait_s": round(float(frame.wait_s.sum()), 2), "median_wait_s": round(float(frame.wait_s.median()), 2),
        "worst_wait_s": round(float(frame.wait_s.max()), 2), "median_answer_s": round(float(frame.answer_s.median()), 2),
        "worst_answer_s": round(float(frame.answer_s.max()), 2),
    }  # fmt: skip


def measure(learners: int, rounds: int, panel: tuple[int, ...], home: Path) -> pd.DataFrame:
    """Start the learners, let them click `rounds` times (core slots and whole machine alternating); every run."""
    modes = [MODES[(r + r // 2) % 2] for r in range(rounds)]  # cores, machine, machine, cores, ...: neither always first
    env = {**os.environ, "DPKIT_QUEUE_DIR": str(home / "queue")}  # this room's own queue, not the machine's
    env.pop("DPKIT_QUEUE", None)
    code = "import sys; from dpkit.benchmarks.classroom import learner; learner(*sys.argv[1:5])"
    args = [str(home), "", ",".join(modes), ",".join(map(str, panel))]
    procs = []
    logs = []
    try:
        for me in range(learners):
            args[1] = str(me)
            log = open(home / f"learner{me}.err", "w")  # noqa: SIM115 -- closed below
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=log, stderr=log))
        _wait(lambda: all((home / f"ready-{me}").exists() for me in range(learners)), procs, home, 600, "learners to start")
        rows: list[dict] = []
        for rnd in range(rounds):
            time.sleep(2.0)  # the previous room's processes settle
            go = _now()
            (home / f"go-{rnd}").write_text(str(go))
            done = [home / f"runs-{rnd}-{me}.json" for me in range(learners)]
            _wait(lambda done=done: all(p.exists() for p in done), procs, home, 1800, f"round {rnd}")
            for path in done:
                for row in json.loads(path.read_text()):
                    rows.append({**row, "start": row["start"] - go, "end": row["end"] - go, "loadavg": _load()})
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for log in logs:
            log.close()
    return pd.DataFrame(rows)


def _wait(condition, procs: list, home: Path, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed:
            raise RuntimeError(f"learner {failed[0]} failed:\n{(home / f'learner{failed[0]}.err').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def learners_of(runs: pd.DataFrame) -> pd.DataFrame:
    """Per round and learner: wait (sum of its runs' waits) and answer time (click to its last run's end)."""
    return (
        runs.groupby(["round", "slots", "learner"], as_index=False)
        .agg(wait_s=("wait_s", "sum"), answer_s=("end", "max"))
        .round(3)
    )


def rooms(runs: pd.DataFrame, cores: int, panel: tuple[int, ...]) -> tuple[pd.DataFrame, list[tuple[int, float]]]:
    """Measured rooms (the median over rounds of each statistic) and the model's rooms, here and at PREDICT; and the
    panel as the model sees it (cores needed, median run length alone, i.e. under the whole-machine queue)."""
    per_learner = learners_of(runs)
    rows = []
    for mode, group in per_learner.groupby("slots"):
        stats = pd.DataFrame([room(g) for _, g in group.groupby("round")]).median()
        load = runs[runs.slots == mode].loadavg.map(lambda text: float(str(text).split()[0]))
        rows.append({"source": "measured", "learners": group.learner.nunique(), "cores": cores, "slots": mode,
                     "rounds": group["round"].nunique(), **stats.round(2).to_dict(),
                     "load_1min": f"{load.min():.1f}-{load.max():.1f}"})  # fmt: skip
    alone = runs[runs.slots == "machine"].groupby("world_size").run_s.median()
    model_panel = [(w * (LESSON.threads_per_rank or 1), float(alone[w])) for w in panel]
    learners = int(per_learner.learner.nunique())
    for n, c in ((learners, cores), *PREDICT):
        for mode in MODES:
            rows.append({"source": "predicted", "learners": n, "cores": c, "slots": mode, "rounds": 0,
                         **room(simulate(n, c, model_panel, slots=mode == "cores"))})  # fmt: skip
    return pd.DataFrame(rows), model_panel


def verdicts(summary: pd.DataFrame) -> list[str]:
    """The issue's two bars, each met or not, with the numbers: the measured room's total wait with core slots
    against the whole-machine queue, and the predicted 30 learners on 32 cores against the serial queue."""

    def pick(source: str, n: int | None, c: int | None, mode: str) -> pd.Series | None:
        rows = summary[(summary.source == source) & (summary.slots == mode)]
        if n is not None:
            rows = rows[(rows.learners == n) & (rows.cores == c)]
        return rows.iloc[0] if len(rows) else None

    lines = []
    slots, machine = pick("measured", None, None, "cores"), pick("measured", None, None, "machine")
    if slots is not None and machine is not None:
        ok = slots.total_wait_s <= machine.total_wait_s
        lines.append(f"measured, {slots.learners} learners on {slots.cores} cores: total wait {slots.total_wait_s:g} s with core "
                     f"slots against {machine.total_wait_s:g} s with the whole-machine queue: {'met' if ok else 'NOT met'}")  # fmt: skip
    slots, serial = pick("predicted", 30, 32, "cores"), pick("predicted", 30, 32, "machine")
    if slots is not None and serial is not None:
        ratio = serial.worst_answer_s / max(slots.worst_answer_s, 1e-9)
        lines.append(f"predicted, 30 learners on 32 cores: last answer after {slots.worst_answer_s:g} s with core slots, "
                     f"{serial.worst_answer_s:g} s with the serial queue ({ratio:.1f}x shorter; bar 8x): "
                     f"{'met' if ratio >= 8 else 'NOT met'}")  # fmt: skip
    return lines


def classroom_plot(summary: pd.DataFrame) -> Figure:
    """Worst answer time per room: core slots beside the whole-machine queue, measured and predicted."""
    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    labels = []
    for k, ((source, n, c), group) in enumerate(summary.groupby(["source", "learners", "cores"], sort=False)):
        load = f", load {group.load_1min.iloc[0]}" if source == "measured" and "load_1min" in group else ""
        labels.append(f"{n} learners, {c} cores\n({source}{load})")
        for j, mode in enumerate(MODES):
            row = group[group.slots == mode]
            if len(row):
                ax.bar(k + (j - 0.5) * 0.38, row.worst_answer_s.iloc[0], 0.36, color=("C0", "C3")[j],
                       label={"cores": "core slots", "machine": "whole-machine queue"}[mode] if k == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("last learner's answer (s)")
    ax.set_yscale("log")
    ax.set_title("A room clicking at once: when the last learner sees an answer", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(out: Path, args: argparse.Namespace) -> None:
    learners = 2 if getattr(args, "quick", False) else int(getattr(args, "learners", 8))
    rounds = 2 if getattr(args, "quick", False) else int(getattr(args, "rounds", 4))
    panel = (1, 2) if getattr(args, "quick", False) else PANEL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"start {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, load {_load()}, {cores} cores, "
          f"{learners} learners x {len(panel)} runs (world sizes {panel}), {rounds} rounds, python {platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dpkit-classroom-") as tmp:
        runs = measure(learners, rounds, panel, Path(tmp))
    summary, model_panel = rooms(runs, cores, panel)
    runs.round(4).to_csv(out / "classroom_runs.csv", index=False)
    learners_of(runs).to_csv(out / "classroom_learners.csv", index=False)
    summary.to_csv(out / "classroom.csv", index=False)
    classroom_plot(summary).savefig(out / "classroom.png", dpi=110)
    print("the model's panel (cores needed, median seconds alone):", [(c, round(s, 3)) for c, s in model_panel])
    print(summary.to_string(index=False))
    for line in verdicts(summary):
        print(line)
    print(f"end {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, load {_load()}")
    print(f"wrote {out / 'classroom.csv'}")

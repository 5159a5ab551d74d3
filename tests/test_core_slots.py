"""Core slots (issue 31): a run holds only the cores it needs, runs beside each other hold disjoint cores (every rank
and the forkserver pinned, read back from /proc), first come first served without starving a large run, a run
needing every core runs alone, a holder killed with kill -9 frees its cores within 3 s, DPKIT_QUEUE_SLOTS=machine
gives the old one-run-at-a-time queue; the room model behind `dpkit bench classroom`; the panels' "ran on" line.

Every test queues in its own folder (DPKIT_QUEUE_DIR under tmp_path), never in the machine's.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMALL
from test_queue import _start, _wait_for

from dpkit import run
from dpkit.benchmarks.classroom import room, simulate
from dpkit.runtime import queue as q
from dpkit.runtime.launch import forkserver_pid, launch
from dpkit.viz.run_notes import core_ranges, ran_on, ran_on_all

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process state from Linux /proc")
needs_2_cores = pytest.mark.skipif(len(q.allowed_cores()) < 2, reason="core slots need 2 or more cores to share")


@pytest.fixture
def qdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own queue folder, with the defaults (queue on, core slots)."""
    folder = tmp_path / "queue"
    monkeypatch.setenv(q.DIR_ENV, str(folder))
    for env in (q.QUEUE_ENV, q.MAX_TURN_ENV, q.SLOTS_ENV):
        monkeypatch.delenv(env, raising=False)
    return folder


def _hold_cores(cores: int | None, got: list, release: threading.Event) -> threading.Thread:
    """A thread that takes a turn for `cores` cores, appends its Turn to `got`, and holds it until `release`."""

    def hold() -> None:
        with q.machine_turn(cores=cores) as turn:
            got.append(turn)
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def _affinity(pid: int | str) -> set[int]:
    """The cores process `pid` may run on, as /proc/<pid>/status says (Cpus_allowed_list: '0-3,6')."""
    text = Path(f"/proc/{pid}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
    cores: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


# ---- the queue: slots side by side, first come first served, the whole machine ----------------------------
@needs_2_cores
def test_core_slots_are_the_default_and_run_side_by_side_on_disjoint_cores(qdir: Path) -> None:
    assert q.core_slots()
    got: list[q.Turn] = []
    release = threading.Event()
    threads = [_hold_cores(1, got, release) for _ in range(2)]
    try:
        _wait_for(lambda: len(got) == 2, 10, "two 1-core turns at once")
        a, b = got
        assert a.cores and b.cores and len(a.cores) == len(b.cores) == 1 and not set(a.cores) & set(b.cores)
        assert set(a.cores + b.cores) <= set(q.allowed_cores())
        assert {a.beside, b.beside} == {0, 1} and a.meta()["queue_cores"] == a.cores
        grants = sorted(n for n in os.listdir(qdir) if n.startswith("grant."))
        assert len(grants) == 2, "each holder says which cores it took, beside its ticket"
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert os.listdir(qdir) == []  # tickets and grant files gone


@needs_2_cores
def test_core_slots_are_first_come_first_served(qdir: Path) -> None:
    """A holds 1 core; B asks for all of them and waits; C, asking for 1 core that is free, must not pass B
    (else a stream of small runs could starve B for ever)."""
    every = len(q.allowed_cores())
    got_a: list[q.Turn] = []
    got_b: list[q.Turn] = []
    got_c: list[q.Turn] = []
    release_a, release_b, release_c = threading.Event(), threading.Event(), threading.Event()
    threads = [_hold_cores(1, got_a, release_a)]
    try:
        _wait_for(lambda: bool(got_a), 10, "A's turn")
        threads.append(_hold_cores(every, got_b, release_b))
        _wait_for(lambda: len([n for n in os.listdir(qdir) if n.startswith(q.PREFIX)]) == 2, 10, "B's ticket")
        threads.append(_hold_cores(1, got_c, release_c))
        time.sleep(1.0)
        assert not got_b and not got_c, "C passed B, or B started beside A without its cores"
        release_a.set()
        _wait_for(lambda: bool(got_b), 10, "B's turn after A")
        assert sorted(got_b[0].cores or []) == q.allowed_cores() and got_b[0].beside == 0
        time.sleep(0.5)
        assert not got_c, "C ran beside a run that holds every core"
        release_b.set()
        _wait_for(lambda: bool(got_c), 10, "C's turn after B")
    finally:
        for e in (release_a, release_b, release_c):
            e.set()
        for t in threads:
            t.join(10)


def test_a_run_needing_every_core_runs_alone_and_machine_mode_is_one_at_a_time(
    qdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With core slots, a run asking for every core (or more) holds them all and nothing starts beside it; with
    DPKIT_QUEUE_SLOTS=machine, a run asking for 1 core holds the whole machine just the same."""
    for slots, asked in (("cores", 10_000), ("cores", None), ("machine", 1)):
        monkeypatch.setenv(q.SLOTS_ENV, slots)
        got: list[q.Turn] = []
        waiting: list[q.Turn] = []
        release = threading.Event()
        thread = _hold_cores(asked, got, release)
        other = None
        try:
            _wait_for(lambda got=got: bool(got), 10, "the turn")
            assert sorted(got[0].cores or []) == q.allowed_cores()
            other = _hold_cores(1, waiting, release)
            time.sleep(0.5)
            assert not waiting, f"{slots}, {asked}: a run started beside one holding every core"
        finally:
            release.set()
            thread.join(10)
            if other is not None:
                other.join(10)
        assert len(waiting) == 1, "the run behind got its turn once the whole-machine run ended"


def test_an_unknown_slots_value_warns_and_means_cores(qdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(q.SLOTS_ENV, "rooms")
    monkeypatch.setattr(q, "_warned", set())
    with pytest.warns(UserWarning, match="DPKIT_QUEUE_SLOTS='rooms' is not allowed: choose one of cores, machine"):
        assert q.core_slots()


def test_queue_off_gives_no_cores(qdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DPKIT_QUEUE=off: no ticket, no cores, nothing pinned (the launcher then pins no rank)."""
    monkeypatch.setenv(q.QUEUE_ENV, "off")
    with q.machine_turn(cores=1) as turn:
        assert not turn.queued and turn.cores is None and turn.meta()["queue_cores"] is None
        assert not qdir.exists() or os.listdir(qdir) == []


# ---- real ranks: pinned, read back from /proc; a killed holder; clean beside each other ----------------------
@needs_2_cores
@pytest.mark.slow
def test_every_rank_and_the_forkserver_are_pinned_to_the_runs_cores(tmp_path: Path, qdir: Path) -> None:
    """Two 1-rank runs side by side (forkserver ranks): each rank's affinity, read back from /proc, is one core of its
    own; the forkserver ran on the cores of the run it was forking; an unqueued run puts it back on every core."""
    dirs = [tmp_path / f"run{i}" for i in range(2)]
    threads = []
    for d in dirs:
        d.mkdir()
        threads.append(threading.Thread(target=launch, args=("rank_targets:sleep_ranks", {"s": 4}, 1, d),
                                        kwargs={"threads_per_rank": 1, "timeout_s": 120}, daemon=True))  # fmt: skip
        threads[-1].start()
    _wait_for(lambda: all((d / "pid0").exists() for d in dirs), 120, "both runs' ranks")
    ranks = [_affinity((d / "pid0").read_text()) for d in dirs]
    server = forkserver_pid()
    assert server is not None
    on = _affinity(server)
    for t in threads:
        t.join(60)
    assert all(len(r) == 1 for r in ranks) and not ranks[0] & ranks[1], f"ranks' cores: {ranks}"
    assert on in ranks, f"the forkserver ran on {on}, not on the cores of a run it forked ({ranks})"
    (tmp_path / "off").mkdir()
    launch("rank_targets:sleep_ranks", {"s": 0}, 1, tmp_path / "off", threads_per_rank=1, timeout_s=60, queue=False)
    assert _affinity(server) == set(q.allowed_cores()), "an unqueued run's ranks would inherit another run's cores"


HOLD_ONE_CORE = """
import sys, time
from pathlib import Path
from dpkit.runtime import queue as q
with q.machine_turn(cores=1):
    Path(sys.argv[1], "holding").write_text("")
    time.sleep(120)
"""


@needs_2_cores
@pytest.mark.slow
def test_a_killed_core_holder_frees_its_cores_within_3_s(tmp_path: Path, qdir: Path) -> None:
    holder = _start(HOLD_ONE_CORE, tmp_path, home=tmp_path, name="holder", env={q.DIR_ENV: str(qdir)})
    try:
        _wait_for(lambda: (tmp_path / "holding").exists(), 60, "the holder's turn")
        got: list[q.Turn] = []
        release = threading.Event()
        thread = _hold_cores(len(q.allowed_cores()), got, release)  # needs every core: waits for the holder
        time.sleep(0.5)
        assert not got
        holder.kill()
        t0 = time.monotonic()
        _wait_for(lambda: bool(got), 3, "the cores of a holder killed with kill -9")
        assert time.monotonic() - t0 < 3
        release.set()
        thread.join(10)
    finally:
        holder.kill()
        holder.wait()


@needs_2_cores
@pytest.mark.slow
def test_two_runs_on_disjoint_cores_measure_as_each_alone(qdir: Path) -> None:
    """Two 1-rank, 1-thread runs side by side on their own cores: each step time within 15% of a run alone.
    Load guard: other programs busy on the cores (1-minute load average above cores - 1.5) make any comparison
    meaningless; the test then skips and says the load it measured."""
    busy = os.getloadavg()[0]
    if busy > len(q.allowed_cores()) - 1.5:
        pytest.skip(f"load average {busy:.1f} on {len(q.allowed_cores())} cores: not measurable beside other programs")
    cfg = SMALL.replace(threads_per_rank=1, steps=40, warmup=5, hidden=256, global_batch=64)
    run(cfg)  # warm
    alone = run(cfg).summary["step_time_s"]
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(run(cfg))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 2
    cores = [r.meta["queue_cores"] for r in results]
    assert not set(cores[0]) & set(cores[1]) and sorted(r.meta["queue_runs_beside"] for r in results) == [0, 1]
    for r in results:
        assert abs(r.summary["step_time_s"] / alone - 1) < 0.15, (r.summary["step_time_s"], alone, os.getloadavg())


# ---- the room model (dpkit bench classroom) ------------------------------------------------------------
def test_the_room_model_serial_queue_is_the_sum_of_every_run() -> None:
    """Whole-machine queue, every learner clicking at once: the first runs go in arrival order, then the second
    runs (each queued behind everyone's first), so the last answer comes after every run of the room, whatever
    the cores: 4 learners x (2 + 3) s = 20 s."""
    frame = simulate(4, 32, [(1, 2.0), (2, 3.0)], slots=False)
    assert list(frame.answer_s) == [11.0, 14.0, 17.0, 20.0]
    assert list(frame.wait_s) == [6.0, 9.0, 12.0, 15.0]


def test_the_room_model_packs_cores_first_come_first_served() -> None:
    """Core slots: runs fit side by side while cores are free; one needing every core waits for them (no passing)."""
    assert list(simulate(4, 4, [(1, 2.0)], slots=True).answer_s) == [2.0] * 4  # 4 one-core runs on 4 cores
    assert list(simulate(3, 2, [(1, 2.0)], slots=True).answer_s) == [2.0, 2.0, 4.0]
    # learner 0's second run needs both cores: it starts when learner 1's first run ends; learner 1's second waits
    frame = simulate(2, 2, [(1, 1.0), (2, 1.0)], slots=True)
    assert list(frame.answer_s) == [2.0, 3.0] and list(frame.wait_s) == [0.0, 1.0]
    assert room(frame)["worst_answer_s"] == 3.0 and room(frame)["total_wait_s"] == 1.0
    # a run asking for more cores than the machine has runs alone
    assert list(simulate(2, 2, [(8, 1.0)], slots=True).answer_s) == [1.0, 2.0]


def test_thirty_learners_on_32_cores_are_served_far_sooner_than_by_the_serial_queue() -> None:
    panel = [(1, 1.5), (1, 1.5), (2, 1.7), (2, 1.7)]
    slots = room(simulate(30, 32, panel, slots=True))
    serial = room(simulate(30, 32, panel, slots=False))
    assert serial["worst_answer_s"] == pytest.approx(30 * 6.4)
    assert slots["worst_answer_s"] * 8 <= serial["worst_answer_s"]


# ---- what a panel says -----------------------------------------------------------------------------------
def test_ran_on_says_the_cores_and_the_runs_beside() -> None:
    assert core_ranges([7, 4, 5, 6, 9]) == "4–7, 9" and core_ranges([3]) == "3"
    meta = {"queued": True, "queue_cores": [4, 5, 6, 7], "queue_runs_beside": 3, "queue_wait_s": 0.0}
    assert ran_on(meta) == "ran on cores 4–7 beside 3 other runs"
    assert ran_on({**meta, "queue_cores": [2], "queue_runs_beside": 0, "queue_wait_s": 2.04}) == (
        "ran on core 2 alone (waited 2.0 s for them)"
    )
    assert ran_on({**meta, "queue_runs_beside": 1}) == "ran on cores 4–7 beside 1 other run"
    assert ran_on({"queued": False, "queue_cores": None}).startswith("ran unqueued")
    both = ran_on_all([meta, {**meta, "queue_cores": [0], "queue_runs_beside": 1, "queue_wait_s": 1.5}])
    assert both == "2 runs on cores 0, 4–7, beside up to 3 other runs (waited 1.5 s in all)"


def test_a_real_run_records_what_ran_on_reads(qdir: Path) -> None:
    result = run(SMALL)
    meta = result.meta
    assert meta["queued"] and len(meta["queue_cores"]) == SMALL.num_processes and meta["queue_runs_beside"] == 0
    assert ran_on(meta).startswith("ran on core")


def test_a_panel_learns_where_its_runs_ran(qdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """queue.turns_taken() collects the turns a block takes (a nested turn once, an unqueued one too), so a Panel
    can print ran_on_all() under its figure without the compute functions handing their results back."""
    with q.turns_taken() as turns:
        with q.machine_turn(cores=1), q.machine_turn(cores=1):  # run() inside measured_run(): one turn
            pass
        with q.machine_turn(cores=1):
            pass
    assert len(turns) == 2 and all(t.queued and len(t.cores or []) == 1 for t in turns)
    assert ran_on_all(t.meta() for t in turns).startswith("2 runs on core")
    monkeypatch.setenv(q.QUEUE_ENV, "off")
    with q.turns_taken() as turns, q.machine_turn(cores=1):
        pass
    assert ran_on_all(t.meta() for t in turns).startswith("ran unqueued")
    with q.machine_turn(cores=1):
        pass  # outside the block: nothing collected
    assert len(turns) == 1


@needs_2_cores
@pytest.mark.slow
def test_bench_classroom_quick_measures_both_queues_and_predicts(tmp_path: Path) -> None:
    """`dpkit bench classroom --quick`: 2 learner processes click a 2-run panel twice (core slots, whole machine);
    every run is recorded with its cores, and the rooms measured here and predicted elsewhere are written."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "dpkit.cli", "bench", "classroom", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "classroom_runs.csv")
    assert len(runs) == 2 * 2 * 2 and set(runs.slots) == {"cores", "machine"}
    machine = runs[runs.slots == "machine"]
    assert (machine.runs_beside == 0).all(), "the whole-machine queue ran a run beside another"
    summary = pd.read_csv(tmp_path / "classroom.csv")
    assert set(zip(summary.source, summary.learners, summary.cores, strict=True)) >= {
        ("measured", 2, 2),
        ("predicted", 30, 32),
        ("predicted", 30, 64),
    }
    assert "predicted, 30 learners on 32 cores" in done.stdout and (tmp_path / "classroom.png").exists()

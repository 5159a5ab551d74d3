"""Runs on one machine take turns for its cores (issues 16, 31): runs from several processes at once overlap only on
disjoint cores (on this 2-core machine a 2-rank run needs both, so they take turns), a killed holder does not block
the others, arrival order is kept, DPKIT_QUEUE=off lets runs overlap, and the "runs ahead" callback counts down to
the Panel's status. Core slots themselves (runs side by side, pinning, no starvation): tests/test_core_slots.py.

Every test queues in its own folder (DPKIT_QUEUE_DIR under tmp_path), never in the machine's. Rank start
and end times are read from CLOCK_MONOTONIC, which every process on the machine shares.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMALL, alive
from matplotlib.figure import Figure

from dpkit import run
from dpkit.runtime import queue as q
from dpkit.runtime.launch import launch

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process start times from Linux /proc")


@pytest.fixture
def qdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own queue folder, for this process and the processes it starts."""
    folder = tmp_path / "queue"
    monkeypatch.setenv(q.DIR_ENV, str(folder))
    monkeypatch.delenv(q.QUEUE_ENV, raising=False)
    monkeypatch.delenv(q.MAX_TURN_ENV, raising=False)
    monkeypatch.delenv(q.SLOTS_ENV, raising=False)  # the default: core slots
    return folder


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.01)


def _start(script: str, *args: object, home: Path, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A caller process running `script` with tests/ importable; its output in home/<name>.out and .err."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    full = {**os.environ, "PYTHONPATH": path, **(env or {})}
    with open(home / f"{name}.out", "w") as out, open(home / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=full, stdout=out, stderr=err)


def _finish(procs: list[subprocess.Popen], home: Path, names: list[str], timeout_s: float = 120) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout_s)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for p, name in zip(procs, names, strict=True):
        assert p.returncode == 0, (home / f"{name}.err").read_text()


def _tickets(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(q.PREFIX)) if folder.exists() else []


# ---- 1. four processes at once: no two runs overlap, none is lost ----------------------------------
CALLER = """
import sys, threading, time
from pathlib import Path
from dpkit.runtime.launch import launch

log, me, runs, sleep_s, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
Path(log, f"ready-{me}").write_text("")
while not go.exists():
    time.sleep(0.005)

def one(i):  # fork: the caller has torch already, so a run starts in ~0.1 s without a forkserver
    payload = {"s": sleep_s, "log": str(log), "run": f"{me}.{i}"}
    launch("rank_targets:record_span", payload, 2, log, threads_per_rank=1, timeout_s=60, start_method="fork")

threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]  # runs of one process take turns too
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def _runs_at_once(home: Path, procs: int, runs_each: int, sleep_s: float, env: dict[str, str]) -> list:
    """`procs` processes start `runs_each` 2-rank runs each at the same moment; (start, end, cores) of every run."""
    log, go = home / "log", home / "go"
    log.mkdir()
    names = [f"caller{p}" for p in range(procs)]
    callers = [_start(CALLER, log, p, runs_each, sleep_s, go, home=home, name=names[p], env=env) for p in range(procs)]
    try:
        _wait_for(lambda: all((log / f"ready-{p}").exists() for p in range(procs)), 60, "the callers to import dpkit")
    finally:
        go.write_text("")  # on failure too: the callers must not wait forever
    _finish(callers, home, names)
    spans = []
    for p in range(procs):
        for i in range(runs_each):
            ranks = [json.loads((log / f"{p}.{i}-rank{r}.json").read_text()) for r in range(2)]  # none lost
            cores = frozenset(c for r in ranks for c in r["cores"] or ())
            spans.append((min(r["start"] for r in ranks), max(r["end"] for r in ranks), cores))
    return sorted(spans, key=lambda span: span[:2])


def _overlapping(spans: list) -> list:
    """Pairs of runs (start, end, cores) that ran at the same time."""
    return [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1] and a[0] < b[1]]


@pytest.mark.slow
@pytest.mark.parametrize("slots", ["cores", "machine"])
def test_runs_from_four_processes_take_turns(tmp_path: Path, qdir: Path, slots: str) -> None:
    """4 processes x 2 runs (2 threads each) of 2 ranks x 1 thread, all started at once: every rank of every run
    ran, pinned to a core of its own; runs that overlapped held disjoint cores (core slots; on 2 cores none can
    overlap), and with DPKIT_QUEUE_SLOTS=machine each run's ranks began only after the run before had ended."""
    spans = _runs_at_once(tmp_path, 4, 2, 0.3, {q.DIR_ENV: str(qdir), q.SLOTS_ENV: slots})
    assert len(spans) == 8
    overlaps = _overlapping(spans)
    if slots == "machine" or len(q.allowed_cores()) < 4:
        assert not overlaps, f"runs overlapped (start, end on CLOCK_MONOTONIC, cores): {overlaps}"
    assert all(not a[2] & b[2] for a, b in overlaps), f"runs side by side shared cores: {overlaps}"
    if slots == "cores":
        assert all(len(span[2]) == 2 for span in spans), f"each run: 2 ranks on a core each: {spans}"
    assert _tickets(qdir) == [], "a ticket was left in the queue"


@pytest.mark.slow
def test_queue_off_lets_runs_overlap(tmp_path: Path, qdir: Path) -> None:
    """The same harness with DPKIT_QUEUE=off: runs started at once do overlap (so the test above can fail)."""
    spans = _runs_at_once(tmp_path, 2, 1, 1.0, {q.DIR_ENV: str(qdir), q.QUEUE_ENV: "off"})
    assert _overlapping(spans), f"no two runs overlapped: {spans}"
    assert all(span[2] == frozenset(q.allowed_cores()) for span in spans), f"unqueued ranks are not pinned: {spans}"
    assert not qdir.exists() or _tickets(qdir) == []


@pytest.mark.slow
@pytest.mark.parametrize("queue", ["on", "off"])
def test_launches_from_threads_take_turns_unless_off(
    tmp_path: Path, qdir: Path, monkeypatch: pytest.MonkeyPatch, queue: str
) -> None:
    """Two 2-rank launch() calls from two threads of this process at once: one after the other (on fewer than 4
    cores; on more, side by side on disjoint cores), or (off) side by side."""
    monkeypatch.setenv(q.QUEUE_ENV, queue)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            payload = {"s": 0.8, "log": str(tmp_path), "run": i}
            launch("rank_targets:record_span", payload, 2, tmp_path, threads_per_rank=1, timeout_s=60)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    ranks = [[json.loads((tmp_path / f"{i}-rank{r}.json").read_text()) for r in range(2)] for i in range(2)]
    spans = sorted(
        (min(r["start"] for r in run), max(r["end"] for r in run), {c for r in run for c in r["cores"]}) for run in ranks
    )
    (a, b) = spans
    if queue == "off" or len(q.allowed_cores()) < 4:
        assert (b[0] < a[1]) == (queue == "off"), f"runs (start, end, cores): {a}, {b}"
    if queue == "on":
        assert b[0] >= a[1] or not a[2] & b[2], f"runs side by side shared cores: {a}, {b}"
    assert _tickets(qdir) == []


# ---- 2. a holder killed with kill -9 blocks nobody --------------------------------------------------
HOLDER = """
import os, sys
from dpkit.runtime.launch import launch
threads = max(1, len(os.sched_getaffinity(0)) // 2)  # every core: the waiter's run cannot start beside it
launch("rank_targets:sleep_ranks", {"s": 120}, 2, sys.argv[1], threads_per_rank=threads, timeout_s=300, start_method="fork")
"""
WAITER = """
import json, sys, time
from pathlib import Path
from dpkit.runtime.launch import launch
from dpkit.runtime.queue import reporting

log = Path(sys.argv[1])
def report(ahead):
    with open(log / "ahead.jsonl", "a") as f:
        f.write(json.dumps([ahead, time.clock_gettime(time.CLOCK_MONOTONIC)]) + "\\n")

with reporting(report):
    launch("rank_targets:record_span", {"s": 0.1, "log": str(log), "run": "w"}, 2, log, threads_per_rank=1, timeout_s=60,
           start_method="fork")
"""


@pytest.mark.slow
def test_a_killed_holder_blocks_the_others_for_seconds_at_most(tmp_path: Path, qdir: Path) -> None:
    """kill -9 a caller whose ranks hold the turn (sleeping 120 s): the run waiting behind it starts within 3 s."""
    held, log = tmp_path / "held", tmp_path / "log"
    held.mkdir()
    log.mkdir()
    env = {q.DIR_ENV: str(qdir)}
    holder = _start(HOLDER, held, home=tmp_path, name="holder", env=env)
    waiter = None
    try:
        _wait_for(
            lambda: all((held / f"pid{r}").exists() for r in range(2)) or holder.poll() is not None, 60, "the holder's ranks"
        )
        assert holder.poll() is None, (tmp_path / "holder.err").read_text()
        waiter = _start(WAITER, log, home=tmp_path, name="waiter", env=env)
        _wait_for(lambda: (log / "ahead.jsonl").exists() or waiter.poll() is not None, 60, "the waiter to queue")
        time.sleep(0.5)  # it keeps waiting: the holder's turn is not over
        assert not (log / "w-rank0.json").exists(), "the waiter ran while the holder held the turn"
        killed_at = time.clock_gettime(time.CLOCK_MONOTONIC)
        holder.kill()
        holder.wait()
        _finish([waiter], tmp_path, ["waiter"], timeout_s=60)
    finally:
        for p in (holder, waiter):
            if p is not None:
                p.kill()
                p.wait()
    reports = [json.loads(line) for line in (log / "ahead.jsonl").read_text().splitlines()]
    assert [a for a, _ in reports] == [1, 0], reports
    started = json.loads((log / "w-rank0.json").read_text())["start"]
    assert reports[-1][1] - killed_at < 1.0, "the turn passed on more than a second after the holder died"
    assert started - killed_at < 3.0, f"the waiter's ranks began {started - killed_at:.1f} s after the kill"
    pids = [int((held / f"pid{r}").read_text()) for r in range(2)]
    _wait_for(lambda: not any(alive(p) for p in pids), 10, "the killed holder's ranks to exit")
    assert _tickets(qdir) == []


# ---- 3. first come, first served ------------------------------------------------------------------
# The queue module imports nothing from dpkit: these processes load it alone (no torch), so six start at once.
QUEUE_ONLY = f"""
import importlib.util, json, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("dpkit_queue", {str(Path(q.__file__))!r})
q = importlib.util.module_from_spec(spec)
sys.modules["dpkit_queue"] = q
spec.loader.exec_module(q)
"""
FIFO_HOLDER = (
    QUEUE_ONLY
    + """
home = Path(sys.argv[1])
with q.machine_turn():
    (home / "holding").write_text("")
    while not (home / "release").exists():
        time.sleep(0.01)
"""
)
FIFO_WAITER = (
    QUEUE_ONLY
    + """
home, me = Path(sys.argv[1]), sys.argv[2]
reports = []
while not (home / f"go-{me}").exists():
    time.sleep(0.005)
with q.machine_turn(reports.append) as turn:
    got = time.clock_gettime(time.CLOCK_MONOTONIC)
    time.sleep(0.05)
(home / f"turn-{me}.json").write_text(json.dumps({"at": got, "reports": reports, "ahead": turn.ahead_at_start}))
"""
)


def test_arrival_order_is_kept_and_the_count_goes_down(tmp_path: Path, qdir: Path) -> None:
    """5 runs queue one after another behind a holder: they get the machine in the order they came, each
    first told it has (1 + those before it) ahead, then fewer and fewer, down to 0."""
    env = {q.DIR_ENV: str(qdir)}
    n = 5
    names = ["holder"] + [f"waiter{i}" for i in range(n)]
    procs = [_start(FIFO_HOLDER, tmp_path, home=tmp_path, name="holder", env=env)]
    procs += [_start(FIFO_WAITER, tmp_path, i, home=tmp_path, name=f"waiter{i}", env=env) for i in range(n)]
    try:
        _wait_for(lambda: (tmp_path / "holding").exists(), 30, "the holder's turn")
        for i in range(n):  # waiter i arrives once waiter i-1's ticket is in place
            (tmp_path / f"go-{i}").write_text("")
            _wait_for(lambda i=i: len(_tickets(qdir)) == i + 2, 30, f"waiter {i}'s ticket")
    finally:
        (tmp_path / "release").write_text("")
        for i in range(n):
            (tmp_path / f"go-{i}").write_text("")
    _finish(procs, tmp_path, names, timeout_s=60)
    turns = [json.loads((tmp_path / f"turn-{i}.json").read_text()) for i in range(n)]
    order = sorted(range(n), key=lambda i: turns[i]["at"])
    assert order == list(range(n)), f"turns went to waiters {order}, in arrival order 0..{n - 1}"
    for i, t in enumerate(turns):
        assert t["ahead"] == i + 1
        r = t["reports"]
        assert r[0] == i + 1 and r[-1] == 0 and all(a > b for a, b in zip(r, r[1:], strict=False)), f"waiter {i}: {r}"
    assert _tickets(qdir) == []


# ---- 4. in one process: threads, nesting, forged tickets, an endless turn, the folder ----------------
def _hold_in_thread(seconds: float | None = None) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread that takes the turn and keeps it until `release` is set (or `seconds` pass)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with q.machine_turn():
            holding.set()
            release.wait(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(10)
    return thread, holding, release


def _take_turn(within_s: float = 10, **kwargs) -> tuple[q.Turn, list[tuple[int, float]], float]:
    """machine_turn(**kwargs) on a helper thread, taken and given back at once: (the Turn, the (ahead, when)
    reports, seconds waited). A turn that does not come within `within_s` fails the test instead of hanging it."""
    out: dict = {}
    reports: list[tuple[int, float]] = []

    def take() -> None:
        t0 = time.monotonic()
        with q.machine_turn(lambda ahead: reports.append((ahead, time.monotonic())), **kwargs) as turn:
            out.update(turn=turn, waited=time.monotonic() - t0)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(within_s)
    assert "turn" in out, f"no turn within {within_s:g} s; runs ahead reported: {reports}"
    thread.join(5)
    return out["turn"], reports, out["waited"]


def test_threads_take_turns_and_a_nested_turn_is_the_same(qdir: Path) -> None:
    spans: list[tuple[float, float]] = []

    def one() -> None:
        with q.machine_turn() as outer:
            start = time.monotonic()
            with q.machine_turn() as inner:  # run() inside measured_run(): no second ticket, no deadlock
                assert inner is outer and len(_tickets(qdir)) <= 4
            time.sleep(0.1)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    spans.sort()
    assert len(spans) == 4
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert _tickets(qdir) == []


def test_forged_and_dead_tickets_do_not_block(qdir: Path) -> None:
    """Tickets ahead of ours that nobody locks (pid 1 claimed), that a lock keeps but whose process died or
    whose pid was reused, a symlink and a FIFO under ticket names: none is waited for."""
    qdir.mkdir(mode=0o700)
    ns = os.readlink("/proc/self/ns/pid")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (qdir / f"{q.PREFIX}0").write_text(json.dumps({"pid": 1, "start": q._proc_start(1), "pidns": ns}))
    locked = []
    for name, pid, start in [("1", dead.pid, 12345), ("2", os.getpid(), q._proc_start(os.getpid()) + 1)]:
        path = qdir / f"{q.PREFIX}{name}"
        path.write_text(json.dumps({"pid": pid, "start": start, "pidns": ns}))
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by this live process, as a leftover child would hold it
        locked.append(fd)
    os.symlink("/etc/passwd", qdir / f"{q.PREFIX}3")
    os.mkfifo(qdir / f"{q.PREFIX}4")
    try:
        turn, reports, _ = _take_turn(within_s=2)
        assert turn.queued and turn.ahead_at_start == 0 and [a for a, _ in reports] == [0]
        assert not (qdir / f"{q.PREFIX}0").exists(), "a dead ticket of our own user is removed"
        garbage = qdir / f"{q.PREFIX}5"
        garbage.write_text("[" * 4000)  # locked, unreadable: a turn like any other, and no crash in the waiters
        locked.append(os.open(garbage, os.O_RDONLY))
        fcntl.flock(locked[-1], fcntl.LOCK_EX)
        assert q._alive(garbage, garbage.stat(), ns) is True
    finally:
        for fd in locked:
            os.close(fd)


def test_a_locked_ticket_of_a_live_process_is_waited_for(qdir: Path) -> None:
    """The other side of the test above: a live, locked ticket ahead is a run ahead (so that test can fail)."""
    thread, _, release = _hold_in_thread()
    threading.Timer(0.5, release.set).start()
    turn, reports, waited = _take_turn()
    thread.join(10)
    assert turn.ahead_at_start == 1 and [a for a, _ in reports] == [1, 0] and 0.4 < waited < 5


def test_a_turn_past_the_limit_is_not_waited_for(qdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder that never ends its turn (a stopped kernel, or on purpose) is passed after DPKIT_QUEUE_MAX_TURN_S."""
    monkeypatch.setenv(q.MAX_TURN_ENV, "0.5")
    thread, _, release = _hold_in_thread(seconds=30)
    try:
        with pytest.warns(UserWarning, match="held this machine for over 0.5 s"):
            turn, _, waited = _take_turn()
        assert turn.queued and 0.4 < waited < 5
    finally:
        release.set()
        thread.join(10)


def test_off_and_queue_false_do_not_wait(qdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    thread, _, release = _hold_in_thread(seconds=30)
    try:
        turn, reports, _ = _take_turn(within_s=1, queue=False)
        assert not turn.queued and reports == [] and len(_tickets(qdir)) == 1
        monkeypatch.setenv(q.QUEUE_ENV, "off")
        turn, reports, _ = _take_turn(within_s=1)
        assert not turn.queued and reports == [] and len(_tickets(qdir)) == 1
    finally:
        release.set()
        thread.join(10)


def test_the_folder_is_shared_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default folder is made mode 1777 whatever the umask; a symlink in its place, or a folder others
    may write to without the sticky bit, is refused with a warning, and runs then do not queue."""
    monkeypatch.delenv(q.DIR_ENV, raising=False)
    monkeypatch.delenv(q.QUEUE_ENV, raising=False)
    monkeypatch.setattr(q, "DEFAULT_DIR", tmp_path / "shared")
    monkeypatch.setattr(q, "_warned", set())
    old = os.umask(0o077)
    try:
        assert q.queue_dir() == tmp_path / "shared"
    finally:
        os.umask(old)
    assert (tmp_path / "shared").stat().st_mode & 0o7777 == 0o1777
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(q, "DEFAULT_DIR", tmp_path / "link")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match="symbolic link"):
        assert q.queue_dir() is None
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv(q.DIR_ENV, str(open_dir))
    with pytest.warns(UserWarning, match="not sticky"), q.machine_turn() as turn:
        assert not turn.queued
    assert os.listdir(open_dir) == []


# ---- 5. what a learner sees: the Panel's status, the result's meta ---------------------------------
def test_panel_says_how_many_runs_are_ahead(qdir: Path) -> None:
    from dpkit.viz.widgets import Panel

    def compute(progress) -> tuple[Figure, pd.DataFrame]:
        progress(0, 1, "one run")
        with q.machine_turn():
            pass
        progress(1, 1, "done")
        return Figure(), pd.DataFrame({"x": [1]})

    panel = Panel("queue", {}, compute)
    seen: list[str] = []
    panel.status.observe(lambda change: seen.append(change["new"]), "value")
    thread, _, release = _hold_in_thread()
    threading.Timer(1.0, release.set).start()
    panel.run()
    thread.join(10)
    assert panel.error is None
    assert seen == ["running", "0/1 runs: one run", "waiting: 1 run ahead of you", "0/1 runs: one run", "1/1 runs"], seen


def test_run_records_its_wait_and_the_load(qdir: Path) -> None:
    thread, _, release = _hold_in_thread()
    threading.Timer(1.0, release.set).start()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="dpkit: ")  # the queue folder is usable: nothing to warn about
        result = run(SMALL)
    thread.join(10)
    meta = result.meta
    assert meta["queued"] is True and meta["queue_ahead_at_start"] == 1
    assert 0.5 < meta["queue_wait_s"] < 30
    assert len(meta["loadavg_at_start"]) == 3 and len(meta["loadavg_at_end"]) == 3
    assert _tickets(qdir) == []


def test_a_holder_killed_with_kill_9_passes_the_turn_at_once(tmp_path: Path, qdir: Path) -> None:
    """The queue alone (the test above does it with ranks): kill -9 the process holding the turn, and the
    one waiting behind it has the turn within a second."""
    holder = _start(FIFO_HOLDER, tmp_path, home=tmp_path, name="holder", env={q.DIR_ENV: str(qdir)})
    try:
        _wait_for(lambda: (tmp_path / "holding").exists() or holder.poll() is not None, 30, "the holder's turn")
        assert holder.poll() is None, (tmp_path / "holder.err").read_text()
        threading.Timer(0.5, holder.kill).start()
        _, reports, waited = _take_turn()
        killed = holder.wait(10)
    finally:
        holder.kill()
        holder.wait()
    assert killed == -signal.SIGKILL
    assert [a for a, _ in reports] == [1, 0]
    assert 0.3 < waited < 1.5, f"the turn came {waited:.2f} s after queueing (the holder was killed after 0.5 s)"
    assert _tickets(qdir) == []


def test_killing_a_waiter_frees_its_place(tmp_path: Path, qdir: Path) -> None:
    """A process killed while it waits leaves a ticket nobody locks: those behind it do not wait for it."""
    thread, _, release = _hold_in_thread(seconds=30)
    waiter = _start(QUEUE_ONLY + "with q.machine_turn():\n    pass\n", home=tmp_path, name="waiter", env={q.DIR_ENV: str(qdir)})
    try:
        _wait_for(lambda: len(_tickets(qdir)) == 2, 30, "the waiter's ticket")
        waiter.send_signal(signal.SIGKILL)
        waiter.wait()
        release.set()
        thread.join(10)
        turn, _, _ = _take_turn(within_s=1)
        assert turn.ahead_at_start == 0
    finally:
        release.set()
        waiter.kill()
        waiter.wait()
    assert _tickets(qdir) == []

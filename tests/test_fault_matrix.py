"""The fault matrix of issue 29, one test per row, each with its expected outcome.

- a shared server: a queue folder of another user is refused; one kernel counts once however many tickets it
  holds; a stopped holder loses its turn after DPKIT_QUEUE_STOPPED_S; a second user (created here when running
  as root) can neither delete our ticket nor jump ahead of it;
- no folder is left after kill -9 of the caller (mid-run: the forkserver's pymp-*; in the queue: dpkit-run-*);
- Ctrl-C to the process group prints one line, leaves nothing; `dpkit run` exits 130;
- out-of-range timeout_s and runs that cannot fit in memory are ValueErrors naming the field, before any process;
- `dpkit run --out /proc/...` is refused (exit 2) before training.

Multi-second rows (processes started, killed, interrupted) are in the slow tier.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import alive

from dpkit.config import RunConfig
from dpkit.runtime import memory_fit
from dpkit.runtime import queue as q

ROOT = Path(__file__).resolve().parent.parent
LINUX = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process state from Linux /proc")


@pytest.fixture
def qdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "queue"
    monkeypatch.setenv(q.DIR_ENV, str(folder))
    for env in (q.QUEUE_ENV, q.MAX_TURN_ENV, q.STOPPED_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(q, "_warned", set())
    return folder


def _take_turn(within_s: float = 20) -> tuple[q.Turn, float]:
    """machine_turn() on a helper thread, taken and given back: (the Turn, seconds waited); fails rather than hangs."""
    out: dict = {}

    def take() -> None:
        t0 = time.monotonic()
        with q.machine_turn() as turn:
            out.update(turn=turn, waited=time.monotonic() - t0)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(within_s)
    assert "turn" in out, f"no turn within {within_s:g} s"
    return out["turn"], out["waited"]


HOLD_TICKETS = """
import os, sys, time
from pathlib import Path
from dpkit.runtime import queue as q
folder = Path(sys.argv[1])
tickets = [q._Ticket(folder) for _ in range(int(sys.argv[2]))]  # one process, several locked tickets
(folder.parent / "ready").write_text("")
time.sleep(120)
"""


def _start_holder(tmp_path: Path, qdir: Path, tickets: int) -> subprocess.Popen:
    qdir.mkdir(mode=0o1777, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_TICKETS, str(qdir), str(tickets)], env=env)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert holder.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    return holder


# ---- 1. a shared server ---------------------------------------------------------------------------
@LINUX
@pytest.mark.slow
def test_one_kernel_with_six_tickets_delays_others_one_turn(tmp_path: Path, qdir: Path, monkeypatch) -> None:
    """Another process holding 6 locked tickets ahead counts as 1 run ahead, and its turn (1 s here) is bounded
    once, not six times."""
    monkeypatch.setenv(q.MAX_TURN_ENV, "1")
    holder = _start_holder(tmp_path, qdir, tickets=6)
    try:
        with pytest.warns(UserWarning, match="held this machine for over 1 s"):
            turn, waited = _take_turn()
        assert turn.queued and turn.ahead_at_start == 1
        assert 0.9 < waited < 4, f"waited {waited:.1f} s behind one kernel with a 1 s turn (6 turns would be 6 s)"
    finally:
        holder.kill()
        holder.wait()


@LINUX
@pytest.mark.slow
def test_a_stopped_holder_loses_its_turn(tmp_path: Path, qdir: Path, monkeypatch) -> None:
    """A holder stopped with SIGSTOP is passed after DPKIT_QUEUE_STOPPED_S (1 s here), not the 30-minute turn."""
    monkeypatch.setenv(q.STOPPED_ENV, "1")
    holder = _start_holder(tmp_path, qdir, tickets=1)
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.warns(UserWarning, match="has been stopped for over 1 s"):
            turn, waited = _take_turn()
        assert turn.queued and turn.ahead_at_start == 1 and 0.9 < waited < 5
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()


@LINUX
@pytest.mark.slow  # starts a Python process
def test_a_running_holder_is_still_waited_for(tmp_path: Path, qdir: Path, monkeypatch) -> None:
    """The other side of the test above: a holder that is not stopped keeps its turn."""
    monkeypatch.setenv(q.STOPPED_ENV, "0.2")
    holder = _start_holder(tmp_path, qdir, tickets=1)
    try:
        ticket = q._Ticket(qdir)
        try:
            waiting = q._Queue(ticket)
            assert waiting.ahead() == 1
            time.sleep(0.5)
            assert waiting.ahead() == 1
        finally:
            ticket.release()
    finally:
        holder.kill()
        holder.wait()


@contextlib.contextmanager
def _other_user():
    """A user created for this test (root only): its (uid, gid); deleted after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user (useradd) and act as it; run the suite as root to cover it")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel not installed: cannot create a second user")
    name = f"dpkit{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        user = pwd.getpwnam(name)
        yield user.pw_uid, user.pw_gid
    finally:
        subprocess.run(["userdel", name], check=False)


def _as_user(uid: int, gid: int, job) -> object:
    """Run job() in a forked child that has become user uid; its return value (JSON) or the error it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the other user, do the job, report, exit without any teardown
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = {"ok": job()}
        except BaseException as exc:  # noqa: BLE001 -- reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = json.loads(f.read() or '{"error": "no answer"}')
    os.waitpid(pid, 0)
    return out


@LINUX
def test_a_queue_folder_of_another_user_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A 1777 folder another user made first (the attack: they could delete our tickets) is not used: a warning
    that says to set DPKIT_QUEUE_DIR, and the run goes unqueued (nobody can hold it back)."""
    with _other_user() as (uid, gid):
        folder = tmp_path / "theirs"
        folder.mkdir()
        os.chown(folder, uid, gid)
        folder.chmod(0o1777)
        monkeypatch.setenv(q.DIR_ENV, str(folder))
        monkeypatch.setattr(q, "_warned", set())
        with pytest.warns(UserWarning, match=rf"belongs to another user \(uid {uid}\).*set {q.DIR_ENV}"):
            turn, _ = _take_turn(within_s=2)
        assert not turn.queued and os.listdir(folder) == []


@LINUX
@pytest.mark.slow
def test_two_users_share_a_queue_neither_can_delete_or_jump(monkeypatch) -> None:
    """Root's 1777 folder, two users: the other user cannot delete our ticket, and its ticket, made after ours,
    is behind ours; ours, made after theirs, waits for theirs (one turn) and then runs."""
    with _other_user() as (uid, gid):
        base = Path(tempfile.mkdtemp(prefix="dpkit-two-users-"))
        try:
            base.chmod(0o755)
            folder = base / "queue"
            monkeypatch.setenv(q.DIR_ENV, str(folder))
            monkeypatch.setattr(q, "_warned", set())
            assert q.queue_dir() == folder and folder.stat().st_mode & 0o7777 == 0o1777
            ours = q._Ticket(folder)

            def attack() -> dict:
                try:
                    os.unlink(folder / ours.name)
                    deleted = True
                except PermissionError:
                    deleted = False
                theirs = q._Ticket(folder)
                ahead = q._Queue(theirs).ahead()
                theirs.release()
                return {"deleted": deleted, "ahead": ahead}

            got = _as_user(uid, gid, attack)
            assert got == {"ok": {"deleted": False, "ahead": 1}}, got
            assert ours.still_there()
            ours.release()

            # now they hold a turn (a child of theirs, alive 1.5 s), and we wait behind it
            def hold() -> bool:
                ticket = q._Ticket(folder)
                time.sleep(1.5)
                ticket.release()
                return True

            holder = threading.Thread(target=_as_user, args=(uid, gid, hold), daemon=True)
            holder.start()
            deadline = time.monotonic() + 10
            while not [n for n in os.listdir(folder) if n.startswith(q.PREFIX)]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            turn, waited = _take_turn()
            holder.join(10)
            assert turn.queued and turn.ahead_at_start == 1 and 0.5 < waited < 10
        finally:
            shutil.rmtree(base, ignore_errors=True)


# ---- 4. validation before any process starts --------------------------------------------------------
@pytest.mark.parametrize("value", [86401, 1e10, 1e300])
def test_timeout_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"RunConfig.timeout_s=.* not allowed: .*> 0 and <= 86400 \(one day\)"):
        RunConfig(timeout_s=value)


def test_a_day_is_allowed() -> None:
    assert RunConfig(timeout_s=86400).timeout_s == 86400


def test_a_run_that_cannot_fit_is_refused_before_any_process(monkeypatch) -> None:
    """hidden=20000 is 48 GiB of parameters: refused with the need and what is there; with freeze it is a config
    (model_layout allocates nothing), and refused the same way. The override lets it through the check."""
    from dpkit import run

    monkeypatch.delenv(memory_fit.SKIP_ENV, raising=False)
    monkeypatch.setattr(memory_fit, "available_bytes", lambda: 8 * 2**30)
    started = []
    monkeypatch.setattr("dpkit.api.launch", lambda *a, **k: started.append(a))
    for cfg in (RunConfig(hidden=20000), RunConfig(hidden=20000, freeze=("block0",))):
        with pytest.raises(ValueError, match=r"hidden=20000.*does not fit.*need \d+\.\d GiB.*8\.0 GiB is available"):
            run(cfg, queue=False)
    assert started == []
    small = RunConfig(hidden=16, steps=2, warmup=0)
    memory_fit.check_fits(small)  # a small run fits
    monkeypatch.setenv(memory_fit.SKIP_ENV, "1")
    memory_fit.check_fits(RunConfig(hidden=20000))  # the override


def test_predicted_need_grows_with_processes_and_model() -> None:
    one = memory_fit.predicted_bytes(RunConfig(hidden=256))
    assert memory_fit.predicted_bytes(RunConfig(hidden=256, world_size=2, parallelism="data")) > one
    assert memory_fit.predicted_bytes(RunConfig(hidden=512)) > one
    assert memory_fit.available_bytes() is None or memory_fit.available_bytes() > 0


# ---- 5. unwritable --out ------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["/proc/nope/x", "/proc/x", "/sys/x"])
def test_out_under_proc_is_refused_before_training(out: str, capsys, monkeypatch) -> None:
    from dpkit import cli

    started = []
    monkeypatch.setattr("dpkit.api.launch", lambda *a, **k: started.append(a))
    assert cli.main(["run", "--steps", "2", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dpkit: error: --out {out} cannot be created")
    assert started == []


def test_out_probe_leaves_nothing(tmp_path: Path) -> None:
    from dpkit.cli import check_out

    assert check_out(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_out(tmp_path) == tmp_path
    assert os.listdir(tmp_path) == []


# ---- 2, 3. kill -9 and Ctrl-C of the caller ------------------------------------------------------------
def _leftovers(tmp: Path) -> list[str]:
    return sorted(n for n in os.listdir(tmp) if n.startswith(("pymp-", "dpkit-run-", "dpkit-mp-")))


CALLER = """
import sys
from pathlib import Path
from dpkit import RunConfig, run
Path(sys.argv[1], "started").write_text("")
run(RunConfig(parallelism="data", world_size=2, steps=2000, warmup=0, hidden=16, global_batch=8, timeout_s=120), queue=sys.argv[2] == "1")
"""


def _caller(tmp: Path, queued: bool, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), q.DIR_ENV: str(tmp / "queue")}
    return subprocess.Popen(
        [sys.executable, "-c", CALLER, str(tmp), "1" if queued else "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
    return out


def _wait_until(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


@LINUX
@pytest.mark.slow
def test_kill_9_mid_run_leaves_no_folder(tmp_path: Path) -> None:
    caller = _caller(tmp_path, queued=False)
    try:
        assert _wait_until(lambda: any(_children_of(c) for c in _children_of(caller.pid)), 120), "no rank started"
        time.sleep(2)  # the ranks train
        caller.kill()
        caller.wait()
        assert _wait_until(lambda: _leftovers(tmp_path) == [], 15), _leftovers(tmp_path)
    finally:
        caller.kill()
        caller.wait()


@LINUX
@pytest.mark.slow
def test_kill_9_while_waiting_in_the_queue_leaves_no_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(q.DIR_ENV, str(tmp_path / "queue"))
    with q.machine_turn():  # we hold the turn: the caller waits behind us
        caller = _caller(tmp_path, queued=True)
        try:
            assert _wait_until(lambda: len([n for n in os.listdir(tmp_path / "queue") if n.startswith(q.PREFIX)]) == 2, 90)
            time.sleep(0.5)
            assert _leftovers(tmp_path) == [], "the run's folder exists only once its turn came"
            caller.kill()
            caller.wait()
            time.sleep(0.5)
            assert _leftovers(tmp_path) == []
        finally:
            caller.kill()
            caller.wait()


@LINUX
@pytest.mark.slow
@pytest.mark.parametrize("phase", ["cold", "warm"])
def test_ctrl_c_to_the_process_group_prints_one_line(tmp_path: Path, phase: str) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C) while the forkserver starts (cold: as soon as the
    caller has a child) or mid-run (warm: the ranks train): no traceback from the caller, a rank or the
    forkserver, one line, exit 130; nothing left running, no folder left. (Ctrl-C while Python is still
    importing dpkit, before main() runs, is Python's own KeyboardInterrupt: not covered.)"""
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom dpkit.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path), "DPKIT_QUEUE": "off"}
    args = ["run", "--parallelism", "data", "--world-size", "2", "--steps", "3000", "--warmup", "0", "--hidden", "16"]
    caller = subprocess.Popen(
        [sys.executable, str(script), *args, "--global-batch", "8", "--out", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if phase == "cold":
            assert _wait_until(lambda: _children_of(caller.pid), 120), "no child process started"
        else:
            assert _wait_until(lambda: any(_children_of(c) for c in _children_of(caller.pid)), 120), "no rank started"
            time.sleep(1.0)
        os.killpg(caller.pid, signal.SIGINT)
        _, err = caller.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(caller.pid, signal.SIGKILL)
        caller.wait()
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert caller.returncode == 130, (caller.returncode, err)
    assert _wait_until(lambda: not _group_alive(caller.pid), 10), "a process of the group survived"
    assert _wait_until(lambda: _leftovers(tmp_path) == [], 10), _leftovers(tmp_path)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and alive(int(entry)):
                    return True
    return False


# ---- 6. the exercise checker cannot be escaped ---------------------------------------------------------
# Learner functions: module-level, self-contained (check() sends their source text to the ranks).
def schedule_that_spins(kind, m, p, s):
    while True:
        pass


def schedule_that_exits(kind, m, p, s):
    import os

    os._exit(0)


def ring_every_rank_exits(net, t):
    import os

    os._exit(0)


def ring_rank_1_exits(net, t):
    import os

    if net.rank == 1:
        os._exit(3)
    buf = torch.empty_like(t)
    net.send(t, 1)
    net.recv(buf, 1)


def ring_rank_1_exits_quietly(net, t):
    import os

    if net.rank == 1:
        os._exit(0)
    buf = torch.empty_like(t)
    net.recv(buf, 1)


def ring_that_forks_a_child(net, t):
    import os
    import time

    if os.fork() == 0:
        time.sleep(300)
        os._exit(0)
    with open(f"/tmp/dpkit-fault-child-{os.getpid()}", "w") as f:
        f.write("")
    raise RuntimeError("gave up after forking")


def ring_from_the_wrong_neighbour(net, t):
    n, r = net.world_size, net.rank
    buf = torch.empty_like(t)
    recv = net.irecv(buf, (r + 1) % n)  # wrong: the left neighbour (r - 1) % n sends to r
    send = net.isend(t.clone(), (r + 1) % n)
    recv.wait()
    send.wait()


def ring_all_gather_that_adds(net, t):
    n, r = net.world_size, net.rank
    chunks = list(t.tensor_split(n))
    buf = torch.empty_like(t)
    for step in range(2 * (n - 1)):
        send_c, recv_c = (r - step) % n, (r - step - 1) % n
        out = chunks[send_c].clone()
        inbox = buf[: chunks[recv_c].numel()]
        req = net.irecv(inbox, (r - 1) % n)
        net.send(out, (r + 1) % n)
        req.wait()
        chunks[recv_c] += inbox  # wrong in the all-gather steps: should copy
    t.copy_(torch.cat(chunks))


import torch  # noqa: E402  (used by the learner functions above, as in a notebook)


def _check(*args, **kwargs):
    from dpkit.exercises import check

    return check(*args, **kwargs)


@pytest.mark.slow
def test_a_spinning_schedule_is_stopped_by_the_time_limit() -> None:
    t0 = time.monotonic()
    report = _check("pipeline_schedule", schedule_that_spins, timeout_s=4)
    assert not report.passed and "did not return within 4 s" in report.message
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_a_schedule_that_ends_its_process_does_not_end_the_caller() -> None:
    report = _check("pipeline_schedule", schedule_that_exits, timeout_s=20)
    assert not report.passed and "ended its own process" in report.message


@pytest.mark.slow
def test_every_rank_exiting_is_named_not_a_missing_file() -> None:
    report = _check("ring_allreduce", ring_every_rank_exits, timing=False, timeout_s=20)
    assert not report.passed and "ended their own process" in report.message, report.message
    assert "FileNotFoundError" not in report.message


@pytest.mark.slow
@pytest.mark.parametrize("fn", [ring_rank_1_exits, ring_rank_1_exits_quietly], ids=["code-3", "code-0"])
def test_rank_1_exiting_is_blamed_not_rank_0(fn) -> None:
    report = _check("ring_allreduce", fn, timing=False, timeout_s=20)
    assert not report.passed and report.message.startswith("Rank 1"), report.message
    assert "Connection closed" not in report.message


@pytest.mark.slow
def test_a_forked_child_of_the_learner_is_killed() -> None:
    before = set(Path("/tmp").glob("dpkit-fault-child-*"))
    report = _check("ring_allreduce", ring_that_forks_a_child, timing=False, timeout_s=20)
    assert not report.passed and "gave up after forking" in report.message
    marks = set(Path("/tmp").glob("dpkit-fault-child-*")) - before
    assert marks, "the function ran"
    try:
        time.sleep(0.5)
        sleepers = [int(e) for e in os.listdir("/proc") if e.isdigit() and _in_a_rank_group(int(e), marks)]
        assert sleepers == [], f"the learner's forked children survive: {sleepers}"
    finally:
        for m in marks:
            m.unlink()


def _in_a_rank_group(pid: int, marks: set[Path]) -> bool:
    """A process in the process group of a rank that wrote a mark (the rank's pid is the group's id)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    groups = {int(m.name.rsplit("-", 1)[1]) for m in marks}
    return int(fields[2]) in groups and alive(pid)


@pytest.mark.slow
def test_a_ring_from_the_wrong_neighbour_is_a_deadlock_named_in_seconds() -> None:
    t0 = time.monotonic()
    report = _check("ring_allreduce", ring_from_the_wrong_neighbour, timing=False, timeout_s=60, world_sizes=[3])
    took = time.monotonic() - t0
    assert not report.passed and report.message.startswith("Deadlock"), report.message
    assert "rank 0 waits to receive from rank 1, but rank 1 sends only to rank 2" in report.message
    assert "rank 0 is waiting for irecv from rank 1 (posted, not completed: isend to rank 1)" in report.message
    assert "post the receive first" not in report.message.lower()
    # "Deadlock" (not "Nothing came back within 60 s") says the watch answered before the timeout; took is
    # start-up (a cold forkserver: 10+ s at load 13) plus STUCK_S, so no wall-clock bound is asserted here
    assert took < 60


def test_deadlock_description_names_the_missing_sender() -> None:
    from dpkit.exercises.deadlock import describe

    states = {
        r: {
            "doing": f"waiting for irecv from rank {(r + 1) % 3}",
            "pending": [f"irecv from rank {(r + 1) % 3}", f"isend to rank {(r + 1) % 3}"],
        }
        for r in range(3)
    }
    text = describe(states)
    assert "rank 0 waits to receive from rank 1, but rank 1 sends only to rank 2" in text
    assert "posted, not completed: isend to rank 1" in text and "(rank - 1) % n" in text


def test_an_over_summed_chunk_is_not_called_a_partial_sum() -> None:
    from dpkit.exercises.ring import _what_it_holds, values

    world, size = 3, 8
    parts = [values(world, size, r) for r in range(world)]
    over = parts[0] * 2 + parts[1] + parts[2]
    assert "more than the full sum: rank(s) 0 counted twice" in _what_it_holds(world, size, 0, size - 1, over)
    partial = parts[0] + parts[2]
    assert "partial sum: the values of rank(s) 0, 2 only, rank(s) 1 missing" in _what_it_holds(world, size, 0, size - 1, partial)


@pytest.mark.slow
def test_an_all_gather_that_adds_is_called_over_summed() -> None:
    report = _check("ring_allreduce", ring_all_gather_that_adds, timing=False, timeout_s=30)
    assert not report.passed and "more than the full sum" in report.message and "partial sum" not in report.message


def test_a_report_says_whose_function_it_checked() -> None:
    from dpkit.exercises.checker import checked_what

    sys.path.insert(0, str(ROOT / "exercises"))
    try:
        from solutions.ring_allreduce import ring_allreduce
    finally:
        sys.path.remove(str(ROOT / "exercises"))
    assert checked_what([ring_allreduce]).startswith("the reference solution (exercises/solutions/ring_allreduce.py)")
    assert checked_what([ring_from_the_wrong_neighbour]) == "your ring_from_the_wrong_neighbour (test_fault_matrix.py)"


def test_shipped_exercise_notebooks_show_no_check_result() -> None:
    """Saved outputs of the reference solution's check (passed=True) would read as the learner's own result."""
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" not in source and "check(" in source:
                if "report = check(" in source or "USE_SOLUTIONS" in source:
                    assert not cell.get("outputs"), f"{path.name}: a saved check result: {source[:60]!r}"

"""The launcher's safety guarantees (issue 18): the rendezvous listens on 127.0.0.1 only, ranks die with
their caller (even kill -9) and with an interrupted start-up, and runs from several threads leave
__main__ as it was.

The caller-death and Ctrl-C tests run the caller as a subprocess and read its process tree from /proc.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import alive, descendants

from dpkit.runtime.launch import launch

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads processes and sockets from Linux /proc")


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def _caller(script: str, *args: str, home: Path) -> subprocess.Popen:
    """A caller process running `script` (python -c), with tests/ importable, TMPDIR home/tmp, and
    its output in home/stdout and home/stderr: files, not pipes, which ranks left behind would hold
    open (communicate() would wait for them)."""
    (home / "tmp").mkdir(exist_ok=True)
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "TMPDIR": str(home / "tmp")}
    with open(home / "stdout", "w") as out, open(home / "stderr", "w") as err:
        return subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=out, stderr=err)


def _reap(pids: set[int]) -> None:
    """SIGKILL whatever of `pids` a failed test left running."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# ---- 1. the rendezvous listens on 127.0.0.1 only ---------------------------------------------
def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A /proc/net/tcp{,6} address: 32-bit words in host byte order, hex; IPv4-mapped IPv6 as IPv4."""
    raw = bytes.fromhex(hex_addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if ip.version == 6 and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def listening_sockets(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, address) of every TCP socket in LISTEN state that one of `pids` holds open."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[len("socket:[") : -1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in owner:  # 0A: TCP_LISTEN
                host, port = local.split(":")
                found.append((owner[inode], f"{_address(host)}:{int(port, 16)}"))
    return found


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_rendezvous_and_ranks_listen_on_loopback_only(tmp_path: Path) -> None:
    """While ranks run, every TCP socket listening in the caller, the forkserver and the ranks (the
    store's, gloo's) is bound to 127.0.0.1: nothing reachable from another machine."""
    errors: list[BaseException] = []

    def go() -> None:
        try:
            launch("rank_targets:sleep_ranks", {"s": 1.5}, 2, tmp_path, threads_per_rank=1, timeout_s=60)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    caller = threading.Thread(target=go)
    caller.start()
    try:  # the ranks write pid<r> after rendezvous: the store and gloo's sockets are all open now
        _wait_for(lambda: all((tmp_path / f"pid{r}").exists() for r in range(2)) or errors, 30, "the ranks' rendezvous")
        assert not errors, errors
        me = os.getpid()
        ranks = {int((tmp_path / f"pid{r}").read_text()) for r in range(2)}
        assert ranks <= descendants(me)
        sockets = listening_sockets({me} | ranks | {_parent(r) for r in ranks})  # the rank's parent: the forkserver
    finally:
        caller.join(60)
    assert not errors, errors
    assert any(pid == me for pid, _ in sockets), f"the store's listening socket was not found: {sockets}"
    exposed = [(pid, addr) for pid, addr in sockets if not addr.startswith("127.0.0.1:")]
    assert not exposed, f"listening beyond 127.0.0.1 (pid, address): {exposed}"


# ---- 2. ranks die with their caller, even kill -9 ----------------------------------------------
KILLED_CALLER = """
import sys, threading
from dpkit.runtime.launch import launch

def go(out_dir, temporary):  # queue=False: both launches run at once, not one after the other
    launch("rank_targets:sleep_ranks", {"s": 6}, 2, out_dir, threads_per_rank=1, timeout_s=60, out_dir_is_temporary=temporary,
           queue=False)

threads = [threading.Thread(target=go, args=(sys.argv[1], False)), threading.Thread(target=go, args=(sys.argv[2], True))]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.slow
def test_ranks_die_with_a_killed_caller(tmp_path: Path) -> None:
    """kill -9 a caller running two launches: within 3 s their ranks are gone, having written nothing
    more, and the out_dir marked temporary (as run()'s would be) is deleted; the forkserver follows."""
    kept, temporary = tmp_path / "kept", tmp_path / "temporary"
    kept.mkdir()
    temporary.mkdir()
    pid_files = [out / f"pid{r}" for out in (kept, temporary) for r in range(2)]
    caller = _caller(KILLED_CALLER, str(kept), str(temporary), home=tmp_path)
    tree: set[int] = set()
    try:
        _wait_for(lambda: all(f.exists() for f in pid_files) or caller.poll() is not None, 60, "the ranks")
        assert caller.poll() is None, (tmp_path / "stderr").read_text()
        tree = descendants(caller.pid)  # forkserver, resource tracker, ranks: after the kill they are init's
        ranks = {int(f.read_text()) for f in pid_files}
        assert ranks <= tree
        caller.kill()
        caller.wait()
        _wait_for(lambda: not any(alive(p) for p in ranks), 3, "the killed caller's ranks to exit")
        _wait_for(lambda: not any(alive(p) for p in tree), 10, "its forkserver and resource tracker to exit")
    finally:
        caller.kill()
        caller.wait()
        _reap(tree)
    assert not list(kept.glob("done*")), "a rank wrote into the out_dir of a dead caller"
    assert not temporary.exists(), f"left behind: {sorted(p.name for p in temporary.iterdir())}"
    assert not list((tmp_path / "tmp").glob("dpkit-*")), "launch left a temporary folder behind"


KILLED_RUN = """
from dpkit import RunConfig, run
run(RunConfig(parallelism="data", world_size=2, steps=2000, hidden=32, global_batch=16, threads_per_rank=1))
"""


@pytest.mark.slow
def test_killed_run_caller_leaves_no_process(tmp_path: Path) -> None:
    """kill -9 a caller inside dpkit.run (a ~20 s run): 10 s later nothing it started is alive."""
    caller = _caller(KILLED_RUN, home=tmp_path)
    tree: set[int] = set()
    try:
        # ranks are the forkserver's children: resource tracker + forkserver + 2 ranks
        _wait_for(lambda: len(descendants(caller.pid)) >= 4 or caller.poll() is not None, 60, "the ranks")
        assert caller.poll() is None, (tmp_path / "stderr").read_text()
        time.sleep(1.0)  # training, not starting up
        tree = descendants(caller.pid)
        assert len(tree) >= 4
        caller.kill()
        caller.wait()
        _wait_for(lambda: not any(alive(p) for p in tree), 10, "every process the killed caller left")
    finally:
        caller.kill()
        caller.wait()
        _reap(tree)
    assert not list((tmp_path / "tmp").glob("dpkit-errors-*")), "launch left its error folder behind"


# ---- 3. Ctrl-C during start-up orphans no rank ----------------------------------------------
INTERRUPTED_CALLER = """
import json, os, signal, sys, threading, time
from conftest import rank_processes
from dpkit import RunConfig, run

cfg = RunConfig(parallelism="data", world_size=2, hidden=16, layers=2, global_batch=8, steps=2, threads_per_rank=1, timeout_s=60)
run(cfg)  # starts the forkserver: each try below interrupts a warm start-up, as a second run in a notebook does
inside = 0
for delay in [i * 0.060 / 9 for i in range(10)]:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    finished = False
    try:
        timer.start()
        run(cfg)
        finished = True
        timer.join()
        time.sleep(0.5)  # the interrupt, if it came after run() returned, lands here
    except KeyboardInterrupt:
        inside += not finished
    timer.join()
t0 = time.monotonic()
while rank_processes() and time.monotonic() - t0 < 5:
    time.sleep(0.05)
print(json.dumps({"inside": inside, "left": sorted(rank_processes())}))
"""


@pytest.mark.slow
def test_ctrl_c_during_start_up_orphans_no_rank(tmp_path: Path) -> None:
    """SIGINT 0-60 ms into run(), 10 times: every rank is gone within 5 s and nothing is printed."""
    caller = _caller(INTERRUPTED_CALLER, home=tmp_path)
    try:
        caller.wait(timeout=120)
    finally:
        caller.kill()
        caller.wait()
    err = (tmp_path / "stderr").read_text()
    assert caller.returncode == 0, err
    report = json.loads((tmp_path / "stdout").read_text().splitlines()[-1])
    _reap(set(report["left"]))
    assert report["inside"] >= 5, f"most interrupts should land inside run(): {report}"
    assert report["left"] == [], f"ranks still alive 5 s after the interrupted runs: {report}"
    assert "Traceback" not in err and "FileNotFoundError" not in err, err
    assert not list((tmp_path / "tmp").glob("dpkit-*")), "a temporary folder was left behind"


# ---- 4. runs from several threads leave __main__ as it was ------------------------------------
def test_concurrent_launches_restore_main(tmp_path: Path) -> None:
    """2 threads x 2 ranks, 3 rounds: __main__.__spec__ and __file__ are what they were, never None."""
    main = sys.modules["__main__"]
    before = {k: main.__dict__.get(k, "<absent>") for k in ("__file__", "__spec__")}
    errors: list[BaseException] = []
    for round_ in range(3):
        start = threading.Barrier(2)

        def go(i: int, round_: int = round_, start: threading.Barrier = start) -> None:
            try:
                start.wait()
                out = tmp_path / f"{round_}-{i}"
                out.mkdir()
                # a target that imports nothing beyond the forkserver's preload (the benchmark's pulls in pandas and
                # matplotlib, ~0.5 s CPU per rank): what is tested is launch() itself, from two threads
                launch("rank_targets:sleep_ranks", {"s": 0}, 2, out, threads_per_rank=1, timeout_s=60, queue=False)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        after = {k: main.__dict__.get(k, "<absent>") for k in ("__file__", "__spec__")}
        assert after == before, f"round {round_}: __main__ was {before}, is now {after}"

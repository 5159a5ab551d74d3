"""Runs on one machine take turns for its cores: a machine-wide first-come, first-served queue (issues 16, 31).

Why: thirty kernels of a workshop launching ranks at once on one server make every step time measure
the others, not the strategy. So a run waits until the cores it needs (processes x threads per rank) are
free, and while it runs nobody else's run uses them: each rank is pinned to its own core (one rank = one
core), so runs on disjoint cores do not measure each other, and a 32-core server serves many learners at
once. A run needing every core still runs alone. First come, first served: a run never passes one waiting
ahead of it, so a large run is not starved by small ones. $DPKIT_QUEUE_SLOTS=machine gives every run the
whole machine again (one run at a time, whatever it needs).

How: each waiting run puts a ticket file in the queue folder (default /tmp/dpkit-queue, mode 1777 so
every user of the machine shares it; $DPKIT_QUEUE_DIR overrides). A ticket is written, flock()ed by
its owner, and only then renamed into place, so every visible ticket is locked while its owner lives;
the kernel drops the lock the moment the owner dies (kill -9 included), and the next waiter sees a
ticket nobody locks as dead and skips (and, if it may, removes) it. Tickets are ordered by the
time the kernel gave them on arrival (their inode change time, which no user can set back) and then by
name, so nobody can jump the queue by naming a ticket; the turn belongs to the first live ticket.
The owner's pid and process start time (/proc/<pid>/stat field 22) are in the ticket too: a lock
kept alive by a leftover child of a dead owner does not count, nor does a reused pid.
A turn that lasts longer than $DPKIT_QUEUE_MAX_TURN_S (default 1800 s: a user holding the machine on
purpose) is not waited for any longer, nor one whose holder has been stopped (SIGSTOP, Ctrl-Z: state T in
/proc/<pid>/stat) for over $DPKIT_QUEUE_STOPPED_S (default 10 s).

A shared server (issue 29): nobody can delay another user's run by more than one bounded turn per kernel.
Another process counts once however many tickets it holds ahead of ours, and its time at the head adds up
over them (a pid that is not a live process of the ticket file's owner counts once per user); a folder
owned by another user (not root, not us) is not used, since its owner could delete the tickets in it (a
warning says to set $DPKIT_QUEUE_DIR); in the sticky 1777 folder of root's or ours, nobody else can. Threads of one process queue alike
(one ticket each); a thread that already holds a turn is not queued again (run() inside a sweep).
$DPKIT_QUEUE=off turns all of it off; a folder that cannot be used safely means a warning and no queue.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import secrets
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so no machine queue
    fcntl = None  # type: ignore[assignment]

QUEUE_ENV = "DPKIT_QUEUE"  # "off" (or 0, false, no): runs do not take turns
DIR_ENV = "DPKIT_QUEUE_DIR"  # where the tickets live; default DEFAULT_DIR
MAX_TURN_ENV = "DPKIT_QUEUE_MAX_TURN_S"
SLOTS_ENV = "DPKIT_QUEUE_SLOTS"  # "cores" (default): a run holds only the cores it needs; "machine": all of them
SLOTS = ("cores", "machine")
STOPPED_ENV = "DPKIT_QUEUE_STOPPED_S"  # a holder stopped (SIGSTOP, Ctrl-Z) this long loses its turn
DEFAULT_DIR = Path("/tmp/dpkit-queue")  # not $TMPDIR: that can differ per user, and the queue is the machine's
DEFAULT_MAX_TURN_S = 1800.0
DEFAULT_STOPPED_S = 10.0
POLL_S = 0.1  # how often the next in line looks; those further back look less often (see _interval)
PREFIX = "ticket."
_OFF = {"off", "0", "false", "no"}

Progress = Callable[[int], None]  # called with how many runs are ahead, each time that number changes


@dataclass
class Turn:
    """What waiting for this machine cost a run; `meta()` is what the RunResult records."""

    queued: bool  # False: queue off, unavailable, or (queue=False) not asked for
    wait_s: float = 0.0
    ahead_at_start: int = 0
    loadavg_at_start: list[float] | None = field(default_factory=lambda: loadavg())
    cores: list[int] | None = None  # the cores this run was given (its ranks' affinity); None: not queued
    beside: int = 0  # other runs holding cores of this machine when the turn began

    def meta(self) -> dict:
        """queue_wait_s, queue_ahead_at_start, and the 1/5/15-minute load average now and when the turn began."""
        return {
            "queued": self.queued,
            "queue_wait_s": round(self.wait_s, 3),
            "queue_ahead_at_start": self.ahead_at_start,
            "loadavg_at_start": self.loadavg_at_start,
            "loadavg_at_end": loadavg(),
            "queue_cores": self.cores,
            "queue_runs_beside": self.beside,
        }


def loadavg() -> list[float] | None:
    """The machine's 1, 5 and 15-minute load averages (/proc/loadavg), or None where there are none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def enabled() -> bool:
    """False when $DPKIT_QUEUE says off: an expert's switch for everything this process runs."""
    return os.environ.get(QUEUE_ENV, "on").strip().lower() not in _OFF


def _seconds(env: str, default: float) -> float:
    try:
        value = float(os.environ.get(env, default))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


def core_slots() -> bool:
    """Whether runs take only the cores they need ($DPKIT_QUEUE_SLOTS=cores, the default) or the whole machine each
    ($DPKIT_QUEUE_SLOTS=machine: one run at a time). Any other value warns and means cores."""
    value = os.environ.get(SLOTS_ENV, "cores").strip().lower() or "cores"
    if value not in SLOTS:
        _warn_once(f"dpkit: ${SLOTS_ENV}={value!r} is not allowed: choose one of {', '.join(SLOTS)}; using cores")
    return value != "machine"


def max_turn_s() -> float:
    """The longest turn waited for ($DPKIT_QUEUE_MAX_TURN_S, default 1800 s)."""
    return _seconds(MAX_TURN_ENV, DEFAULT_MAX_TURN_S)


def stopped_s() -> float:
    """How long a stopped holder keeps its turn ($DPKIT_QUEUE_STOPPED_S, default 10 s)."""
    return _seconds(STOPPED_ENV, DEFAULT_STOPPED_S)


_reporter: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("dpkit_queue_reporter", default=None)


@contextlib.contextmanager
def reporting(progress: Progress) -> Iterator[None]:
    """Within the block, machine_turn() calls without a progress callback report to `progress`.

    Why: a notebook Panel learns how many runs are ahead of it without every function between the
    Run button and run() taking a callback."""
    token = _reporter.set(progress)
    try:
        yield
    finally:
        _reporter.reset(token)


_taken: contextvars.ContextVar[list[Turn] | None] = contextvars.ContextVar("dpkit_queue_taken", default=None)


@contextlib.contextmanager
def turns_taken() -> Iterator[list[Turn]]:
    """Within the block, every turn this thread takes is appended to the list it yields (a nested turn once).

    Why: a Panel says where its runs ran ("ran on cores 4–7 beside 3 other runs", dpkit.viz.run_notes) without
    the compute functions between its Run button and run() handing the results back."""
    turns: list[Turn] = []
    token = _taken.set(turns)
    try:
        yield turns
    finally:
        _taken.reset(token)


def _noted(turn: Turn) -> Turn:
    if (taken := _taken.get()) is not None:
        taken.append(turn)
    return turn


_local = threading.local()  # .turn: the Turn this thread holds, if any


@contextlib.contextmanager
def machine_turn(progress: Progress | None = None, *, queue: bool = True, cores: int | None = None) -> Iterator[Turn]:
    """Wait for this machine's turn, hold it for the block, give it up after (even on an exception).

    `progress(ahead)` is called with how many runs are ahead whenever that changes, last with 0.
    A thread already holding a turn gets that turn again at once; queue=False, $DPKIT_QUEUE=off or a
    folder that cannot be used give an unqueued Turn.

    `cores`: how many cores the run needs (processes x threads per rank): a core slot. The turn comes as soon as
    every ticket ahead holds its cores and that many of the cores this process may use are free of them;
    Turn.cores says which (the launcher pins the ranks there). None: the whole machine, as before."""
    held = getattr(_local, "turn", None)
    if held is not None:
        yield held
        return
    folder = queue_dir() if queue and enabled() and fcntl is not None else None
    if folder is None:
        yield _noted(Turn(queued=False))
        return
    report = progress or _reporter.get()
    t0 = time.monotonic()
    if not core_slots():
        cores = None
    try:
        ticket = _Ticket(folder, cores)
    except OSError as exc:  # a full disk or a folder changed under us: run, unqueued, rather than fail the run
        _warn_once(f"dpkit: runs on this machine do not take turns: cannot queue in {folder} ({exc})")
        ticket = None
    if ticket is None:
        yield _noted(Turn(queued=False))
        return
    try:
        try:
            ahead, beside = _wait_for_turn(ticket, report)
            turn = Turn(queued=True, wait_s=time.monotonic() - t0, ahead_at_start=ahead, cores=ticket.granted, beside=beside)
        except OSError as exc:
            _warn_once(f"dpkit: stopped waiting for this machine's turn: the queue in {folder} failed ({exc})")
            turn = Turn(queued=False, wait_s=time.monotonic() - t0)
        _local.turn = turn
        try:
            yield _noted(turn)
        finally:
            _local.turn = None
    finally:
        ticket.release()


# ---- the folder ---------------------------------------------------------------------------------
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


def queue_dir() -> Path | None:
    """The queue folder, created if missing (mode 1777: shared by every user, each deleting only their own
    tickets); None, with a warning, when it cannot be used safely: then runs do not queue."""
    configured = os.environ.get(DIR_ENV)
    path = Path(configured) if configured else DEFAULT_DIR
    problem = _prepare(path, follow=bool(configured))
    if problem is None:
        return path
    _warn_once(f"dpkit: runs on this machine do not take turns: queue folder {path} {problem} (set {DIR_ENV} or {QUEUE_ENV}=off)")
    return None


def _prepare(path: Path, follow: bool) -> str | None:
    """Why `path` cannot hold the queue, or None. The default folder must not be a symlink (someone else's
    link could point it anywhere); a folder others may write to must be sticky, or anyone could delete tickets."""
    try:
        os.mkdir(path, 0o1777)
        os.chmod(path, 0o1777)  # mkdir's mode is cut by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot be created ({exc.strerror})"
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory" if not stat.S_ISLNK(st.st_mode) else "is a symbolic link"
    if st.st_uid not in (0, os.getuid()):
        return (
            f"belongs to another user (uid {st.st_uid}), who could delete the tickets in it and keep a turn "
            f"ahead of yours; only a folder of root's or your own is used"
        )
    if not follow and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o1777:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o1777)
            st = os.lstat(path)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return "is writable by others but not sticky (mode 1777): anyone could delete the tickets in it"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    return None


# ---- tickets ------------------------------------------------------------------------------------
_own_fds: set[int] = set()  # our tickets' locked descriptors: a forked child must not keep a lock alive
_own_lock = threading.Lock()


def _close_own_in_child() -> None:
    for fd in list(_own_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _own_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_own_in_child)


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _proc_start(pid: int) -> int | None:
    """Process start time in clock ticks since boot (/proc/<pid>/stat field 22); None if there is no such
    process, or only its zombie (dead, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class _Ticket:
    """Our place in the queue: a locked file, renamed into the folder only once locked."""

    def __init__(self, folder: Path, cores: int | None = None) -> None:
        self.folder = folder
        self.fd = -1
        self.allowed = allowed_cores()
        self.need = len(self.allowed) if cores is None else max(1, min(int(cores), len(self.allowed)))
        self.granted: list[int] | None = None
        self.grant_path: Path | None = None
        self._enter()

    def _info(self) -> dict:
        return {"pid": os.getpid(), "start": _proc_start(os.getpid()), "pidns": _pid_ns(), "need": self.need}

    def grant(self, cores: list[int]) -> None:
        """Say which cores we take, before the run starts: a file grant.<our ticket's name> beside the ticket (the
        ticket itself stays untouched: writing to it would change the inode time that orders the queue)."""
        self.granted = cores
        path = self.folder / ("grant." + self.name[len(PREFIX) :])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, json.dumps({"cores": cores}).encode())
        finally:
            os.close(fd)
        self.grant_path = path

    def _enter(self) -> None:
        name = f"{time.monotonic_ns():020d}.{os.getpid()}.{secrets.token_hex(8)}"
        self.name = PREFIX + name
        tmp = self.folder / f"tmp.{name}"
        self.granted = None
        info = self._info()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with _own_lock:
                _own_fds.add(fd)
            os.fchmod(fd, 0o644)  # readable by all, whatever the umask: the others must be able to test its lock
            os.write(fd, json.dumps(info).encode())
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, self.folder / self.name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._close(fd)
            raise
        self.fd, self.ino = fd, os.fstat(fd).st_ino

    @staticmethod
    def _close(fd: int) -> None:
        with _own_lock:
            _own_fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def still_there(self) -> bool:
        try:
            return os.lstat(self.folder / self.name).st_ino == self.ino
        except OSError:
            return False

    def reenter(self) -> None:
        """Our ticket was deleted (a cleaner of /tmp, the folder's owner): queue again rather than run unqueued."""
        self.release()
        with contextlib.suppress(OSError):
            _prepare(self.folder, follow=True)
        self._enter()

    def release(self) -> None:
        if self.grant_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.grant_path)
            self.grant_path = None
        if self.fd < 0:
            return
        if self.still_there():
            with contextlib.suppress(OSError):
                os.unlink(self.folder / self.name)
        self._close(self.fd)
        self.fd = -1

    def __del__(self) -> None:  # a Ctrl-C between creating the ticket and guarding it must not keep our place
        self.release()


Owner = tuple[int, int | None]  # (uid, pid): one kernel of one user; pid None where it cannot be verified


def _alive(path: Path, st: os.stat_result, my_ns: str) -> bool:
    """Whether the ticket at `path` has a live owner (see _owner)."""
    return _owner(path, st, my_ns) is not None


def _owner(path: Path, st: os.stat_result, my_ns: str) -> Owner | None:
    state = _state(path, st, my_ns)
    return None if state is None else state[0]


def _state(path: Path, st: os.stat_result, my_ns: str) -> tuple[Owner, dict] | None:
    """The live owner of the ticket at `path` and what the ticket says, or None when it has no owner: someone must
    hold its lock, and its pid
    (when this process can see that pid namespace) must still be the process that wrote it. A file we cannot
    open and test is no ticket. The owner is (file's uid, pid) when that pid is a live process of that uid, else
    (uid, None): a claim we cannot check counts once per user, so forged pids cannot multiply a user's turns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return None
    except OSError:  # out of descriptors, say: look again next time rather than pass a live ticket for good
        return (st.st_uid, None), {}
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: the owner is gone
        except BlockingIOError:
            pass
        unverified: Owner = (st.st_uid, None)
        try:
            info = json.loads(os.read(fd, 4096))
            pid, start, ns = int(info["pid"]), info.get("start"), info.get("pidns")
        except Exception:  # noqa: BLE001 -- anyone can write a ticket: nothing in one may crash the waiters
            return unverified, {}  # locked but unreadable: a turn, bounded by the longest turn like any other
        if not isinstance(info, dict):
            return unverified, {}
        if not ns or ns != my_ns or start is None:
            return unverified, info
        now = _proc_start(pid)
        if now is None:  # no such process, or one /proc hides from us (hidepid): only our own uid is sure
            return (unverified, info) if st.st_uid != os.getuid() else None
        if now != start:
            return None
        return ((st.st_uid, pid) if _proc_uid(pid) == st.st_uid else unverified), info
    finally:
        os.close(fd)


def _proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, Ctrl-Z, a debugger): state T or t in /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


class _Queue:
    """One waiter's view of the queue folder; remembers dead tickets and how long each owner has held the turn.

    Another kernel counts once however many tickets it has ahead of ours, and its time at the head adds up
    over all of them: one process holding six tickets delays us one turn, not six. Our own process's other
    tickets (its other threads) count one by one, as before."""

    def __init__(self, ticket: _Ticket) -> None:
        self.ticket = ticket
        self.skip: set[tuple[str, int]] = set()  # (name, inode) of tickets found dead or overstaying
        self.skip_owners: set[Owner] = set()  # other kernels that overstayed their turn
        self.head_since: dict[object, float] = {}
        self.stopped_since: dict[int, float] = {}
        self.ns = _pid_ns()
        self.limit = max_turn_s()
        self.stopped_limit = stopped_s()
        self.me: Owner = (os.getuid(), os.getpid())
        self.free: list[int] = []  # the cores no ticket ahead holds (after ahead())
        self.holders = 0  # tickets ahead holding cores (after ahead())

    def ahead(self) -> int:
        """How many live runs are ahead of ours (0: the turn is ours)."""
        folder = self.ticket.folder
        tickets = []
        mine = None
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:  # the folder was removed (a /tmp cleaner): so was our ticket
            self.ticket.reenter()
            return self.ahead()
        grants = {e.name[len("grant.") :]: e for e in entries if e.name.startswith("grant.")}
        names = {e.name for e in entries}
        for e in entries:
            if e.name.startswith("tmp.") or (e.name.startswith("grant.") and PREFIX + e.name[6:] not in names):
                _remove_if_abandoned(e)
            if not e.name.startswith(PREFIX):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (e.name, st.st_ino) in self.skip:
                continue
            key = (st.st_ctime_ns, e.name)
            if e.name == self.ticket.name and st.st_ino == self.ticket.ino:
                mine = key
            else:
                tickets.append((key, e.name, st))
        if mine is None:
            self.ticket.reenter()
            return self.ahead()
        free = set(self.ticket.allowed)
        waiting = holders = 0  # live tickets ahead: still waiting, or holding cores (running)
        counted: set[Owner] = set()
        for _key, name, st in sorted(t for t in tickets if t[0] < mine):
            ident = (name, st.st_ino)
            state = _state(folder / name, st, self.ns)
            if state is None:
                self.skip.add(ident)
                if st.st_uid == os.getuid():
                    with contextlib.suppress(OSError):
                        os.unlink(folder / name)
                continue
            owner, info = state
            ours = owner == self.me
            if not ours and owner in self.skip_owners:
                continue
            cores = _cores_of(info, self.ticket.allowed, _grant(grants.get(name[len(PREFIX) :]), st.st_uid))
            if cores is None and not ours and owner in counted:
                continue  # another kernel's waiting tickets count once
            if (cores is not None or waiting == 0) and self._overstays(ident if ours else owner, name, owner):
                if ours:
                    self.skip.add(ident)
                else:
                    self.skip_owners.add(owner)
                continue
            counted.add(owner)
            if cores is None:
                waiting += 1  # first come, first served: nobody passes a run that waits ahead of it
            else:
                holders += 1
                free -= cores
        self.free, self.holders = sorted(free), holders
        if waiting == 0 and len(free) >= self.ticket.need:
            return 0
        return max(1, waiting + holders)  # the runs we wait for: those waiting ahead, and those holding cores

    def _overstays(self, key: object, name: str, owner: Owner) -> bool:
        """Whether the head (key: its ticket, or its kernel) has held the turn too long: longer than the longest
        turn, or stopped (SIGSTOP, Ctrl-Z) for longer than $DPKIT_QUEUE_STOPPED_S."""
        now = time.monotonic()
        since = self.head_since.setdefault(key, now)
        if now - since > self.limit:
            _warn_once(
                f"dpkit: a run (ticket {name}) has held this machine for over {self.limit:g} s; "
                f"not waiting for it any longer (${MAX_TURN_ENV})"
            )
            return True
        pid = owner[1]
        if pid is None or not _stopped(pid):
            self.stopped_since.pop(pid or 0, None)
            return False
        if now - self.stopped_since.setdefault(pid, now) > self.stopped_limit:
            _warn_once(
                f"dpkit: the run holding this machine (process {pid}) has been stopped for over "
                f"{self.stopped_limit:g} s; not waiting for it any longer (${STOPPED_ENV})"
            )
            return True
        return False


def allowed_cores() -> list[int]:
    """The cores this process may run on (its affinity mask: what a container or taskset grants)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _grant(entry: os.DirEntry | None, uid: int) -> list | None:
    """The cores a grant file lists, if it is a regular file of the ticket's own user (nobody else's counts)."""
    if entry is None:
        return None
    try:
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            return None
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            cores = json.loads(os.read(fd, 65536))["cores"]
        finally:
            os.close(fd)
        return cores if isinstance(cores, list) else None
    except Exception:  # noqa: BLE001 -- anyone can write a file: nothing in one may crash the waiters
        return None


def _cores_of(info: dict, allowed: list[int], granted: list | None) -> set[int] | None:
    """The cores a live ticket holds: those of its grant file; None while it waits. A ticket without "need" (an
    older dpkit's, or one we cannot read) holds the whole machine while it lives, as every ticket once did."""
    if "need" not in info:
        return set(allowed)
    if granted is None:
        return None
    try:
        return {int(c) for c in granted}
    except (TypeError, ValueError):
        return set(allowed)


def _remove_if_abandoned(entry: os.DirEntry) -> None:
    """A ticket of ours half-made by a process killed between creating and renaming it: gone after a minute."""
    with contextlib.suppress(OSError):
        st = entry.stat(follow_symlinks=False)
        if st.st_uid == os.getuid() and time.time_ns() - st.st_ctime_ns > 60e9:
            os.unlink(entry.path)


def _wait_for_turn(ticket: _Ticket, report: Progress | None) -> tuple[int, int]:
    """Poll until no live ticket is ahead and enough cores are free, take them (ticket.granted); returns how many
    runs were ahead at first, and how many hold cores beside ours now."""
    queue = _Queue(ticket)
    first = last = None
    while True:
        ahead = queue.ahead()
        if first is None:
            first = ahead
        if report is not None and ahead != last:
            report(ahead)
        last = ahead
        if ahead == 0:
            ticket.grant(queue.free[: ticket.need])
            return first, queue.holders
        time.sleep(min(1.0, POLL_S * (1 + ahead // 4)))  # those far back look less often: 30 waiters stay cheap

"""The rank side of `launch`: the function each forked rank runs first.

It joins the run's TCPStore, sets up torch.distributed and calls the target ("module:function");
any failure is sent to the launcher through the rank's pipe, so the caller gets the traceback.
The same pipe tells the rank when its caller is gone: it then exits at once, silently.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from . import (
    gloo_loop,
    training,  # noqa: F401  (preloaded into the forkserver with torch)
)


def _die_with_parent() -> None:
    """Linux: SIGKILL this rank if its parent dies. That is the caller only under the "fork" start
    method; under forkserver it is the server, which outlives a killed caller as long as any rank
    holds it open, so the caller's death itself is watched by _exit_with_caller."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _forkserver_exits_fast() -> None:
    """In the forkserver (which preloads this module): exit without interpreter teardown, and leave no folder.

    It exits when its last client is gone, e.g. a killed caller's ranks; tearing down torch then
    took it 2-10 s of CPU on a busy machine, for nothing: it holds no data. Its listening socket lives in the
    caller's pymp-* temporary folder, which the caller removes when it exits; a caller killed with kill -9
    removes nothing, so the server, outliving it, removes that folder on its way out (only when the caller,
    its parent, is gone). Ctrl-C stays blocked here and in the ranks (see launch.start_forkserver).
    Ranks, forked from it, never run atexit (they end in os._exit); other processes importing this module
    are left alone."""
    argv = " ".join(getattr(sys, "orig_argv", ()))
    if "from multiprocessing.forkserver import main" not in argv:
        return
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    caller = os.getppid()
    folder = _listener_folder(argv)

    def exit_now() -> None:
        if folder is not None and os.getppid() != caller:
            shutil.rmtree(folder, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(exit_now)


def _listener_folder(argv: str) -> str | None:
    """The caller's pymp-* folder holding the forkserver's socket (its fd is main()'s first argument), or None."""
    try:
        fd = int(argv.split("main(", 1)[1].split(",", 1)[0])
        with socket.socket(fileno=os.dup(fd)) as listener:
            address = listener.getsockname()
    except (IndexError, ValueError, OSError):
        return None
    if not isinstance(address, str) or not address.startswith("/"):
        return None  # an abstract socket: no file
    folder = os.path.dirname(address)
    return folder if os.path.basename(folder).startswith("pymp-") else None


_forkserver_exits_fast()


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _exit_with_caller(link, out_dir: str, out_dir_is_temporary: bool) -> None:
    """Exit this rank as soon as the caller's end of `link` closes, from a daemon thread.

    The caller closes it on purpose after a run (sending "stop" first) and the kernel closes it when
    the caller dies, even by kill -9: either way nobody will read what this rank does, so it stops
    at once (instead of training on, or waiting on a store that is gone until the run's timeout).
    Without "stop" the caller is dead: a temporary out_dir it would have deleted is deleted here.
    """

    def watch() -> None:
        try:
            told = link.recv_bytes()  # the caller sends nothing else
        except (EOFError, OSError):
            told = None
        if told is None:
            if out_dir_is_temporary:
                shutil.rmtree(out_dir, ignore_errors=True)
            _remove_caller_mp_folder()
        os._exit(1)

    threading.Thread(target=watch, name="dpkit-caller-watch", daemon=True).start()


def _remove_caller_mp_folder() -> None:
    """The caller died without cleaning up: remove its pymp-* folder, which holds the forkserver's socket (a rank
    forked from the forkserver knows that socket's address: the server sets it before it forks)."""
    import multiprocessing.forkserver

    address = getattr(multiprocessing.forkserver._forkserver, "_forkserver_address", None)
    if isinstance(address, str) and address.startswith("/"):
        folder = os.path.dirname(address)
        if os.path.basename(folder).startswith("pymp-"):
            shutil.rmtree(folder, ignore_errors=True)


def _loopback_interface() -> str | None:
    """Linux: the name of the loopback interface (IFF_LOOPBACK in /sys/class/net/*/flags), else None."""
    try:
        names = sorted(os.listdir("/sys/class/net"))
    except OSError:
        return None
    for name in names:
        try:
            if int(Path("/sys/class/net", name, "flags").read_text(), 16) & 0x8:
                return name
        except (OSError, ValueError):
            continue
    return None


def rank_entry(
    target,
    payload,
    rank,
    nprocs,
    port,
    backend,
    threads,
    out_dir,
    link,
    timeout_s,
    gloo_mode="idle",
    out_dir_is_temporary=False,
    cores=None,
) -> None:
    """Run one rank; on any exception send its traceback to the launcher through `link`, then exit 1.
    `cores`: the cores this rank is pinned to (the run's core slot, dpkit.runtime.queue), or None."""
    _die_with_parent()
    _exit_with_caller(link, out_dir, out_dir_is_temporary)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)  # before torch starts its threads: they inherit it
    if "GLOO_SOCKET_IFNAME" not in os.environ and (lo := _loopback_interface()):
        # all ranks are on this machine: gloo's listening sockets (any gloo group) need not be reachable from others
        os.environ["GLOO_SOCKET_IFNAME"] = lo
    try:
        torch.set_num_threads(threads)
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore("127.0.0.1", port, nprocs, False, timeout=timeout)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, store=store, rank=rank, world_size=nprocs, timeout=timeout)
        gloo_loop.apply(gloo_mode)
        resolve(target)(payload, rank, nprocs, out_dir)
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
        report = {"time": time.time(), "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        try:
            link.send_bytes(json.dumps(report).encode())  # the parent raises it
        except OSError:
            pass  # the caller is gone (its Ctrl-C, its death): nobody to tell, and nothing to print
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (gloo threads): the result is already on disk

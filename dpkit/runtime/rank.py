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
    """In the forkserver (which preloads this module): exit without interpreter teardown.

    It exits when its last client is gone, e.g. a killed caller's ranks; tearing down torch then
    took it 2-10 s of CPU on a busy machine, for nothing: it holds no data. Ranks, forked from it,
    never run atexit (they end in os._exit), and other processes importing this module are left alone."""
    if any("from multiprocessing.forkserver import main" in arg for arg in getattr(sys, "orig_argv", ())):

        def exit_now() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

        atexit.register(exit_now)


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
        if told is None and out_dir_is_temporary:
            shutil.rmtree(out_dir, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=watch, name="dpkit-caller-watch", daemon=True).start()


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
    target, payload, rank, nprocs, port, backend, threads, out_dir, link, timeout_s, gloo_mode="idle", out_dir_is_temporary=False
) -> None:
    """Run one rank; on any exception send its traceback to the launcher through `link`, then exit 1."""
    _die_with_parent()
    _exit_with_caller(link, out_dir, out_dir_is_temporary)
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

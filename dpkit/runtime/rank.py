"""The rank side of `launch`: the function each forked rank runs first.

It joins the run's TCPStore, sets up torch.distributed and calls the target ("module:function");
any failure is written where the launcher looks for it, so the caller gets the traceback.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
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
    """Linux: SIGKILL this rank if its parent (the forkserver, which dies with the caller) dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def rank_entry(target, payload, rank, nprocs, port, backend, threads, out_dir, err_dir, timeout_s, gloo_mode="idle") -> None:
    """Run one rank; on any exception write its traceback where the launcher looks, then exit 1."""
    _die_with_parent()
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
        Path(err_dir, f"rank{rank}.json").write_text(json.dumps(report))  # the parent raises it
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (gloo threads): the result is already on disk

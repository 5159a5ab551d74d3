"""The rank side: the entry the launcher forks, and `python -m dpkit.worker` for torchrun.

Under torchrun (env:// rendezvous, one or many nodes) the same training loop runs, so the same
config gives the same losses as dpkit.run():

    torchrun --nproc-per-node 2 -m dpkit.worker --out results/tr --parallelism data --world-size 2
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

import dpkit.gloo_loop
import dpkit.train  # noqa: F401  (preloaded into the forkserver with torch)


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


def rank_entry(target, payload, rank, nprocs, port, backend, threads, out_dir, err_dir, timeout_s, gloo_loop="idle") -> None:
    """Run one rank; on any exception write its traceback where the launcher looks, then exit 1."""
    _die_with_parent()
    try:
        torch.set_num_threads(threads)
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore("127.0.0.1", port, nprocs, False, timeout=timeout)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, store=store, rank=rank, world_size=nprocs, timeout=timeout)
        dpkit.gloo_loop.apply(gloo_loop)
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


def main(argv: list[str] | None = None) -> None:
    """torchrun entry: RunConfig options plus --out; rank 0 writes the result folder there."""
    from .cli import config_from_args, config_parser
    from .launch import choose_backend, default_threads

    parser = config_parser("python -m dpkit.worker", "one rank of a dpkit run under torchrun")
    parser.add_argument("--out", required=True, help="folder rank 0 writes the RunResult to")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(cfg.threads_per_rank or default_threads(local))
    world = int(os.environ["WORLD_SIZE"])
    if world != cfg.num_processes:
        raise SystemExit(f"torchrun started {world} processes but this config needs {cfg.num_processes}")
    backend, _ = choose_backend(cfg.device, cfg.backend, local)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=timedelta(seconds=cfg.timeout_s))
    dpkit.gloo_loop.apply(cfg.gloo_loop)
    payload = {"config": cfg.to_dict(), "meta": {"start_method": "torchrun"}}
    dpkit.train.rank_main(payload, dist.get_rank(), world, args.out)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # as rank_entry: skip interpreter teardown, where gloo's I/O threads, still winding down at idle
    # priority, aborted an exit with a busy core beside it ("terminate called without an active
    # exception": 1 of 2 torchrun runs; none in 12 since, none in 12 with gloo_loop="normal")
    os._exit(0)


if __name__ == "__main__":
    main()

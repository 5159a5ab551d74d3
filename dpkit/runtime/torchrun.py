"""`python -m dpkit.runtime.torchrun`: one rank of a dpkit run started by torchrun.

Under torchrun (env:// rendezvous, one or many nodes) the same training loop runs, so the same
config gives the same losses as dpkit.run():

    torchrun --nproc-per-node 2 -m dpkit.runtime.torchrun --out results/tr --parallelism data --world-size 2

With --checkpoint-every k the ranks checkpoint into <out>/checkpoints; when torchrun restarts the group
(--max-restarts), the new ranks resume from the last good checkpoint there (the result's extra["resumed"]
says from which step and the time lost; meta["elastic_restarts"] how many restarts there were).

On success rank 0 prints the run's one-line summary and the result folder. A config that does not fit
what torchrun started (nproc-per-node x nnodes processes) is said once, by global rank 0, in one line,
before any process group exists: torch's ChildFailedError report follows it, but the reason comes first.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..config_args import config_from_args, config_parser
from . import checkpoint, gloo_loop, training
from .launch import choose_backend, default_threads

EXIT_BAD_CONFIG = 2  # as `dpkit run`: nothing was run
REFUSE_GRACE_S = 15.0  # how long the other ranks wait for rank 0's line before exiting (torchrun ends them sooner)


def world_size_problem(cfg: RunConfig, world: int, local_world: int) -> str | None:
    """Why this config cannot run on the `world` processes torchrun started, or None if it can."""
    if world == cfg.num_processes:
        return None
    nodes = world // local_world if local_world and world % local_world == 0 else "?"
    extra = cfg.num_processes - cfg.world_size
    servers = f" ({cfg.world_size} training ranks + {extra} parameter servers)" if extra else ""
    return (
        f"torchrun started {world} processes (--nproc-per-node {local_world} x --nnodes {nodes}) but this config "
        f"needs {cfg.num_processes}{servers}: make nproc-per-node x nnodes = {cfg.num_processes}, "
        f"or change --world-size"
    )


def _refuse(message: str) -> NoReturn:
    """One line from global rank 0 only (every rank would say the same), then a non-zero exit on every rank."""
    if os.environ.get("RANK", "0") == "0":
        print(f"dpkit: error: {message}", file=sys.stderr, flush=True)
    else:  # let rank 0 say it: torchrun stops every worker as soon as one exits, rank 0 perhaps before its line
        time.sleep(REFUSE_GRACE_S)
    sys.stdout.flush()
    os._exit(EXIT_BAD_CONFIG)  # no traceback per rank: the line above is the whole story


def init_process_group(backend: str, timeout: timedelta) -> None:
    """env:// as torchrun sets it up, except that each restart of the group (--max-restarts) gets keys of its own in
    the agent's store: with the shared keys a restarted rank read the dead ranks' gloo addresses and waited for them
    until the timeout (torch 2.13, localhost: 'connectFullMesh failed ... Connection refused')."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend, timeout=timeout)
        return
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    store = dist.PrefixStore(f"dpkit/attempt-{attempt}", agent)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    """torchrun entry: RunConfig options plus --out; rank 0 writes the result folder there and prints its summary."""
    parser = config_parser("python -m dpkit.runtime.torchrun", "one rank of a dpkit run under torchrun")
    parser.add_argument("--out", required=True, help="folder rank 0 writes the RunResult to")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        _refuse(str(exc))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    problem = world_size_problem(cfg, world, local)
    if problem:
        _refuse(problem)
    torch.set_num_threads(cfg.threads_per_rank or default_threads(local))
    backend, _ = choose_backend(cfg.device, cfg.backend, local)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    init_process_group(backend, timedelta(seconds=cfg.timeout_s))
    gloo_loop.apply(cfg.gloo_loop)
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # --max-restarts: this attempt's number
    payload = {"config": cfg.to_dict(), "meta": {"start_method": "torchrun", "elastic_restarts": restarts}}
    payload.update(checkpoint.elastic_payload(cfg, args.out, restarts))  # a restart resumes from the last checkpoint
    rank = dist.get_rank()
    training.rank_main(payload, rank, world, args.out)
    dist.destroy_process_group()
    if rank == 0:
        from ..results import RunResult

        print(f"{RunResult.load(args.out)!r}\nresults: {args.out}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # as rank_entry: skip interpreter teardown, where gloo's I/O threads, still winding down at idle
    # priority, aborted an exit with a busy core beside it ("terminate called without an active
    # exception": 1 of 2 torchrun runs; none in 12 since, none in 12 with gloo_loop="normal")
    os._exit(0)


if __name__ == "__main__":
    main()

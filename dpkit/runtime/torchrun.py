"""`python -m dpkit.runtime.torchrun`: one rank of a dpkit run started by torchrun.

Under torchrun (env:// rendezvous, one or many nodes) the same training loop runs, so the same
config gives the same losses as dpkit.run():

    torchrun --nproc-per-node 2 -m dpkit.runtime.torchrun --out results/tr --parallelism data --world-size 2
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config_args import config_from_args, config_parser
from . import gloo_loop, training
from .launch import choose_backend, default_threads


def main(argv: list[str] | None = None) -> None:
    """torchrun entry: RunConfig options plus --out; rank 0 writes the result folder there."""
    parser = config_parser("python -m dpkit.runtime.torchrun", "one rank of a dpkit run under torchrun")
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
    gloo_loop.apply(cfg.gloo_loop)
    payload = {"config": cfg.to_dict(), "meta": {"start_method": "torchrun"}}
    training.rank_main(payload, dist.get_rank(), world, args.out)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # as rank_entry: skip interpreter teardown, where gloo's I/O threads, still winding down at idle
    # priority, aborted an exit with a busy core beside it ("terminate called without an active
    # exception": 1 of 2 torchrun runs; none in 12 since, none in 12 with gloo_loop="normal")
    os._exit(0)


if __name__ == "__main__":
    main()

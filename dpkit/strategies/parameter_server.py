"""Parameter server: workers push gradients to dedicated server ranks and pull fresh parameters back.

Layout: `world_size` counts the workers (ranks 0..n-1); the `num_servers` = k servers come on top
(ranks n..n+k-1). The trainable parameters are split into k shards, whole tensors, balanced by size
(greedy: largest tensor to the lightest shard). Every worker and server builds the model from
`cfg.seed`, the single-process initialisation, so they start equal; each server keeps its shard and
an optimizer for it, and returns that shard as its part of the final state dict.

One worker step: forward/backward on its slice of the global batch, push each shard's gradient to
that shard's server, pull the shard back. Messages go over send/recv on a gloo group (host memory,
as classic parameter servers used TCP; on GPU runs the gradients are copied to the host).

- sync ("ps"): a server waits for all n gradients, averages them (in worker order, so runs are
  reproducible), steps its optimizer and answers every pull: the same parameters as single-process
  training on the global batch.
- async ("ps-async"): a server applies each gradient as it arrives, divided by n (so n pushes move
  the model as far as one sync step), and answers that worker's pull with its current parameters. Each update records its `staleness`: the
  updates this server applied between that worker's pull and its push (n-1 when workers move in
  lockstep). `max_staleness` = s is the stale-synchronous-parallel bound, counted in steps (clocks):
  a worker that has finished c steps gets the parameters for step c only once every worker has
  finished c - s steps, so it waits, not the others. Each update records that `clock_staleness`
  (c minus the slowest worker's step count when it pulled; always <= s). In update units this
  bounds staleness by (n-1)(2s+1). Servers only see step counts, so the bound needs no extra messages
  and k servers enforcing it independently cannot deadlock: the slowest worker is never held.

Failure: the servers are a single point of failure. If one dies the workers' pulls fail, and run()
raises an error naming the parameter server's rank. If an async worker dies the run fails too (the
servers would wait for its pushes forever), naming that worker: dpkit does not continue without it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..config import RunConfig
from .base import RankContext, Strategy, trainable


def assign_shards(sizes: list[int], k: int) -> list[list[int]]:
    """Indices of `sizes` per shard: the largest tensor goes to the lightest shard (ties: lower index)."""
    shards: list[list[int]] = [[] for _ in range(k)]
    load = [0] * k
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        j = min(range(k), key=lambda j: (load[j], j))
        shards[j].append(i)
        load[j] += sizes[i]
    return [sorted(s) for s in shards]


class ShardLayout:
    """Which trainable parameters each server owns; every rank computes the same layout from the model."""

    def __init__(self, model: nn.Module, num_servers: int) -> None:
        self.model = model
        self.params = trainable(model)
        ids = {id(p) for p in self.params}
        self.names = [name for name, p in model.named_parameters() if id(p) in ids]
        self.shards = assign_shards([p.numel() for p in self.params], num_servers)

    def params_of(self, shard: int) -> list[nn.Parameter]:
        return [self.params[i] for i in self.shards[shard]]

    def numel_of(self, shard: int) -> int:
        return sum(self.params[i].numel() for i in self.shards[shard])

    def state_of(self, shard: int) -> dict[str, torch.Tensor]:
        """Shard's entries of the single-process state dict (every key of a tied weight); shard 0 also
        gets what no shard trains (frozen parameters, buffers), so the merged dicts are the full model."""
        mine = {id(p) for p in self.params_of(shard)}
        moving = {id(p) for p in self.params}
        out = {}
        for key, value in self.model.state_dict(keep_vars=True).items():
            if id(value) in mine or (shard == 0 and id(value) not in moving):
                out[key] = value.detach().to("cpu", copy=True)
        return out


def flatten(tensors: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """One contiguous host buffer: one message per shard, not one per tensor. Pass `out` (kept from step
    to step) to allocate nothing: fresh memory every step would page-fault through every byte."""
    if out is None:
        out = torch.empty(sum(t.numel() for t in tensors))
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            out[offset : offset + n].copy_(t.detach().reshape(-1))
            offset += n
    return out


def unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def ps_group(ctx: RankContext):
    """The group PS messages travel on: the default one under gloo, a gloo group beside NCCL
    (NCCL has no receive-from-any-source). Every rank calls this once, in the same order."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def server_rank(cfg: RunConfig, shard: int) -> int:
    return cfg.world_size + shard


def build(ctx: RankContext) -> Strategy:
    from .ps_server import ParameterServer
    from .ps_worker import PushPullWorker

    return ParameterServer(ctx) if ctx.rank >= ctx.cfg.world_size else PushPullWorker(ctx)

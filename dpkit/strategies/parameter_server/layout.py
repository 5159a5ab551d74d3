"""Where a parameter server's parameters live: k shards of whole tensors. Each shard travels as one message,
in a flat host buffer (dpkit.buffers.FlatBuffer, the one flat-buffer type of the kit).

Every worker and server computes the same layout from the single-process model (the package's
docstring describes the strategy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...buffers import FlatBuffer
from ..base import trainable

if TYPE_CHECKING:
    from ...config import RunConfig


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

    def keep_only(self, shard: int) -> list[nn.Parameter]:
        """A server's view: empty every other shard's tensors (never read there) and return this shard's."""
        mine = self.params_of(shard)
        kept = {id(p) for p in mine}
        for p in self.params:
            if id(p) not in kept:
                p.data = torch.empty(0)
        return mine

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


def grad_views(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """One flat gradient for `params`, their .grad being views of it: an optimizer step reads what is copied in."""
    flat = FlatBuffer(params, device="cpu")
    for p in params:
        p.grad = flat.view(p)
    return flat.data


def server_rank(cfg: RunConfig, shard: int) -> int:
    """Global rank of the server that owns `shard`: servers come after the n workers."""
    return cfg.world_size + shard


def backup_rank(cfg: RunConfig, shard: int) -> int:
    """Global rank of the backup of `shard`'s server (ps_recovery='replicate'): backups come after the k servers."""
    return cfg.world_size + cfg.num_servers + shard


def shard_of(cfg: RunConfig, rank: int) -> int:
    """The shard a server or backup rank holds."""
    return (rank - cfg.world_size) % cfg.num_servers

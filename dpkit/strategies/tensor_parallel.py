"""Tensor parallelism (Megatron-LM): every layer's weight matrices split across the ranks.

Every rank sees the whole batch and holds the whole model except the big matrices:
  - each FeedForward: up column-parallel, down row-parallel (one all-reduce forward, one backward);
  - each attention: q, k, v column-parallel by heads (rank r computes heads r*H/tp ..), proj row-parallel.
Embedding, head and LayerNorms are replicated. Their inputs and output gradients are the same on
every rank (f all-reduces the gradient flowing back into a block), so their gradients, and hence
their updates, are identical everywhere: no gradient all-reduce for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..comm import Comm
from ..workloads import Attention, FeedForward, build_model
from .base import RankContext, Strategy, trainable
from .tp_layers import SHARD_DIM, ColumnParallelLinear, RowParallelLinear, copy_to_parallel

SHARD_KEY = "#shard-dim"  # owned_state key suffix: "block0.up.weight#shard-dim0"
#: parameters whose tensors parallelize() splits over the ranks (by name ending); the rest are replicated
TP_SPLIT = tuple(f".{m}.{w}" for m in ("attn.q", "attn.k", "attn.v", "up") for w in ("weight", "bias")) + (
    ".attn.proj.weight",
    ".down.weight",
)


class ParallelFeedForward(nn.Module):
    """x + down(gelu(up(f(x)))): the hidden 4h activations stay sharded, g inside `down` sums them."""

    def __init__(self, ff: FeedForward, rank: int, world: int, comm: Comm) -> None:
        super().__init__()
        self.comm = comm
        self.up = ColumnParallelLinear(ff.up, rank, world)
        self.down = RowParallelLinear(ff.down, rank, world, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(copy_to_parallel(x, self.comm))))


class ParallelAttention(nn.Module):
    """Causal self-attention over this rank's heads; proj (row-parallel) sums the heads' contributions."""

    def __init__(self, attn: Attention, rank: int, world: int, comm: Comm) -> None:
        super().__init__()
        self.comm = comm
        self.heads = attn.heads // world
        self.q = ColumnParallelLinear(attn.q, rank, world)
        self.k = ColumnParallelLinear(attn.k, rank, world)
        self.v = ColumnParallelLinear(attn.v, rank, world)
        self.proj = RowParallelLinear(attn.proj, rank, world, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = copy_to_parallel(x, self.comm)  # one f for q, k and v together
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


def parallelize(model: nn.Module, rank: int, world: int, comm: Comm) -> nn.Module:
    """Replace every FeedForward and Attention of `model` (in place) by this rank's tensor-parallel version."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FeedForward):
                setattr(parent, name, ParallelFeedForward(child, rank, world, comm))
            elif isinstance(child, Attention):
                setattr(parent, name, ParallelAttention(child, rank, world, comm))
    return model


def sharded_state(model: nn.Module, replicated: bool) -> dict[str, torch.Tensor]:
    """The model's shards, keyed with the dimension they were cut along, plus (if asked) its replicated tensors."""
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        dim = getattr(t, SHARD_DIM, None)
        if dim is not None:
            out[f"{key}{SHARD_KEY}{dim}"] = t.detach().to("cpu", copy=True)
        elif replicated:
            out[key] = t.detach().to("cpu", copy=True)
    return out


class TensorParallel(Strategy):
    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        full = build_model(cfg, cfg.seed)  # the single-process init; each rank keeps its shards
        self.model = parallelize(full, ctx.rank, cfg.world_size, ctx.comm).to(ctx.device)
        self.opt = self.make_optimizer(trainable(self.model))

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        loss = self.accumulate_and_step(self.model, self.opt, x, y)
        # every rank computed the same loss on the same batch: count it once
        return (loss, x.shape[0]) if self.ctx.rank == 0 else (0.0, 0)

    def owned_state(self) -> dict[str, torch.Tensor]:
        """Rank 0: the replicated tensors; every rank: its shards."""
        return sharded_state(self.model, replicated=self.ctx.rank == 0)

    @staticmethod
    def merge_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Concatenate each sharded tensor's pieces in rank order: the single-process state dict."""
        merged: dict[str, torch.Tensor] = {}
        pieces: dict[tuple[str, int], list[torch.Tensor]] = {}
        for state in states:  # rank order
            for key, t in state.items():
                if SHARD_KEY in key:
                    name, dim_text = key.rsplit(SHARD_KEY, 1)
                    pieces.setdefault((name, int(dim_text)), []).append(t)
                else:
                    merged[key] = t
        for (name, dim), shards in pieces.items():
            merged[name] = torch.cat(shards, dim)
        return merged

    def extra(self) -> dict:
        params = {id(p): p for p in self.model.parameters()}.values()
        return {
            "params": sum(p.numel() for p in params),
            "sharded_params": sum(p.numel() for p in params if hasattr(p, SHARD_DIM)),
        }

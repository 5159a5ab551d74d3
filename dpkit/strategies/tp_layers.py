"""Tensor-parallel building blocks (Megatron-LM): two communication operators and two sharded linears.

A column-parallel linear followed by a row-parallel one needs exactly one all-reduce forward and one
backward, wherever the pair sits:

    x (replicated) -> f -> ColumnParallel: y_r = x A_r -> (elementwise) -> RowParallel: z_r = y_r B_r -> g -> z = sum_r z_r
                     ^ identity fwd / all-reduce bwd                                                    ^ all-reduce fwd / identity bwd

Each operator is a small autograd Function; both go through Comm, so their time and bytes land on
the rank's timeline. Sharded parameters carry the attribute SHARD_DIM (the dimension they were cut
along), which tells the strategy how to reassemble full tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..comm import Comm, Group

SHARD_DIM = "tp_shard_dim"


class CopyToParallel(torch.autograd.Function):
    """Megatron's f. Forward: identity (every rank already holds the whole input).
    Backward: all-reduce-sum of the input gradient, since each rank's shard saw the input and gave a part of its gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Comm, group: Group | None) -> torch.Tensor:
        ctx.comm, ctx.group = comm, group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        ctx.comm.all_reduce(grad, ctx.group, name="tp f: all-reduce grad (backward)")
        return grad, None, None


class ReduceFromParallel(torch.autograd.Function):
    """Megatron's g. Forward: all-reduce-sum of the partial outputs of a row-parallel layer, so every rank holds the full output.
    Backward: identity, since the output gradient is already the same on every rank."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Comm, group: Group | None) -> torch.Tensor:
        out = x.contiguous().clone()
        comm.all_reduce(out, group, name="tp g: all-reduce output (forward)")
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def copy_to_parallel(x: torch.Tensor, comm: Comm, group: Group | None = None) -> torch.Tensor:
    return CopyToParallel.apply(x, comm, group)


def reduce_from_parallel(x: torch.Tensor, comm: Comm, group: Group | None = None) -> torch.Tensor:
    return ReduceFromParallel.apply(x, comm, group)


def _shard(t: torch.Tensor, dim: int, rank: int, world: int) -> nn.Parameter:
    """This rank's contiguous slice of `t` along `dim`, as a new parameter tagged with SHARD_DIM."""
    p = nn.Parameter(t.detach().chunk(world, dim)[rank].clone(), requires_grad=t.requires_grad)
    setattr(p, SHARD_DIM, dim)
    return p


class ColumnParallelLinear(nn.Module):
    """Rank r holds output features r*out/world .. of `full` (rows of W and the bias): y_r = x W_r^T + b_r, no communication.
    The input must already be replicated and pass through f (copy_to_parallel) once per block."""

    def __init__(self, full: nn.Linear, rank: int, world: int) -> None:
        super().__init__()
        self.weight = _shard(full.weight, 0, rank, world)
        self.bias = _shard(full.bias, 0, rank, world) if full.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """Rank r holds input features r*in/world .. of `full` (columns of W): z = g(x_r W_r^T) + b.
    The bias is replicated and added after the all-reduce, so it is counted once."""

    def __init__(self, full: nn.Linear, rank: int, world: int, comm: Comm, group: Group | None = None) -> None:
        super().__init__()
        self.weight = _shard(full.weight, 1, rank, world)
        self.bias = (
            nn.Parameter(full.bias.detach().clone(), requires_grad=full.bias.requires_grad) if full.bias is not None else None
        )
        self.comm, self.group = comm, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reduce_from_parallel(F.linear(x, self.weight), self.comm, self.group)
        return out + self.bias if self.bias is not None else out

"""torch FSDP2 (`fully_shard`) with its messages through Comm: the reference for dpkit's hand-written ZeRO-3.

FSDP2 shards every parameter over the ranks, all-gathers a module's parameters just before its forward
(and again before its backward) and reduce-scatters its gradients after, the way ZeRO-3 does.
`shard_blocks` wraps each block of dpkit's nn.Sequential models as one unit, then the root. FSDP2 lets
a user replace its two collectives (`set_custom_all_gather`, `set_custom_reduce_scatter`): here they
call Comm's reduce_scatter and all_gather, so FSDP2's messages are timed, counted and paced like every
other message of a run, with the run's algorithm (the hand-written ring too). Strategies never import
torch.distributed, so everything FSDP2 needs lives here. Checked on CPU with gloo (torch 2.13).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter  # the documented custom-comm interfaces
from torch.distributed.tensor import DTensor

from .comm import Comm, Group
from .group import GroupView

Around = Callable[[], AbstractContextManager]  # wraps every collective (the strategy pauses its compute span in it)


class _CommAllGather(AllGather):
    """FSDP2's all-gather, run by Comm (FSDP2 gathers in place: its input is the rank's part of the output)."""

    def __init__(self, comm: Comm, around: Around) -> None:
        self.comm, self.around = comm, around

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup, async_op: bool = False
    ) -> None:
        with self.around():
            self.comm.all_gather(input_tensor, output_tensor, GroupView.of(group), name="fsdp-all-gather")
        return None  # done: FSDP2 waits only on a returned Work


class _CommReduceScatter(ReduceScatter):
    """FSDP2's reduce-scatter, run by Comm. FSDP2 asks for an average (ReduceOp.AVG) in float32: Comm sums, we divide."""

    def __init__(self, comm: Comm, around: Around) -> None:
        self.comm, self.around = comm, around

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup, op, async_op: bool = False
    ) -> None:
        if op not in (dist.ReduceOp.SUM, dist.ReduceOp.AVG):
            raise NotImplementedError(f"FSDP2 asked for reduce op {op}; dpkit's reduce-scatter sums (and averages)")
        with self.around():
            shard = self.comm.reduce_scatter(input_tensor, GroupView.of(group), name="fsdp-reduce-scatter")
        output_tensor.copy_(shard)
        if op == dist.ReduceOp.AVG:
            output_tensor.div_(group.size())
        return None


def shard_blocks(model: nn.Sequential, comm: Comm, group: Group | None = None, around: Around | None = None) -> nn.Module:
    """Apply FSDP2 to `model` in place: each block (top-level child) one unit, then the root, whose unit
    holds whatever no block owns alone. A block that shares a parameter with another block (a tied
    embedding and output head) is left to the root: one FSDP2 unit may not own a parameter another uses."""
    pg = (group or comm.world).group or dist.group.WORLD
    device_type = next(model.parameters()).device.type
    mesh = DeviceMesh.from_group(pg, device_type)  # type: ignore[arg-type]
    owners: dict[int, list[str]] = {}
    for name, block in model.named_children():
        for p in block.parameters():
            owners.setdefault(id(p), []).append(name)
    shared = {name for names in owners.values() if len(names) > 1 for name in names}
    units = [block for name, block in model.named_children() if name not in shared and any(True for _ in block.parameters())]
    for block in units:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    around = around or contextlib.nullcontext
    for module in [*units, model]:
        assert isinstance(module, FSDPModule)
        module.set_custom_all_gather(_CommAllGather(comm, around))
        module.set_custom_reduce_scatter(_CommReduceScatter(comm, around))
    return model


def local_bytes(t: torch.Tensor) -> int:
    """Bytes of this rank's part of `t` (its shard, for a DTensor FSDP2 made)."""
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on the CPU, every sharded tensor gathered (a collective: every rank calls it)."""
    out = {}
    for name, value in model.state_dict().items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        out[name] = full.detach().to("cpu", copy=True)
    return out

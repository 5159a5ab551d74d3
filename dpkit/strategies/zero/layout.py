"""ZeRO's layout: trainable parameters grouped into units, each laid end to end in one flat buffer cut
into n equal shards (padded with zeros); rank r owns shard r of every unit.

With grad_sync='flat' one unit holds the whole model, with 'bucketed' units of about bucket_mb (in
reverse order, as gradients arrive; dpkit.buffers.plan_buckets, as the bucketed gradient sync cuts
them), in stage 3 one unit per block. The optimizer is an ordinary torch.optim optimizer over the shards
(one nn.Parameter per unit): SGD and Adam update every element on its own, so stepping n shards is
exactly stepping the whole model (the zero padding gets zero gradients and stays zero).

Simplifications, said so: frozen parameters and buffers stay whole on every rank (they never change;
FSDP2 shards them too, to save their memory); a parameter that two blocks share (a tied embedding and
output head) belongs to a unit, "shared", that stays gathered from the start of the forward to the end
of its backward.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import torch
from torch import nn

from ...buffers import FlatBuffer, plan_buckets
from ..base import trainable


def bucket_units(params: list[nn.Parameter], grad_sync: str, bucket_mb: float) -> list[tuple[str, list[nn.Parameter]]]:
    """Stages 1 and 2: (name, parameters) of every unit, in the order their gradients arrive in the backward."""
    arrival = list(reversed(params))  # gradients of the last layers are ready first
    if grad_sync == "flat":
        return [("all", arrival)]
    plan = plan_buckets([p.numel() * p.element_size() for p in arrival], bucket_mb)
    return [(f"bucket{i}", [arrival[j] for j in bucket]) for i, bucket in enumerate(plan)]


def block_units(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Stage 3: one unit per block (top-level child) in forward order, the parameters two blocks share first."""
    params = trainable(model)
    owners: dict[nn.Parameter, list[str]] = {}
    for name, block in model.named_children():
        for p in block.parameters():
            if p.requires_grad:
                owners.setdefault(p, []).append(name)
    shared = [p for p in params if len(owners[p]) > 1]
    units = [("shared", shared)] if shared else []
    for name, _block in model.named_children():
        mine = [p for p in params if owners[p] == [name]]
        if mine:
            units.append((name, mine))
    return units


def plan_units(model: nn.Module, stage: int, grad_sync: str, bucket_mb: float) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, trainable parameters) of every unit of `stage`. Every rank plans the same units."""
    return block_units(model) if stage == 3 else bucket_units(trainable(model), grad_sync, bucket_mb)


class Unit:
    """Parameters sharded together. `flat`: their values end to end (the model's parameters become views of
    it, so what is written there is what the model computes with); `grad`: their whole gradient, laid out
    alike; `shard`: this rank's part of `flat`, the nn.Parameter the optimizer steps (stage 3 frees `flat`,
    so there the shard is a copy of its own)."""

    def __init__(self, name: str, params: list[nn.Parameter], n: int, me: int, own_copy: bool, keep_grad: bool) -> None:
        self.name, self.params = name, params
        self.numel = sum(p.numel() for p in params)
        self.flat = FlatBuffer(params, shards=n)
        with torch.no_grad():
            self.flat.bind()
        mine = self.flat.shard(me)
        self.shard = nn.Parameter(mine.clone() if own_copy else mine)
        self.grad = FlatBuffer(params, shards=n, allocated=keep_grad)
        self.ready: set[nn.Parameter] = set()  # parameters whose gradient arrived in this backward
        self.reduce: tuple[Any, Future] | None = None  # a reduce-scatter: (its work, if in flight; the summed shard)
        self.gather: Any = None  # stage 3: an all-gather in flight


def done(value: torch.Tensor) -> Future:
    """A Future that already holds `value` (a blocking collective's result, shaped like an async one's)."""
    f: Future = Future()
    f.set_result(value)
    return f

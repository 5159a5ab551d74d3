"""Mixed precision and activation checkpointing: where each applies, and the forward's precision context.

Mixed precision (`precision="bf16"`) is torch's automatic mixed precision: the forward (and the loss) run under
torch.autocast(bfloat16), which casts each matrix multiply's inputs and weights to bf16 and keeps precision-
sensitive ops (the loss's log-softmax, layer norm) in fp32. The parameters stay fp32 (they are the master
weights), so are their gradients (autograd casts a bf16 weight copy's gradient back to the fp32 parameter) and
the optimizer state: per parameter 4 + 4 + 8 bytes with Adam, as in fp32. What shrinks is what the forward
saves for the backward: bf16 activations, plus a bf16 copy of each weight matrix that lives from its forward to
its backward (dpkit.cost.memory prices both). The other design, bf16 parameters and gradients with an fp32 master
copy in the optimizer (2 + 2 + 12 bytes per parameter with Adam), is what the cluster-scale what-if assumes.

It applies wherever a rank runs the whole model's forward through Strategy.forward_backward: one process and
every data-parallel strategy (all-reduce with every grad_sync, ZeRO 1-3 and FSDP2, the parameter servers' workers).
Pipelines and tensor parallelism run their own forwards (and send activations in fp32): refused there.

Activation checkpointing (`checkpoint_activations=True`) recomputes each hidden block in the backward
(dpkit.workloads.checkpoint_blocks). It applies where a block is run by its own module: one process, data
parallelism without parameter sharding (ZeRO 0-2, the parameter servers' workers) and pipelines (a stage runs its
blocks). ZeRO-3 and FSDP2 gather a block's parameters around its forward, which a recompute would run without;
tensor parallelism and the hybrid rebuild or regroup the blocks: refused there (dpkit/strategies/specs/precision.py).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import RunConfig


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's precision: torch.autocast(bfloat16) for precision='bf16', else nothing."""
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

"""ZeRO stage 2: stage 1, and a rank keeps only its shard of the gradients.

A parameter's gradient is moved into its unit's whole-gradient buffer as soon as autograd has it; the
buffer lives only until the unit is reduce-scattered, then this rank's shard of the average is added to
the shard's gradient (summed over the micro-steps: every micro-step reduces). So the whole gradients
never all exist at once, only the units in flight.
"""

from __future__ import annotations

import torch
from torch import nn

from ...runtime.memory import Held
from .layout import Unit
from .stage1 import ZeRO1


class ZeRO2(ZeRO1):
    """Optimizer state and gradients sharded."""

    keeps_whole_gradients = False

    def prepare_units(self) -> None:
        """A rank keeps only its gradient shard, summed over the micro-steps."""
        for u in self.units:
            u.shard.grad = torch.zeros_like(u.shard)

    def gradient_arrived(self, unit: Unit, p: nn.Parameter) -> None:
        """Move the gradient into the unit's whole-gradient buffer (allocated for the moment), free the parameter's own."""
        if not unit.grad.allocated:
            unit.grad.allocate(zero=True)
        assert p.grad is not None  # the hook runs after the gradient was accumulated
        unit.grad.view(p).copy_(p.grad)
        p.grad = None

    def take_shard_grad(self, unit: Unit, mean: torch.Tensor) -> None:
        assert unit.shard.grad is not None
        unit.shard.grad.add_(mean)
        unit.grad.free()  # the whole gradient is no longer needed

    def reduce_gradients(self) -> None:
        for unit in self.units:  # a parameter that got no gradient this step: zeros in its place
            if unit not in self.launched:
                if not unit.grad.allocated:
                    unit.grad.allocate(zero=True)
                for p in unit.params:
                    if p not in unit.ready:
                        unit.grad.view(p).zero_()
        super().reduce_gradients()

    def gather_parameters(self) -> None:
        for unit in self.units:
            self.comm.all_gather(unit.shard.detach(), unit.flat.data, name=f"all-gather-{unit.name}")
            assert unit.shard.grad is not None
            unit.shard.grad.zero_()

    def held_tensors(self) -> Held:
        """As stage 1, but the gradients are the shards' (and any whole gradient still in flight)."""
        held = super().held_tensors()
        grads = [*(u.shard.grad for u in self.units), *(u.grad.data for u in self.units), *(p.grad for p in self.unit_of)]
        return Held(held.params, grads, held.optimizers)

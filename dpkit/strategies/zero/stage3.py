"""ZeRO stage 3: stage 2, and a rank keeps only its shard of the parameters.

Units are the model's blocks. A block's parameters are all-gathered just before its forward and freed
after it, gathered again just before its backward and freed once its gradients are in (then reduce-
scattered, as in stage 2). The parameters stay views of the unit's flat buffer, whose storage shrinks to
nothing while freed, so the tensors autograd saved for the backward stay valid. With grad_sync='bucketed'
the next block's gather starts (is prefetched) while this block computes: forward order in the forward,
reverse order in the backward.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from ..base import state_on_cpu
from .layout import Unit, block_units
from .stage2 import ZeRO2


class ZeRO3(ZeRO2):
    """Optimizer state, gradients and parameters sharded."""

    own_shard_copy = True

    def plan(self) -> list[tuple[str, list[nn.Parameter]]]:
        return block_units(self.module)

    def prepare_units(self) -> None:
        super().prepare_units()
        self.order = [u for u in self.units if u.name != "shared"]  # forward order of the blocks' units
        self.module.register_forward_pre_hook(self._before_model)
        for name, block in self.module.named_children():
            unit = next((u for u in self.order if u.name == name), None)
            if unit is not None:
                block.register_forward_pre_hook(partial(self._before_block, unit))
                block.register_forward_hook(partial(self._after_block, unit))
        for unit in self.units:
            unit.flat.free()  # from now on a rank holds only its shards

    # -- gather a block's parameters just before they are used, free them after -----------------------
    def _before_model(self, _module: nn.Module, _args: Any) -> None:
        for unit in self.units:
            if unit.name == "shared":  # used by two blocks: gathered for the whole forward and backward
                self.wait_gathered(unit)
        self.prefetch(self.order[0] if self.order else None)

    def _before_block(self, unit: Unit, _module: nn.Module, _args: Any) -> None:
        self.wait_gathered(unit)
        self.prefetch(self.neighbour(unit, +1))  # the next block's gather runs while this one computes

    def _after_block(self, unit: Unit, _module: nn.Module, _args: Any, output: Any) -> None:
        unit.flat.free()
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda _grad: self._before_block_backward(unit))  # fires just before the block's backward

    def _before_block_backward(self, unit: Unit) -> None:
        self.wait_gathered(unit)
        self.prefetch(self.neighbour(unit, -1))  # the backward runs the blocks in reverse: prefetch the one before

    def neighbour(self, unit: Unit, step: int) -> Unit | None:
        i = self.order.index(unit) + step
        return self.order[i] if 0 <= i < len(self.order) else None

    def start_gather(self, unit: Unit) -> None:
        """All-gather the unit's parameters into its (re)allocated flat buffer: in the background with overlap."""
        if unit.flat.allocated:  # gathered, or on its way
            return
        unit.flat.allocate()
        shard, name = unit.shard.detach(), f"all-gather-{unit.name}"
        if self.overlap:  # every collective through the comm thread, so all ranks issue them in one order
            unit.gather = self.comm.all_gather_async(shard, unit.flat.data, name=name)
        else:
            self.comm.all_gather(shard, unit.flat.data, name=name)

    def prefetch(self, unit: Unit | None) -> None:
        if self.overlap and unit is not None:
            self.start_gather(unit)

    def wait_gathered(self, unit: Unit) -> None:
        self.start_gather(unit)
        if unit.gather is not None:
            unit.gather.wait()
            unit.gather = None

    # -- gradients: a block's parameters are freed once its gradients are in ------------------------------
    def unit_complete(self, unit: Unit) -> None:
        if unit.name != "shared":
            unit.flat.free()  # every use of these parameters in the backward is done
        super().unit_complete(unit)

    def reduce_gradients(self) -> None:
        super().reduce_gradients()
        for unit in self.units:  # the backward is over: nothing stays gathered (the shared unit; a prefetch never used)
            if unit.gather is not None:
                self.wait_gathered(unit)
            unit.flat.free()

    def gather_parameters(self) -> None:
        """Nothing to gather after the step (each block is gathered where it is used): reset the gradients."""
        for unit in self.units:
            assert unit.shard.grad is not None
            unit.shard.grad.zero_()

    # -- results ---------------------------------------------------------------------------------------------
    def owned_state(self) -> dict[str, torch.Tensor]:
        """The parameters are sharded: gather every unit (all ranks), copy, free."""
        for unit in self.units:
            self.wait_gathered(unit)
        state = state_on_cpu(self.module) if self.ctx.rank == 0 else {}
        for unit in self.units:
            unit.flat.free()
        return state

"""The learning rate of every step: the one place every strategy's optimizer gets its rate from.

effective lr at step s (counted from 0) = lr · f(global_batch / base_batch) · w(s), where
  f = 1 (lr_scaling "none"), the ratio itself ("linear", Goyal et al. 2017) or its square root ("sqrt"),
  w(s) = min(1, (s + 1) / warmup_steps) with warm-up (the first step already moves, at lr/warmup_steps), else 1.
base_batch is the global batch `lr` was tuned for (default: global_batch, so f = 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import RunConfig


def scale_factor(cfg: RunConfig) -> float:
    """f(global_batch / base_batch): how far the rule moves lr for this global batch."""
    ratio = cfg.global_batch / (cfg.base_batch or cfg.global_batch)
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


def lr_at(cfg: RunConfig, step: int) -> float:
    """The effective learning rate of step `step` (0-based), as the module docstring defines it."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cfg.lr * scale_factor(cfg) * warm


def optimizers_of(strategy: object) -> Iterator[torch.optim.Optimizer]:
    """Every optimizer a strategy steps: each keeps its own as `opt` (a parameter-server worker has none)."""
    opt = getattr(strategy, "opt", None)
    if isinstance(opt, torch.optim.Optimizer):
        yield opt


def set_lr(strategy: object, lr: float) -> None:
    """Give every param group of the strategy's optimizers this step's rate (called before each step)."""
    for opt in optimizers_of(strategy):
        for group in opt.param_groups:
            group["lr"] = lr

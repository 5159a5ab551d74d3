"""Where a pipeline cuts the model: the one function that says which blocks each stage runs.

The stages themselves (pipeline.py, hybrid.py), config validation and the cost and memory models all
ask stage_cut, so the stages that run are the stages that were checked and predicted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..workloads import build_dataset, model_layout

if TYPE_CHECKING:
    from ..config import RunConfig


def balanced_split(sizes: list[int], parts: int) -> list[int]:
    """Counts of consecutive items per part (each >= 1) that minimise the largest part's total size."""
    n = len(sizes)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} blocks into {parts} non-empty stages")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]  # best[k][i]: first i items in k parts
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    counts, i = [], n
    for k in range(parts, 0, -1):
        counts.append(i - cut[k][i])
        i = cut[k][i]
    return counts[::-1]


def stage_cut(cfg: RunConfig, stages: int) -> list[list[str]]:
    """Block names of each of `stages` stages, in order: cfg.stage_layers blocks per stage if given, else
    consecutive blocks balanced by parameter count (from the model's layout: no model is built)."""
    layout = model_layout(cfg)
    counts = list(cfg.stage_layers) or balanced_split(layout.block_sizes(), stages)
    out, start = [], 0
    for count in counts:
        out.append(list(layout.blocks[start : start + count]))
        start += count
    return out


def boundary_shapes(cfg: RunConfig, model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of each block's output, from a one-sample dry run, so receivers can allocate buffers."""
    x, _ = build_dataset(cfg).global_batch(0, 1)
    shapes = {}
    with torch.no_grad():
        for name, block in model.named_children():
            x = block(x)
            shapes[name] = tuple(x.shape[1:])
    return shapes

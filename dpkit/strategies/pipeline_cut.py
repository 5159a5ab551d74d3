"""Where a pipeline cuts the model: the one function that says which blocks each stage runs.

The stages themselves (pipeline.py, hybrid.py), config validation and the cost and memory models all
ask stage_cut, so the stages that run are the stages that were checked and predicted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..workloads import build_dataset, model_layout, trainable_names
from .spec import config_error

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


# ---- what the spec asks of a cut: is it valid, each stage's share, the activations crossing it ----------
def validate_stages(cfg: RunConfig, stages: int) -> None:
    """A pipeline of `stages` stages must be cut between the model's blocks, each stage at least one block."""
    blocks = cfg.model_layers + 2  # embedding/input block + hidden blocks + head
    if stages > blocks:
        raise config_error("world_size", cfg.world_size, f"at most {blocks} pipeline stages: the {cfg.model} has {blocks} layers")
    if cfg.stage_layers and (len(cfg.stage_layers) != stages or sum(cfg.stage_layers) != blocks or min(cfg.stage_layers) < 1):
        raise config_error("stage_layers", cfg.stage_layers, f"{stages} positive counts summing to {blocks} layers")
    if cfg.tie_weights:
        raise config_error("tie_weights", True, "False with pipeline stages (the tied weight would live on two stages)")
    if cfg.freeze:  # a stage with nothing to train has an empty optimizer and fails only after the launch
        trained = {name.split(".")[0] for name in trainable_names(cfg)}
        for s, names in enumerate(stage_cut(cfg, stages)):
            if not trained & set(names):
                raise config_error(
                    "freeze",
                    cfg.freeze,
                    f"prefixes that leave every pipeline stage a parameter to train (stage {s}, {names}, has none)",
                )


def stage_shares(cfg: RunConfig, model: nn.Module, stages: int) -> tuple[list[float], list[list[str]]]:
    """Each stage's share of the model's parameters (the cost model's stand-in for its share of the compute)."""
    blocks = stage_cut(cfg, stages)
    sizes = {name: sum(p.numel() for p in b.parameters()) for name, b in model.named_children()}
    total = sum(sizes.values())
    return [sum(sizes[n] for n in names) / total for names in blocks], blocks


def activation_bytes(cfg: RunConfig, model: nn.Module, blocks: list[list[str]], batch: int) -> float:
    """Bytes of the largest activation crossing a stage boundary for `batch` samples (float32)."""
    shapes = boundary_shapes(cfg, model)
    per_sample = [math.prod(shapes[names[-1]]) for names in blocks[:-1]] or [0]
    return 4.0 * batch * max(per_sample)

"""What each way of sending less costs on a link, per step (docs/formulas.md, "Sending less"): formulas only.

S is the gradient (or parameter) bytes at 4 bytes a value, n the ranks, `shapes` the trainable parameters.
- fp16 / bf16: one all-reduce of S/2.
- PowerSGD rank r: an all-reduce of the uncompressed vectors, one of every P (rows x r) and one of every Q
  (cols x r): r(rows + cols) values instead of rows * cols, for matrices where that gains at least 2x.
- top-k ratio rho: an all-gather of k = rho * S/4 values and k int32 indices from every rank: (n-1) 8k bytes.
- local SGD every H steps: one all-reduce of the parameters every H steps: 1/H of it per step.
The compressor's own arithmetic (matrix products, top-k selection) is compute, not priced here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Link, all_gather_terms, allreduce_terms

COMPRESSIONS = ("none", "fp16", "bf16", "powersgd", "topk")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def powersgd_split(shapes: Sequence[Sequence[int]], rank: int, min_compression_rate: float = 2.0) -> tuple[int, int, int]:
    """(values sent uncompressed, values in all P, values in all Q): each parameter as a rows x rest matrix,
    compressed when r(rows + cols) * min_compression_rate < rows * cols (as torch's powerSGD_hook decides)."""
    plain = ps = qs = 0
    for shape in shapes:
        numel = _numel(shape)
        rows = int(shape[0]) if len(shape) else 1
        cols = numel // rows if rows else 0
        r = min(rows, cols, rank)
        if (rows + cols) * r * min_compression_rate < rows * cols:
            ps, qs = ps + rows * r, qs + cols * r
        else:
            plain += numel
    return plain, ps, qs


def topk_count(total_values: int, ratio: float) -> int:
    """k for a buffer of `total_values` values: at least one."""
    return max(1, round(ratio * total_values))


def compressed_bytes(kind: str, shapes: Sequence[Sequence[int]], *, powersgd_rank: int = 1, topk_ratio: float = 0.01) -> int:
    """Bytes one rank's compressed gradient holds (what the collective then moves instead of 4 bytes a value)."""
    total = sum(_numel(s) for s in shapes)
    if kind == "none":
        return 4 * total
    if kind in ("fp16", "bf16"):
        return 2 * total
    if kind == "topk":
        return 8 * topk_count(total, topk_ratio)  # a 4-byte value and a 4-byte index each
    if kind == "powersgd":
        return 4 * sum(powersgd_split(shapes, powersgd_rank))
    raise ValueError(f"compression {kind!r} is not allowed: choose one of {', '.join(COMPRESSIONS)}")


def sync_bytes_sent(
    kind: str, shapes: Sequence[Sequence[int]], n: int, *, powersgd_rank: int = 1, topk_ratio: float = 0.01, local_steps: int = 1
) -> float:
    """Bytes one rank sends per step to average the gradients (ring all-reduce: 2(n-1)/n of a buffer;
    top-k's all-gather: (n-1) times its k values and indices; local SGD: the parameters' all-reduce / H)."""
    if n <= 1:
        return 0.0
    if kind == "topk":
        return all_gather_terms(n * compressed_bytes("topk", shapes, topk_ratio=topk_ratio), n)[1]
    size = compressed_bytes(kind, shapes, powersgd_rank=powersgd_rank)
    return allreduce_terms("ring", size, n)[1] / local_steps


def sync_time(
    kind: str,
    shapes: Sequence[Sequence[int]],
    n: int,
    link: Link,
    *,
    powersgd_rank: int = 1,
    topk_ratio: float = 0.01,
    local_steps: int = 1,
    algo: str = "ring",
) -> float:
    """Seconds of one step's gradient averaging on `link` (alpha-beta terms of docs/formulas.md), the
    compressor's arithmetic left out. PowerSGD pays up to three all-reduces' latencies for its smaller bytes."""
    if n <= 1:
        return 0.0
    if kind == "topk":
        return link.time(all_gather_terms(n * compressed_bytes("topk", shapes, topk_ratio=topk_ratio), n))
    if kind == "powersgd":
        parts = [p for p in powersgd_split(shapes, powersgd_rank) if p]
        return sum(link.time(allreduce_terms(algo, 4 * p, n)) for p in parts)
    return link.time(allreduce_terms(algo, compressed_bytes(kind, shapes), n)) / local_steps

"""What if there were 1,024 workers on a 100 GbE network? The cost model at scales a laptop cannot run.

The central question is the crossover: the worker count beyond which a synchronous parameter
server with k shards is slower than a ring all-reduce for a model of S bytes. Both are in the
alpha-beta-gamma model (costmodel.py); per worker count n,

    PS(n)   = 2 alpha + (n+k) o + 2 max(S, nS/k)/B + (n-1) S/k gamma
    ring(n) = 2(n-1)(alpha + o) + 2(n-1)/n S/B + (n-1)/n S gamma

(o: the link's per-message overhead at a receiving port: a server takes n pushes in, a worker k pulls.)

The PS wins on latency (2 alpha against 2(n-1) alpha) and loses on bandwidth (a worker moves 2S,
a ring member 2(n-1)/n S; a server 2nS/k), so it can be faster only in a window of worker counts.
The crossover is where that window ends: the fewest workers n* such that the PS is slower for
every n from n* to n_max. n (PS(n) - ring(n)) is a quadratic in n on each side of n = k, so n* is
found exactly from its roots (no scan); tests check it against a scan.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..cost.model import PRESETS, Link, allreduce_time, ps_time

MODEL_SIZES = {"10M params": 40e6, "100M params": 400e6, "1B params": 4e9}  # fp32 gradients, bytes


def _quadratic(size: float, k: int, link: Link, below_k: bool) -> tuple[float, float, float]:
    """(a, b, c) with n (PS(n) - ring(n)) = a n^2 + b n + c, for n < k (below_k) or n >= k."""
    al, inv_b, g, o = link.alpha, 1.0 / link.bandwidth, link.gamma, link.overhead
    ring_const = 2 * size * inv_b + size * g  # n ring(n) = 2 (alpha + o) n^2 + (ring_const - 2 (alpha + o)) n - ring_const
    al_ring = al + o  # every ring message pays its overhead o; a PS pays (n + k) o at its ports (model.ps_time)
    if below_k:  # n PS(n) = (2 alpha + k o + 2 S/B - S g / k) n + (S g / k + o) n^2
        ps_a, ps_b = size * g / k + o, 2 * al + k * o + 2 * size * inv_b - size * g / k
    else:  # n PS(n) = (2 alpha + k o - S g / k) n + (2 S/(kB) + S g / k + o) n^2
        ps_a, ps_b = 2 * size * inv_b / k + size * g / k + o, 2 * al + k * o - size * g / k
    return ps_a - 2 * al_ring, ps_b - (ring_const - 2 * al_ring), ring_const


def _last_not_positive(q: tuple[float, float, float], lo: int, hi: int) -> int | None:
    """Largest integer n in [lo, hi] with a n^2 + b n + c <= 0: hi itself, or at/just below a real root."""
    a, b, c = q
    if lo > hi:
        return None
    roots = np.roots([a, b, c]) if (a or b) else np.array([])
    candidates = {hi} | {math.floor(r.real) + d for r in roots if abs(r.imag) < 1e-9 for d in (-1, 0, 1)}
    for n in sorted((x for x in candidates if lo <= x <= hi), reverse=True):
        if a * n * n + b * n + c <= 0:
            return n
    return None


def ps_ring_crossover(size: float, k: int, link: Link, n_max: int = 1024) -> int | None:
    """Fewest workers n* (>= 2) such that a k-shard sync PS is slower than a ring all-reduce for every
    n in n*..n_max; None if the PS is still not slower at n_max."""
    if k < 1 or size < 0:
        raise ValueError(f"need k >= 1 servers and size >= 0 bytes, not k={k}, size={size}")
    last = _last_not_positive(_quadratic(size, k, link, below_k=False), max(2, k), n_max)
    if last is None:
        last = _last_not_positive(_quadratic(size, k, link, below_k=True), 2, min(k - 1, n_max))
    if last == n_max:
        return None
    return 2 if last is None else last + 1


def crossover_table(
    sizes: dict[str, float] | None = None,
    ks: tuple[int, ...] = (1, 2, 4, 8, 16),
    links: dict[str, Link] | None = None,
    n_max: int = 1024,
) -> pd.DataFrame:
    """One row per (link, model size, k): the worker count where one ring beats the PS (None = not within n_max)."""
    rows = []
    for lname, link in (links or PRESETS).items():
        for sname, size in (sizes or MODEL_SIZES).items():
            for k in ks:
                n = ps_ring_crossover(size, k, link, n_max)
                rows.append({"link": lname, "model": sname, "bytes": size, "servers": k, "crossover_workers": n})
    return pd.DataFrame(rows)


def comm_scan(size: float, link: Link, ns: list[int] | None = None, ks: tuple[int, ...] = (1, 4, 16)) -> pd.DataFrame:
    """Seconds per synchronisation for each pattern and worker count (the what-if plot's curves)."""
    ns = ns or [2**i for i in range(1, 11)]
    rows = []
    for n in ns:
        row: dict[str, float] = {"workers": n}
        for algo in ("ring", "tree", "ring-whole", "reduce-broadcast"):
            row[algo] = allreduce_time(algo, size, n, link)
        for k in ks:
            row[f"ps k={k}"] = ps_time(size, n, k, link)
        rows.append(row)
    return pd.DataFrame(rows)


def data_parallel_scaling(
    compute_per_sample_s: float,
    size: float,
    global_batch: int,
    link: Link,
    ns: list[int] | None = None,
    algo: str = "ring",
    overlap: float = 0.0,
) -> pd.DataFrame:
    """Strong scaling of data parallelism at a fixed global batch: step(n) = compute/n + (1-overlap) * allreduce(n).
    `overlap` is the share of the all-reduce hidden behind the backward (0: none, as flat sync)."""
    ns = ns or [2**i for i in range(0, 11)]
    rows = []
    t1 = compute_per_sample_s * global_batch
    for n in ns:
        comm = allreduce_time(algo, size, n, link)
        step = compute_per_sample_s * global_batch / n + (1 - overlap) * comm
        rows.append({"workers": n, "step_s": step, "comm_s": comm, "speedup": t1 / step, "efficiency": t1 / step / n})
    return pd.DataFrame(rows)

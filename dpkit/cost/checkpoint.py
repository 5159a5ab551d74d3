"""How often to checkpoint: the Young (1974) and Daly (2006) intervals, and the time a choice loses.

A job that writes a checkpoint costing C seconds every τ seconds of work, on machines that fail on average
every M seconds (the MTBF of the whole job: one node's MTBF / nodes), loses two things: the checkpoints
themselves (C per τ of work) and, at each failure, the work since the last checkpoint (τ/2 on average).
To first order the lost share of the time is

    waste(τ) = C/τ + τ/(2M),

smallest at Young's τ = √(2·C·M). Daly's higher-order estimate corrects it when C is not small against M:

    τ = √(2·C·M) · (1 + ⅓·√(C/(2M)) + ⅑·(C/(2M))) − C   for C < 2M,   τ = M otherwise.

All times in seconds; τ is the work between the end of one checkpoint and the start of the next.
"""

from __future__ import annotations

import math
import random


def _check(checkpoint_s: float, mtbf_s: float) -> None:
    for name, value in (("checkpoint_s", checkpoint_s), ("mtbf_s", mtbf_s)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r} is not allowed: a finite number of seconds > 0")


def young_interval(checkpoint_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum √(2·C·M): the τ that minimises waste(τ) = C/τ + τ/(2M)."""
    _check(checkpoint_s, mtbf_s)
    return math.sqrt(2 * checkpoint_s * mtbf_s)


def daly_interval(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum; equal to Young's to within a few per cent while C is under 1% of M."""
    _check(checkpoint_s, mtbf_s)
    if checkpoint_s >= 2 * mtbf_s:
        return mtbf_s
    r = checkpoint_s / (2 * mtbf_s)
    return math.sqrt(2 * checkpoint_s * mtbf_s) * (1 + math.sqrt(r) / 3 + r / 9) - checkpoint_s


def waste_fraction(interval_s: float, checkpoint_s: float, mtbf_s: float) -> float:
    """First-order lost share of the time, C/τ + τ/(2M): checkpoints written plus work redone after failures."""
    _check(checkpoint_s, mtbf_s)
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s={interval_s!r} is not allowed: a finite number of seconds > 0")
    return checkpoint_s / interval_s + interval_s / (2 * mtbf_s)


def simulate_waste(
    interval_s: float,
    checkpoint_s: float,
    mtbf_s: float,
    work_s: float,
    restart_s: float = 0.0,
    trials: int = 200,
    seed: int = 0,
) -> float:
    """The lost share of the time, (wall time - work) / work, averaged over `trials` simulated jobs with failures
    injected at exponential intervals of mean `mtbf_s`: what waste_fraction() estimates to first order, measured.

    A job does `work_s` seconds of work in pieces of `interval_s`, each followed by a checkpoint of `checkpoint_s`
    (not after the last); a failure loses the work since the last completed checkpoint and costs `restart_s`."""
    _check(checkpoint_s, mtbf_s)
    for name, value in (("interval_s", interval_s), ("work_s", work_s)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r} is not allowed: a finite number of seconds > 0")
    rng = random.Random(seed)
    total = 0.0
    for _ in range(trials):
        t, done, failures = 0.0, 0.0, 0
        next_failure = rng.expovariate(1 / mtbf_s)
        while done < work_s:
            piece = min(interval_s, work_s - done)
            need = piece + (checkpoint_s if done + piece < work_s else 0.0)
            if t + need <= next_failure:
                t, done = t + need, done + piece
                continue
            failures += 1
            if failures > 100_000:
                raise ValueError(f"interval_s={interval_s!r}: a piece plus its checkpoint rarely fits between failures")
            t = next_failure + restart_s
            next_failure = t + rng.expovariate(1 / mtbf_s)
        total += t
    return total / trials / work_s - 1

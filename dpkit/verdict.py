"""A verdict in words under a panel's figures, computed from its runs: which is faster, by how much, and why.

Two configurations differ reliably only when their repeats do not overlap (the slowest repeat of the faster
one beats the fastest repeat of the other); otherwise the verdict says "no reliable difference". Numbers a
figure withholds (dpkit.measure.withhold) are withheld here too, with the same reason.
"""

from __future__ import annotations

import math

import pandas as pd


def _f(row: pd.Series, col: str) -> float:
    value = row.get(col)
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _range(row: pd.Series) -> tuple[float, float]:
    t = _f(row, "step_time_s")
    lo, hi = _f(row, "step_time_min_s"), _f(row, "step_time_max_s")
    return (t if math.isnan(lo) else lo, t if math.isnan(hi) else hi)


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms"


def _unmeasurable(row: pd.Series) -> str:
    """Why the row's step time cannot be compared now ('' if it can): a speedup withheld only for its baseline's
    sake still has a good step time of its own."""
    reason = str(row.get("withheld") or "")
    return reason if reason and "baseline" not in reason else ""


def _why(fast: pd.Series, slow: pd.Series, nf: str, ns: str) -> str:
    """The measured reason one row (ns) is slower than another (nf): the server's bytes against a worker's, exposed
    comm, or compute; each number says whose it is."""
    parts = []
    server_b, worker_b = _f(slow, "server_bytes_per_step"), _f(slow, "worker_bytes_per_step")
    if server_b > 0 and worker_b > 0:
        parts.append(f"its server sends {server_b / worker_b:.2g}x a worker's bytes")
    exp_fast, exp_slow = _f(fast, "exposed_comm_s"), _f(slow, "exposed_comm_s")
    server_exp = _f(slow, "server_exposed_comm_s")
    if not math.isnan(exp_slow) and not math.isnan(exp_fast) and exp_slow > exp_fast:
        parts.append(f"exposed comm {_ms(exp_slow)} per step for {ns} against {_ms(exp_fast)} for {nf}")
    if server_exp > 0:
        parts.append(f"the server is busy in comm {_ms(server_exp)} per step")
    comp_fast, comp_slow = _f(fast, "compute_s"), _f(slow, "compute_s")
    if not parts and comp_slow > comp_fast:
        parts.append(f"compute {_ms(comp_slow)} per step for {ns} against {_ms(comp_fast)} for {nf}")
    return "; ".join(parts)


def compare_rows(a: pd.Series, b: pd.Series, name_a: str, name_b: str) -> str:
    """One sentence: which of a and b has the shorter step, by how much, and why, or no reliable difference."""
    for row, name in ((a, name_a), (b, name_b)):
        if reason := _unmeasurable(row):
            return f"{name}: {reason}."
    (a_lo, a_hi), (b_lo, b_hi) = _range(a), _range(b)
    ta, tb = _f(a, "step_time_s"), _f(b, "step_time_s")
    if a_hi < b_lo or b_hi < a_lo:
        fast, slow, nf, ns, tf, ts = (a, b, name_a, name_b, ta, tb) if ta < tb else (b, a, name_b, name_a, tb, ta)
        why = _why(fast, slow, nf, ns)
        return f"{nf} is {ts / tf:.2f}x faster than {ns} ({_ms(tf)} against {_ms(ts)} per step)" + (f": {why}." if why else ".")
    return f"no reliable difference between {name_a} and {name_b} ({_ms(ta)} and {_ms(tb)} per step; their repeats overlap)."


def experiment_verdict(frame: pd.DataFrame, hue: str = "mode") -> list[str]:
    """Per world size above 1: the modes compared pairwise against the first, and each against one process."""
    lines = []
    modes = list(pd.unique(frame[hue]))
    base = frame[frame.world_size == frame.world_size.min()]
    for n in sorted(pd.unique(frame.world_size)):
        if n == frame.world_size.min():
            continue
        at = {m: frame[(frame[hue] == m) & (frame.world_size == n)] for m in modes}
        rows = {m: g.iloc[0] for m, g in at.items() if len(g)}
        for m in list(rows)[1:]:
            first = list(rows)[0]
            lines.append(f"With {int(n)} training processes: " + compare_rows(rows[first], rows[m], first, m))
        if len(base):
            for m, row in rows.items():
                lines.append(
                    f"With {int(n)} training processes: "
                    + compare_rows(row, base.iloc[0], f"{m} on {int(n)} ranks", "one process")
                )
    return lines


def scaling_verdict(frame: pd.DataFrame) -> list[str]:
    """Each world size above 1 against the single process."""
    base = frame[frame.world_size == frame.world_size.min()]
    if base.empty:
        return []
    return [
        compare_rows(row, base.iloc[0], f"{int(row.world_size)} ranks", "one process")
        for _, row in frame[frame.world_size > frame.world_size.min()].sort_values("world_size").iterrows()
    ]

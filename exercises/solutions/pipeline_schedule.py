"""Exercise 4, reference solution: the GPipe and 1F1B schedules of one pipeline stage."""


def pipeline_schedule(kind: str, m: int, p: int, s: int) -> list[tuple[str, int]]:
    """Stage s's actions (of p stages, m micro-batches): ("F", i) forward, ("B", i) backward of micro-batch i."""
    if kind == "gpipe":  # all forwards, then all backwards: m activations kept at the peak
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if kind == "1f1b":
        warm = min(p - s - 1, m)  # forwards in flight before the first backward can arrive from the last stage
        actions = [("F", i) for i in range(warm)]
        for i in range(m - warm):  # steady state: one forward, one backward
            actions += [("F", warm + i), ("B", i)]
        return actions + [("B", i) for i in range(m - warm, m)]  # cool-down
    raise ValueError(f"unknown schedule {kind!r}")

"""Recognise a deadlock of the learner's ranks within seconds, and say who waits on whom.

Each rank writes what it is doing to a small progress file (dpkit.exercises.base.Progress) on every net call:
"in net.recv from rank 1", "waiting for irecv from rank 3", with the isend/irecv it posted and has not seen
complete. When every rank has been blocked in a net call for STUCK_S with nothing new written, no message
is on its way: a deadlock, not a slow run. The report lists each rank's wait and what it posted, and for a
receive whose sender is not sending to it, says so ("rank 1 waits to receive from rank 2, but rank 2 sends
only to rank 3"): the mistake a ring that names the wrong neighbour makes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from .base import read_progress

STUCK_S = 3.0  # every rank blocked this long, nothing new: a deadlock
BLOCKED = ("in net.", "waiting for ", "finished this case, waiting")
_FROM = re.compile(r"(?:recv|irecv) from rank (\d+)")
_TO = re.compile(r"(?:send|isend) to rank (\d+)")


def deadlock(out: str | Path, world: int, stuck_s: float = STUCK_S) -> str | None:
    """What deadlocked, in words, if every rank has been blocked in a net call for stuck_s; else None."""
    now = time.time()
    states = {}
    for rank in range(world):
        path = Path(out, f"progress{rank}.json")
        try:
            age = now - path.stat().st_mtime
        except OSError:
            return None  # a rank not started yet
        state = read_progress(out, rank)
        if age < stuck_s or not state.get("doing", "").startswith(BLOCKED):
            return None
        states[rank] = state
    return describe(states)


def describe(states: dict[int, dict]) -> str:
    """Each rank's wait, what it posted, and every receive no one is sending to."""
    waits = []
    for rank, state in states.items():
        text = f"rank {rank} is {state['doing']}"
        others = [p for p in state.get("pending", []) if p not in state["doing"]]
        if others:
            text += f" (posted, not completed: {', '.join(others)})"
        waits.append(text)
    sending = {r: {int(t) for t in _TO.findall(" ".join([s["doing"], *s.get("pending", [])]))} for r, s in states.items()}
    receiving = {r: {int(f) for f in _FROM.findall(" ".join([s["doing"], *s.get("pending", [])]))} for r, s in states.items()}
    unmatched = []
    for rank, sources in receiving.items():
        for src in sorted(sources):
            if rank not in sending.get(src, set()):
                targets = sorted(sending.get(src, set()))
                does = f"sends only to rank {', '.join(map(str, targets))}" if targets else "sends nothing now"
                unmatched.append(f"rank {rank} waits to receive from rank {src}, but rank {src} {does}")
    both_send = [
        (a, b) for a in sending for b in sending[a] if a < b and a in sending.get(b, set()) and "send" in states[a]["doing"]
    ]
    text = "every rank has waited over " + f"{STUCK_S:g} s with no message on its way: " + "; ".join(waits) + "."
    if unmatched:
        text += (
            " " + "; ".join(unmatched) + ". Each receive must name the rank that sends to it "
            "(in a ring: receive from the left neighbour (rank - 1) % n, send to the right (rank + 1) % n)."
        )
    elif both_send:
        a, b = both_send[0]
        text += (
            f" Ranks {a} and {b} both send to each other first, and a send waits until the receiver posts the "
            "matching receive: post the receive first with net.irecv (or send with net.isend), then wait."
        )
    return text

"""Where a run ran, in words a panel can print under its figure: "ran on cores 4–7 beside 3 other runs".

Why: with core slots (dpkit.runtime.queue) a run shares the machine with other learners' runs, each on its own
cores; a learner reading a step time should see that it was measured on its own cores, and beside how many runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def core_ranges(cores: Iterable[int]) -> str:
    """0, 1, 2, 3, 6 -> '0–3, 6': consecutive cores as one range."""
    ids = sorted({int(c) for c in cores})
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}–{ids[j]}")
        i = j + 1
    return ", ".join(parts)


def ran_on(meta: Mapping[str, Any]) -> str:
    """One line from a RunResult's meta (queue_cores, queue_runs_beside, queue_wait_s, queued): which cores the run
    had and how many other runs held cores of this machine when it began; or that it was not queued."""
    if not meta.get("queued"):
        return "ran unqueued: other runs on this machine may have shared its cores"
    cores = meta.get("queue_cores") or []
    beside = int(meta.get("queue_runs_beside") or 0)
    where = f"ran on core {core_ranges(cores)}" if len(cores) == 1 else f"ran on cores {core_ranges(cores)}"
    others = "alone" if beside == 0 else f"beside {beside} other run{'s' if beside != 1 else ''}"
    line = f"{where} {others}" if cores else f"ran {others}"
    wait = float(meta.get("queue_wait_s") or 0.0)
    return f"{line} (waited {wait:.1f} s for them)" if wait >= 0.1 else line


def ran_on_all(metas: Iterable[Mapping[str, Any]]) -> str:
    """One line for a panel's runs: the cores they used and the most runs any of them had beside it."""
    metas = list(metas)
    if not metas:
        return ""
    if len(metas) == 1:
        return ran_on(metas[0])
    queued = [m for m in metas if m.get("queued")]
    if len(queued) < len(metas):
        return f"{len(metas) - len(queued)} of {len(metas)} runs ran unqueued: other runs may have shared their cores"
    cores = {c for m in queued for c in (m.get("queue_cores") or [])}
    beside = max(int(m.get("queue_runs_beside") or 0) for m in queued)
    wait = sum(float(m.get("queue_wait_s") or 0.0) for m in queued)
    where = f"{len(metas)} runs on cores {core_ranges(cores)}" if cores else f"{len(metas)} runs"
    others = "each alone" if beside == 0 else f"beside up to {beside} other run{'s' if beside != 1 else ''}"
    line = f"{where}, {others}"
    return f"{line} (waited {wait:.1f} s in all)" if wait >= 0.1 else line

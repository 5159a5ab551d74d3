"""The rank side of check(): launch() targets that import the learner's functions and run an exercise.

`run_cases` runs every size of the exercise once and saves what each rank ended with (rank{r}.pt);
`time_cases` times the learner's version against the built-in one. Both import the learner's module
from the temporary folder check() wrote it to (dpkit.exercises.source).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from .base import Progress
from .catalog import rank_exercise
from .net import Net
from .process_group import own_process_group
from .source import load_function


def _functions(payload: dict) -> list[Callable]:
    return [load_function(payload["folder"], module, name) for module, name in payload["functions"]]


def run_cases(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: every size once; this rank's outputs, bytes and calls go to rank{rank}.pt."""
    own_process_group(out_dir, rank)
    ex = rank_exercise(payload["exercise"])
    progress = Progress(out_dir, rank)
    progress("importing your function")
    fns = _functions(payload)
    records = []
    for size in payload["sizes"]:
        progress.case = {"size": size}
        net = Net(rank, world, ex.allowed, progress)
        progress("running your function")
        items = ex.run(fns, net, size)
        unfinished = net.unfinished()
        records.append(
            {
                "size": size,
                "items": [(label, t.detach().clone()) for label, t in items],
                "bytes_sent": net.bytes_sent,
                "bytes_received": net.bytes_received,
                "formula_bytes": net.formula_bytes,
                "calls": dict(net.calls),
                "unfinished": unfinished,
            }
        )
        progress("finished this case, waiting for the other ranks to finish it")
        dist.barrier()
    torch.save(records, Path(out_dir, f"rank{rank}.pt"))
    progress("returned")


def time_cases(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: the learner's version and the built-in one take turns (alternating which goes first),
    each run between barriers; per repeat the slowest rank's time counts (the operation is done when the
    last rank is done). Rank 0 writes times.json."""
    own_process_group(out_dir, rank)
    ex = rank_exercise(payload["exercise"])
    progress = Progress(out_dir, rank)
    progress.case = {"size": payload["size"], "timing": True}
    net = Net(rank, world, ex.allowed, progress)
    progress("running your function")
    yours, builtin = ex.timed(_functions(payload), net, payload["size"])
    yours()  # warm-up: the first calls allocate and connect
    builtin()
    net.progress = None
    local: dict[str, list[float]] = {"yours": [], "builtin": []}
    turns = [("yours", yours), ("builtin", builtin)]
    for repeat in range(payload["repeats"]):
        for key, fn in turns if repeat % 2 == 0 else turns[::-1]:  # each goes first half the time
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            local[key].append(time.perf_counter() - t0)
        net.unfinished()
    slowest = torch.tensor([local["yours"], local["builtin"]], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        yours_s, builtin_s = slowest.tolist()
        result = {
            "yours_s": statistics.median(yours_s),
            "builtin_s": statistics.median(builtin_s),
            "yours_all": yours_s,
            "builtin_all": builtin_s,
        }
        Path(out_dir, "times.json").write_text(json.dumps(result))

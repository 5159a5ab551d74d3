"""`dpkit bench calibrate`: measure alpha, B (and gamma) on this machine and backend, and save them.

Ping-pong between ranks 0 and 1 (one-way time = half the round trip), a local copy on every rank at
once (mu, seconds per byte copied: measured, then held fixed in the fit), and every all-reduce
algorithm but hierarchical (without emulated nodes it is the ring: allreduce.TIMED_ALGOS) over a range
of sizes and every world size 2..max, median of repeats. Two fits, both saved in calibration.json:
- single host (costmodel.fit_host, under meta.single_host): alpha, B, gamma, mu per world size, the
  model of this machine that predicted-vs-measured uses;
- cluster (costmodel.fit_link, the top-level alpha/bandwidth/gamma): the docs/formulas.md formulas fitted at
  n = 2 (one process per core, the closest this host gets to independent links), for the what-if.
The fit's own error is reported, and, when `dpkit bench allreduce` has left its CSV next to this
folder, the single-host model's error on it (issue 7's check: 64 KiB - 64 MiB, n = 2-4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from ..cost.model import HostModel, Link, fit_host, fit_link, host_relative_errors, host_terms
from ..runtime.launch import default_threads, launch
from .allreduce import KIB, MIB, TIMED_ALGOS, _timed, human_bytes, merge_launches, split_repeats

FULL_P2P = [KIB * 4**i for i in range(8)]  # 1 KiB .. 16 MiB
FULL_ALLREDUCE = [4 * KIB * 4**i for i in range(7)]  # 4 KiB .. 16 MiB
QUICK_P2P = [KIB, 64 * KIB, MIB]
QUICK_ALLREDUCE = [16 * KIB, MIB]
COPY_MIN = 256 * KIB  # local copies from here up price mu (smaller ones are mostly call overhead)
FIT_ALGOS = TIMED_ALGOS  # every algorithm the launches can tell apart: the single-host terms differ between them


# ---- rank side -------------------------------------------------------------------------------
def _pingpong(size: int, rank: int, repeats: int, warmup: int) -> list[float]:
    """One-way times (half a round trip) between ranks 0 and 1; other ranks just keep the barriers."""
    buf = torch.zeros(size // 4, dtype=torch.float32)

    def once() -> None:
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        elif rank == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)

    return [t / 2 for t in _timed(once, repeats, warmup)]


def _copies(size: int, repeats: int, warmup: int) -> list[float]:
    """A local copy of `size` bytes into a buffer kept from call to call, every rank at once (mu)."""
    src = torch.ones(size // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    return _timed(lambda: dst.copy_(src), repeats, warmup)


def calibrate_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """Rank side: ping-pong then all-reduces; rank 0 writes samples.json (slowest rank per repeat)."""
    from .allreduce import interleaved_times

    repeats, warmup = payload["repeats"], payload.get("warmup", 1)
    keys, local = [], []
    for size in payload["p2p_sizes"] if payload.get("pingpong") else []:
        keys.append(("p2p", size))
        local.append(_pingpong(size, rank, repeats, warmup))
    for size in payload.get("copy_sizes", []):
        keys.append(("copy", size))
        local.append(_copies(size, repeats, warmup))
    ar_keys, ar_local = interleaved_times(payload["allreduce_sizes"], payload["algos"], repeats, warmup)
    keys += ar_keys
    local += ar_local
    times = torch.tensor(local, dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    if rank == 0:
        rows = [
            {"pattern": p, "size_bytes": s, "world_size": 2 if p == "p2p" else world, "times_s": times[i].tolist()}
            for i, (p, s) in enumerate(keys)
        ]
        Path(out_dir, "samples.json").write_text(json.dumps(rows))


# ---- parent side -----------------------------------------------------------------------------
def measure(p2p_sizes: list[int], allreduce_sizes: list[int], world_sizes: list[int], repeats: int) -> pd.DataFrame:
    """Every world size in LAUNCHES launches sharing the repeats, the world sizes taking turns
    (allreduce.split_repeats says why)."""
    rows = []
    for reps in split_repeats(repeats):
        for i, n in enumerate(world_sizes):  # world sizes take turns launch by launch
            payload = {
                "p2p_sizes": p2p_sizes,
                "allreduce_sizes": allreduce_sizes,
                "algos": list(FIT_ALGOS),
                "repeats": reps,
                "pingpong": i == 0,
                "copy_sizes": [b for b in allreduce_sizes if b >= COPY_MIN],
            }
            with tempfile.TemporaryDirectory(prefix="dpkit-calib-") as tmp:
                launch(
                    "dpkit.benchmarks.calibrate:calibrate_ranks",
                    payload,
                    n,
                    tmp,
                    threads_per_rank=default_threads(n),
                    timeout_s=300,
                    out_dir_is_temporary=True,
                )
                rows += json.loads(Path(tmp, "samples.json").read_text())
    rows = merge_launches(rows, ("pattern", "size_bytes", "world_size"))
    frame = pd.DataFrame(rows)
    frame["time_s"] = frame.times_s.map(statistics.median)
    frame["times_s"] = frame.times_s.map(lambda ts: " ".join(f"{t:.6g}" for t in ts))
    return frame


def samples_of(frame: pd.DataFrame, pattern_col: str = "pattern") -> list[tuple[str, int, int, float]]:
    return [(getattr(r, pattern_col), int(r.size_bytes), int(r.world_size), float(r.time_s)) for r in frame.itertuples()]


def machine() -> dict:
    """What the numbers were measured on (saved with the calibration)."""
    return {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "backend": "gloo",
        "device": "cpu",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def validation_table(bench: pd.DataFrame, model: HostModel, lo: int = 64 * KIB, hi: int = 64 * MIB) -> pd.DataFrame:
    """Median and max |relative error| of the single-host model on an allreduce benchmark CSV, per algorithm (sizes lo..hi)."""
    sel = bench[(bench.size_bytes >= lo) & (bench.size_bytes <= hi)]
    err = host_relative_errors(samples_of(sel, "algo"), model)
    sel = sel.assign(abs_rel_error=np.abs(err))
    table = sel.groupby("algo").abs_rel_error.agg(["median", "max", "count"])
    table.loc["all"] = [sel.abs_rel_error.median(), sel.abs_rel_error.max(), len(sel)]
    return table


def main(out: Path, args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    quick = bool(getattr(args, "quick", False))
    max_n = int(getattr(args, "max_world_size", 4))
    if max_n < 2:
        raise ValueError(f"--max-world-size={max_n} is not allowed: calibration needs at least 2 ranks")
    # medians of 5 drift by tens of percent between runs on a shared 2-core VM: 3x the repeats (still < 1 min)
    repeats = 2 if quick else 3 * int(getattr(args, "repeats", 5))
    world_sizes = [2] if quick else list(range(2, max_n + 1))
    frame = measure(QUICK_P2P if quick else FULL_P2P, QUICK_ALLREDUCE if quick else FULL_ALLREDUCE, world_sizes, repeats)
    samples = samples_of(frame)
    host = HostModel(fit_host(samples, name="single host gloo/CPU"))
    cluster = fit_link(
        [s for s in samples if s[2] == 2 and s[0] != "copy"], name="cluster view of this host (docs/formulas.md terms at n=2)"
    )
    frame["predicted_s"] = [host.link(n).time(host_terms(p, s, n)) for p, s, n, _ in samples]
    frame["rel_error"] = host_relative_errors(samples, host)
    errors = np.abs(frame.rel_error)
    fit = {"median_abs_rel_error": float(errors.median()), "max_abs_rel_error": float(errors.max()), "samples": len(frame)}
    meta = {
        **machine(),
        "threads_per_rank": {str(n): default_threads(n) for n in world_sizes},
        "repeats": repeats,
        "fit": fit,
        "single_host": host.to_json(),
    }
    link = Link(cluster.alpha, cluster.bandwidth, cluster.gamma, cluster.name, meta=meta)
    link.save(out / "calibration.json")
    frame.to_csv(out / "calibration.csv", index=False)
    from ..viz.cost_plots import fit_plot

    fit_plot(frame, title="single host: per world size fit").savefig(out / "calibration.png", dpi=120, bbox_inches="tight")
    show = frame.assign(
        size=frame.size_bytes.map(human_bytes),
        time_us=frame.time_s * 1e6,
        predicted_us=frame.predicted_s * 1e6,
        err_pct=frame.rel_error * 100,
    )
    print(
        show[["pattern", "world_size", "size", "time_us", "predicted_us", "err_pct"]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}"
        )
    )
    print(f"fit: {host.describe()}")
    print(
        f"single-host fit error: median |rel| = {fit['median_abs_rel_error']:.1%}, max = {fit['max_abs_rel_error']:.1%} over {fit['samples']} points"
    )
    print(f"cluster view (what-if): {link.describe()}")
    bench_csv = out.parent / "bench-allreduce" / "allreduce.csv"
    if bench_csv.exists():
        print(f"single-host model vs {bench_csv} (64 KiB - 64 MiB): |relative error| per algorithm")
        print(validation_table(pd.read_csv(bench_csv), host).to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"saved: {out / 'calibration.json'} ({time.monotonic() - t0:.1f} s)")

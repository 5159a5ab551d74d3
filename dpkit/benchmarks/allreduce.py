"""`dpkit bench allreduce`: time every all-reduce algorithm (TIMED_ALGOS) over message sizes and world sizes.

Each measurement: warm-up runs, then `repeats` timed runs, each between barriers and taken as the
slowest rank's time (an all-reduce is done when the last rank has the sum); the repeats are spread
over LAUNCHES launches of the ranks, and the median over all of them is reported.
algbw = S / t and busbw = algbw * 2(n-1)/n, as nccl-tests define them (docs/formulas.md). The
correctness check of every algorithm is the tests' own (tests/comm_targets.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from ..comm import ALGORITHMS, allreduce_sum
from ..runtime.launch import default_threads, launch

KIB, MIB = 2**10, 2**20
FULL_SIZES = [KIB * 4**i for i in range(9)]  # 1 KiB .. 64 MiB
QUICK_SIZES = [4 * KIB, 256 * KIB, 4 * MIB]
#: the algorithms the benchmarks time (and calibration fits): all but "hierarchical", which needs emulated nodes
#: (RunConfig.ranks_per_node) and these launches emulate none: without nodes it is the ring again, timed twice
TIMED_ALGOS = tuple(a for a in ALGORITHMS if a != "hierarchical")


# ---- rank side -------------------------------------------------------------------------------
def _timed(fn, repeats: int, warmup: int) -> list[float]:
    """Local durations of `repeats` runs of fn, each between barriers, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    dist.barrier()
    return out


def interleaved_times(
    sizes: list[int], algos: list[str], repeats: int, warmup: int, device: str = "cpu"
) -> tuple[list[tuple[str, int]], list[list[float]]]:
    """This rank's durations of every (algorithm, size): algorithms take turns repeat by repeat (not one
    block each), so drift in the machine's load hits every algorithm alike and their ratios are fair.
    On a GPU (`device="cuda"`) the tensors live there and each timed call ends with a synchronize."""
    keys, local = [], []
    for size in sizes:
        buf = torch.ones(size // 4, dtype=torch.float32, device=device)

        def once(algo: str, buf: torch.Tensor = buf) -> None:
            buf.fill_(1.0)  # values stay bounded over repeats; outside nothing but this fill
            allreduce_sum(buf, algo)
            if buf.is_cuda:
                torch.cuda.synchronize(buf.device)

        for algo in algos:
            _timed(lambda a=algo: once(a), 0, warmup)
        times: dict[str, list[float]] = {algo: [] for algo in algos}
        for _ in range(repeats):
            for algo in algos:
                times[algo] += _timed(lambda a=algo: once(a), 1, 0)
        for algo in algos:
            keys.append((algo, size))
            local.append(times[algo])
    return keys, local


def time_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """Time each (algorithm, size); per repeat the slowest rank's time; rank 0 writes times.json."""
    device = payload.get("device", "cpu")
    if device == "cuda":
        torch.cuda.set_device(0)  # the ranks share the machine's first GPU (gloo moves CUDA tensors in collectives)
    keys, local = interleaved_times(payload["sizes"], payload["algos"], payload["repeats"], payload.get("warmup", 1), device)
    slowest = torch.tensor(local, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        rows = [
            {
                "algo": a,
                "size_bytes": s,
                "world_size": world,
                "times_s": slowest[i].tolist(),
                "threads_per_rank": torch.get_num_threads(),
            }
            for i, (a, s) in enumerate(keys)
        ]
        Path(out_dir, "times.json").write_text(json.dumps(rows))


# ---- parent side -----------------------------------------------------------------------------
LAUNCHES = 5  # repeats are spread over this many launches per world size (see split_repeats)


def split_repeats(repeats: int, launches: int = LAUNCHES) -> list[int]:
    """Repeats per launch. A launch can be slow as a whole (4 ranks on 2 cores: one measured 1.6-1.9x
    the next for 256 KiB-4 MiB; the first launches after another benchmark were up to 1.8x slower),
    so the median is taken over several launches' repeats, the world sizes taking turns."""
    launches = max(1, min(launches, repeats))
    return [repeats // launches + (i < repeats % launches) for i in range(launches)]


def merge_launches(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Rows from several launches of the same measurement, one per key, their times_s lists joined."""
    merged: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        if key in merged:
            merged[key]["times_s"] = merged[key]["times_s"] + row["times_s"]
        else:
            merged[key] = dict(row)
    return list(merged.values())


def measure(
    sizes: list[int],
    algos: list[str],
    world_sizes: list[int],
    repeats: int,
    warmup: int = 1,
    timeout_s: float = 900.0,
    launches: int = LAUNCHES,
    device: str = "cpu",
) -> pd.DataFrame:
    """`launches` launches per world size sharing the repeats; a row per (algo, size, world size) with
    the median over all its repeats, algbw and busbw."""
    rows = []
    for reps in split_repeats(repeats, launches):
        for n in world_sizes:  # world sizes take turns launch by launch: drift over the run hits all alike
            with _tempdir() as tmp:
                payload = {"sizes": sizes, "algos": algos, "repeats": reps, "warmup": warmup, "device": device}
                launch(
                    "dpkit.benchmarks.allreduce:time_ranks",
                    payload,
                    n,
                    tmp,
                    threads_per_rank=default_threads(n),
                    timeout_s=timeout_s,
                    out_dir_is_temporary=True,
                )
                rows += json.loads(Path(tmp, "times.json").read_text())
    frame = pd.DataFrame(merge_launches(rows, ("algo", "size_bytes", "world_size")))
    frame["time_s"] = frame.times_s.map(statistics.median)
    frame["repeats"] = frame.times_s.map(len)
    frame["algbw_GBps"] = frame.size_bytes / frame.time_s / 1e9
    frame["busbw_GBps"] = frame.algbw_GBps * 2 * (frame.world_size - 1) / frame.world_size
    frame["times_s"] = frame.times_s.map(lambda ts: " ".join(f"{t:.6g}" for t in ts))
    frame["cpu_count"] = os.cpu_count()
    frame["device"] = device
    return frame


def _tempdir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="dpkit-bench-")


def add_predictions(frame: pd.DataFrame, calibration: Path | None) -> tuple[pd.DataFrame, str]:
    """predicted_s from a saved calibration: its single-host view (per world size) if it has one, else its
    cluster-view Link; with no calibration, a cluster-view fit to this run's native times."""
    from ..cost.model import HostModel, Link, comm_time, fit_link

    host = HostModel.load(calibration) if calibration is not None and calibration.exists() else None
    model: HostModel | Link
    if host is not None:
        model = host
        source = f"calibration {calibration}"
    elif calibration is not None and calibration.exists():
        model, source = Link.load(calibration), f"calibration {calibration} (cluster view)"
    else:
        native = frame[frame.algo == "native"]
        model = fit_link([("native", int(r.size_bytes), int(r.world_size), float(r.time_s)) for r in native.itertuples()])
        source = "cluster view fitted to this run's native all-reduce times (run `dpkit bench calibrate` for an independent fit)"
    frame = frame.copy()
    frame["predicted_s"] = [comm_time(r.algo, r.size_bytes, r.world_size, model) for r in frame.itertuples()]
    frame["rel_error"] = (frame.predicted_s - frame.time_s) / frame.time_s
    return frame, f"{source}: {model.describe()}"


def ratio_table(frame: pd.DataFrame, sizes: list[int]) -> pd.DataFrame:
    """busbw of each algorithm relative to native at the given sizes (issue 3's bar: ring >= 0.9x)."""
    sel = frame[frame.size_bytes.isin(sizes)]
    wide = sel.pivot_table(index=["world_size", "size_bytes"], columns="algo", values="busbw_GBps")
    return wide.div(wide["native"], axis=0).round(3)


def main(out: Path, args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    max_n = int(getattr(args, "max_world_size", 4))
    if max_n < 2:
        raise ValueError(f"--max-world-size={max_n} is not allowed: an all-reduce needs at least 2 ranks")
    sizes = QUICK_SIZES if quick else FULL_SIZES
    world_sizes = list(range(2, min(max_n, 3) + 1)) if quick else list(range(2, max_n + 1))
    repeats = 2 if quick else int(getattr(args, "repeats", 5))
    frame = measure(sizes, list(TIMED_ALGOS), world_sizes, repeats)
    calib = getattr(args, "calibration", None)
    frame, source = add_predictions(frame, Path(calib) if calib else out.parent / "bench-calibrate" / "calibration.json")
    frame.to_csv(out / "allreduce.csv", index=False)
    from ..viz.cost_plots import allreduce_bench_plot

    allreduce_bench_plot(frame).savefig(out / "allreduce.png", dpi=120, bbox_inches="tight")
    show = frame.assign(
        size=frame.size_bytes.map(human_bytes),
        time_ms=frame.time_s * 1e3,
        predicted_ms=frame.predicted_s * 1e3,
        err_pct=frame.rel_error * 100,
    )
    cols = ["world_size", "size", "algo", "time_ms", "predicted_ms", "err_pct", "algbw_GBps", "busbw_GBps"]
    print(
        f"all-reduce on gloo/CPU, {os.cpu_count()} cores, threads per rank = cores // world size, "
        f"median of {repeats} repeats over {len(split_repeats(repeats))} launches per world size"
    )
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"predicted: {source}")
    big = [s for s in (16 * MIB, 64 * MIB) if s in sizes] or [max(sizes)]
    print("busbw relative to native:")
    print(ratio_table(frame, big).to_string())
    print(f"results: {out / 'allreduce.csv'}, {out / 'allreduce.png'}")


def human_bytes(n: float) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n:g} B"

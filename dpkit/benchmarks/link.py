"""`dpkit bench link`: does an emulated link (RunConfig.link) take the time its formula says, on this machine?

For each link preset and communication pattern, the ranks send real messages through Comm with the
link's emulator (dpkit/comm/link.py) and the time is measured on the host's shared clock (every rank
reads the same CLOCK_MONOTONIC): from when the last rank started to when the last one finished (for
one message: from the sender's post to the receiver's completion), median over repeats, beside the
cost-model formula for the pattern:

    p2p        one message S from rank 0 to rank 1            alpha + S/B
    ring       chunked ring all-reduce of S over n ranks      2(n-1) alpha + 2(n-1)/n S/B
    ps         n workers push S (S/k to each of k servers),   2 alpha + 2 max(S, nS/k)/B
               then pull it back
    pipeline   m micro-batch activations of A bytes through   (p-1) alpha + (m+p-2) A/B
               p stages, each forwarded when it has arrived

With k > 1 servers the formula assumes every server's link busy at once: worker w pushes to server
w mod k first and server j answers worker j mod n first, as dpkit's PS workers and servers do (when all
started at the same server, n = k = 2 took about 1.25x its formula).

Then, on 1 GbE, data parallelism with the flat sync against the bucketed one (dpkit/benchmarks/overlap.py):
the measured steps beside the saving the overlap formula promises.

A link faster than this machine's loopback (NVLink-class, 100GbE for large messages) cannot be
honoured: the real transfer is slower than the emulated one. The emulator counts every message whose
real transfer came late (`late` of `paced` messages, worst lateness); such rows are flagged
`honoured = False` and the measured time is then the machine's, not the link's. On a busy machine a
row can be honoured (every transfer on time) and still measure longer than its formula: a rank woken
at its message's arrival may wait for a core.
Writes link.csv, link.png and overlap.csv; the load average before and after is printed and kept in the CSV.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from ..comm import Comm
from ..cost.model import PRESETS, Link, allreduce_time, p2p_terms, ps_time
from ..runtime.launch import launch
from ..runtime.recorder import HostClock, Recorder
from .allreduce import KIB, MIB, human_bytes
from .overlap import measure_overlap, overlap_config

FULL_LINKS = ["1GbE", "10GbE", "100GbE", "NVLink"]
QUICK_LINKS = ["1GbE", "NVLink"]
FORMULAS = {  # o: the link's per-message overhead at the receiving port (0 for custom links)
    "p2p": "alpha + o + S/B",
    "ring": "2(n-1)(alpha + o) + 2(n-1)/n S/B",
    "ps": "2 alpha + (n+k) o + 2 max(S, nS/k)/B",
    "pipeline": "(p-1) alpha + (m+p-2)(o + A/B)",
}


def predicted(pattern: str, size: float, n: int, link: Link, servers: int = 1, microbatches: int = 1) -> float:
    """The pattern's time on `link` (gamma = 0: the emulator prices no reduction work); `n`: ranks taking part."""
    if pattern == "p2p":
        return link.time(p2p_terms(size))
    if pattern == "ring":
        return allreduce_time("ring", size, n, link)
    if pattern == "ps":
        return ps_time(size, n, servers, Link(link.alpha, link.bandwidth, overhead=link.overhead))
    if pattern == "pipeline":
        return (n - 1) * link.alpha + (microbatches + n - 2) * (link.overhead + size / link.bandwidth)
    raise ValueError(f"pattern {pattern!r} is not allowed: choose one of {list(FORMULAS)}")


# ---- rank side ---------------------------------------------------------------------------------
def _once(pattern: str, comm: Comm, size: int, rank: int, world: int, servers: int, microbatches: int, bufs: dict) -> None:
    """One instance of the pattern on this rank, every message through `comm` (paced by its link)."""
    numel = size // 4
    if pattern == "p2p":
        if rank == 0:
            comm.send(bufs["a"][:numel], 1)
        elif rank == 1:
            comm.recv(bufs["a"][:numel], 0)
    elif pattern == "ring":
        buf = bufs["a"][:numel]
        buf.fill_(1.0)
        comm.all_reduce(buf, algo="ring")
    elif pattern == "ps":
        workers, shard = world - servers, numel // servers
        if rank < workers:
            pulls = [comm.irecv(bufs["b"][j * shard : (j + 1) * shard], workers + j) for j in range(servers)]
            order = [(rank + j) % servers for j in range(servers)]  # staggered, as PushPullWorker does
            pushes = [comm.isend(bufs["a"][j * shard : (j + 1) * shard], workers + j) for j in order]
            comm.wait(pushes)
            comm.wait(pulls)
        else:
            inbox = bufs["a"][: workers * shard].view(workers, shard)
            comm.wait([comm.irecv(inbox[w], w) for w in range(workers)])
            server = rank - workers
            comm.wait([comm.isend(bufs["b"][:shard], (server + i) % workers) for i in range(workers)])  # staggered
    elif pattern == "pipeline":
        acts = bufs["a"][: microbatches * numel].view(microbatches, numel)
        sends = []
        for i in range(microbatches):
            if rank > 0:
                comm.recv(acts[i], rank - 1)
            if rank < world - 1:
                sends.append(comm.isend(acts[i], rank + 1))
        comm.wait(sends)
    else:
        raise ValueError(f"pattern {pattern!r} is not allowed: choose one of {list(FORMULAS)}")


def link_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """Rank side: every (link, size) of one pattern; rank 0 writes times.json with each repeat's
    (start, end) per rank and the link's paced and late counts over the timed repeats."""
    torch.manual_seed(0)
    pattern, servers, m = payload["pattern"], payload.get("servers", 1), payload.get("microbatches", 1)
    biggest = max(payload["sizes"]) // 4
    span = biggest * (m if pattern == "pipeline" else 1) * (world if pattern == "ps" else 1)
    bufs = {"a": torch.ones(span), "b": torch.ones(span)}
    local = []
    for spec in payload["links"]:
        link = Link(alpha=spec["alpha"], bandwidth=spec["bandwidth"], name=spec["name"], overhead=spec.get("overhead", 0.0))
        comm = Comm(Recorder(rank, HostClock()), "ring", link)
        emulator = comm.transport  # the link's ports: their paced and late counts
        for size in payload["sizes"]:
            for _ in range(payload.get("warmup", 1)):
                dist.barrier()
                _once(pattern, comm, size, rank, world, servers, m, bufs)
            emulator.reset_counts()
            times = []
            for _ in range(payload["repeats"]):
                dist.barrier()
                start = time.perf_counter()
                _once(pattern, comm, size, rank, world, servers, m, bufs)
                times.append((start, time.perf_counter()))
            stats = emulator.stats()
            assert stats is not None  # a link was given: its ports count
            local.append(
                {
                    "key": spec["key"],
                    "size": size,
                    "times": times,
                    "paced": stats["messages"] + stats["collectives"],
                    "late": stats["late"],
                    "worst_late_s": stats["worst_late_s"],
                }
            )
            comm.recorder.flush_outside_step()  # the spans are not needed: times are taken here
        comm.close()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, local)
    if rank == 0:
        Path(out_dir, "times.json").write_text(json.dumps(gathered))


# ---- parent side --------------------------------------------------------------------------------
def _duration(pattern: str, per_rank: list[tuple[float, float]], world: int, servers: int) -> float:
    """One repeat's time on the shared clock: from the last start to the last end (p2p: post to arrival;
    ps: from the first worker's start; pipeline: stage 0's start to the last stage's end)."""
    starts, ends = [t[0] for t in per_rank], [t[1] for t in per_rank]
    if pattern == "p2p":
        return ends[1] - starts[0]
    if pattern == "pipeline":
        return ends[world - 1] - starts[0]
    if pattern == "ps":  # a server's port is busy from the first push: the earliest worker start
        return max(ends) - min(starts[: world - servers])
    return max(ends) - max(starts)


def measure(
    pattern: str,
    links: dict[str, Link],
    sizes: list[int],
    world: int,
    repeats: int,
    servers: int = 1,
    microbatches: int = 1,
    warmup: int = 1,
    timeout_s: float = 600.0,
) -> pd.DataFrame:
    """One launch of `world` ranks running `pattern` on each of `links` (name: Link): a row per (link, size)."""
    specs = [
        {"key": k, "alpha": v.alpha, "bandwidth": v.bandwidth, "name": v.name, "overhead": v.overhead} for k, v in links.items()
    ]
    payload = {
        "pattern": pattern,
        "links": specs,
        "sizes": sizes,
        "repeats": repeats,
        "warmup": warmup,
        "servers": servers,
        "microbatches": microbatches,
    }
    with tempfile.TemporaryDirectory(prefix="dpkit-bench-link-") as tmp:
        launch("dpkit.benchmarks.link:link_ranks", payload, world, tmp, threads_per_rank=1, timeout_s=timeout_s)
        gathered = json.loads(Path(tmp, "times.json").read_text())
    rows = []
    n = world - servers if pattern == "ps" else world
    for i, row in enumerate(gathered[0]):
        per_rank = [g[i] for g in gathered]
        durations = [_duration(pattern, [r["times"][j] for r in per_rank], world, servers) for j in range(repeats)]
        link = links[row["key"]]
        paced, late = sum(r["paced"] for r in per_rank), sum(r["late"] for r in per_rank)
        pred = predicted(pattern, row["size"], n, link, servers, microbatches)
        measured = statistics.median(durations)
        rows.append(
            {
                "link": row["key"],
                "alpha_s": link.alpha,
                "bandwidth_Bps": link.bandwidth,
                "pattern": pattern,
                "world_size": n,
                "servers": servers if pattern == "ps" else 0,
                "microbatches": microbatches if pattern == "pipeline" else 0,
                "size_bytes": row["size"],
                "formula": FORMULAS[pattern],
                "predicted_s": pred,
                "measured_s": measured,
                "ratio": measured / pred,
                "repeats": repeats,
                "times_s": " ".join(f"{d:.6g}" for d in durations),
                "paced": paced,
                "late": late,
                "worst_late_s": max(r["worst_late_s"] for r in per_rank),
                "honoured": late == 0,
            }
        )
    return pd.DataFrame(rows)


def grid(quick: bool, max_n: int) -> list[dict]:
    """The launches: pattern, ranks, servers / micro-batches and sizes, full or --quick."""
    if quick:
        return [
            {"pattern": "p2p", "world": 2, "sizes": [64 * KIB, MIB]},
            {"pattern": "ring", "world": 2, "sizes": [MIB]},
            {"pattern": "ps", "world": 3, "servers": 1, "sizes": [256 * KIB]},
            {"pattern": "pipeline", "world": 3, "microbatches": 2, "sizes": [64 * KIB]},
        ]
    out = [{"pattern": "p2p", "world": 2, "sizes": [KIB * 4**i for i in range(3, 8)]}]  # 64 KiB .. 16 MiB
    out += [{"pattern": "ring", "world": n, "sizes": [MIB // 4 * 4**i for i in range(4)]} for n in sorted({2, max_n})]
    for n in sorted({2, max_n}):
        out += [{"pattern": "ps", "world": n + k, "servers": k, "sizes": [256 * KIB, MIB, 4 * MIB]} for k in (1, 2)]
    out.append({"pattern": "pipeline", "world": min(3, max(max_n, 2)), "microbatches": 4, "sizes": [64 * KIB, MIB, 4 * MIB]})
    return out


def main(out: Path, args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    max_n = int(getattr(args, "max_world_size", 4))
    if max_n < 2:
        raise ValueError(f"--max-world-size={max_n} is not allowed: a message needs at least 2 ranks")
    repeats = 2 if quick else int(getattr(args, "repeats", 5))
    links = {k: PRESETS[k] for k in (QUICK_LINKS if quick else FULL_LINKS)}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    frames = []
    for item in grid(quick, max_n):
        frames.append(
            measure(
                item["pattern"],
                links,
                item["sizes"],
                item["world"],
                repeats,
                servers=item.get("servers", 1),
                microbatches=item.get("microbatches", 1),
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    buckets = measure_overlap(overlap_config(quick), 1 if quick else 3)
    load_after = os.getloadavg()
    frame["cpu_count"] = os.cpu_count()
    frame["load_before"] = load_before[0]
    frame["load_after"] = load_after[0]
    frame.to_csv(out / "link.csv", index=False)
    from ..viz.cost_plots import link_bench_plot

    link_bench_plot(frame).savefig(out / "link.png", dpi=120, bbox_inches="tight")
    show = frame.assign(
        size=frame.size_bytes.map(human_bytes),
        pred_ms=frame.predicted_s * 1e3,
        meas_ms=frame.measured_s * 1e3,
        late=frame.late.astype(str) + "/" + frame.paced.astype(str),
        worst_late_ms=frame.worst_late_s * 1e3,
    )
    cols = [
        "link",
        "pattern",
        "world_size",
        "servers",
        "size",
        "pred_ms",
        "meas_ms",
        "ratio",
        "late",
        "worst_late_ms",
        "honoured",
    ]
    print(
        f"emulated links on gloo/CPU, {os.cpu_count()} cores, one thread per rank, median of {repeats} repeats; "
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; {time.perf_counter() - t0:.0f} s"
    )
    print("formulas: " + "; ".join(f"{p}: {f}" for p, f in FORMULAS.items()))
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    good = frame[frame.honoured]
    if len(good):
        err = (good.ratio - 1).abs()
        print(
            f"honoured rows: {len(good)} of {len(frame)}; |measured/predicted - 1| median {err.median():.1%}, max {err.max():.1%}"
        )
    bad = frame[~frame.honoured].groupby("link").size()
    if len(bad):
        print("not honoured (the machine is slower than the link): " + ", ".join(f"{k}: {v} rows" for k, v in bad.items()))
    buckets["load_before"], buckets["load_after"] = load_before[0], load_after[0]
    buckets.to_csv(out / "overlap.csv", index=False)
    first = buckets.iloc[0]
    print(
        f"\ndata parallelism on {first.link}, 2 ranks, {first.gradient_bytes / 2**20:.1f} MiB of gradients, buckets of "
        f"<= {first.bucket_mb} MiB, global batch {first.global_batch}, median of {first.repeats} runs each (taking turns):"
    )
    table = buckets.assign(**{c: buckets[c] * 1e3 for c in ("step_time_s", "compute_s", "exposed_comm_s", "formula_exposed_s")})
    print(table[["grad_sync", "step_time_s", "compute_s", "exposed_comm_s", "formula_exposed_s", "saving", "formula_saving"]]
          .rename(columns={"step_time_s": "step_ms", "compute_s": "compute_ms", "exposed_comm_s": "exposed_ms",
                           "formula_exposed_s": "formula_exposed_ms"})
          .to_string(index=False, float_format=lambda v: f"{v:.3g}"))  # fmt: skip
    print(f"results: {out / 'link.csv'}, {out / 'link.png'}, {out / 'overlap.csv'}")

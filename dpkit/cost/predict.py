"""Predicted against measured: the cost model's step time for a RunConfig, next to a real run's.

Compute is measured, not modelled: a single-process run of the same model at the batch one rank
sees, with the threads one rank gets, gives forward, backward and optimizer seconds. That process
had the machine to itself; N ranks of t threads on c cores share them when N t > c. A synchronous
data- or tensor-parallel step waits for its slowest rank, and the scheduler keeps whole processes on
cores, so that rank computes ceil(N t / c) times slower (`slowest_rank_slowdown`: 3 ranks on 2 cores,
2x). A pipeline's stages hand work along, so there the average share counts, max(1, N t / c)
(`oversubscription`), with N the stages busy on average outside the bubble: N (1 - bubble).
Communication comes from dpkit.costmodel: a HostModel (the single-host view, per world size, as
`dpkit bench calibrate` saves it) for runs on this machine, or a Link (cluster view). The per-strategy
step models:

    data / allreduce   fwd + bwd + opt + gradient buffer copies (2S mu, not for per-tensor) + exposed
                       all-reduce (all of it for per-tensor and flat; for bucketed/ddp what the
                       backward does not hide: costmodel.bucketed_overlap, except on one host whose
                       cores are all computing: there the copies take turns with the backward)
    data / ps (sync)   fwd + bwd + copies (2S + 2S/k, mu) + 2 alpha + 2 max(S, nS/k)/B + the servers' opt/k
    pipeline           (m+p-1)(t_f + t_b + 2 boundary messages) of the slowest stage + its opt
    tensor             (fwd + bwd + opt)/tp + 2 all-reduces of the activations per parallel block
    hybrid             the pipeline on global/d samples, then each stage's gradients all-reduced over d
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass

import pandas as pd

from ..config import RunConfig
from ..runtime.launch import default_threads
from .model import (
    HostModel,
    Link,
    bubble_fraction,
    bucketed_overlap,
    buckets_of,
    comm_time,
    pipeline_p2p_time,
    pipeline_step_time,
    ps_time,
    tensor_parallel_comm_time,
)

QUANTITIES = ["step_time_s", "compute_s", "comm_s", "exposed_comm_s", "bubble_s"]


@dataclass(frozen=True)
class ComputeProfile:
    """Median seconds per step of one process training the full model on `batch` samples."""

    batch: int
    forward_s: float
    backward_s: float
    optimizer_s: float
    threads: int


_PROFILES: dict[str, ComputeProfile] = {}
PROFILE_STEPS = 12  # 2 warm-up + 10 timed


def _single(cfg: RunConfig, batch: int, threads: int, steps: int) -> RunConfig:
    """The one-process config whose compute a rank of `cfg` repeats on `batch` samples."""
    return RunConfig(
        model=cfg.model, hidden=cfg.hidden, layers=cfg.layers, seq_len=cfg.seq_len, freeze=cfg.freeze, tie_weights=cfg.tie_weights,
        optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, seed=cfg.seed, device=cfg.device, timeout_s=cfg.timeout_s,
        global_batch=batch, steps=steps, warmup=min(2, steps - 1), threads_per_rank=threads,
    )  # fmt: skip


def profile_once(single: RunConfig) -> ComputeProfile:
    """One run of the one-process config: median forward, backward and optimizer seconds of its timed steps."""
    from ..api import run

    tl = run(single).timeline
    tl = tl[(tl.kind == "compute") & (tl.step >= single.warmup)]
    per_step = tl.assign(d=tl.end_s - tl.start_s).groupby(["step", "name"]).d.sum().unstack(fill_value=0.0).median()
    return ComputeProfile(
        single.global_batch,
        float(per_step.get("forward", 0.0)),
        float(per_step.get("backward", 0.0)),
        float(per_step.get("optimizer", 0.0)),
        int(single.threads_per_rank or 1),
    )


def median_profile(profiles: list[ComputeProfile]) -> ComputeProfile:
    """Component by component, the median of several runs' profiles (same batch and threads)."""
    first = profiles[0]
    return ComputeProfile(
        first.batch,
        statistics.median(p.forward_s for p in profiles),
        statistics.median(p.backward_s for p in profiles),
        statistics.median(p.optimizer_s for p in profiles),
        first.threads,
    )


def measure_compute(cfg: RunConfig, batch: int, threads: int, steps: int = PROFILE_STEPS, runs: int = 1) -> ComputeProfile:
    """Run the full model in one process on `batch` samples per step (`runs` times: the median);
    cached per (model, batch, threads)."""
    single = _single(cfg, batch, threads, steps)
    key = single.run_id()
    if key not in _PROFILES:
        _PROFILES[key] = median_profile([profile_once(single) for _ in range(runs)])
    return _PROFILES[key]


def profile_batch(cfg: RunConfig) -> int:
    """Samples one rank pushes through the full model per forward: what measure_compute should run."""
    if cfg.parallelism == "data":
        return cfg.global_batch // cfg.world_size
    if cfg.parallelism in ("pipeline", "hybrid"):
        d = cfg.data_parallel_size if cfg.parallelism == "hybrid" else 1
        m = 1 if cfg.schedule == "naive" else cfg.microbatches
        return cfg.global_batch // (d * m)
    return cfg.global_batch


def target_threads(cfg: RunConfig) -> int:
    return cfg.threads_per_rank or default_threads(cfg.num_processes)


def _model_facts(cfg: RunConfig):
    from ..workloads import build_model

    model = build_model(cfg, cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, [p.numel() * p.element_size() for p in params]


def _stage_shares(cfg: RunConfig, model, stages: int) -> tuple[list[float], list[list[str]]]:
    """Each stage's share of the model's parameters (a stand-in for its share of the compute)."""
    from ..strategies.pipeline import stage_blocks

    blocks = stage_blocks(cfg, model, stages)
    sizes = {name: sum(p.numel() for p in b.parameters()) for name, b in model.named_children()}
    total = sum(sizes.values())
    return [sum(sizes[n] for n in names) / total for names in blocks], blocks


def _activation_bytes(cfg: RunConfig, model, blocks: list[list[str]], batch: int) -> float:
    from ..strategies.pipeline import boundary_shapes

    shapes = boundary_shapes(cfg, model)
    per_sample = [math.prod(shapes[names[-1]]) for names in blocks[:-1]] or [0]
    return 4.0 * batch * max(per_sample)


def oversubscription(processes: float, threads: int, cores: int | None = None) -> float:
    """How much slower a rank computes than the profile's lone process: max(1, N t / c)."""
    cores = cores or os.cpu_count() or 1
    return max(1.0, processes * threads / cores)


def slowest_rank_slowdown(processes: int, threads: int, cores: int | None = None) -> float:
    """How much slower the *slowest* of `processes` ranks computes than the profile's lone process:
    ceil(N t / c). The scheduler places whole processes on cores and does not rotate them to even out
    a remainder: measured with 3 ranks on 2 cores, one rank reached the all-reduce after ~1x the
    profile's compute and the two sharing the other core after ~2x, and a synchronous step waits
    for them (N t / c = 1.5 would be the average, not the slowest)."""
    cores = cores or os.cpu_count() or 1
    return float(max(1, math.ceil(processes * threads / cores)))


def predict_step(cfg: RunConfig, link: Link | HostModel, profile: ComputeProfile, cores: int | None = None) -> dict[str, float]:
    """The cost model's step time and its parts for `cfg` (seconds; per rank, as RunResult.summary has them).
    With a HostModel, messages are priced at this run's process count (the machine is shared by all)."""
    if cfg.parallelism in ("data", "tensor"):  # every rank computes, then all wait for the slowest
        # (cfg.world_size: a parameter server's servers sleep while the workers compute)
        slow = slowest_rank_slowdown(cfg.world_size, profile.threads, cores)
    else:  # a pipeline's stages hand work along: the average share of the cores sets the pace
        busy = float(cfg.num_processes)
        if cfg.parallelism in ("pipeline", "hybrid") and cfg.schedule != "naive":
            p_, m_ = cfg.num_processes // (cfg.data_parallel_size if cfg.parallelism == "hybrid" else 1), cfg.microbatches
            busy *= 1 - bubble_fraction(p_, m_)  # stages idle in the bubble leave their core to others
        slow = oversubscription(busy, profile.threads, cores)
    t_f, t_b, t_o = slow * profile.forward_s, slow * profile.backward_s, slow * profile.optimizer_s
    algo = cfg.allreduce_algo
    model, grads = _model_facts(cfg)
    size, n = float(sum(grads)), cfg.world_size
    one = link.link(cfg.num_processes) if isinstance(link, HostModel) else link  # for p2p and PS terms
    if cfg.parallelism == "none":
        return _parts(t_f + t_b + t_o, 0.0, 0.0)
    if cfg.parallelism == "data" and cfg.sync == "allreduce":
        # flat, bucketed and ddp copy every gradient into a buffer and back out (2S bytes of local
        # copies, priced at the host's mu, which calibration measures with every rank copying at once,
        # so no oversubscription factor): compute-side work the single-process profile never did
        copies = 0.0 if cfg.grad_sync == "per-tensor" or n == 1 else 2 * size * one.mu
        if cfg.grad_sync == "per-tensor":
            comm = sum(comm_time(algo, g, n, link) for g in grads)
            exposed = comm
        elif cfg.grad_sync == "flat":
            comm = exposed = comm_time(algo, size, n, link)
        else:  # bucketed and ddp: both bucket by bucket_mb in reverse order and overlap with the backward
            ov = bucketed_overlap(buckets_of(grads, cfg.bucket_mb), t_b, n, link, algo)
            comm, exposed = ov.comm_s, ov.exposed_s
            if isinstance(link, HostModel) and n * profile.threads >= (cores or os.cpu_count() or 1):
                # one host with every core computing: its "links" are kernel copies, CPU work that
                # takes turns with the backward instead of running beside it (measured here:
                # bucketed steps as long as flat ones at n = 2, 3, 4 on 2 cores)
                exposed = comm
        return _parts(t_f + t_b + t_o + copies, comm, exposed)
    if cfg.parallelism == "data" and cfg.sync == "ps":
        # a worker packs its gradients into a flat buffer and unpacks the parameters (2S of copies); a
        # server copies the first gradient into its sum and divides it (2S/k), then steps its optimizer
        k = cfg.num_servers
        copies = (2 * size + 2 * size / k) * one.mu
        comm = ps_time(size, n, k, one)
        return _parts(t_f + t_b + copies, comm, comm, extra=t_o / k)
    if cfg.parallelism == "data":
        raise ValueError(f"RunConfig.sync={cfg.sync!r} has no step model: the cost model covers synchronous steps only")
    if cfg.parallelism == "tensor":
        blocks = sum(1 for m in model.modules() if type(m).__name__ in ("FeedForward", "Attention"))
        act = 4.0 * cfg.global_batch * cfg.model_hidden * (cfg.seq_len if cfg.model == "transformer" else 1)
        comm = tensor_parallel_comm_time(act, n, 2 * blocks, link, algo)
        return _parts((t_f + t_b + t_o) / n, comm, comm)
    # pipeline and hybrid
    d = cfg.data_parallel_size if cfg.parallelism == "hybrid" else 1
    p, m = n // d, (1 if cfg.schedule == "naive" else cfg.microbatches)
    shares, blocks = _stage_shares(cfg, model, p)
    share = max(shares)
    act = _activation_bytes(cfg, model, blocks, profile_batch(cfg))
    step = pipeline_step_time(share * t_f, share * t_b, p, m, act, one)
    bubble = bubble_fraction(p, m) * step
    comm = 2 * m * pipeline_p2p_time(act, one) if p > 1 else 0.0
    sync = comm_time(algo, share * size, d, link) if d > 1 else 0.0
    out = _parts(m * share * (t_f + t_b) + share * t_o, comm + sync, sync, extra=0.0)
    out["step_time_s"] = step + share * t_o + sync
    out["bubble_s"] = bubble
    return out


def _parts(compute: float, comm: float, exposed: float, extra: float = 0.0) -> dict[str, float]:
    return {
        "step_time_s": compute + exposed + extra,
        "compute_s": compute,
        "comm_s": comm,
        "exposed_comm_s": exposed,
        "bubble_s": 0.0,
    }


def measured_quantities(results: list) -> dict[str, float]:
    """Each of QUANTITIES as the median over runs of the same config (each run's value is already a
    median over its timed steps): one run on a shared 2-core machine can be 20% off the next."""
    out = {}
    for q in QUANTITIES:
        values = [float(r.summary[q]) for r in results if r.summary.get(q) is not None]
        out[q] = statistics.median(values) if values else float("nan")
    return out


def compare(cfg: RunConfig, link: Link | HostModel, result=None, profile: ComputeProfile | None = None) -> pd.DataFrame:
    """Predicted and measured side by side for one config: a row per quantity, with the relative error.
    Runs `cfg` (and the single-process compute profile) unless given; `result` may be a list of runs."""
    if result is None:
        from ..api import run

        result = run(cfg)
    measured = measured_quantities(result if isinstance(result, list) else [result])
    profile = profile or measure_compute(cfg, profile_batch(cfg), target_threads(cfg))
    pred = predict_step(cfg, link, profile)
    rows = []
    for q in QUANTITIES:
        err = (pred[q] - measured[q]) / measured[q] if measured[q] else float("nan")
        rows.append({"quantity": q, "predicted": pred[q], "measured": measured[q], "rel_error": err})
    return pd.DataFrame(rows)


def strategy_name(cfg: RunConfig) -> str:
    if cfg.parallelism == "data":
        return f"data/{cfg.sync}" + (
            f"/{cfg.grad_sync}/{cfg.allreduce_algo}" if cfg.sync == "allreduce" else f"/k={cfg.num_servers}"
        )
    if cfg.parallelism in ("pipeline", "hybrid"):
        return f"{cfg.parallelism}/{cfg.schedule}/m={cfg.microbatches}"
    return cfg.parallelism


def compare_many(configs: list[RunConfig], link: Link | HostModel, repeats: int = 1) -> pd.DataFrame:
    """One row per config: world size, strategy, and predicted/measured step and comm time (for the plot).
    Each config runs `repeats` times, the configs taking turns (so drift in the machine's load hits all
    alike); measured values are medians over those runs."""
    from ..api import run

    if repeats < 1:
        raise ValueError(f"repeats={repeats} is not allowed: at least 1 run per config")
    single_of = [_single(cfg, profile_batch(cfg), target_threads(cfg), PROFILE_STEPS) for cfg in configs]
    specs = {single.run_id(): single for single in single_of}  # each distinct profile once per round
    results: list[list] = [[] for _ in configs]
    profiles: dict[str, list[ComputeProfile]] = {key: [] for key in specs}
    for _ in range(repeats):  # the compute profiles take their turns with the runs, so drift hits both
        for mine, cfg in zip(results, configs, strict=True):
            mine.append(run(cfg))
        for key, single in specs.items():
            profiles[key].append(profile_once(single))
    rows = []
    for cfg, single, mine in zip(configs, single_of, results, strict=True):
        profile = median_profile(profiles[single.run_id()])
        c = compare(cfg, link, result=mine, profile=profile).set_index("quantity")
        row = {"strategy": strategy_name(cfg), "world_size": cfg.world_size, "run_id": cfg.run_id(), "runs": len(mine)}
        for q in ("step_time_s", "comm_s", "bubble_s"):
            row[f"predicted_{q}"], row[f"measured_{q}"] = c.loc[q, "predicted"], c.loc[q, "measured"]
        row["rel_error"] = c.loc["step_time_s", "rel_error"]
        rows.append(row)
    return pd.DataFrame(rows)

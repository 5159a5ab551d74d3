"""The spec of data parallelism with all-reduce; its knobs say how gradients are combined (also read by ZeRO,
the parameter server's selection, the pipeline's replicas and the cost model)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...cost.model import HostModel, Link, bucketed_overlap, buckets_of, comm_time
from ...cost.sending_less import COMPRESSIONS, sync_time
from ...cost.step_model import ComputeProfile, parts, slowest_rank_slowdown, step_facts
from ..spec import DataSplitSpec, Knob, config_error

if TYPE_CHECKING:
    from ...config import RunConfig
    from ..base import RankContext, Strategy

SYNCS = ("allreduce", "ps", "ps-async", "local-sgd")
GRAD_SYNCS = ("per-tensor", "flat", "bucketed", "ddp", "fsdp")
ALLREDUCE_ALGOS = ("native", "ring", "ring-whole", "reduce-broadcast", "tree", "hierarchical")

KNOBS: tuple[Knob, ...] = (
    Knob("sync", str, "allreduce", "how data-parallel workers combine gradients: " + " | ".join(SYNCS), choices=SYNCS),
    Knob("grad_sync", str, "bucketed", "how gradients are all-reduced: " + " | ".join(GRAD_SYNCS), choices=GRAD_SYNCS),
    Knob("allreduce_algo", str, "native", "all-reduce algorithm: " + " | ".join(ALLREDUCE_ALGOS), choices=ALLREDUCE_ALGOS),
    Knob(
        "bucket_mb",
        float,
        1.0,
        "gradient bucket size in MiB (grad_sync bucketed and ddp)",
        allowed="a finite number of MiB > 0",
        check=lambda v: v > 0,
    ),
    Knob(
        "compression",
        str,
        "none",
        "send less: compress each gradient buffer (grad_sync flat or bucketed): " + " | ".join(COMPRESSIONS),
        choices=COMPRESSIONS,
    ),
    Knob("powersgd_rank", int, 1, "compression='powersgd': the rank r of each gradient matrix's approximation", minimum=1),
    Knob(
        "topk_ratio",
        float,
        0.01,
        "compression='topk': the fraction of each buffer's entries sent (values and indices)",
        allowed="a number in (0, 1]",
        check=lambda v: 0 < v <= 1,
    ),
)
COMPRESSION_DEFAULTS = {"compression": "none", "powersgd_rank": 1, "topk_ratio": 0.01}


class DataParallelSpec(DataSplitSpec):
    name = "data-allreduce"
    parallelism = "data"
    description = "data parallelism with all-reduce (parallelism='data', sync='allreduce')"
    knobs = KNOBS
    exclusive_knobs = COMPRESSION_DEFAULTS  # compression is this strategy's only (ZeRO, hybrid, PS do not compress)

    def selects(self, cfg: RunConfig) -> bool:
        return cfg.parallelism == "data" and cfg.sync == "allreduce" and cfg.zero_stage == 0

    def validate(self, cfg: RunConfig) -> None:
        if cfg.compression != "none" and cfg.grad_sync not in ("flat", "bucketed"):
            raise config_error(
                "compression", cfg.compression, f"'none' with grad_sync={cfg.grad_sync!r}: compression needs 'flat' or 'bucketed'"
            )
        if cfg.powersgd_rank != 1 and cfg.compression != "powersgd":
            raise config_error("powersgd_rank", cfg.powersgd_rank, "1 (the default) unless compression='powersgd'")
        if cfg.topk_ratio != COMPRESSION_DEFAULTS["topk_ratio"] and cfg.compression != "topk":
            raise config_error("topk_ratio", cfg.topk_ratio, "0.01 (the default) unless compression='topk'")

    def label(self, cfg: RunConfig) -> str:
        base = f"data/allreduce/{cfg.grad_sync}/{cfg.allreduce_algo}"
        if cfg.compression == "powersgd":
            return f"{base}/powersgd-r{cfg.powersgd_rank}"
        if cfg.compression == "topk":
            return f"{base}/topk-{cfg.topk_ratio:g}"
        return base if cfg.compression == "none" else f"{base}/{cfg.compression}"

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        """fwd + bwd + opt + gradient buffer copies (2S mu, not for per-tensor) + exposed all-reduce: all of
        it for per-tensor and flat; for bucketed/ddp what the backward does not hide (cost.model.bucketed_overlap),
        except on one host whose cores are all computing: there the copies take turns with the backward."""
        f = step_facts(cfg, model, profile, slowest_rank_slowdown(cfg.world_size, profile.threads, cores))
        algo, n, size = cfg.allreduce_algo, cfg.world_size, f.grad_bytes
        # flat, bucketed and ddp copy every gradient into a buffer and back out (2S bytes of local copies,
        # priced at the host's mu, which calibration measures with every rank copying at once, so no
        # oversubscription factor): compute-side work the single-process profile never did
        copies = 0.0 if cfg.grad_sync == "per-tensor" or n == 1 else 2 * size * f.one.mu
        if cfg.compression != "none":  # compressed buffers are averaged after the backward: nothing hidden
            shapes = [tuple(p.shape) for p in f.model.parameters() if p.requires_grad]
            link = model.link(n) if isinstance(model, HostModel) else model
            comm = exposed = sync_time(
                cfg.compression, shapes, n, link, powersgd_rank=cfg.powersgd_rank, topk_ratio=cfg.topk_ratio, algo=algo
            )
        elif cfg.grad_sync == "per-tensor":
            comm = exposed = sum(comm_time(algo, g, n, model) for g in f.grads)
        elif cfg.grad_sync == "flat":
            comm = exposed = comm_time(algo, size, n, model)
        else:  # bucketed and ddp: both bucket by bucket_mb in reverse order and overlap with the backward
            ov = bucketed_overlap(buckets_of(f.grads, cfg.bucket_mb), f.t_backward, n, model, algo)
            comm, exposed = ov.comm_s, ov.exposed_s
            if isinstance(model, HostModel) and n * profile.threads >= (cores or os.cpu_count() or 1):
                # one host with every core computing: its "links" are kernel copies, CPU work that takes
                # turns with the backward instead of running beside it (measured here: bucketed steps as
                # long as flat ones at n = 2, 3, 4 on 2 cores)
                exposed = comm
        return parts(f.t_forward + f.t_backward + f.t_optimizer + copies, comm, exposed)

    def build(self, ctx: RankContext) -> Strategy:
        from ..data_parallel import DataParallel

        return DataParallel(ctx)


SPEC = DataParallelSpec()

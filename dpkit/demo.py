"""The kit's default job: data parallelism at world sizes 1, 2 and 4, measured and plotted.

Same global batch at every world size (strong scaling), so speedup = T_step(1) / T_step(N).
"""

from __future__ import annotations

import os
from pathlib import Path

from .api import sweep
from .config import RunConfig
from .viz.plots import scaling_frame, speedup_plot


def demo_config(quick: bool = False) -> RunConfig:
    return RunConfig(
        parallelism="data",
        model="mlp",
        hidden=256,
        layers=4,
        global_batch=256,
        steps=6 if quick else 15,
        warmup=2,
        grad_sync="bucketed",
        allreduce_algo="native",
    )


def main(out: Path, quick: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(quick)
    print(f"dpkit demo: {cfg.model} (hidden={cfg.model_hidden}, layers={cfg.model_layers}), global batch "
          f"{cfg.global_batch}, {cfg.steps} steps ({cfg.warmup} warm-up), {os.cpu_count()} CPU cores")  # fmt: skip
    frame = scaling_frame(sweep(cfg, out=out / "runs", world_size=[1, 2, 4]))
    cols = ["world_size", "threads_per_rank", "step_time_s", "samples_per_s", "speedup", "efficiency",
            "compute_s", "comm_s", "exposed_comm_s", "bytes_sent_per_step", "final_loss"]  # fmt: skip
    table = frame[cols]
    table.to_csv(out / "demo.csv", index=False)
    speedup_plot(frame).savefig(out / "speedup.png", dpi=120, bbox_inches="tight")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nEach rank gets cores / world_size threads, so on a small machine the ranks share the same cores:")
    print("speedup is limited by the cores you have, and the all-reduce adds communication on top.")
    print(f"wrote {out / 'demo.csv'}, {out / 'speedup.png'} and one result folder per run in {out / 'runs'}")

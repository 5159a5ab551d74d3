"""`dpkit bench gpu_check`: the few-minute GPU check (issue 8). Needs a CUDA machine.

Runs every strategy at the largest world size the machine allows (NCCL when every rank owns a GPU,
else gloo with ranks sharing one, labelled so), the single-process baseline on GPU and CPU, the
equivalence checks on GPU (TF32 off), and the all-reduce benchmark, then writes CSV + JSON with
the GPU name, driver, torch and CUDA versions and the date to `out` (copy them into data/gpu/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
from pathlib import Path

import pandas as pd
import torch

from ..api import run
from ..config import RunConfig
from ..strategies.registry import spec_for


def provenance() -> dict:
    driver = ""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]  # fmt: skip
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "how": "dpkit bench gpu_check: median over timed steps after warm-up, CUDA events, TF32 off",
    }


def strategy_configs(world: int) -> dict[str, RunConfig]:
    base = RunConfig(model="mlp", hidden=1024, layers=4, global_batch=256, steps=12, warmup=2, device="cuda", timeout_s=300)
    configs = {"single": base}
    if world >= 2:
        data = base.replace(parallelism="data", world_size=world)
        configs.update({f"data-{g}": data.replace(grad_sync=g) for g in ("per-tensor", "flat", "bucketed", "ddp")})
        configs["data-bucketed-ring"] = data.replace(allreduce_algo="ring")
        configs["ps-sync"] = base.replace(parallelism="data", sync="ps", world_size=max(1, world - 1))
        configs["pipeline-1f1b"] = base.replace(parallelism="pipeline", world_size=min(world, 4), microbatches=8)
        configs["tensor"] = base.replace(parallelism="tensor", world_size=2 if world < 4 else 4)
    return configs


def main(out: Path, args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("dpkit bench gpu_check needs a CUDA GPU; this machine has none (nothing was run)")
    meta = provenance()
    world = min(4, max(2, torch.cuda.device_count()))
    rows, checks = [], []
    for name, cfg in strategy_configs(world).items():
        result = run(cfg)
        row = {"name": name, **{k: v for k, v in cfg.to_dict().items() if not isinstance(v, list)}, **result.summary}
        rows.append(row)
        if name != "single":
            ref = run(spec_for(cfg).baseline(cfg))
            diff = max((result.final_state_dict[k] - v).abs().max().item() for k, v in ref.final_state_dict.items())
            checks.append({"name": name, "max_abs_param_diff": diff, "ok": diff < 1e-3})
    cpu = run(strategy_configs(1)["single"].replace(device="cpu"))
    rows.append({"name": "single-cpu", **cpu.summary})
    pd.DataFrame(rows).assign(**{k: v for k, v in meta.items() if k != "how"}).to_csv(out / "gpu_strategies.csv", index=False)
    pd.DataFrame(checks).to_csv(out / "gpu_equivalence.csv", index=False)
    (out / "gpu_provenance.json").write_text(json.dumps(meta, indent=1))
    print(pd.DataFrame(rows)[["name", "backend", "device", "step_time_s", "comm_s", "samples_per_s"]].to_string(index=False))
    print(pd.DataFrame(checks).to_string(index=False))
    if not all(c["ok"] for c in checks):
        raise SystemExit("some GPU equivalence checks failed (see gpu_equivalence.csv)")

"""`dpkit bench gpu_check`: every strategy on a GPU, checked against single-process training and timed.

One command for a lent GPU machine, meant to finish within 8 minutes on one GPU:
- every strategy the registry has (data with each grad sync and all-reduce algorithm, sync and async
  parameter server, pipeline with each schedule, tensor, hybrid, and any other registered one such as
  sharded data parallelism) at world sizes 1-4, the ranks sharing the machine's GPUs: NCCL when every
  rank can own a GPU, else gloo moving CUDA tensors (the result's `backend` says which);
- each synchronous run checked for equivalence with the single-process run on the same GPU (same losses
  per step and same final parameters, float tolerance, TF32 off); async PS is shown, not checked: it is
  the one strategy that changes what is learned;
- a few configs run on the CPU too, so GPU and CPU step times sit side by side;
- the all-reduce benchmark on CUDA tensors;
- memory per rank (the run's memory summary fields, where the run records them) beside each row;
- CSV, JSON and PNG with provenance (GPU name, driver, torch and CUDA versions, date) under `--out`.
A time budget skips what no longer fits and records it as skipped, never as passed.

`--dry-run` runs the same script on the CPU with a tiny model, so it can be checked before a GPU is lent;
its files say `dry_run: true` and must not be mistaken for GPU results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch

from ..api import run
from ..config import RunConfig
from ..results import RunResult
from ..strategies.registry import SPECS, spec_for
from .allreduce import measure as measure_allreduce

BUDGET_S = 7.5 * 60  # leave room inside the 8 minutes for writing files
MEM_FIELDS = ("mem_params_bytes", "mem_grads_bytes", "mem_optimizer_bytes", "mem_activations_peak_bytes", "mem_peak_bytes")


def provenance(device: str) -> dict:
    """Where, when and with what the numbers were taken."""
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "how": "dpkit bench gpu_check: median over timed steps after warm-up, CUDA events on GPU, TF32 off",
    }
    if device == "cuda":
        driver = ""
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
            driver = out.stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
        info.update(
            gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(), driver=driver, cuda=torch.version.cuda
        )
    return info


def base_config(device: str, dry_run: bool) -> RunConfig:
    """A model big enough to keep a GPU busy (an MLP of about 13M parameters), tiny for the dry run."""
    if dry_run:
        return RunConfig(model="mlp", hidden=32, layers=4, global_batch=48, steps=3, warmup=1, device=device, timeout_s=120)
    return RunConfig(model="mlp", hidden=1024, layers=4, global_batch=384, steps=10, warmup=2, device=device, timeout_s=300)


def strategy_configs(base: RunConfig) -> dict[str, RunConfig]:
    """The grid: every strategy at world size 2, a spread of them at 3 and 4; names say what each is."""
    data = base.replace(parallelism="data")
    out = {"single": base}
    for n in (2, 3, 4):
        if n == 2:
            for sync in ("per-tensor", "flat", "bucketed", "ddp"):
                out[f"data-{sync}-native-n2"] = data.replace(world_size=2, grad_sync=sync)
            for algo in ("ring", "ring-whole", "reduce-broadcast", "tree"):
                out[f"data-bucketed-{algo}-n2"] = data.replace(world_size=2, allreduce_algo=algo)
            out["ps-sync-k1-n2"] = data.replace(sync="ps", world_size=2)
            out["ps-async-k1-n2"] = data.replace(sync="ps-async", world_size=2)
            out["local-sgd-h1-n2"] = data.replace(sync="local-sgd", world_size=2)
            for schedule in ("naive", "gpipe", "1f1b"):
                out[f"pipeline-{schedule}-p2"] = base.replace(parallelism="pipeline", world_size=2, schedule=schedule)
            out["tensor-tp2"] = base.replace(parallelism="tensor", world_size=2)
        if n == 3:
            out["data-bucketed-ring-n3"] = data.replace(world_size=3, allreduce_algo="ring")
            out["ps-sync-k1-n3"] = data.replace(sync="ps", world_size=3)
            out["pipeline-1f1b-p3"] = base.replace(parallelism="pipeline", world_size=3)
        if n == 4:
            out["data-bucketed-native-n4"] = data.replace(world_size=4)
            out["data-ddp-ring-n4"] = data.replace(world_size=4, grad_sync="ddp", allreduce_algo="ring")
            out["pipeline-gpipe-p4"] = base.replace(parallelism="pipeline", world_size=4, schedule="gpipe")
            out["tensor-tp4"] = base.replace(parallelism="tensor", world_size=4)
            out["hybrid-2x2"] = base.replace(parallelism="hybrid", world_size=4, data_parallel_size=2)
    out.update(extra_strategies(base))
    return {name: cfg for name, cfg in out.items() if _fits(cfg)}


def extra_strategies(base: RunConfig) -> dict[str, RunConfig]:
    """Registered strategies the grid above does not name (e.g. sharded data parallelism), at 2 and 4 ranks."""
    known = {"single", "data-allreduce", "parameter-server", "pipeline", "tensor", "hybrid"}
    out = {}
    for spec in SPECS:
        if spec.name in known:
            continue
        for n in (2, 4):
            for stage in (1, 2, 3):  # the knob sharded data parallelism adds; other strategies ignore the attempt
                try:
                    cfg = base.replace(parallelism=spec.parallelism, world_size=n, zero_stage=stage)
                except (TypeError, ValueError):
                    continue
                if spec_for(cfg) is spec:
                    out[f"{spec.name}-stage{stage}-n{n}"] = cfg
    return out


def _fits(cfg: RunConfig) -> bool:
    return cfg.global_batch % spec_for(cfg).batch_split(cfg)[0] == 0


def compare(result: RunResult, ref: RunResult, rtol: float = 1e-4, atol: float = 1e-5) -> tuple[bool, float, str]:
    """(equal?, largest parameter difference, what differed): the same test the CPU suite applies."""
    try:
        torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(ref.losses), rtol=rtol, atol=atol)
        worst = 0.0
        for key, expected in ref.final_state_dict.items():
            got = result.final_state_dict[key]
            worst = max(worst, float((got - expected).abs().max()) if got.numel() else 0.0)
            torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
        return True, worst, ""
    except (AssertionError, KeyError) as exc:
        return False, float("nan"), str(exc).splitlines()[0][:200]


def run_grid(configs: dict[str, RunConfig], deadline: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every config (until the deadline) and its equivalence check against its single-process baseline."""
    rows, checks = [], []
    baselines: dict[str, RunResult] = {}
    for name, cfg in configs.items():
        if time.monotonic() > deadline:
            rows.append({"name": name, "status": "skipped: time budget"})
            continue
        started = time.monotonic()
        try:
            result = run(cfg)
        except Exception as exc:  # a failure is a result too: recorded, not hidden
            rows.append({"name": name, "status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            continue
        row = {"name": name, "status": "ran", "strategy": spec_for(cfg).label(cfg), "world_size": cfg.world_size,
               "wall_s": time.monotonic() - started, **result.summary}  # fmt: skip
        rows.append({k: v for k, v in row.items() if not isinstance(v, (dict, list))})
        spec = spec_for(cfg)
        base = spec.baseline(cfg)
        if base == cfg or not spec.trains_like_baseline(cfg):  # the baseline itself; async PS learns differently
            continue
        key = base.run_id()
        if key not in baselines:
            baselines[key] = run(base)
        ok, worst, why = compare(result, baselines[key])
        checks.append({"name": name, "equal_to_single_process": ok, "max_abs_param_diff": worst, "detail": why,
                       "backend": result.summary.get("backend"), "device": result.summary.get("device")})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(checks)


def gpu_vs_cpu(configs: dict[str, RunConfig], frame: pd.DataFrame, deadline: float) -> pd.DataFrame:
    """The same few configs on the CPU, beside their GPU step times."""
    rows = []
    for name in ("single", "data-bucketed-native-n2", "pipeline-1f1b-p2", "tensor-tp2"):
        if name not in configs or time.monotonic() > deadline:
            continue
        ran = frame[(frame.name == name) & (frame.status == "ran")]
        if ran.empty:
            continue
        cpu = run(configs[name].replace(device="cpu"))
        rows.append({"name": name, "device_step_time_s": float(ran.step_time_s.iloc[0]), "cpu_step_time_s": cpu.summary["step_time_s"],
                     "cpu_threads_per_rank": cpu.summary["threads_per_rank"]})  # fmt: skip
    out = pd.DataFrame(rows)
    if len(out):
        out["cpu_over_device"] = out.cpu_step_time_s / out.device_step_time_s
    return out


def gpu_vs_cpu_plot(table: pd.DataFrame, meta: dict):
    """Step time per config on the device and on the CPU (bars), labelled with where it was measured."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    pos = range(len(table))
    ax.bar([p - 0.2 for p in pos], table.device_step_time_s * 1e3, width=0.4, label=meta.get("gpu", meta["device"]))
    ax.bar([p + 0.2 for p in pos], table.cpu_step_time_s * 1e3, width=0.4, label=f"CPU ({meta['host_cpus']} cores)")
    ax.set_xticks(list(pos), list(table.name), rotation=15, ha="right")
    ax.set(
        ylabel="step time (ms, median of timed steps)",
        title=f"measured {meta['measured_at']}" + (" (CPU dry run)" if meta.get("dry_run") else ""),
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def main(out: Path, args: argparse.Namespace) -> None:
    dry_run = bool(getattr(args, "dry_run", False))
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("dpkit bench gpu_check needs a CUDA GPU; this machine has none (nothing was run). "
                         "`dpkit bench gpu_check --dry-run` runs the same script on the CPU.")  # fmt: skip
    device = "cpu" if dry_run else "cuda"
    deadline = time.monotonic() + BUDGET_S
    meta = {**provenance(device), "dry_run": dry_run}
    configs = strategy_configs(base_config(device, dry_run))
    frame, checks = run_grid(configs, deadline)
    versus = gpu_vs_cpu(configs, frame, deadline)
    sizes = [64 << 10, 1 << 20] if dry_run else [64 << 10, 1 << 20, 16 << 20, 64 << 20]
    bench = measure_allreduce(sizes, ["native", "ring"], [2], repeats=2 if dry_run else 5, launches=1, device=device)
    for name, table in (("gpu_strategies", frame), ("gpu_equivalence", checks), ("gpu_vs_cpu", versus), ("gpu_allreduce", bench)):
        table.assign(**{k: v for k, v in meta.items() if k != "how"}).to_csv(out / f"{name}.csv", index=False)
    (out / "gpu_provenance.json").write_text(json.dumps(meta, indent=1))
    if len(versus):
        gpu_vs_cpu_plot(versus, meta).savefig(out / "gpu_vs_cpu.png", dpi=120)
    cols = [c for c in ("name", "status", "backend", "device", "step_time_s", "comm_s", *MEM_FIELDS) if c in frame.columns]
    print(frame[cols].to_string(index=False))
    if len(checks):
        print(checks[["name", "equal_to_single_process", "max_abs_param_diff"]].to_string(index=False))
    print(versus.to_string(index=False))
    print(bench[["world_size", "algo", "size_bytes", "time_s", "busbw_GBps"]].to_string(index=False))
    print(f"results: {out}")
    failed = [] if checks.empty else list(checks.name[~checks.equal_to_single_process])
    if failed:
        raise SystemExit(f"GPU equivalence failed for {failed} (see gpu_equivalence.csv)")

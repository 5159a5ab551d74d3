"""Memory measured beside predicted, and what each strategy costs: the tables the memory lesson, its panel
and `dpkit bench memory` show.

The memory model is dpkit.cost.memory (each strategy's spec divides the bytes: StrategySpec.predict_memory);
the measurement is dpkit.runtime.memory (RunResult.memory_frame). Beside memory, a strategy's price is
what it sends and how long its step takes, both from the cost model (the spec's `predict`): the bytes are
its communication time on a link of 1 byte/s with no latency, i.e. the bytes on its critical path (the
busiest link's), and the step time is priced on a link you choose, each rank on its own device.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..config import RunConfig
from ..cost import memory
from ..cost.model import HostModel, Link
from ..cost.step_model import ComputeProfile
from ..results import RunResult
from ..strategies.registry import spec_for

KINDS = ("mem_params_bytes", "mem_grads_bytes", "mem_optimizer_bytes", "mem_activations_peak_bytes", "mem_buffers_bytes")
BYTES_LINK = Link(alpha=0.0, bandwidth=1.0, name="1 byte/s, no latency")  # time on it = bytes on the critical path


def strategy_configs(base: RunConfig, world_size: int, zero: bool = True) -> dict[str, RunConfig]:
    """The strategies the lesson compares on one workload, by name: data parallelism, ZeRO-1/2/3 and FSDP2
    (`zero`), a 1F1B pipeline, tensor parallelism and (4 or more ranks) 2 replicas of a pipeline."""
    n = world_size
    data = base.replace(parallelism="data", sync="allreduce", world_size=n, grad_sync="bucketed", zero_stage=0)
    out = {"data parallel": data}
    if zero:
        out.update({f"ZeRO-{s}": data.replace(zero_stage=s) for s in (1, 2, 3)})
        out["FSDP2"] = data.replace(zero_stage=3, grad_sync="fsdp")
    out["pipeline (1f1b)"] = base.replace(parallelism="pipeline", world_size=n, schedule="1f1b")
    out["tensor"] = base.replace(parallelism="tensor", world_size=n)
    if n >= 4 and n % 2 == 0:
        out["hybrid (2 replicas)"] = base.replace(parallelism="hybrid", world_size=n, data_parallel_size=2, schedule="1f1b")
    return out


def parameters(cfg: RunConfig) -> int:
    """The model's parameter count (a tied weight once)."""
    return sum(memory.params_of(cfg)[0])


def predicted_frame(cfg: RunConfig) -> pd.DataFrame:
    """The memory model's bytes per process: rank, role and every mem_* field."""
    return spec_for(cfg).predict_memory(cfg)


def busiest_rank(frame: pd.DataFrame, cfg: RunConfig) -> int:
    """The training rank that holds the most (its stacked bar stands for the strategy)."""
    mine = frame[frame["rank"].isin(spec_for(cfg).training_ranks(cfg))]
    return int(mine.loc[mine["mem_peak_bytes"].astype(float).idxmax(), "rank"])


def compare(result: RunResult) -> pd.DataFrame:
    """Per process and kind: measured bytes, predicted bytes and predicted/measured (1.0: exact)."""
    measured = result.memory_frame().set_index("rank")
    predicted = predicted_frame(result.config).set_index("rank")
    rows = []
    for rank in measured.index:
        for kind in (*KINDS, "mem_peak_bytes"):
            m, p = float(measured.loc[rank, kind]), float(predicted.loc[rank, kind])
            ratio = p / m if m else (1.0 if p == 0 else float("inf"))
            rows.append(
                {"rank": rank, "role": measured.loc[rank, "role"], "kind": kind, "measured": m, "predicted": p, "ratio": ratio}
            )
    return pd.DataFrame(rows)


def breakdown(configs: Mapping[str, RunConfig], results: Mapping[str, RunResult] | None = None) -> pd.DataFrame:
    """One row per strategy and source (predicted, and measured where `results` has the run): the bytes of
    its busiest training rank (by the prediction) by kind, for memory_breakdown_plot."""
    rows = []
    for label, cfg in configs.items():
        predicted = predicted_frame(cfg)
        rank = busiest_rank(predicted, cfg)
        sources = [("predicted", predicted)]
        if results is not None and label in results:
            sources.insert(0, ("measured", results[label].memory_frame()))
        for source, frame in sources:
            row = frame[frame["rank"] == rank].iloc[0]
            rows.append(
                {
                    "label": label,
                    "source": source,
                    "rank": rank,
                    "role": row["role"],
                    **{k: float(row[k]) for k in (*KINDS, "mem_peak_bytes")},
                }
            )
    return pd.DataFrame(rows)


def wire_bytes(cfg: RunConfig) -> float:
    """Bytes on the step's critical path as the cost model prices them (per rank; a parameter server's
    busiest link): the spec's communication time on BYTES_LINK."""
    profile = ComputeProfile(spec_for(cfg).profile_batch(cfg), 0.0, 0.0, 0.0, 1)
    return float(spec_for(cfg).predict(cfg, BYTES_LINK, profile, cores=cfg.num_processes)["comm_s"])


def scaled_profile(profile: ComputeProfile, batch: int) -> ComputeProfile:
    """A compute profile at another batch, forward and backward in proportion (the optimizer does not
    depend on the batch): the approximation that lets one measured profile price every strategy."""
    f = batch / profile.batch
    return ComputeProfile(batch, profile.forward_s * f, profile.backward_s * f, profile.optimizer_s, profile.threads)


def predicted_step_s(cfg: RunConfig, link: Link | HostModel, profile: ComputeProfile) -> float:
    """The cost model's step time with every rank on a device of its own (no shared cores)."""
    spec = spec_for(cfg)
    mine = scaled_profile(profile, spec.profile_batch(cfg))
    return float(spec.predict(cfg, link, mine, cores=cfg.num_processes * mine.threads)["step_time_s"])


def costs(
    configs: Mapping[str, RunConfig], budget_bytes: float, link: Link | HostModel, profile: ComputeProfile | None = None
) -> pd.DataFrame:
    """Per strategy: its busiest rank's predicted bytes, whether they fit in `budget_bytes` per device, the
    predicted bytes on the wire per step, and (with a compute profile of the whole model) the predicted step time."""
    rows = []
    for label, cfg in configs.items():
        predicted = predicted_frame(cfg)
        peak = float(predicted.loc[predicted["rank"] == busiest_rank(predicted, cfg), "mem_peak_bytes"].iloc[0])
        rows.append(
            {
                "label": label,
                "world_size": cfg.world_size,
                "predicted_peak_bytes": peak,
                "budget_bytes": budget_bytes,
                "fits": peak <= budget_bytes,
                "predicted_wire_bytes_per_step": wire_bytes(cfg),
                "predicted_step_time_s": predicted_step_s(cfg, link, profile) if profile is not None else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def whatif(params: float, n: int, device_bytes: float, precision: str = "mixed precision adam") -> pd.DataFrame:
    """A model of `params` parameters data-parallel on n devices of `device_bytes`, without and with ZeRO
    sharding: the model states per device (rows as breakdown() has them, source 'predicted') and whether they
    fit. Activations and buffers are not included: they come on top."""
    p, g, k = memory.STATE_BYTES[precision]
    rows = []
    for stage, label in enumerate(["no sharding", "ZeRO-1", "ZeRO-2", "ZeRO-3"]):
        kinds = {
            "mem_params_bytes": params * p / (n if stage >= 3 else 1),
            "mem_grads_bytes": params * g / (n if stage >= 2 else 1),
            "mem_optimizer_bytes": params * k / (n if stage >= 1 else 1),
            "mem_activations_peak_bytes": 0.0,
            "mem_buffers_bytes": 0.0,
        }
        total = sum(kinds.values())
        rows.append(
            {
                "label": label,
                "source": "predicted",
                **kinds,
                "mem_peak_bytes": total,
                "device_bytes": device_bytes,
                "fits": total <= device_bytes,
            }
        )
    return pd.DataFrame(rows)

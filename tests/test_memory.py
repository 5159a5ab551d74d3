"""Memory per rank: every run counts it (dpkit.runtime.memory), the memory model predicts it (dpkit.cost.memory).

Parameters, gradients and optimizer state are counted tensor by tensor, so the model must match them to the
byte wherever it knows the layout (within 10% for sharded data parallelism, whose transient layout is its
own); activations saved for backward within 25%. The slow test checks the lessons at a size where they
matter: a 16.9M-parameter MLP with Adam on 4 ranks (ZeRO shards the optimizer state and the parameters to a
quarter) and a pipeline (GPipe keeps all m micro-batches, 1F1B at most p - s).
"""

from __future__ import annotations

import dataclasses
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from dpkit import RunConfig, RunResult, run
from dpkit.analysis import memory_compare
from dpkit.cost import memory
from dpkit.runtime.memory import MEM_FIELDS, SavedTensors, held_bytes, tensor_bytes
from dpkit.strategies.registry import spec_for
from dpkit.viz import memory_plots

HAS_ZERO = "zero_stage" in {f.name for f in dataclasses.fields(RunConfig)}
NO_ZERO = "sharded data parallelism is not in this checkout yet (RunConfig has no zero_stage field)"
STATE = ("mem_params_bytes", "mem_grads_bytes", "mem_optimizer_bytes")
ACT = "mem_activations_peak_bytes"

BASE = RunConfig(
    model="mlp", hidden=32, layers=3, global_batch=24, steps=2, warmup=1, optimizer="adam", threads_per_rank=1, timeout_s=120
)
CASES: dict[str, dict] = {  # name -> RunConfig fields on top of BASE
    "single": {},
    "data bucketed": {"parallelism": "data", "world_size": 2},
    "data ddp": {"parallelism": "data", "world_size": 2, "grad_sync": "ddp"},
    "data flat ring, sgd": {
        "parallelism": "data",
        "world_size": 3,
        "grad_sync": "flat",
        "allreduce_algo": "ring",
        "optimizer": "sgd",
    },
    "ps sync, 2 servers": {"parallelism": "data", "sync": "ps", "world_size": 2, "num_servers": 2},
    "pipeline gpipe": {"parallelism": "pipeline", "world_size": 2, "schedule": "gpipe", "microbatches": 4},
    "pipeline 1f1b": {"parallelism": "pipeline", "world_size": 3, "schedule": "1f1b", "microbatches": 4},
    "tensor": {"parallelism": "tensor", "world_size": 2},
    "hybrid": {"parallelism": "hybrid", "world_size": 4, "data_parallel_size": 2, "microbatches": 2},
    "transformer tensor": {
        "model": "transformer",
        "hidden": 32,
        "seq_len": 16,
        "layers": 2,
        "parallelism": "tensor",
        "world_size": 2,
    },
    "cnn pipeline": {"model": "cnn", "hidden": 8, "parallelism": "pipeline", "world_size": 3, "schedule": "gpipe"},
}
ZERO_CASES: dict[str, dict] = {
    "zero1": {"parallelism": "data", "world_size": 3, "zero_stage": 1},
    "zero2": {"parallelism": "data", "world_size": 2, "zero_stage": 2},
    "zero3": {"parallelism": "data", "world_size": 2, "zero_stage": 3},
    "fsdp2": {"parallelism": "data", "world_size": 2, "zero_stage": 3, "grad_sync": "fsdp"},
    "zero3 transformer tied": {
        "model": "transformer", "hidden": 32, "seq_len": 16, "layers": 2, "tie_weights": True,
        "parallelism": "data", "world_size": 2, "zero_stage": 3,
    },
}  # fmt: skip
ALL = [pytest.param(name, id=name) for name in CASES] + [
    pytest.param(name, id=name, marks=pytest.mark.skipif(not HAS_ZERO, reason=NO_ZERO)) for name in ZERO_CASES
]
_RESULTS: dict[str, RunResult] = {}


def result_of(name: str) -> RunResult:
    """Each case runs once per session, shared by the tests below."""
    if name not in _RESULTS:
        _RESULTS[name] = run(BASE.replace(**{**CASES, **ZERO_CASES}[name]))
    return _RESULTS[name]


# ---- every run counts memory, per rank and in its summary --------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_memory_fields_exist_for_every_strategy(name: str) -> None:
    r = result_of(name)
    cfg, frame = r.config, r.memory_frame()
    assert list(frame["rank"]) == list(range(cfg.num_processes))
    assert list(frame["role"]) == spec_for(cfg).roles(cfg)
    kinds = [f for f in MEM_FIELDS if f != "mem_peak_bytes"]
    for f in MEM_FIELDS:
        assert (frame[f] >= 0).all(), f
    assert (frame["mem_peak_bytes"] == frame[kinds].sum(axis=1)).all()
    training = frame[frame["rank"].isin(r.training_ranks())]
    for f in MEM_FIELDS:  # the summary: each field's largest value over the training ranks
        assert isinstance(r.summary[f], int) and r.summary[f] == training[f].max(), f
    assert (training["mem_params_bytes"] > 0).all() and (training[ACT] > 0).all() and (training["mem_grads_bytes"] > 0).all()
    assert r.summary["mem_cuda_max_allocated_bytes"] is None  # a CPU run has no allocator statistics


@pytest.mark.parametrize("name", ALL)
def test_measured_memory_matches_the_model(name: str) -> None:
    r = result_of(name)
    measured = r.memory_frame().set_index("rank")
    predicted = spec_for(r.config).predict_memory(r.config).set_index("rank")
    assert list(predicted["role"]) == list(measured["role"])
    sharded = name in ZERO_CASES
    for rank in measured.index:
        for f in STATE:
            m, p = float(measured.loc[rank, f]), float(predicted.loc[rank, f])
            if sharded:
                assert p == pytest.approx(m, rel=0.10), (rank, f, m, p)
            else:  # counted tensor by tensor, predicted from the layout: the same bytes
                assert p == m, (rank, f, m, p)
        m, p = float(measured.loc[rank, ACT]), float(predicted.loc[rank, ACT])
        assert p == pytest.approx(m, rel=0.25), (rank, ACT, m, p)


def test_memory_survives_saving_and_loading(tmp_path: Path) -> None:
    r = result_of("pipeline gpipe")
    back = RunResult.load(r.save(tmp_path / "run"))
    pd.testing.assert_frame_equal(back.memory_frame(), r.memory_frame())
    assert {f: back.summary[f] for f in MEM_FIELDS} == {f: r.summary[f] for f in MEM_FIELDS}


def test_buffers_are_the_sync_and_server_buffers() -> None:
    """Counted: the bucketed sync's buffers (one copy of every gradient), the flat ring's buffer plus its
    scratch, a parameter-server worker's packed and pulled copies, a server's inbox row per worker and outbox."""
    grads = result_of("data bucketed").memory_frame().mem_grads_bytes
    assert (result_of("data bucketed").memory_frame().mem_buffers_bytes == grads).all()
    ring = result_of("data flat ring, sgd").memory_frame()
    assert (ring.mem_buffers_bytes > ring.mem_grads_bytes).all()  # the flat buffer, and the ring's scratch on top
    ps = result_of("ps sync, 2 servers").memory_frame()
    workers, servers = ps[ps.role.str.startswith("worker")], ps[ps.role.str.startswith("parameter server")]
    assert (workers.mem_buffers_bytes == 2 * workers.mem_grads_bytes).all() and (workers.mem_optimizer_bytes == 0).all()
    assert servers.mem_params_bytes.sum() == workers.mem_params_bytes.iloc[0]  # the shards add up to the model
    assert (servers.mem_buffers_bytes == 3 * servers.mem_params_bytes).all()  # 2 inbox rows + the outbox


# ---- the counting itself, without processes -------------------------------------------------------------
def test_saved_tensors_count_activations_once_and_release_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    batch = torch.randn(10, 8)
    x = batch[:5]  # a slice of a bigger batch: only the slice counts
    saved = SavedTensors()
    with saved.hooks():
        loss = model(x).relu().sum()
    # the slice (5x8), the first linear's output (GELU's input, 5x16), GELU's output (5x16), the last output (ReLU's, 5x4)
    assert saved.live == 4 * (5 * 8 + 5 * 16 + 5 * 16 + 5 * 4)
    assert saved.peak == saved.live
    loss.backward()
    assert saved.live == 0 and saved.peak == 4 * (5 * 8 + 5 * 16 + 5 * 16 + 5 * 4)
    with saved.hooks():  # the same tensor saved by two operations is kept once
        h = torch.randn(6, 3, requires_grad=True)
        y = (h * h).sum() + h.sin().sum()
    assert saved.live == 4 * 6 * 3
    del y
    assert saved.live == 0  # a graph dropped without a backward releases what it saved


def test_held_bytes_counts_each_storage_once() -> None:
    flat = torch.zeros(100)
    a, b = flat[:40].view(4, 10), flat[40:].view(6, 10)  # two parameters laid end to end in one buffer
    pa, pb = nn.Parameter(a), nn.Parameter(b)
    grad_buffer = torch.zeros(100)
    pa.grad, pb.grad = grad_buffer[:40].view(4, 10), grad_buffer[40:].view(6, 10)  # gradients that are views of a buffer
    opt = torch.optim.SGD([pa, pb], lr=0.1, momentum=0.9)
    opt.step()
    held = held_bytes([pa, pb], [opt], [grad_buffer, torch.zeros(7)])
    assert held == {"params_bytes": 400, "grads_bytes": 400, "optimizer_bytes": 400, "buffers_bytes": 28}
    assert tensor_bytes([flat, a, b, None]) == 400


# ---- the model at cluster scale ------------------------------------------------------------------------
def test_state_bytes_per_param_follow_the_formulas_table() -> None:
    n = 8
    assert memory.state_bytes_per_param(0, n) == 16  # mixed precision: 2 + 2 + 12
    assert memory.state_bytes_per_param(1, n) == 2 + 2 + 12 / n
    assert memory.state_bytes_per_param(2, n) == 2 + (2 + 12) / n
    assert memory.state_bytes_per_param(3, n) == 16 / n
    assert memory.state_bytes_per_param(0, n, "fp32 adam") == 16
    table = memory_compare.whatif(7e9, 8, 80e9).set_index("label")
    assert table.loc["no sharding", "mem_peak_bytes"] == 112e9 and not table.loc["no sharding", "fits"]
    assert table.loc["ZeRO-1", "mem_peak_bytes"] == pytest.approx(38.5e9) and table.loc["ZeRO-1", "fits"]
    assert table.loc["ZeRO-3", "mem_peak_bytes"] == pytest.approx(14e9)


@pytest.mark.skipif(not HAS_ZERO, reason=NO_ZERO)
def test_model_divides_the_optimizer_then_gradients_then_parameters() -> None:
    """docs/formulas.md's table, on a model whose units split evenly: stage by stage, a quarter on 4 ranks."""
    cfg = BASE.replace(parallelism="data", world_size=4, hidden=64, grad_sync="flat")
    whole = memory.replicated(cfg, 4, 6)
    for stage, sharded in ((1, {"optimizer"}), (2, {"optimizer", "grads"}), (3, {"optimizer", "grads", "params"})):
        m = memory.replicated(cfg.replace(zero_stage=stage), 4, 6)
        for kind in ("params", "grads", "optimizer"):
            ratio = getattr(m, kind) / getattr(whole, kind)
            assert ratio == pytest.approx(0.25 if kind in sharded else 1.0, rel=1e-3), (stage, kind)


# ---- figures -------------------------------------------------------------------------------------------
def test_memory_figures() -> None:
    names = ["data bucketed", "pipeline gpipe", "tensor"]
    configs = {n: result_of(n).config for n in names}
    frame = memory_compare.breakdown(configs, {n: result_of(n) for n in names})
    assert set(frame.source) == {"measured", "predicted"} and len(frame) == 6
    fig = memory_plots.memory_breakdown_plot(frame, budget_bytes=4e5)
    assert isinstance(fig, Figure) and "predicted" in fig.axes[0].get_title()
    whatif = memory_plots.memory_breakdown_plot(memory_compare.whatif(7e9, 8, 80e9), budget_bytes=80e9, title="7B on 8 x 80 GB")
    assert "predicted" in whatif.axes[0].get_title()
    timeline = memory_plots.memory_timeline_plot(result_of("pipeline gpipe"))
    assert isinstance(timeline, Figure) and len(timeline.axes[0].lines) == 2  # one line per stage


# ---- the lessons at a size where they matter -------------------------------------------------------------
BIG = RunConfig(
    parallelism="data", world_size=4, model="mlp", hidden=1024, layers=2, optimizer="adam", lr=1e-3,
    global_batch=16, steps=2, warmup=1, threads_per_rank=1, timeout_s=300,
)  # fmt: skip  # 16.9M parameters


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ZERO, reason=NO_ZERO)
def test_zero_shards_the_optimizer_state_and_then_the_parameters() -> None:
    assert memory_compare.parameters(BIG) > 10_000_000
    plain, zero1, zero3 = (run(BIG.replace(zero_stage=s)).summary for s in (0, 1, 3))
    assert zero1["mem_optimizer_bytes"] <= 0.3 * plain["mem_optimizer_bytes"]
    assert zero1["mem_params_bytes"] == pytest.approx(plain["mem_params_bytes"], rel=1e-3)  # stage 1 keeps every parameter
    assert zero3["mem_params_bytes"] <= 0.3 * plain["mem_params_bytes"]
    assert zero3["mem_peak_bytes"] < zero1["mem_peak_bytes"] < plain["mem_peak_bytes"]


@pytest.mark.slow
def test_gpipe_keeps_every_micro_batch_and_1f1b_fewer() -> None:
    """p = 2 stages, m = 4 micro-batches: GPipe's stage 0 holds all 4 micro-batches' activations at its peak,
    1F1B's at most p - s = 2; the micro-batch's own size comes from a run with m = 1 (the naive schedule)."""
    pipe = BIG.replace(parallelism="pipeline", world_size=2, microbatches=4, global_batch=16)
    stage0 = {s: run(pipe.replace(schedule=s)).memory_frame().set_index("rank").loc[0, ACT] for s in ("gpipe", "1f1b")}
    one = (
        run(pipe.replace(schedule="naive", global_batch=4)).memory_frame().set_index("rank").loc[0, ACT]
    )  # one micro-batch of 4 samples
    assert stage0["gpipe"] == pytest.approx(4 * one, rel=0.05)
    assert stage0["1f1b"] == pytest.approx(2 * one, rel=0.05) and stage0["1f1b"] < stage0["gpipe"]


@pytest.mark.slow
def test_bench_memory_quick_writes_its_tables_and_figures(tmp_path: Path, capsys) -> None:
    from dpkit.benchmarks import memory as bench

    bench.main(tmp_path, Namespace(quick=True))
    table = pd.read_csv(tmp_path / "memory_runs.csv")
    assert len(table) >= 9 and table.within_bounds.all()
    rows = pd.read_csv(tmp_path / "memory.csv")
    assert set(rows.kind) >= set(MEM_FIELDS) and (rows.measured >= 0).all()
    for name in ("memory.png", "memory_timeline.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert "within the bounds" in capsys.readouterr().out

"""Mixed precision (precision='bf16'): autocast with fp32 master weights. Parameters, gradients and optimizer
state stay fp32; what the forward saves is bf16 (plus bf16 weight copies), as the memory model says; data
parallelism equals one process within bf16's tolerance; the digits MLP still learns."""

from __future__ import annotations

import pytest
import torch

from dpkit import RunConfig, run
from dpkit.cost.memory import activation_bytes
from dpkit.runtime.memory import SavedTensors
from dpkit.strategies.precision import autocast
from dpkit.strategies.registry import spec_for
from dpkit.workloads import build_model, loss_fn, model_layout

BASE = RunConfig(model="mlp", hidden=32, layers=3, global_batch=24, steps=3, warmup=1, threads_per_rank=1, timeout_s=120)
#: bf16 keeps 8 bits of mantissa: a relative rounding of 2^-8 ~ 0.4% per value; a few steps of SGD on the
#: same samples, split differently between ranks, stay within 1% (the fp32 rule is 1e-4)
BF16_RTOL, BF16_ATOL = 1e-2, 1e-3


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_the_forward_saves_bf16_as_the_model_predicts(model: str) -> None:
    cfg = RunConfig(model=model, hidden=32, layers=3, precision="bf16")
    m = build_model(cfg, 0)
    x = torch.rand(8, 64) if model == "mlp" else torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    saved = SavedTensors()
    with saved.hooks():
        with autocast(cfg, torch.device("cpu")):
            out = m(x)
            loss = loss_fn(out, y)
        loss.backward()
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())
    assert saved.peak == activation_bytes(cfg, model_layout(cfg).blocks, 8)


def test_fp32_runs_no_autocast() -> None:
    with autocast(BASE, torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"grad_sync": "bucketed"}, id="bucketed"),
        pytest.param({"grad_sync": "flat", "allreduce_algo": "ring"}, id="flat-ring"),
        pytest.param({"grad_sync": "per-tensor"}, id="per-tensor"),
        pytest.param({"grad_sync": "ddp"}, id="ddp"),
        pytest.param({"zero_stage": 1}, id="zero1"),
        pytest.param({"zero_stage": 3}, id="zero3"),
        pytest.param({"zero_stage": 3, "grad_sync": "fsdp"}, id="fsdp2"),
        pytest.param({"sync": "ps"}, id="parameter-server"),
    ],
)
def test_bf16_data_parallel_equals_bf16_single_process(fields: dict) -> None:
    single = run(BASE.replace(precision="bf16"))
    dp = run(BASE.replace(parallelism="data", world_size=2, precision="bf16", **fields))
    torch.testing.assert_close(torch.tensor(dp.losses), torch.tensor(single.losses), rtol=BF16_RTOL, atol=BF16_ATOL)
    for name, t in single.final_state_dict.items():
        assert dp.final_state_dict[name].dtype == torch.float32  # the master weights
        torch.testing.assert_close(dp.final_state_dict[name], t, rtol=BF16_RTOL, atol=BF16_ATOL)
    # the memory fields follow: fp32 state counted tensor by tensor, bf16 activations as predicted
    predicted = spec_for(dp.config).predict_memory(dp.config).set_index("rank")
    measured = dp.memory_frame().set_index("rank")
    for rank in measured.index:
        for f in ("mem_params_bytes", "mem_optimizer_bytes", "mem_activations_peak_bytes"):
            assert float(predicted.loc[rank, f]) == pytest.approx(float(measured.loc[rank, f]), rel=0.10), (rank, f)


@pytest.mark.slow
def test_bf16_learns_the_digits() -> None:
    cfg = RunConfig(
        parallelism="data", world_size=2, precision="bf16", optimizer="adam", lr=0.003, global_batch=64, steps=120,
        eval_every=60, threads_per_rank=1, timeout_s=300,
    )  # fmt: skip
    r = run(cfg)
    assert float(r.evals["accuracy"].iloc[-1]) >= 0.9, r.evals


@pytest.mark.parametrize(
    "fields",
    [{"parallelism": "pipeline", "world_size": 2}, {"parallelism": "tensor", "world_size": 2}],
)
def test_bf16_is_refused_where_it_does_not_apply(fields: dict) -> None:
    with pytest.raises(ValueError, match="precision"):
        BASE.replace(**fields, precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        BASE.replace(precision="fp16")

"""Activation checkpointing (checkpoint_activations=True): each hidden block keeps its input and recomputes the
rest in the backward. Training is bitwise what it is without; the measured activation peak falls, as predicted."""

from __future__ import annotations

import pytest
import torch

from dpkit import RunConfig, run
from dpkit.cost.memory import activation_bytes
from dpkit.runtime.memory import SavedTensors
from dpkit.strategies.registry import spec_for
from dpkit.workloads import build_model, loss_fn, model_layout, step_flops

ACT = "mem_activations_peak_bytes"
BASE = RunConfig(model="mlp", hidden=32, layers=3, global_batch=24, steps=3, warmup=1, threads_per_rank=1, timeout_s=120)


def _inputs(model: str, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if model == "mlp":
        return torch.rand(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    if model == "cnn":
        return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return torch.randint(0, 64, (n, 16), generator=g), torch.randint(0, 64, (n, 16), generator=g)


@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_checkpointed_model_is_bitwise_the_same_and_saves_less(model: str) -> None:
    """In process: same names, same loss and gradients bit for bit; the saved-tensor peak is the model's."""
    results = {}
    for ck in (False, True):
        cfg = RunConfig(model=model, hidden=32, layers=3, seq_len=16, checkpoint_activations=ck)
        m = build_model(cfg, 0)
        x, y = _inputs(model)
        saved = SavedTensors()
        with saved.hooks():
            loss = loss_fn(m(x), y)
            loss.backward()
        assert saved.live == 0  # everything saved was released by the backward
        assert saved.peak == activation_bytes(cfg, model_layout(cfg).blocks, len(x))
        results[ck] = (loss.detach(), {n: p.grad for n, p in m.named_parameters()}, list(m.state_dict()), saved.peak)
    (l0, g0, k0, p0), (l1, g1, k1, p1) = results[False], results[True]
    assert k0 == k1 and torch.equal(l0, l1)
    assert all(torch.equal(g0[n], g1[n]) for n in g0)
    assert p1 < p0


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="single"),
        pytest.param({"parallelism": "data", "world_size": 2, "grad_sync": "bucketed"}, id="data-bucketed"),
        pytest.param({"parallelism": "data", "world_size": 2, "grad_sync": "ddp"}, id="data-ddp"),
        pytest.param({"parallelism": "data", "world_size": 2, "zero_stage": 2}, id="zero2"),
        pytest.param({"parallelism": "pipeline", "world_size": 2, "schedule": "1f1b", "microbatches": 4}, id="pipeline"),
    ],
)
def test_training_is_exactly_equal_and_the_measured_peak_lower(fields: dict) -> None:
    plain = run(BASE.replace(**fields))
    ck = run(BASE.replace(**fields, checkpoint_activations=True))
    assert ck.losses == plain.losses  # bitwise: the recompute runs the same operations on the same values
    assert set(ck.final_state_dict) == set(plain.final_state_dict)
    for name, t in plain.final_state_dict.items():
        assert torch.equal(ck.final_state_dict[name], t), name
    assert ck.summary[ACT] < plain.summary[ACT]
    predicted = spec_for(ck.config).predict_memory(ck.config).set_index("rank")
    measured = ck.memory_frame().set_index("rank")
    for rank in measured.index:
        assert float(predicted.loc[rank, ACT]) == pytest.approx(float(measured.loc[rank, ACT]), rel=0.05), rank


@pytest.mark.parametrize(
    "fields",
    [
        {"parallelism": "data", "world_size": 2, "zero_stage": 3},
        {"parallelism": "data", "world_size": 2, "zero_stage": 3, "grad_sync": "fsdp"},
        {"parallelism": "tensor", "world_size": 2},
    ],
)
def test_checkpointing_is_refused_where_it_does_not_apply(fields: dict) -> None:
    with pytest.raises(ValueError, match="checkpoint_activations"):
        BASE.replace(**fields, checkpoint_activations=True)


def test_run_ids_do_not_change_for_the_defaults() -> None:
    assert BASE.replace(checkpoint_activations=False, precision="fp32").run_id() == BASE.run_id()
    assert BASE.replace(checkpoint_activations=True).run_id() != BASE.run_id()


def test_the_recompute_costs_part_of_a_forward_of_the_hidden_blocks() -> None:
    cfg = BASE.replace(hidden=64, layers=4)
    plain, ck = step_flops(cfg, 16), step_flops(cfg.replace(checkpoint_activations=True), 16)
    h, samples = 64, 16
    # torch stops a recompute once every tensor the backward needs is back (early stop): in each of the 4 blocks
    # the up-projection (h x 4h, 2 flops per multiply-add) and the GELU; the down-projection's output is not needed
    assert ck - plain == 4 * (2 * samples * h * 4 * h)

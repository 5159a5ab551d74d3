"""Every bad RunConfig value is refused at construction with the field, the value and what is allowed."""

from __future__ import annotations

import pytest

from dpkit import RunConfig
from dpkit.config import max_local_ranks


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"world_size": 0}, "world_size", ">= 1"),
        ({"parallelism": "data", "world_size": 3, "global_batch": 64}, "global_batch", "multiple of"),
        ({"parallelism": "data", "world_size": 2, "grad_accum": 3, "global_batch": 8}, "global_batch", "multiple of"),
        ({"model": "resnet"}, "model", "'mlp', 'cnn', 'transformer'"),
        ({"parallelism": "magic"}, "parallelism", "'none', 'data'"),
        ({"parallelism": "data", "world_size": 2, "sync": "gossip"}, "sync", "'allreduce', 'ps', 'ps-async'"),
        ({"parallelism": "pipeline", "world_size": 4, "layers": 1}, "world_size", "at most 3 pipeline stages"),
        ({"steps": 0}, "steps", ">= 1"),
        ({"parallelism": "data", "world_size": max_local_ranks() + 1}, "world_size", "at most"),
        ({"parallelism": "none", "world_size": 2}, "world_size", "1 when parallelism='none'"),
        ({"steps": 3, "warmup": 3}, "warmup", "fewer warm-up steps"),
        ({"lr": 0}, "lr", "> 0"),
        ({"grad_sync": "smart"}, "grad_sync", "'per-tensor'"),
        ({"allreduce_algo": "butterfly"}, "allreduce_algo", "'ring'"),
        ({"device": "tpu"}, "device", "'cpu'"),
        ({"parallelism": "pipeline", "world_size": 2, "microbatches": 0}, "microbatches", ">= 1"),
        ({"parallelism": "tensor", "world_size": 4, "hidden": 30}, "hidden", "divisible"),
        ({"tie_weights": True}, "tie_weights", "transformer"),
        ({"straggler_ranks": (5,), "parallelism": "data", "world_size": 2}, "straggler_ranks", "0..1"),
        ({"world_size": 1.5}, "world_size", "integer"),
    ],
)
def test_bad_value_names_field_value_and_allowed(changes: dict, field: str, allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        RunConfig(**changes)
    message = str(info.value)
    assert f"RunConfig.{field}=" in message
    assert repr(changes.get(field, "")) in message or field in ("global_batch", "world_size", "warmup")
    assert allowed in message


def test_good_config_round_trips_through_dict() -> None:
    cfg = RunConfig(parallelism="data", world_size=2, freeze=("embed",), straggler_ranks=[1])
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.run_id() == cfg.run_id()
    assert again.straggler_ranks == (1,)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        RunConfig.from_dict({"wrld_size": 2})


def test_freeze_must_match_a_parameter() -> None:
    from dpkit.workloads import build_model

    with pytest.raises(ValueError, match="matches no parameter"):
        build_model(RunConfig(freeze=("nothing",)), seed=0)

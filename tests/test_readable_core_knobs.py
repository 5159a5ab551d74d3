"""A new strategy with its own knob is one module and one registry line: the trial.

The module is the section below (sign-SGD: data parallelism in which every rank all-reduces the sign of its
gradient, scaled by a new knob `sign_scale`); the registry line is `strategy_registered(SignSGDSpec())` (for a
strategy in the package: one line in dpkit/strategies/registry.py's SPECS). Nothing else changes: RunConfig gets
the field, its checks the knob's range, `dpkit run` the option, and run() builds and trains it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dpkit import RunConfig, run
from dpkit.config import UnknownFieldError, strategy_registered
from dpkit.config_args import config_from_args, config_parser
from dpkit.strategies import registry
from dpkit.strategies.base import RankContext, Strategy, state_on_cpu, trainable
from dpkit.strategies.spec import DataSplitSpec, Knob
from dpkit.workloads import build_model, shard


# ---- the trial module: sign-SGD ---------------------------------------------------------------------------------
class SignSGD(Strategy):
    """Each rank: forward/backward on its slice, all-reduce sign(gradient), step by lr * sign_scale * mean sign."""

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        self.model = build_model(self.cfg, self.cfg.seed).to(ctx.device)  # the same start on every rank
        self.opt = torch.optim.SGD(trainable(self.model), lr=self.cfg.lr)

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        n = self.cfg.world_size
        xs, ys = shard(x, self.ctx.rank, n), shard(y, self.ctx.rank, n)
        loss = self.forward_backward(self.model, xs, ys, 1.0)
        for p in trainable(self.model):
            p.grad = torch.sign(p.grad)
            self.ctx.comm.all_reduce(p.grad, name="sign all-reduce")
            p.grad.mul_(self.cfg.sign_scale / n)
        with self.rec.span("compute", "optimizer"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return loss, xs.shape[0]

    def owned_state(self) -> dict[str, torch.Tensor]:
        return state_on_cpu(self.model) if self.ctx.rank == 0 else {}


class SignSGDSpec(DataSplitSpec):
    name = "sign-sgd"
    parallelism = "sign-sgd"
    description = "sign-SGD (parallelism='sign-sgd')"
    knobs = (
        Knob(
            "sign_scale",
            float,
            1.0,
            "sign-SGD: a step moves each parameter by lr * sign_scale * the ranks' mean gradient sign",
            allowed="a finite number > 0",
            check=lambda v: v > 0,
        ),
    )
    exclusive_knobs = {"sign_scale": 1.0}

    def trains_like_baseline(self, cfg: RunConfig) -> bool:
        return False  # signs, not gradients: it learns differently from one process, on purpose

    def build(self, ctx: RankContext) -> Strategy:
        return SignSGD(ctx)


# ---- the checks -----------------------------------------------------------------------------------------------
SIGN = dict(parallelism="sign-sgd", world_size=2, model="mlp", hidden=16, layers=2, global_batch=8, steps=2, warmup=0)


def test_the_knob_is_a_field_with_its_default_while_registered_and_gone_after() -> None:
    before = [f.name for f in dataclasses.fields(RunConfig)]
    plain = RunConfig()
    with strategy_registered(SignSGDSpec()):
        cfg = RunConfig(**SIGN, sign_scale=0.5)
        assert cfg.sign_scale == 0.5 and RunConfig(**SIGN).sign_scale == 1.0
        assert "sign-sgd" in registry.PARALLELISMS and "sign_scale" in [f.name for f in dataclasses.fields(RunConfig)]
        assert RunConfig.from_dict(cfg.to_dict()) == cfg and cfg.replace(sign_scale=2.0).sign_scale == 2.0
        assert plain.sign_scale == 1.0  # a config made before the registration reads the knob's default
    assert [f.name for f in dataclasses.fields(RunConfig)] == before
    assert "sign-sgd" not in registry.PARALLELISMS
    with pytest.raises(UnknownFieldError, match="sign_scale"):
        RunConfig(sign_scale=0.5)
    with pytest.raises(ValueError, match="RunConfig.parallelism='sign-sgd' is not allowed"):
        RunConfig(parallelism="sign-sgd", world_size=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sign_scale": -1.0}, r"RunConfig.sign_scale=-1.0 is not allowed: a finite number > 0"),
        ({"sign_scale": "big"}, r"RunConfig.sign_scale='big' is not allowed: a finite number > 0, not a string"),
        ({"sign_scale": float("inf")}, r"RunConfig.sign_scale=inf is not allowed"),
        ({"parallelism": "data", "sign_scale": 2.0}, r"RunConfig.sign_scale=2.0 is not allowed: 1.0 unless the run is sign-SGD"),
        ({"sign_scle": 2.0}, r"did you mean 'sign_scale'\?"),
    ],
)
def test_a_bad_knob_value_names_the_field(changes: dict, message: str) -> None:
    with strategy_registered(SignSGDSpec()), pytest.raises(ValueError, match=message):
        RunConfig(**{**SIGN, **changes})


def test_the_knob_is_a_command_line_option() -> None:
    with strategy_registered(SignSGDSpec()):
        parser = config_parser("dpkit run", "test")
        assert "--sign-scale" in parser.format_help() and "mean gradient sign" in parser.format_help()
        args = parser.parse_args(["--parallelism", "sign-sgd", "--world-size", "2", "--sign-scale", "0.25"])
        assert config_from_args(args).sign_scale == 0.25
    assert "--sign-scale" not in config_parser("dpkit run", "test").format_help()


def test_a_second_knob_of_the_same_name_or_a_common_field_is_refused() -> None:
    class Clash(SignSGDSpec):
        name, parallelism = "clash", "clash"
        knobs = (Knob("sign_scale", int, 1, "another meaning"),)

    class Shadow(SignSGDSpec):
        name, parallelism = "shadow", "shadow"
        knobs = (Knob("lr", float, 0.1, "a second lr"),)

    with strategy_registered(SignSGDSpec()):
        with pytest.raises(ValueError, match="different knob 'sign_scale'"):
            strategy_registered(Clash()).__enter__()
        assert [s.name for s in registry.SPECS].count("clash") == 0
    with pytest.raises(ValueError, match="may not reuse a RunConfig field every run has: lr"):
        strategy_registered(Shadow()).__enter__()
    assert "shadow" not in registry.PARALLELISMS and RunConfig().lr == 0.05


@pytest.mark.slow  # starts two rank processes
def test_sign_sgd_trains_two_steps_on_two_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked ranks inherit the registration (forkserver ranks know the package's registry only). Every parameter
    moves by whole multiples of lr * sign_scale / n: the signs were all-reduced, not the gradients."""
    monkeypatch.setenv("DPKIT_START_METHOD", "fork")
    with strategy_registered(SignSGDSpec()):
        cfg = RunConfig(**SIGN, sign_scale=0.5, optimizer="sgd", threads_per_rank=1, timeout_s=120)
        result = run(cfg)
        start = build_model(cfg, cfg.seed).state_dict()
    assert len(result.losses) == 2
    unit = cfg.lr * cfg.sign_scale / cfg.world_size
    moved = False
    for name, final in result.final_state_dict.items():
        steps = (final - start[name]) / unit
        torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        assert steps.abs().max() <= cfg.steps * cfg.world_size + 1e-3, name  # at most n units per step
        moved = moved or bool(steps.abs().max() > 0.5)
    assert moved, "no parameter moved"

"""The spec of local SGD (parallelism='data', sync='local-sgd'): every rank steps its own copy of the model,
and the copies are averaged every `local_steps` (H) steps: about 1/H of data parallelism's bytes per step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...cost.model import HostModel, Link
from ...cost.sending_less import sync_time
from ...cost.step_model import ComputeProfile, parts, slowest_rank_slowdown, step_facts
from ..spec import DataSplitSpec, Knob

if TYPE_CHECKING:
    from ...config import RunConfig
    from ..base import RankContext, Strategy

KNOBS: tuple[Knob, ...] = (
    Knob("local_steps", int, 1, "sync='local-sgd': optimizer steps between two averagings of the parameters (H)", minimum=1),
)


class LocalSGDSpec(DataSplitSpec):
    name = "local-sgd"
    parallelism = "data"
    description = "local SGD (parallelism='data', sync='local-sgd')"
    exclusive_knobs = {"local_steps": 1}
    knobs = KNOBS

    def selects(self, cfg: RunConfig) -> bool:
        return cfg.parallelism == "data" and cfg.sync == "local-sgd"

    def trains_like_baseline(self, cfg: RunConfig) -> bool:
        """H = 1 with SGD: averaging the stepped copies averages their updates, which are linear in the gradients
        (momentum too). Adam's update is not linear, and with H > 1 the copies drift apart between averagings."""
        return cfg.local_steps == 1 and cfg.optimizer == "sgd"

    def label(self, cfg: RunConfig) -> str:
        return f"data/local-sgd/H={cfg.local_steps}/{cfg.allreduce_algo}"

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        """fwd + bwd + opt + the parameters' flat copy in and out (2S mu, every H steps) + one all-reduce of the
        parameters every H steps, spread over the H steps (nothing overlaps it)."""
        f = step_facts(cfg, model, profile, slowest_rank_slowdown(cfg.world_size, profile.threads, cores))
        n, h = cfg.world_size, cfg.local_steps
        shapes = [tuple(p.shape) for p in f.model.parameters() if p.requires_grad]
        link = model.link(n) if isinstance(model, HostModel) else model
        comm = sync_time("none", shapes, n, link, local_steps=h, algo=cfg.allreduce_algo)
        copies = 0.0 if n == 1 else 2 * f.grad_bytes * f.one.mu / h
        return parts(f.t_forward + f.t_backward + f.t_optimizer + copies, comm, comm)

    def build(self, ctx: RankContext) -> Strategy:
        from ..local_sgd import LocalSGD

        return LocalSGD(ctx)


SPEC = LocalSGDSpec()

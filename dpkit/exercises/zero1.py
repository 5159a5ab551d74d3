"""Exercise 5: a ZeRO-1 optimizer step, checked against a full-batch single-process SGD with momentum.

Every rank holds all the parameters but only 1/n of the optimizer state (the momentum of its shard).
One step: reduce-scatter the gradients (each rank gets the sum of its shard), average, update the
momentum and the parameters of its shard, all-gather the parameters. Done right, every rank ends each
step with exactly the parameters torch.optim.SGD(momentum=...) gives one process on the whole batch.

The flat parameter vector is padded with zeros to a multiple of n so that all shards have one length;
the padding has zero gradient and stays zero. This reference is small and separate on purpose: the
exercise shows the idea, not dpkit's sharded strategies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from .base import Item, RankExercise
from .net import Net

IN, OUT, BATCH, STEPS = 5, 3, 12, 3  # BATCH divides by 2, 3 and 4: every rank gets an equal slice
LR, MOMENTUM = 0.1, 0.9


def model(hidden: int) -> nn.Sequential:
    """A 5-hidden-3 MLP with fixed initial parameters."""
    g = torch.Generator().manual_seed(hidden)
    m = nn.Sequential(nn.Linear(IN, hidden), nn.Tanh(), nn.Linear(hidden, OUT))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def batch(hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + hidden)
    return torch.randn(BATCH, IN, generator=g), torch.randn(BATCH, OUT, generator=g)


def padded(numel: int, world: int) -> int:
    return -(-numel // world) * world


def flat_params(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def load_flat(m: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def reference_run(hidden: int) -> list[torch.Tensor]:
    """Flat parameters after each step of single-process SGD with momentum on the whole batch."""
    m, (x, y) = model(hidden), batch(hidden)
    opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        out.append(flat_params(m))
    return out


def builtin_step(params: torch.Tensor, grad: torch.Tensor, momentum_buf: torch.Tensor, lr: float, momentum: float) -> None:
    """dpkit's reference ZeRO-1 step (the timing's baseline)."""
    n, r = dist.get_world_size(), dist.get_rank()
    k = params.numel() // n
    g = torch.empty(k)
    dist.reduce_scatter(g, list(grad.chunk(n)))
    g.div_(n)
    momentum_buf.mul_(momentum).add_(g)
    mine = params[r * k : (r + 1) * k]
    mine.sub_(momentum_buf, alpha=lr)
    dist.all_gather(list(params.chunk(n)), mine.clone())


class Zero1Step(RankExercise):
    """fn(net, params, grad, momentum_buf, lr, momentum): one ZeRO-1 step; params (all of them) updated in place."""

    name = "zero1_step"
    sizes = (4, 9)  # hidden width of the MLP
    timing_size = 1 << 18
    builtin = "dpkit's reference ZeRO-1 step (reduce_scatter + all_gather, gloo)"

    def size_label(self, size: int) -> str:
        numel = flat_params(model(size)).numel()
        return f"a {IN}-{size}-{OUT} MLP ({numel} parameters)"

    def timing_label(self) -> str:
        return f"{self.timing_size} float32 parameters"

    def run(self, fns: list[Callable], net: Net, size: int) -> list[Item]:
        n, r = net.world_size, net.rank
        m, (x, y) = model(size), batch(size)
        rows = BATCH // n
        x, y = x[r * rows : (r + 1) * rows], y[r * rows : (r + 1) * rows]
        numel = flat_params(m).numel()
        params = torch.zeros(padded(numel, n))
        params[:numel] = flat_params(m)
        momentum_buf = torch.zeros(params.numel() // n)  # this rank's shard of the optimizer state
        out = []
        for step in range(STEPS):
            loss = nn.functional.mse_loss(m(x), y)  # the mean over this rank's slice
            grad = torch.zeros_like(params)
            grad[:numel] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))])
            fns[0](net, params, grad, momentum_buf, LR, MOMENTUM)
            load_flat(m, params)
            out.append((f"parameters after step {step}", params[:numel].clone()))
        return out

    def expected(self, world: int, size: int) -> list[list[Item]]:
        steps = [(f"parameters after step {s}", p) for s, p in enumerate(reference_run(size))]
        return [steps for _ in range(world)]

    def hint(self, world: int, size: int, rank: int, item: int, expected: torch.Tensor, got: torch.Tensor) -> str:
        before = reference_run(size)[item - 1] if item else flat_params(model(size))
        k = padded(before.numel(), world) // world
        mine = slice(rank * k, (rank + 1) * k)
        others = torch.ones_like(got, dtype=torch.bool)
        others[mine] = False
        if torch.allclose(got[mine], expected[mine]) and torch.equal(got[others], before[others]):
            return "Only this rank's shard changed: all-gather the updated shards so that every rank has every parameter."
        if item > 0:
            return (
                f"Step 0 was right and step {item} is not: the momentum is what carries over from step to step; "
                "keep it in momentum_buf (buf = momentum x buf + grad, then params -= lr x buf)."
            )
        if torch.allclose(got, before + world * (expected - before), rtol=1e-4, atol=1e-5):
            return f"The update is {world} times too large: average the reduce-scattered gradient (divide by net.world_size)."
        return ""

    def timed(self, fns: list[Callable], net: Net, size: int) -> tuple[Callable[[], None], Callable[[], None]]:
        n = net.world_size
        g = torch.Generator().manual_seed(net.rank)
        params = torch.randn(padded(size, n), generator=torch.Generator().manual_seed(0))
        grad = torch.randn(params.numel(), generator=g) / 1000
        buf = torch.zeros(params.numel() // n)
        return (lambda: fns[0](net, params, grad, buf, LR, MOMENTUM)), (lambda: builtin_step(params, grad, buf, LR, MOMENTUM))

"""Exercise 3: a parameter server's push and pull, for one shard.

Ranks 0 .. n-2 are workers, the last rank is the server (as in dpkit, servers come after the workers).
Every step each worker pushes its gradient and pulls the parameters back; the server receives all
pushes, applies params -= lr * (average gradient), and answers each pull. After every step all ranks
must hold the parameters a single process gets from the same update: what a synchronous parameter
server promises (dpkit/strategies/parameter_server/server.py is the full version, with shards and an async mode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .base import Item, RankExercise
from .net import POINT_TO_POINT, Net

LR = 0.1
STEPS = 3


def initial_params(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2 * size + 1)
    return torch.randint(-50, 50, (size,), generator=g).float() / 4


def gradient(size: int, rank: int, step: int) -> torch.Tensor:
    """Worker `rank`'s gradient at `step`: small multiples of 1/8, exact in float32."""
    g = torch.Generator().manual_seed(1000 * step + 17 * size + rank)
    return torch.randint(-50, 50, (size,), generator=g).float() / 8


def _wait(works: list) -> None:
    for work in works:
        if work is not None:  # torch returns None only to ranks outside the group: never here
            work.wait()


def builtin_worker(server: int, grad: torch.Tensor, params: torch.Tensor) -> None:
    """Post the pull before pushing: the server never waits for this worker to be ready for its answer."""
    pull = dist.irecv(params, server)
    dist.send(grad, server)
    _wait([pull])


def builtin_server(workers: list[int], params: torch.Tensor, lr: float, inbox: torch.Tensor) -> None:
    """Receive every push at once (into one row each), average, update, answer every pull at once."""
    _wait([dist.irecv(inbox[i], w) for i, w in enumerate(workers)])
    params.sub_(inbox.sum(dim=0), alpha=lr / len(workers))
    _wait([dist.isend(params, w) for w in workers])


class PushPull(RankExercise):
    """worker(net, server, grad, params) pushes `grad` and pulls into `params`;
    server(net, workers, params, lr) applies the averaged pushes to `params` and answers the pulls."""

    name = "ps_push_pull"
    functions = ("worker", "server")
    allowed = POINT_TO_POINT
    sizes = (1, 10, 1000)
    timing_size = 1 << 18
    builtin = "dpkit's reference push/pull (pulls posted before pushes)"

    def roles(self, world: int) -> list[str]:
        return [f"worker {r}" for r in range(world - 1)] + ["server"]

    def run(self, fns: list[Callable], net: Net, size: int) -> list[Item]:
        worker, server = fns
        n, params = net.world_size, initial_params(size)
        out = []
        for step in range(STEPS):
            if net.rank < n - 1:
                worker(net, n - 1, gradient(size, net.rank, step), params)
            else:
                server(net, list(range(n - 1)), params, LR)
            out.append((f"parameters after step {step}", params.clone()))
        return out

    def expected(self, world: int, size: int) -> list[list[Item]]:
        params, out = initial_params(size), []
        for step in range(STEPS):
            grads = [gradient(size, w, step) for w in range(world - 1)]
            params = params - LR * (sum(grads) / len(grads))
            out.append((f"parameters after step {step}", params))
        return [out for _ in range(world)]

    def hint(self, world: int, size: int, rank: int, item: int, expected: torch.Tensor, got: torch.Tensor) -> str:
        before = initial_params(size)
        for step in range(item):
            before = before - LR * (sum(gradient(size, w, step) for w in range(world - 1)) / (world - 1))
        grads = [gradient(size, w, item) for w in range(world - 1)]
        role = "server" if rank == world - 1 else "worker"
        if torch.allclose(got, before):
            if role == "worker":
                return "The parameters did not change in this step: pull the server's answer into params."
            return "The server's parameters did not change: subtract lr x the average gradient from params."
        if world > 2 and torch.allclose(got, before - LR * sum(grads), atol=1e-5):
            return "The update used the sum of the pushed gradients: average them (divide by the number of workers)."
        if item > 0:
            return "The steps before this one were right: look at what carries over from one step to the next."
        return ""

    def timed(self, fns: list[Callable], net: Net, size: int) -> tuple[Callable[[], None], Callable[[], None]]:
        worker, server = fns
        n, params = net.world_size, initial_params(size)
        if net.rank < n - 1:
            grad = gradient(size, net.rank, 0) / 1000  # small: the parameters hardly move over the repeats
            return (lambda: worker(net, n - 1, grad, params)), (lambda: builtin_worker(n - 1, grad, params))
        workers, inbox = list(range(n - 1)), torch.empty(n - 1, size)
        return (lambda: server(net, workers, params, LR)), (lambda: builtin_server(workers, params, LR, inbox))

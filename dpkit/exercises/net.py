"""`Net`: the only way an exercise function talks to other ranks, so every byte it moves can be counted.

The learner's function gets a `Net` as its first argument instead of calling torch.distributed itself:
send/recv/isend/irecv count the bytes given to them exactly; the collectives (all_reduce, reduce_scatter,
all_gather) are the backend's, whose messages dpkit cannot see, so their bytes are counted by formula
(what a ring would send: docs/formulas.md). An exercise can allow only some of the calls (the ring
all-reduce must be built from send/recv alone), and a call it does not allow raises at once, saying why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.distributed as dist

POINT_TO_POINT = frozenset({"send", "recv", "isend", "irecv"})
EVERYTHING = POINT_TO_POINT | {"all_reduce", "reduce_scatter", "all_gather", "barrier"}


class ExerciseRuleError(RuntimeError):
    """The function used a call this exercise does not allow, or addressed a rank that does not exist."""


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Request:
    """A posted isend/irecv: call wait() before reading (irecv) or changing (isend) the tensor."""

    def __init__(self, net: Net, work, what: str) -> None:
        self._net, self._work, self.what = net, work, what
        self.done = False

    def wait(self) -> None:
        if not self.done:
            self._net._doing(f"waiting for {self.what}")
            self._work.wait()
            self.done = True  # before the progress below: it lists what is still pending
            self._net._doing(f"running its own code after waiting for {self.what}")

    def is_completed(self) -> bool:
        return self.done or bool(self._work.is_completed())


class Net:
    """This rank's messages: `rank` and `world_size` of the group, point-to-point calls and a few collectives.

    `bytes_sent` counts exactly what went through send/isend; `formula_bytes` what the collectives send
    per rank by the ring formulas; `calls` how often each call was made."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        allowed: frozenset[str] = EVERYTHING,
        progress: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.allowed = allowed
        self.bytes_sent = 0
        self.bytes_received = 0
        self.formula_bytes = 0
        self.calls: Counter[str] = Counter()
        self.requests: list[Request] = []
        self.progress = progress  # where the rank says what it is doing (read if it hangs); None: nowhere

    # ---- bookkeeping -----------------------------------------------------------------------------
    def _doing(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text, [r.what for r in self.requests if not r.done])

    def _enter(self, call: str, text: str) -> None:
        if call not in self.allowed:
            allowed = ", ".join(f"net.{c}" for c in sorted(self.allowed))
            raise ExerciseRuleError(f"this exercise does not allow net.{call}: use only {allowed}")
        self.calls[call] += 1
        self._doing(f"in net.{call}{text}")

    def _peer(self, peer: int, call: str) -> int:
        if not isinstance(peer, int) or not 0 <= peer < self.world_size:
            raise ExerciseRuleError(f"net.{call}: rank {peer!r} does not exist (ranks are 0..{self.world_size - 1})")
        if peer == self.rank:
            raise ExerciseRuleError(f"net.{call}: rank {self.rank} addressed itself (a message needs another rank)")
        return peer

    def unfinished(self) -> list[str]:
        """Posted isend/irecv nobody waited for; they are waited for here, so the next case starts clean."""
        left = [r.what for r in self.requests if not r.done]
        for r in self.requests:
            r.wait()
        self.requests.clear()
        return left

    # ---- point to point (bytes counted exactly) ------------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Send `tensor` to rank `dst`; returns when it is sent."""
        self._enter("send", f" to rank {dst}")
        dist.send(tensor, self._peer(dst, "send"))
        self.bytes_sent += nbytes(tensor)
        self._doing(f"running its own code after net.send to rank {dst}")

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        """Receive into `tensor` from rank `src`; returns when it has arrived."""
        self._enter("recv", f" from rank {src}")
        dist.recv(tensor, self._peer(src, "recv"))
        self.bytes_received += nbytes(tensor)
        self._doing(f"running its own code after net.recv from rank {src}")

    def isend(self, tensor: torch.Tensor, dst: int) -> Request:
        """Start sending `tensor` to `dst`; do not change it before the request's wait()."""
        self._enter("isend", f" to rank {dst}")
        request = Request(self, dist.isend(tensor, self._peer(dst, "isend")), f"isend to rank {dst}")
        self.requests.append(request)
        self.bytes_sent += nbytes(tensor)
        self._doing(f"running its own code after posting net.isend to rank {dst}")
        return request

    def irecv(self, tensor: torch.Tensor, src: int) -> Request:
        """Start receiving into `tensor` from `src`; read it only after the request's wait()."""
        self._enter("irecv", f" from rank {src}")
        request = Request(self, dist.irecv(tensor, self._peer(src, "irecv")), f"irecv from rank {src}")
        self.requests.append(request)
        self.bytes_received += nbytes(tensor)
        self._doing(f"running its own code after posting net.irecv from rank {src}")
        return request

    # ---- collectives (bytes by the ring formulas) --------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` over all ranks, in place (every rank ends with the same sum)."""
        self._enter("all_reduce", "")
        dist.all_reduce(tensor)
        n = self.world_size
        self.formula_bytes += 2 * (n - 1) * nbytes(tensor) // n
        self._doing("running its own code after net.all_reduce")

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor) -> None:
        """output = the sum over ranks of chunk `rank` of `input` (1-D, length world_size * len(output))."""
        self._enter("reduce_scatter", "")
        n = self.world_size
        if input.numel() != n * output.numel():
            raise ExerciseRuleError(
                f"net.reduce_scatter: input has {input.numel()} elements, not world_size x output = {n * output.numel()}"
            )
        dist.reduce_scatter(output, list(input.reshape(-1).chunk(n)))
        self.formula_bytes += (n - 1) * nbytes(output)
        self._doing("running its own code after net.reduce_scatter")

    def all_gather(self, output: torch.Tensor, input: torch.Tensor) -> None:
        """output = every rank's `input`, concatenated in rank order (1-D, length world_size * len(input))."""
        self._enter("all_gather", "")
        n = self.world_size
        if output.numel() != n * input.numel() or not output.is_contiguous():
            raise ExerciseRuleError(
                f"net.all_gather: output must be contiguous with world_size x input = {n * input.numel()} elements, not {output.numel()}"
            )
        dist.all_gather(list(output.view(-1).chunk(n)), input.contiguous())
        self.formula_bytes += (n - 1) * nbytes(input)
        self._doing("running its own code after net.all_gather")

    def barrier(self) -> None:
        """Wait until every rank has called barrier()."""
        self._enter("barrier", "")
        dist.barrier()
        self._doing("running its own code after net.barrier")

"""Gradient compression: average the gradients while sending fewer bytes (docs/formulas.md, "Sending less").

Each compressor replaces one all-reduce of a gradient buffer (the flat buffer, or one bucket) by something
cheaper on the wire, and leaves the buffer holding the (approximate) average over the group:

- fp16 / bf16: cast to 16 bits, divide by n, all-reduce, cast back (torch's `fp16_compress_hook`): S/2 bytes.
- powersgd: each gradient matrix M (a parameter viewed as rows x rest) is approximated by P Q^T of rank r
  (Vogels et al. 2019, torch's `powerSGD_hook`): one power iteration per step, warm-started from last
  step's Q; r(rows + cols) values instead of rows * cols. Vectors (biases) and matrices too small to gain
  `min_compression_rate` are all-reduced as they are.
- topk: each rank sends only its k largest-magnitude entries (values and int32 indices) to every other
  rank (an all-gather); every rank adds them up (Lin et al. 2018, without momentum correction).

powersgd and topk keep an error-feedback residual per rank: what this rank did not get across this step
is added to its next gradient, so nothing is lost, only delayed. With topk_ratio = 1 nothing is left out
and topk equals plain averaging.

The gradient sync (grad_sync.py) owns the buffers; the compressor only says how one buffer is averaged.
Every message goes through Comm, so bytes and time are counted like every other all-reduce.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..cost.sending_less import COMPRESSIONS, topk_count

if TYPE_CHECKING:
    from ..comm import Comm, Group


class Compressor:
    """Averages a gradient buffer over a group. `matrices` are views of the buffer, one per parameter,
    shaped like the parameters (PowerSGD compresses each as a matrix); `key` names the buffer (a bucket's
    index), so state kept between steps (residuals, warm starts) stays with its buffer."""

    name = "none"

    def __init__(self, comm: Comm, group: Group | None = None) -> None:
        self.comm, self.group = comm, group
        self.world = (group or comm.world).size

    def average(self, buffer: torch.Tensor, matrices: Sequence[torch.Tensor], key: int = 0) -> None:
        self.comm.all_reduce(buffer, self.group, name="allreduce-grad")
        buffer.div_(self.world)


class LowPrecision(Compressor):
    """Send 16-bit values: divide first (so a sum of n values cannot overflow fp16), then all-reduce."""

    def __init__(self, comm: Comm, group: Group | None, dtype: torch.dtype) -> None:
        super().__init__(comm, group)
        self.dtype, self.name = dtype, {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]

    def average(self, buffer: torch.Tensor, matrices: Sequence[torch.Tensor], key: int = 0) -> None:
        low = buffer.to(self.dtype).div_(self.world)
        self.comm.all_reduce(low, self.group, name=f"allreduce-{self.name}")
        buffer.copy_(low)


class PowerSGD(Compressor):
    """Rank-r PowerSGD with error feedback and warm start, in the order torch's powerSGD_hook does it, so
    both give the same averages on the same gradients (tests/test_compression.py)."""

    name = "powersgd"

    def __init__(self, comm: Comm, group: Group | None, rank: int, seed: int = 0, min_compression_rate: float = 2.0) -> None:
        super().__init__(comm, group)
        self.rank, self.min_rate = rank, min_compression_rate
        self.rng = np.random.RandomState(seed)  # the same draws on every rank: Q starts equal everywhere
        self.residual: dict[int, torch.Tensor] = {}
        self.q_memory: dict[int, list[torch.Tensor]] = {}

    def _worth_compressing(self, m: torch.Tensor) -> bool:
        rows, cols = m.shape
        return (rows + cols) * min(rows, cols, self.rank) * self.min_rate < rows * cols

    def average(self, buffer: torch.Tensor, matrices: Sequence[torch.Tensor], key: int = 0) -> None:
        # 1. error feedback: this step's gradient plus what earlier steps did not get across
        if key in self.residual:
            buffer.add_(self.residual[key])
        sent_for = buffer.clone()
        as_matrix = [t.view(t.shape[0], -1) for t in matrices]
        big = [m for m in as_matrix if self._worth_compressing(m)]
        small = [t for t, m in zip(matrices, as_matrix, strict=True) if not self._worth_compressing(m)]
        # 2. vectors and small matrices: a plain average
        if small:
            plain = torch.cat([t.reshape(-1) for t in small])
            self.comm.all_reduce(plain, self.group, name="allreduce-uncompressed")
            plain.div_(self.world)
            offset = 0
            for t in small:
                t.copy_(plain[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
        if big:
            qs = self._start_q(key, big)
            # 3. P = M Q, summed over ranks, then orthonormalised
            ps = [m @ q for m, q in zip(big, qs, strict=True)]
            p_all = torch.cat([p.reshape(-1) for p in ps])
            self.comm.all_reduce(p_all, self.group, name="allreduce-powersgd-P")
            ps = _split(p_all, [p.shape for p in ps])
            for p in ps:
                orthonormalise(p)
            # 4. Q = M^T P, averaged over ranks
            q_all = torch.cat([(m.t() @ p).reshape(-1) for m, p in zip(big, ps, strict=True)])
            self.comm.all_reduce(q_all, self.group, name="allreduce-powersgd-Q")
            q_all.div_(self.world)
            qs = _split(q_all, [q.shape for q in qs])
            # 5. M ~ P Q^T: the average every rank now holds
            for m, p, q in zip(big, ps, qs, strict=True):
                m.copy_(p @ q.t())
            self.q_memory[key] = qs  # warm start: next step's power iteration begins here
        self.residual[key] = sent_for - buffer

    def _start_q(self, key: int, big: list[torch.Tensor]) -> list[torch.Tensor]:
        """Last step's Q (orthonormalised), or, the first time, random Q drawn from the shared seed."""
        if key in self.q_memory:
            qs = self.q_memory[key]
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.rng.randint(1_000_000_000))
                qs = [torch.randn(m.shape[1], min(*m.shape, self.rank), dtype=m.dtype) for m in big]
            qs = [q.to(m.device) for q, m in zip(qs, big, strict=True)]
        for q in qs:
            orthonormalise(q)
        return qs


class TopK(Compressor):
    """Send the k = ratio * length largest entries of (gradient + residual), as values and int32 indices;
    keep the rest as next step's residual."""

    name = "topk"

    def __init__(self, comm: Comm, group: Group | None, ratio: float) -> None:
        super().__init__(comm, group)
        self.ratio = ratio
        self.residual: dict[int, torch.Tensor] = defaultdict(lambda: torch.zeros(0))

    def average(self, buffer: torch.Tensor, matrices: Sequence[torch.Tensor], key: int = 0) -> None:
        if self.residual[key].numel():
            buffer.add_(self.residual[key])
        k = topk_count(buffer.numel(), self.ratio)
        _, index = buffer.abs().topk(k, sorted=False)
        index = index.sort().values.to(torch.int32)  # sorted: the summation order is the buffer's order
        values = buffer[index.long()]
        residual = buffer.clone()
        residual[index.long()] = 0
        self.residual[key] = residual
        # every rank's k values and indices to every rank
        all_values = torch.empty(self.world * k, dtype=values.dtype, device=values.device)
        all_index = torch.empty(self.world * k, dtype=torch.int32, device=index.device)
        self.comm.all_gather(values, all_values, self.group, name="allgather-topk-values")
        self.comm.all_gather(index, all_index, self.group, name="allgather-topk-indices")
        buffer.zero_()
        for r in range(self.world):  # in rank order: the same sum on every rank
            part = slice(r * k, (r + 1) * k)
            buffer.index_add_(0, all_index[part].long(), all_values[part])
        buffer.div_(self.world)


def orthonormalise(m: torch.Tensor) -> None:
    """Gram-Schmidt on the columns of `m`, in place (what torch's PowerSGD does for rank <= 2; QR beyond)."""
    if m.shape[1] > 2:
        q, _ = torch.linalg.qr(m)
        m.copy_(q)
        return
    for i in range(m.shape[1]):
        col = m[:, i : i + 1]
        col /= torch.norm(col, dim=0, keepdim=True)
        if i + 1 < m.shape[1]:
            rest = m[:, i + 1 :]
            rest -= torch.sum(col * rest, dim=0, keepdim=True) * col


def _split(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    out, offset = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[offset : offset + n].view(shape))
        offset += n
    return out


def make_compressor(
    kind: str, comm: Comm, group: Group | None = None, *, powersgd_rank: int = 1, topk_ratio: float = 0.01, seed: int = 0
) -> Compressor:
    """The compressor `kind` (one of COMPRESSIONS) for buffers averaged over `group`."""
    if kind == "none":
        return Compressor(comm, group)
    if kind in ("fp16", "bf16"):
        return LowPrecision(comm, group, torch.float16 if kind == "fp16" else torch.bfloat16)
    if kind == "powersgd":
        return PowerSGD(comm, group, powersgd_rank, seed)
    if kind == "topk":
        return TopK(comm, group, topk_ratio)
    raise ValueError(f"compression {kind!r} is not allowed: choose one of {', '.join(COMPRESSIONS)}")

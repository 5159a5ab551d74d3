"""Flat buffers and buckets: the one layout every gradient sync, ZeRO and the cost model share.

Sending one message per tensor pays the per-message cost once per tensor; so gradients (or parameters)
are laid end to end in one flat buffer and sent as one message, or cut into buckets of about bucket_mb
so that a bucket can be sent while the backward still computes the rest. ZeRO pads a flat buffer with
zeros to a multiple of the ranks, so that it splits into n equal shards.

Imports only torch: the cost model (dpkit.cost) plans the same buckets without running anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

MB = 2**20  # bucket_mb counts mebibytes


def plan_buckets(sizes: Sequence[float], bucket_mb: float) -> list[list[int]]:
    """Indices of `sizes` (bytes, in the order they become ready) grouped into buckets: a bucket is closed
    before it would pass bucket_mb; a tensor larger than that is a bucket of its own. Every rank plans
    the same buckets. Gradients arrive last layer first, so callers pass parameters in reverse order."""
    limit = bucket_mb * MB
    buckets: list[list[int]] = []
    size = 0.0
    for i, b in enumerate(sizes):
        if not buckets or (buckets[-1] and size + b > limit):
            buckets.append([])
            size = 0.0
        buckets[-1].append(i)
        size += b
    return [b for b in buckets if b]


def bucket_bytes(sizes: Sequence[float], bucket_mb: float) -> list[float]:
    """The bytes of each bucket plan_buckets forms (the cost model prices these)."""
    return [sum(sizes[i] for i in bucket) for bucket in plan_buckets(sizes, bucket_mb)]


class LiveBytes:
    """Bytes of the flat buffers allocated for a moment (ZeRO's whole gradients and gathered parameters)
    and the most of them alive at once: memory accounting reads it, the algorithms never do."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def change(self, delta: int) -> None:
        self.live += delta
        self.peak = max(self.peak, self.live)


class FlatBuffer:
    """`tensors` laid end to end in one 1-D tensor (`data`, on their device unless `device` is given),
    zero-padded to `shards` equal shards.

    `view(t)` is t's place in the buffer. A buffer may be freed and allocated again (its storage shrinks to
    nothing and grows back, so views taken before stay valid): those moments are counted in `transient`."""

    transient = LiveBytes()  # one per process: a rank's transient buffers, whichever strategy made them

    def __init__(
        self, tensors: Sequence[torch.Tensor], shards: int = 1, allocated: bool = True, device: torch.device | str | None = None
    ) -> None:
        self.tensors = list(tensors)
        dtype = self.tensors[0].dtype if self.tensors else torch.float32
        device = device or (self.tensors[0].device if self.tensors else "cpu")  # `device`: e.g. the host, for gloo
        self.numel = sum(t.numel() for t in self.tensors)
        self.shard_numel = -(-self.numel // shards)  # ceil: the padded length splits evenly
        self.shards = shards
        self.data = torch.zeros(self.shard_numel * shards, dtype=dtype, device=device)
        self.offsets: dict[int, int] = {}
        offset = 0
        for t in self.tensors:
            self.offsets[id(t)] = offset
            offset += t.numel()
        self._counted = False  # whether its current allocation is a transient one (counted in `transient`)
        if not allocated:
            self.data.untyped_storage().resize_(0)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """`t`'s place in the buffer, shaped like `t`."""
        offset = self.offsets[id(t)]
        return self.data[offset : offset + t.numel()].view_as(t)

    def shard(self, i: int) -> torch.Tensor:
        """Shard i of the padded buffer (a view)."""
        return self.data.view(self.shards, -1)[i]

    def pack(self, tensors: Iterable[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Copy `tensors` (default: the buffer's own; None counts as zeros) into their places; returns `data`."""
        with torch.no_grad():
            for t, src in zip(self.tensors, self.tensors if tensors is None else tensors, strict=True):
                if src is None:
                    self.view(t).zero_()
                else:
                    self.view(t).copy_(src)
        return self.data

    def unpack(self, tensors: Iterable[torch.Tensor] | None = None) -> None:
        """Copy each place back into `tensors` (default: the buffer's own)."""
        with torch.no_grad():
            for t, dst in zip(self.tensors, self.tensors if tensors is None else tensors, strict=True):
                dst.copy_(self.view(t))

    def bind(self) -> None:
        """Make the buffer's tensors (parameters) views of it, keeping their values: what is written into the
        buffer is then what the model computes with."""
        self.pack()
        for t in self.tensors:
            t.data = self.view(t)

    # -- a buffer that lives only for a moment -------------------------------------------------------
    @property
    def allocated(self) -> bool:
        return self.data.untyped_storage().nbytes() > 0

    def allocate(self, zero: bool = False) -> torch.Tensor:
        """Give the buffer its memory again (contents undefined unless `zero`); returns `data`."""
        if not self.allocated:
            self.data.untyped_storage().resize_(self.nbytes)
            FlatBuffer.transient.change(+self.nbytes)
            self._counted = True
        if zero:
            self.data.zero_()
        return self.data

    def free(self) -> None:
        """Release the buffer's memory; its views stay valid tensors of no storage until allocate()."""
        if self.allocated:
            self.data.untyped_storage().resize_(0)
            if self._counted:
                FlatBuffer.transient.change(-self.nbytes)
            self._counted = False

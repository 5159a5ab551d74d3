"""launch() targets for tests/test_compression.py: dpkit's hand-written compressors beside torch's DDP comm hooks,
on the same gradients, on real ranks.

torch's hooks take a DDP GradBucket; they only call buffer(), index(), gradients() and is_last() on it,
so a small stand-in holding a flat buffer and views of it feeds them the very same tensors dpkit gets.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

from dpkit.comm import Comm
from dpkit.runtime.recorder import HostClock, Recorder
from dpkit.strategies.compression import make_compressor

SHAPES = [(16, 12), (16,), (24, 16), (24,), (10, 24), (10,)]


class Bucket:
    """What torch's comm hooks ask of a GradBucket: one flat buffer and per-parameter views of it."""

    def __init__(self, flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> None:
        self.flat, self.views, offset = flat, [], 0
        for s in shapes:
            n = int(torch.Size(s).numel())
            self.views.append(flat[offset : offset + n].view(s))
            offset += n

    def buffer(self) -> torch.Tensor:
        return self.flat

    def index(self) -> int:
        return 0

    def gradients(self) -> list[torch.Tensor]:
        return self.views

    def is_last(self) -> bool:
        return True


def gradients(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(sum(int(torch.Size(s).numel()) for s in SHAPES), generator=g)


def compare_with_torch_hooks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """For each step: dpkit's compressor and torch's hook average the same gradients; write the largest difference."""
    kind, steps = payload["kind"], payload["steps"]
    comm = Comm(Recorder(rank, HostClock()), payload.get("algo", "native"))
    ours = make_compressor(kind, comm, powersgd_rank=payload.get("rank", 1), seed=0)
    state = None
    if kind == "powersgd":
        state = powerSGD_hook.PowerSGDState(None, matrix_approximation_rank=payload.get("rank", 1), start_powerSGD_iter=2)
        state.iter = state.start_powerSGD_iter  # compress from the first call, as dpkit does
    diffs = []
    for step in range(steps):
        mine, theirs = gradients(rank, step), gradients(rank, step)
        ours.average(mine, Bucket(mine, SHAPES).views)
        bucket = Bucket(theirs, SHAPES)
        if kind == "fp16":
            theirs = default_hooks.fp16_compress_hook(None, bucket).wait()
        else:
            theirs = powerSGD_hook.powerSGD_hook(state, bucket).wait()
        diffs.append(float((mine - theirs).abs().max()))
    dist.barrier()
    Path(out_dir, f"diff{rank}.json").write_text(json.dumps(diffs))


def topk_equals_average(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """topk with ratio 1 against a plain average, and, with a small ratio, that residual + sent = gradient."""
    comm = Comm(Recorder(rank, HostClock()), payload.get("algo", "native"))
    full = make_compressor("topk", comm, topk_ratio=1.0)
    plain = make_compressor("none", comm)
    a, b = gradients(rank, 0), gradients(rank, 0)
    full.average(a, [a])
    plain.average(b, [b])
    sparse = make_compressor("topk", comm, topk_ratio=0.1)
    g = gradients(rank, 1)
    kept = g.clone()
    sparse.average(g, [g])
    residual = sparse.residual[0]  # type: ignore[attr-defined]
    sent = kept - residual
    report = {
        "ratio1_max_diff": float((a - b).abs().max()),
        "nonzero_sent": int((sent != 0).sum()),
        "k": max(1, round(0.1 * kept.numel())),
        "residual_plus_sent_is_gradient": bool(torch.equal(residual + sent, kept)),
        "sent_are_largest": bool(
            sent.abs().min() >= 0 and residual.abs().max() <= kept.abs().topk(len(sent.nonzero())).values.min()
        ),
    }
    Path(out_dir, f"topk{rank}.json").write_text(json.dumps(report))

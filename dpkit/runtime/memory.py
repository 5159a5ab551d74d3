"""Memory per rank, counted: what a rank holds and the most it held at once, by kind.

A rank's bytes fall into five kinds (docs/formulas.md, "Memory per rank"):

- parameters, gradients and optimizer state: the tensors the strategy holds, declared once
  (Strategy.held_tensors, a `Held`: by default what its attributes named model/module, opt and sync hold;
  a strategy whose layout differs, such as sharded data parallelism, declares its own) and read off here.
  Each storage is counted once, so views into one flat buffer, a tied weight, or gradients that are views
  of a communication buffer are not counted twice;
- activations saved for backward: every forward the strategy runs is wrapped in
  torch.autograd.graph.saved_tensors_hooks, which sees each tensor autograd keeps for the backward. The
  bytes those tensors reference are tracked while they live (the byte ranges of each storage, so a slice
  of the batch counts as the slice), and the peak within a step is kept. It works on CPU, where no
  allocator statistics exist, and a pipeline stage shows the micro-batches it keeps in flight;
- communication buffers: gradient-sync flat and bucket buffers, parameter-server inboxes and outboxes,
  the hand-written collectives' scratch buffers (dpkit.comm.group.scratch_bytes), and the flat buffers
  that live only for a moment (ZeRO's whole gradients and gathered parameters: dpkit.buffers.FlatBuffer
  counts them as they are allocated and freed), at their peak.

Strategy.memory_state() is asked after each optimizer step (its state exists, the step's transient tensors
are gone) and at the end of the step; gradients that live only from a backward to the optimizer step are
also counted where each backward ends. Each kind keeps its largest value. Counting costs a few microseconds per saved tensor, so it runs only in the first steps (the
warm-up, which is not timed; every step of a run has the same shapes). On a GPU,
torch.cuda.max_memory_allocated is reported beside the counts.

mem_peak_bytes adds the five: an upper bound on what the rank held at once, as if every peak coincided
(on CPU nothing measures the true concurrent peak; on a GPU, compare mem_cuda_max_allocated_bytes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..buffers import FlatBuffer
from ..cost.memory import MEM_FIELDS  # the summary fields, named by the memory model (cost/ is a layer below)

if TYPE_CHECKING:
    from ..strategies.base import Strategy
    from .recorder import CudaClock, HostClock

#: Strategy.memory_state()'s keys, in the order storages are claimed (a storage counts in the first kind that holds it)
STATE_KEYS = ("params_bytes", "grads_bytes", "optimizer_bytes", "buffers_bytes")
CUDA_FIELD = "mem_cuda_max_allocated_bytes"
MAX_SAMPLES = 4000  # activation samples kept per rank for the memory-over-a-step figure


# ---- counting what a rank holds -------------------------------------------------------------------
def _storage_key(t: torch.Tensor) -> tuple[str, int | None, int]:
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def tensor_bytes(tensors: Iterable[torch.Tensor | None], seen: set | None = None) -> int:
    """Bytes of the storages behind `tensors`, each storage once (and none already in `seen`, which is updated):
    a view into a flat buffer counts the buffer, once."""
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        if t is None:
            continue
        if hasattr(t, "to_local"):  # a sharded tensor (FSDP2's DTensor): this rank's part of it
            t = t.to_local()
        storage = t.untyped_storage()
        key = _storage_key(t)
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def optimizer_tensors(opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The optimizer's state tensors (SGD's momentum buffers; Adam's two moments and step counts)."""
    if opt is None:
        return []
    return [t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor)]


@dataclass
class Held:
    """What a strategy holds, by kind (Strategy.held_tensors): memory accounting reads the bytes off these."""

    params: Sequence[torch.Tensor]  # parameters (whole or shards) and module buffers
    grads: Sequence[torch.Tensor | None] | None = None  # None: the params' own .grad
    optimizers: Sequence[torch.optim.Optimizer | None] = ()
    buffers: Sequence[torch.Tensor] = ()  # communication buffers kept from step to step
    unseen_buffer_bytes: int = 0  # buffers inside a library, not visible as tensors (DDP's, FSDP2's): priced


def held_memory(held: Held) -> dict[str, int]:
    """memory_state(): the bytes of what `held` names, each storage once, in the first kind that holds it;
    buffers also count the peak of the transient flat buffers (FlatBuffer.transient)."""
    seen: set = set()
    params = tensor_bytes(held.params, seen)
    grads = tensor_bytes([getattr(t, "grad", None) for t in held.params] if held.grads is None else held.grads, seen)
    state = tensor_bytes([t for opt in held.optimizers for t in optimizer_tensors(opt)], seen)
    buffers = tensor_bytes(held.buffers, seen) + held.unseen_buffer_bytes + FlatBuffer.transient.peak
    return {"params_bytes": params, "grads_bytes": grads, "optimizer_bytes": state, "buffers_bytes": buffers}


def held_bytes(
    tensors: Iterable[torch.Tensor] = (),
    optimizers: Iterable[torch.optim.Optimizer | None] = (),
    buffers: Iterable[torch.Tensor] = (),
    extra_buffer_bytes: int = 0,
) -> dict[str, int]:
    """memory_state() for these parameters (and module buffers), their gradients, the optimizers' state and
    communication buffers: each storage counted once, in the first kind that holds it."""
    return held_memory(Held(list(tensors), None, list(optimizers), list(buffers), extra_buffer_bytes))


def modules_of(strategy: Any) -> list[nn.Module]:
    """The modules a strategy trains, found by the attribute names every strategy uses (model, module)."""
    found: list[nn.Module] = []
    for name in ("model", "module"):
        m = getattr(strategy, name, None)
        if isinstance(m, nn.Module) and all(m is not other for other in found):
            found.append(m)
    return found


def held_by(strategy: Any) -> Held:
    """The default Strategy.held_tensors: what the attributes named model/module (parameters, module buffers,
    gradients), opt (its state) and sync (its buffers: GradSync.buffers) hold. DDP's buckets are internal to
    torch: they are priced as one copy of every trainable gradient (its default, gradient_as_bucket_view=False)."""
    modules = modules_of(strategy)
    tensors = list(dict.fromkeys([*(p for m in modules for p in m.parameters()), *(b for m in modules for b in m.buffers())]))
    sync = getattr(strategy, "sync", None)
    buffers = list(sync.buffers()) if sync is not None and hasattr(sync, "buffers") else []
    ddp = sum(
        p.numel() * p.element_size()
        for m in modules
        if isinstance(m, DistributedDataParallel)
        for p in m.parameters()
        if p.requires_grad
    )
    return Held(tensors, None, [getattr(strategy, "opt", None)], buffers, ddp)


# ---- activations saved for backward ------------------------------------------------------------------
def byte_span(t: torch.Tensor) -> tuple[int, int] | None:
    """[first, last) byte of t's storage that t reads (its strides may skip some: the span covers them)."""
    if t.numel() == 0:
        return None
    extent = 1 + sum((int(size) - 1) * int(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
    start = int(t.storage_offset()) * t.element_size()
    return start, start + extent * t.element_size()


def _union(spans: Iterable[tuple[int, int]]) -> int:
    total, end = 0, -1
    for lo, hi in sorted(spans):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


class _Saved:
    """What autograd keeps in place of a saved tensor while the hooks are on; its death is the tensor's release."""

    __slots__ = ("key", "span", "tensor", "tracker")

    def __init__(self, tensor: torch.Tensor, tracker: SavedTensors, key: tuple, span: tuple[int, int]) -> None:
        self.tensor, self.tracker, self.key, self.span = tensor, tracker, key, span

    def __del__(self) -> None:
        self.tracker._release(self.key, self.span)


class SavedTensors:
    """Live bytes of the tensors autograd saved for backward (parameters excluded: they are held anyway),
    each storage's bytes counted once, and the peak. Thread-safe: a backward may release on another thread."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entrant: a garbage collection inside may release a tensor
        self.spans: dict[tuple, dict[tuple[int, int], int]] = {}
        self.live = self.peak = 0
        self.samples: list[tuple[float, int]] | None = None  # (perf_counter, live bytes) while sampling

    def pack(self, t: torch.Tensor) -> Any:
        if isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter):
            return t  # a weight (or its transpose): parameter memory, not activation memory
        span = byte_span(t)
        if span is None or t.untyped_storage().nbytes() == 0:
            return t
        key = _storage_key(t)
        with self.lock:
            counts = self.spans.setdefault(key, {})
            before = _union(counts)
            counts[span] = counts.get(span, 0) + 1
            self._changed(_union(counts) - before)
        return _Saved(t.detach(), self, key, span)

    @staticmethod
    def unpack(packed: Any) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key: tuple, span: tuple[int, int]) -> None:
        with self.lock:
            counts = self.spans.get(key)
            if counts is None or span not in counts:
                return
            before = _union(counts)
            counts[span] -= 1
            if not counts[span]:
                del counts[span]
            after = _union(counts)
            if not counts:
                del self.spans[key]
            self._changed(after - before)

    def _changed(self, delta: int) -> None:
        if not delta:
            return
        self.live += delta
        self.peak = max(self.peak, self.live)
        if self.samples is not None and len(self.samples) < MAX_SAMPLES:
            self.samples.append((time.perf_counter(), self.live))

    @contextmanager
    def hooks(self) -> Iterator[SavedTensors]:
        """Count what every forward run inside saves (on this thread)."""
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


# ---- one rank's meter --------------------------------------------------------------------------------
class MemoryMeter:
    """One rank's memory accounting: wrap each step in `step(i)`; `report()` gives the mem_* fields.

    Counting runs in steps 0 .. measure_steps-1 only (the warm-up: the hooks' cost never lands in a timed
    step); the activation samples of step `sample_step` are kept for the memory-over-a-step figure."""

    def __init__(
        self,
        strategy: Strategy,
        device: torch.device | None = None,
        clock: HostClock | CudaClock | None = None,
        measure_steps: int = 1,
        sample_step: int | None = 0,
    ) -> None:
        from ..comm.group import scratch_bytes  # the comm package imports torch.distributed: only a rank needs it

        self._scratch_bytes = scratch_bytes
        self.strategy, self.device, self.clock = strategy, device, clock
        self.measure_steps, self.sample_step = measure_steps, sample_step
        self.state = dict.fromkeys(STATE_KEYS, 0)
        self.scratch = self.backward_grads = 0
        self.saved = SavedTensors()
        self.step_peaks: list[int] = []
        self.samples: list[tuple[int, float, int]] = []
        self.measuring = False
        self._queued = False
        self._handles: list[Any] = [register_optimizer_step_post_hook(self._after_optimizer)]
        # plain tensors only: a sharded parameter (FSDP2's DTensor) gets its gradient from its strategy, not autograd
        self._trained = [
            p for m in modules_of(strategy) for p in m.parameters() if p.requires_grad and type(p.data) is torch.Tensor
        ]
        self._handles += [p.register_post_accumulate_grad_hook(self._grad_ready) for p in self._trained]

    # -- snapshots of what the strategy holds ---------------------------------------------------------
    # memory_state() is asked where the step's transient tensors are gone (after the optimizer step, at the
    # step's end): a ZeRO-3 rank then holds its shards, not a block gathered for a moment. Gradients that
    # live only from a backward to the optimizer step (or, on a parameter-server worker, to their packing)
    # are counted where every backward ends, on the parameters autograd fills.
    def snapshot(self) -> dict[str, int]:
        """What the strategy holds now (its memory_state), folded into the maxima."""
        held = self.strategy.memory_state()
        for k in STATE_KEYS:
            self.state[k] = max(self.state[k], int(held.get(k, 0)))
        self.scratch = max(self.scratch, self._scratch_bytes())
        return held

    def _after_optimizer(self, *_args: Any) -> None:
        if self.measuring:
            self.snapshot()

    def _grad_ready(self, _p: torch.Tensor) -> None:
        """A gradient arrived: once per backward, snapshot when the backward ends (every gradient is there)."""
        if self.measuring and not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)  # type: ignore[attr-defined]

    def _after_backward(self) -> None:
        self._queued = False
        self.backward_grads = max(self.backward_grads, tensor_bytes(p.grad for p in self._trained))

    # -- the step ---------------------------------------------------------------------------------------
    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Count activations saved inside the step and snapshot the held tensors (in measured steps only)."""
        if step >= self.measure_steps:
            yield
            return
        self.measuring = True
        saved = self.saved
        with saved.lock:
            saved.peak = saved.live
            saved.samples = [] if step == self.sample_step else None
        try:
            with saved.hooks():
                yield
        finally:
            self.measuring = False
        self.step_peaks.append(saved.peak)
        if saved.samples is not None:
            self.samples += [(step, self._seconds(t), live) for t, live in saved.samples]
            saved.samples = None
        self.snapshot()

    def _seconds(self, t: float) -> float:
        return self.clock.seconds(t) if self.clock is not None else t

    # -- results ---------------------------------------------------------------------------------------
    def report(self) -> dict[str, int | None]:
        """This rank's mem_* fields (bytes), plus mem_cuda_max_allocated_bytes on a GPU (None elsewhere)."""
        out: dict[str, int | None] = {
            "mem_params_bytes": self.state["params_bytes"],
            "mem_grads_bytes": max(self.state["grads_bytes"], self.backward_grads),
            "mem_optimizer_bytes": self.state["optimizer_bytes"],
            "mem_activations_peak_bytes": max(self.step_peaks, default=0),
            "mem_buffers_bytes": self.state["buffers_bytes"] + self.scratch,
        }
        out["mem_peak_bytes"] = sum(v or 0 for v in out.values())
        cuda = self.device is not None and self.device.type == "cuda"
        out[CUDA_FIELD] = int(torch.cuda.max_memory_allocated(self.device)) if cuda else None
        return out

    def extra(self) -> dict[str, Any]:
        """For the result's extra: the sampled step's live activation bytes over time, [step, t_s, bytes]."""
        return {"memory_samples": [list(s) for s in self.samples]}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# ---- results: per-rank frame and summary ------------------------------------------------------------
def memory_frame(per_rank: list[dict | None] | None, roles: list[str]) -> pd.DataFrame:
    """rank, role and every mem_* field, one row per process (empty for a result saved before memory was counted)."""
    columns = ["rank", "role", *MEM_FIELDS, CUDA_FIELD]
    rows = [
        {"rank": r, "role": roles[r] if r < len(roles) else f"rank {r}", **{k: m.get(k) for k in (*MEM_FIELDS, CUDA_FIELD)}}
        for r, m in enumerate(per_rank or [])
        if m
    ]
    return pd.DataFrame(rows, columns=columns)


def memory_summary(per_rank: list[dict | None] | None, training_ranks: list[int]) -> dict[str, int | None]:
    """Each mem_* field as its largest value over the training ranks (None where nothing was counted)."""
    mine = [m for r, m in enumerate(per_rank or []) if m and r in training_ranks]
    out: dict[str, int | None] = {k: (max(int(m[k]) for m in mine) if mine else None) for k in MEM_FIELDS}
    cuda = [int(m[CUDA_FIELD]) for m in mine if m.get(CUDA_FIELD) is not None]
    out[CUDA_FIELD] = max(cuda) if cuda else None
    return out

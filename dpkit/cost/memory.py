"""The memory model: what one rank holds, predicted from the config (docs/formulas.md, "Memory per rank").

Phi parameters of b = 4 bytes (fp32) each, gradients of b bytes, k bytes of optimizer state per trained
parameter (SGD with momentum 4, Adam 8 plus a 4-byte step count per tensor, plain SGD 0). How a strategy
divides them, each strategy's spec says (StrategySpec.predict_memory, built from the pieces here):

- one rank or plain data parallelism: all of it on every rank; ZeRO-1/2/3 shard the optimizer state, then
  the gradients, then the parameters over the n ranks (each padded to a multiple of n, as the units are);
- pipeline: each stage its blocks' share; tensor parallelism: the split matrices / t, the rest replicated;
- parameter server: workers hold the whole parameters and gradients, servers their shard and its optimizer.

Activations are what autograd keeps for the backward, from the model's layer shapes and the samples one
forward sees (the rules below: which tensors each block saves), times the micro-batches a pipeline stage
keeps in flight. Buffers are the communication buffers a strategy keeps (gradient-sync flat or bucket
buffers, parameter-server inboxes and outboxes) and the hand-written collectives' scratch space.

precision='bf16' (autocast, fp32 master weights) and checkpoint_activations change the activations only: see
"mixed precision and activation checkpointing" below (docs/formulas.md, the section of that name).

The cluster-scale what-if (dpkit.analysis.memory_compare.whatif) uses STATE_BYTES: mixed precision keeps fp16 parameters and gradients (2 + 2)
and an fp32 master copy with Adam's two moments (4 + 4 + 4 = 12), 16 bytes per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..buffers import bucket_bytes
from ..workloads import VOCAB, model_layout, trainable_names

if TYPE_CHECKING:
    from ..config import RunConfig

#: the summary fields a run reports (RunResult.summary: each the largest value over the training ranks), and the
#: model predicts under the same names; dpkit.runtime.memory measures them
MEM_FIELDS = (
    "mem_params_bytes",
    "mem_grads_bytes",
    "mem_optimizer_bytes",
    "mem_activations_peak_bytes",
    "mem_buffers_bytes",
    "mem_peak_bytes",
)
VALUE_BYTES = 4  # fp32 parameters, gradients, activations
INDEX_BYTES = 8  # int64 token ids and class labels
ADAM_STEP_BYTES = 4  # Adam's step count: one float32 tensor per parameter tensor
LOSS_SCALAR_BYTES = 4  # cross-entropy keeps its total weight, one float per forward
TIED_WEIGHT = "embed.tok.weight"  # the name tie_weights leaves for the transformer's shared embedding and head
ZERO_REDUCES_IN_FLIGHT = 2  # sharded data parallelism bounds the whole gradients alive at once (its own constant)


@dataclass(frozen=True)
class RankMemory:
    """Predicted bytes one rank holds, by kind; peak adds them (as the measurement does)."""

    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float = 0.0

    @property
    def peak(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.buffers

    def fields(self) -> dict[str, float]:
        values = (self.params, self.grads, self.optimizer, self.activations, self.buffers, self.peak)
        return dict(zip(MEM_FIELDS, values, strict=True))


def table(ranks: Sequence[RankMemory], roles: Sequence[str]) -> pd.DataFrame:
    """rank, role and the mem_* fields, one row per process: the shape RunResult.memory_frame() has."""
    rows = [{"rank": r, "role": roles[r], **m.fields()} for r, m in enumerate(ranks)]
    return pd.DataFrame(rows, columns=["rank", "role", *MEM_FIELDS])


def summary_of(frame: pd.DataFrame, training_ranks: Iterable[int]) -> dict[str, float]:
    """Each mem_* field's largest value over the training ranks (what RunResult.summary reports)."""
    mine = frame[frame["rank"].isin(list(training_ranks))]
    return {k: float(mine[k].max()) for k in MEM_FIELDS}


# ---- parameters, gradients, optimizer state ---------------------------------------------------------
def optimizer_bytes_per_param(optimizer: str, momentum: float) -> int:
    """k: Adam keeps two moments (8 bytes), SGD with momentum one buffer (4), plain SGD nothing."""
    if optimizer == "adam":
        return 2 * VALUE_BYTES
    return VALUE_BYTES if momentum > 0 else 0


def optimizer_bytes(cfg: RunConfig, numels: Iterable[int]) -> float:
    """State of an optimizer over tensors of these sizes: k bytes per element, plus Adam's step per tensor."""
    numels = list(numels)
    k = optimizer_bytes_per_param(cfg.optimizer, cfg.momentum)
    return float(k * sum(numels) + (ADAM_STEP_BYTES * len(numels) if cfg.optimizer == "adam" else 0))


def params_of(cfg: RunConfig, blocks: Iterable[str] | None = None) -> tuple[list[int], list[int]]:
    """(sizes of every parameter, sizes of the trained ones) of the model, or of these blocks only."""
    wanted = None if blocks is None else set(blocks)
    trained = set(trainable_names(cfg))
    mine = [(name, n) for name, n in model_layout(cfg).params if wanted is None or name.split(".")[0] in wanted]
    return [n for _, n in mine], [n for name, n in mine if name in trained]


def whole_model(cfg: RunConfig, blocks: Iterable[str] | None = None) -> tuple[float, float, float]:
    """(parameter, gradient, optimizer) bytes of the whole model (or these blocks), unsharded."""
    every, trained = params_of(cfg, blocks)
    return float(VALUE_BYTES * sum(every)), float(VALUE_BYTES * sum(trained)), optimizer_bytes(cfg, trained)


def zero_units(cfg: RunConfig) -> list[int]:
    """Elements of each unit sharded data parallelism lays out (stage 3 or FSDP2: one per block; else one
    for grad_sync='flat', buckets of bucket_mb in reverse parameter order for 'bucketed'), unpadded."""
    trained = set(trainable_names(cfg))
    params = [(name, n) for name, n in model_layout(cfg).params if name in trained]
    if cfg.zero_stage == 3:
        per_block: dict[str, int] = {}
        for name, n in params:  # a tied weight (embedding = output head) is a unit of its own, "shared"
            block = "shared" if cfg.tie_weights and name == TIED_WEIGHT else name.split(".")[0]
            per_block[block] = per_block.get(block, 0) + n
        return list(per_block.values())
    if cfg.grad_sync == "flat":
        return [sum(n for _, n in params)]
    return buckets([n for _, n in params], cfg.bucket_mb)


def buckets(sizes: list[int], bucket_mb: float) -> list[int]:
    """Elements per bucket of about bucket_mb, filled in reverse order (as gradients arrive): dpkit.buffers'
    plan, the one the bucketed gradient sync and sharded data parallelism cut them by."""
    return [int(b) // VALUE_BYTES for b in bucket_bytes([n * VALUE_BYTES for n in reversed(sizes)], bucket_mb)]


def replicated(cfg: RunConfig, n: int, samples: int) -> RankMemory:
    """A rank of one process, plain data parallelism or ZeRO stage cfg.zero_stage over n ranks: the whole
    model (or its shards) run on `samples` samples per forward, with the gradient sync's buffers."""
    every, trained = params_of(cfg)
    frozen = VALUE_BYTES * (sum(every) - sum(trained))
    act = activation_bytes(cfg, model_layout(cfg).blocks, samples)
    if cfg.zero_stage == 0 or n == 1:
        params, grads, state = whole_model(cfg)
        return RankMemory(params, grads, state, act, sync_buffers(cfg, [grads] if n > 1 else [], n, trained))
    units = zero_units(cfg)
    shards = [math.ceil(u / n) for u in units]
    whole = VALUE_BYTES * sum(s * n for s in shards)  # padded to n equal shards
    shard_bytes = VALUE_BYTES * sum(shards)
    largest = VALUE_BYTES * max(s * n for s in shards)
    # transient buffers, an upper bound (how many are alive at once depends on how collectives and compute
    # interleave): stage 2, the whole gradients of the units being reduce-scattered (ZERO_REDUCES_IN_FLIGHT)
    # and of the one being filled; stage 3 also the block being computed and the next one prefetched;
    # FSDP2, as its strategy estimates it: a unit gathered, the next prefetched, a whole gradient
    if cfg.zero_stage == 1:
        buffers = 0.0
    elif cfg.zero_stage == 2:
        buffers = whole if cfg.grad_sync == "flat" else min(whole, (ZERO_REDUCES_IN_FLIGHT + 1) * largest)
    elif cfg.grad_sync == "fsdp":
        buffers = 3 * largest
    else:
        buffers = (2 + ZERO_REDUCES_IN_FLIGHT + 1) * largest
    if cfg.allreduce_algo == "ring":  # the ring's halves: scratch for the largest unit's reduce steps
        buffers += scratch_bytes("ring", largest, n)
    # FSDP2 shards each parameter on its own: Adam keeps a step count per parameter, not per unit
    state = optimizer_bytes(cfg, shards)
    if cfg.grad_sync == "fsdp" and cfg.optimizer == "adam":
        state += ADAM_STEP_BYTES * (len(trained) - len(shards))
    return RankMemory(
        params=frozen + (shard_bytes if cfg.zero_stage == 3 else whole),
        grads=whole if cfg.zero_stage == 1 else shard_bytes,
        optimizer=state,
        activations=act,
        buffers=buffers,
    )


def sync_buffers(cfg: RunConfig, grad_bytes: list[float], n: int, trained: list[int]) -> float:
    """Buffers of a gradient sync over n ranks of tensors of these gradient bytes (per-tensor: none; flat,
    bucketed, ddp: one copy of every gradient) plus the all-reduce algorithm's scratch for its largest message."""
    if n <= 1 or not grad_bytes:
        return 0.0
    total = float(sum(grad_bytes))
    if cfg.grad_sync == "per-tensor":
        largest = float(VALUE_BYTES * max(trained, default=0))
        kept = 0.0
    elif cfg.grad_sync == "flat":
        largest, kept = total, total
    else:
        largest = float(VALUE_BYTES * max(buckets(trained, cfg.bucket_mb), default=0))
        kept = total
    return kept + scratch_bytes(cfg.allreduce_algo, largest, n, cfg.ranks_per_node)


def scratch_bytes(algo: str, largest: float, n: int, ranks_per_node: int = 1) -> float:
    """The hand-written all-reduces' reusable receive buffers (dpkit.comm.group.scratch_buffer) for a largest
    message of `largest` bytes: the chunked ring two chunks, the whole-tensor ring two tensors, the tree one,
    reduce-and-broadcast's root n-1; the backend's own algorithm ('native') none that dpkit holds. The
    hierarchical all-reduce's largest ring is the one inside a node, over r ranks (without nodes: the ring)."""
    if n <= 1:
        return 0.0
    elements = largest / VALUE_BYTES
    r = ranks_per_node
    return {
        "hierarchical": 2 * math.ceil(elements / (r if 1 < r < n and n % r == 0 else n)) * VALUE_BYTES,
        "native": 0.0,
        "ring": 2 * math.ceil(elements / n) * VALUE_BYTES,
        "ring-whole": 2 * largest,
        "tree": largest,
        "reduce-broadcast": (n - 1) * largest,
    }[algo]


# ---- activations saved for backward -------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSaves:
    """Bytes one block keeps for the backward per sample: its input (saved by its first layer), what it
    saves inside, and whether its output is one of those (then the next block's input costs nothing more)."""

    input: float
    inner: float
    output_saved: bool = False


def block_saves(cfg: RunConfig, tp: int = 1) -> dict[str, BlockSaves]:
    """What autograd keeps per sample, block by block (fp32 unless said; tp: tensor-parallel degree, which
    splits the wide activations). The rules, as torch saves them (checked by dpkit's tests against the count):

    - Linear: its input (for the weight's gradient); GELU: its input; ReLU: its output; LayerNorm: its input
      and two statistics per row; a convolution: its input; an embedding: the token ids (int64);
    - attention: q, k, v, the output and a log-sum-exp per head and token (scaled_dot_product_attention);
    - the loss (on the rank with the head): the log-probabilities, the labels (int64), one scalar per forward.
    Weights are parameters, not activations; a tensor several layers save is kept once."""
    h, layers, out = cfg.model_hidden, cfg.model_layers, {}
    if cfg.model == "mlp":
        out["embed"] = BlockSaves(64, h)  # the 64 pixels, the projection's output (GELU's input)
        for i in range(layers):  # input, up-projection output (GELU's input), GELU's output (down's input)
            out[f"block{i}"] = BlockSaves(h, 8 * h / tp)
        out["head"] = BlockSaves(h, 0)
    elif cfg.model == "cnn":
        pixels = 64
        out["embed"] = BlockSaves(pixels, pixels * h, output_saved=True)  # the image; ReLU's output is the block's
        for i in range(layers):  # input; ReLU's output (the residual sum is a new tensor: the next block's input)
            out[f"block{i}"] = BlockSaves(pixels * h, pixels * h)
        out["head"] = BlockSaves(pixels * h, 0)
    else:
        heads, t = 4, cfg.seq_len
        out["embed"] = BlockSaves(INDEX_BYTES / VALUE_BYTES * t, 0)  # token ids
        for i in range(layers):
            # LN1 input + 2 stats, LN1 output (q, k, v's input), q k v, attention output, log-sum-exp,
            # LN2 input + 2 stats, LN2 output, up-projection output, GELU's output
            out[f"block{i}"] = BlockSaves(h * t, (3 * h + 12 * h / tp + 4 + heads / tp) * t)
        out["head"] = BlockSaves(h * t, (h + 2) * t)  # LN input + stats, LN output (the output layer's input)
    return {k: BlockSaves(v.input * VALUE_BYTES, v.inner * VALUE_BYTES, v.output_saved) for k, v in out.items()}


def loss_saves(cfg: RunConfig) -> float:
    """Per sample, what the loss keeps: log-probabilities (classes, or vocabulary x tokens) and int64 labels."""
    if cfg.model == "transformer":
        return float(cfg.seq_len * (VOCAB * VALUE_BYTES + INDEX_BYTES))
    return float(10 * VALUE_BYTES + INDEX_BYTES)


def activation_bytes(cfg: RunConfig, blocks: Sequence[str], samples: int, tp: int = 1, in_flight: int = 1) -> float:
    """Bytes saved for backward by one rank running `blocks` (consecutive) on `samples` samples per forward,
    with `in_flight` forwards alive at once (a pipeline stage's micro-batches); the loss where 'head' is here.
    Mixed precision and activation checkpointing change it (precision_terms below)."""
    saves = block_saves(cfg, tp)
    scale = activation_value_bytes(cfg) / VALUE_BYTES
    trained = {name.split(".")[0] for name in trainable_names(cfg)}
    per_sample, per_forward, recompute, head, previous = 0.0, 0.0, 0.0, 0.0, None
    for i, name in enumerate(blocks):
        if name == model_layout(cfg).blocks[i] and not trained & set(blocks[: i + 1]):
            continue  # the model's first blocks, all frozen: nothing before them needs a gradient, so nothing is saved
        s = saves[name]
        kept_input = 0.0 if previous is not None and saves[previous].output_saved else s.input * scale
        # a first linear layer needs no weight copy (its input needs no gradient); a convolution saves it anyway
        copies = weight_copy_bytes(cfg, name) if previous is not None or name != "embed" or cfg.model == "cnn" else 0.0
        if cfg.checkpoint_activations and name.startswith("block"):  # keeps its input; the rest comes back in the backward
            per_sample += kept_input
            recompute = max(recompute, s.inner * scale * samples + copies)
        else:
            per_sample += kept_input + s.inner * scale
            per_forward += copies
        if name == "head":  # its saves are freed before the first recompute, with the loss's
            head = (kept_input + s.inner * scale) * samples + copies
        previous = name
    loss = loss_saves(cfg) * samples + LOSS_SCALAR_BYTES if "head" in blocks else 0.0  # fp32 under autocast too
    forward = per_sample * samples + per_forward + loss
    return in_flight * forward + max(0.0, recompute - head - loss)


# ---- mixed precision and activation checkpointing -------------------------------------------------------
# precision='bf16' is autocast with fp32 master weights (dpkit/strategies/precision.py): parameters, gradients
# and optimizer state stay fp32; the forward saves bf16 activations (the loss's log-probabilities stay fp32) and a
# bf16 copy of each weight matrix whose input needs a gradient (every one but the first layer's), freed in the
# backward. checkpoint_activations: each hidden block keeps its input; its other activations (and weight copies)
# come back in the backward, one block at a time, after the head's and the loss's are freed.
BF16_BYTES = 2


def activation_value_bytes(cfg: RunConfig) -> int:
    """Bytes of one saved activation value: 2 under bf16 autocast, else 4."""
    return BF16_BYTES if cfg.precision == "bf16" else VALUE_BYTES


def weight_copy_bytes(cfg: RunConfig, block: str) -> float:
    """bf16 autocast's copies of this block's weight matrices (linear and convolution weights; not layer norms'
    or the embedding table), which the forward saves for the input's gradient; 0 in fp32. Exact for the MLP and
    the CNN (tests/test_precision.py); the transformer saves more than this rule says (layer norms run in fp32)."""
    if cfg.precision != "bf16":
        return 0.0
    names = [
        (name, n)
        for name, n in model_layout(cfg).params
        if name.split(".")[0] == block
        and name.endswith(".weight")
        and not any(p.startswith(("ln", "tok")) for p in name.split("."))
    ]
    return float(BF16_BYTES * sum(n for _, n in names))


# ---- cluster scale: the what-if -------------------------------------------------------------------------
#: bytes of state per parameter: (parameters, gradients, optimizer) for fp32 Adam and mixed-precision Adam
STATE_BYTES = {"fp32 adam": (4, 4, 8), "mixed precision adam": (2, 2, 12)}


def state_bytes_per_param(zero_stage: int, n: int, precision: str = "mixed precision adam") -> float:
    """Bytes of parameters + gradients + optimizer state per parameter on one of n data-parallel ranks at ZeRO
    stage `zero_stage` (0: plain data parallelism): docs/formulas.md's table, 16 -> 4 + 12/n at stage 1 ..."""
    p, g, k = STATE_BYTES[precision]
    return p / (n if zero_stage >= 3 else 1) + g / (n if zero_stage >= 2 else 1) + k / (n if zero_stage >= 1 else 1)

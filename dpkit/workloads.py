"""Models and data sets: real, small, and downloaded from nowhere.

Every model is an nn.Sequential of named blocks (input block, hidden blocks, head), so a pipeline
can cut it between blocks and every strategy can name parameters exactly as the single-process
model does. Data is a fixed set; the global batch of step s depends only on (seed, s), never on
the world size, so every strategy sees the same samples.

Held-out split (what evaluation measures, never trained on): 20% of the digits, stratified by label (the
same share of every class, drawn with a fixed seed, so it never changes between runs or seeds), and the
last 20% of the token sequences (every sequence is an independent draw from the same Markov chain, so the
tail is as representative as any sample). build_dataset returns the rest; build_heldout the held-out part.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from .config import RunConfig

DIGITS_FILE = "digits.csv.gz"  # package data: dpkit/data/ (provenance in the repository's data/README.md)
VOCAB = 64
TOKEN_SEQUENCES = 4096
TOKEN_DATA_SEED = 1234
HELDOUT_FRACTION = 0.2
HELDOUT_SEED = 20170608  # fixed: the split does not depend on RunConfig.seed


# ---- models ------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """Residual FFN block: up-projection (column-parallel in TP), GELU, down-projection (row-parallel)."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x)))


class InputBlock(nn.Module):
    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class ConvBlock(nn.Module):
    """3x3 convolution + ReLU, residual when shapes allow (a plain 5-conv stack trains too slowly here)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        return x + y if self.residual else y


class ConvHead(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class TokenEmbedding(nn.Module):
    def __init__(self, vocab: int, hidden: int, seq_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Parameter(torch.randn(seq_len, hidden) * 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tok(idx) + self.pos[: idx.shape[1]]


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v projections (split by heads in TP)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.proj = nn.Linear(hidden, hidden)

    def attend(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return out.transpose(1, 2).reshape(b, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(x, self.heads))


class TransformerBlock(nn.Module):
    def __init__(self, hidden: int, heads: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = FeedForward(hidden, 4 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return self.mlp(self.ln2(x))


class LMHead(nn.Module):
    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(x))


def build_model(cfg: RunConfig, seed: int) -> nn.Sequential:
    """The full single-process model, initialised from `seed`; blocks are named embed, block0.., head."""
    torch.manual_seed(seed)
    h, n = cfg.model_hidden, cfg.model_layers
    blocks: list[tuple[str, nn.Module]] = []
    if cfg.model == "mlp":
        blocks.append(("embed", InputBlock(64, h)))
        blocks += [(f"block{i}", FeedForward(h, 4 * h)) for i in range(n)]
        blocks.append(("head", nn.Linear(h, 10)))
    elif cfg.model == "cnn":
        blocks.append(("embed", ConvBlock(1, h)))
        blocks += [(f"block{i}", ConvBlock(h, h)) for i in range(n)]
        blocks.append(("head", ConvHead(h, 10)))
    else:
        blocks.append(("embed", TokenEmbedding(VOCAB, h, cfg.seq_len)))
        blocks += [(f"block{i}", TransformerBlock(h)) for i in range(n)]
        blocks.append(("head", LMHead(h, VOCAB)))
    model = nn.Sequential(OrderedDict(blocks))
    if cfg.tie_weights:
        head, embed = model.get_submodule("head"), model.get_submodule("embed")
        head.out.weight = embed.tok.weight  # type: ignore[union-attr]
    frozen = [name for name, p in model.named_parameters() if name.startswith(tuple(cfg.freeze))]
    if cfg.freeze and not frozen:
        names = [name for name, _ in model.named_parameters()]
        raise ValueError(f"RunConfig.freeze={cfg.freeze!r} matches no parameter; names look like {names[:4]}")
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return checkpoint_blocks(model) if getattr(cfg, "checkpoint_activations", False) else model


# ---- activation checkpointing ----------------------------------------------------------------------
def checkpoint_blocks(model: nn.Sequential) -> nn.Sequential:
    """Activation checkpointing: each hidden block (block0, block1, ...) keeps only its input for the backward
    and runs its forward again there (torch.utils.checkpoint, non-reentrant), trading compute for memory.

    Each block's forward is wrapped in place: the modules stay where they were, so parameter names and
    state_dict keys do not change, and a pipeline stage that takes some of the blocks takes them checkpointed.
    The recompute runs the same operations on the same values: training is bitwise what it is without."""
    for name, block in model.named_children():
        if name.startswith("block"):
            block.forward = functools.partial(_checkpointed, block.forward)  # type: ignore[method-assign]
    return model


def _checkpointed(forward: Any, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # evaluation: nothing is saved, nothing to recompute
        return forward(x)
    return checkpoint(forward, _KeptInput.apply(x), use_reentrant=False, context_fn=_recompute_contexts)


def step_flops(cfg: RunConfig, samples: int) -> int:
    """Floating-point operations of one forward and backward of the model `cfg` builds on `samples` samples, as
    torch.utils.flop_counter counts them (matrix multiplies and convolutions): a checkpointed model's recompute
    included. A count, not a timing: the extra compute of checkpointing, free of a shared machine's noise."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg, cfg.seed)
    x, y = _full_data(cfg)
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model(x[:samples]), y[:samples]).backward()
    return int(counter.get_total_flops())


class _KeptInput(torch.autograd.Function):
    """The identity, saving its input for the backward: the one tensor a checkpointed block keeps (torch's
    checkpoint holds it out of sight of saved-tensor hooks; saved here, a memory meter counts it, once)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _recompute_contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), _recompute_seen_outside()


@contextlib.contextmanager
def _recompute_seen_outside() -> Iterator[None]:
    """Inside the backward's recompute: show what it saves also to the saved-tensor hooks active outside the
    checkpoint (a memory meter's), which torch's recomputation hook hides. They see each recomputed tensor
    until the recompute ends, when the block's recomputed activations are alive together: its peak."""
    hooks = torch._C._autograd
    inner = hooks._top_saved_tensors_default_hooks(False)  # torch's recomputation hook
    hooks._pop_saved_tensors_default_hooks()
    outer = hooks._top_saved_tensors_default_hooks(False)
    hooks._push_saved_tensors_default_hooks(*inner)
    if outer is None or inner is None:
        yield
        return
    pack, unpack = outer[0], inner[1]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (pack(t), inner[0](t)), lambda p: unpack(p[1])):
        yield


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every sample (and every token for the transformer)."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- data --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped 8x8 digits (package data, read through importlib.resources so that any install
    finds it, a wheel's too): pixels scaled to [0, 1], labels 0..9."""
    resource = resources.files("dpkit") / "data" / DIGITS_FILE
    if not resource.is_file():
        raise FileNotFoundError(f"{resource} is missing: the digits data ships inside the dpkit package (dpkit/data/)")
    with resource.open("rb") as raw, gzip.open(raw, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :64] / 16.0)
    y = torch.from_numpy(table[:, 64].astype(np.int64))
    return x, y


@lru_cache(maxsize=4)
def make_tokens(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences from a fixed sparse Markov chain (4 likely successors per token): learnable, no download."""
    rng = np.random.default_rng(TOKEN_DATA_SEED)
    successors = rng.integers(0, VOCAB, size=(VOCAB, 4))
    weights = np.array([0.55, 0.25, 0.12, 0.08])
    seqs = np.empty((TOKEN_SEQUENCES, seq_len + 1), dtype=np.int64)
    seqs[:, 0] = rng.integers(0, VOCAB, size=TOKEN_SEQUENCES)
    for t in range(1, seq_len + 1):
        choice = rng.choice(4, size=TOKEN_SEQUENCES, p=weights)
        seqs[:, t] = successors[seqs[:, t - 1], choice]
    tokens = torch.from_numpy(seqs)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


@dataclass
class Dataset:
    """A fixed data set and the deterministic order in which global batches are drawn from it."""

    x: torch.Tensor
    y: torch.Tensor
    seed: int

    def __len__(self) -> int:
        return len(self.y)

    def indices(self, step: int, batch: int) -> torch.Tensor:
        """Sample indices of the global batch at `step`: an endless stream of seeded epoch permutations."""
        n = len(self)
        first, last = step * batch, (step + 1) * batch
        out = []
        for epoch in range(first // n, math.ceil(last / n)):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            lo, hi = max(first - epoch * n, 0), min(last - epoch * n, n)
            out.append(perm[lo:hi])
        return torch.cat(out)

    def global_batch(self, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(step, batch)
        return self.x[idx], self.y[idx]


@lru_cache(maxsize=8)
def heldout_indices(model: str, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices) into the full data set of `model`, both sorted.

    Digits: round(20%) of each label's samples, drawn with HELDOUT_SEED (stratified: every class keeps
    its share on both sides). Tokens: the last 20% of the sequences."""
    if model == "transformer":
        n = make_tokens(seq_len)[1].shape[0]
        cut = n - round(HELDOUT_FRACTION * n)
        return torch.arange(cut), torch.arange(cut, n)
    _, y = load_digits()
    g = torch.Generator().manual_seed(HELDOUT_SEED)
    held = []
    for label in range(10):
        idx = (y == label).nonzero().flatten()
        held.append(idx[torch.randperm(len(idx), generator=g)][: round(HELDOUT_FRACTION * len(idx))])
    out = torch.zeros(len(y), dtype=torch.bool)
    out[torch.cat(held)] = True
    return (~out).nonzero().flatten(), out.nonzero().flatten()


def _full_data(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.model == "transformer":
        return make_tokens(cfg.seq_len)
    x, y = load_digits()
    return (x.view(-1, 1, 8, 8) if cfg.model == "cnn" else x), y


def build_dataset(cfg: RunConfig) -> Dataset:
    """The training split: every global batch is drawn from it, never from the held-out samples."""
    x, y = _full_data(cfg)
    train, _ = heldout_indices(cfg.model, cfg.seq_len)
    return Dataset(x[train], y[train], cfg.seed)


def build_heldout(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out split (inputs, targets) that evaluation measures loss and accuracy on."""
    x, y = _full_data(cfg)
    _, held = heldout_indices(cfg.model, cfg.seq_len)
    return x[held], y[held]


def shard(t: torch.Tensor, index: int, parts: int) -> torch.Tensor:
    """The `index`-th of `parts` equal contiguous slices along the batch dimension."""
    size = t.shape[0] // parts
    return t[index * size : (index + 1) * size]


# ---- the model's layout, without its values ----------------------------------------------
class _ModelShape(NamedTuple):
    """What build_model reads to lay a model out, freeze left empty: the cache key of model_layout."""

    model: str
    model_hidden: int
    model_layers: int
    seq_len: int
    tie_weights: bool
    freeze: tuple[str, ...] = ()


class ModelLayout(NamedTuple):
    """A model's blocks and parameters without their values: what validation checks names and sizes against."""

    blocks: tuple[str, ...]  # top-level blocks in order: embed, block0, ..., head
    params: tuple[tuple[str, int], ...]  # (name, numel) in model order, a tied weight once

    def block_sizes(self) -> list[int]:
        """Parameters per block, in block order (what the pipeline balances its stages by)."""
        return [sum(n for name, n in self.params if name.split(".")[0] == block) for block in self.blocks]


class _SkipInit(TorchFunctionMode):
    """Return tensors from torch.nn.init unchanged: a layout needs no values, so the parameters' memory is
    allocated but never touched (milliseconds, no resident memory, even for a large model). Not the meta
    device: its python-level ops (normal_, mul) import torch._dynamo the first time, 1-2 s."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=64)
def _layout(shape: _ModelShape) -> ModelLayout:
    """The layout of one model shape (cached: validation asks for it on every RunConfig)."""
    with (
        torch.random.fork_rng(devices=[]),
        _SkipInit(),
        torch.device("meta"),
    ):  # meta: shapes only, nothing allocated (hidden=20000 is 48 GiB)
        model: nn.Module = build_model(shape, seed=0)  # type: ignore[arg-type]  # reads only _ModelShape's fields
    return ModelLayout(
        tuple(name for name, _ in model.named_children()), tuple((name, p.numel()) for name, p in model.named_parameters())
    )


def model_layout(cfg: RunConfig) -> ModelLayout:
    """The blocks and parameter names and sizes of the model `cfg` trains, as build_model makes it, in
    milliseconds and cached: validation checks them before any rank starts."""
    return _layout(_ModelShape(cfg.model, cfg.model_hidden, cfg.model_layers, cfg.seq_len, cfg.tie_weights))


def trainable_names(cfg: RunConfig) -> list[str]:
    """Names of the parameters `cfg` trains (a tied weight once), in model order: those freeze leaves alone."""
    return [name for name, _ in model_layout(cfg).params if not name.startswith(cfg.freeze)]

"""What every exercise that runs on ranks provides, and how one output is compared with the reference.

An exercise is a small object with two sides. On each rank, `run` builds the inputs (deterministic: from
the world size, the size and the rank), calls the learner's function through a `Net` and returns the
tensors to check, each with a label that says where it comes from ("parameters after step 1"). In the
notebook's process, `expected` computes what every rank should have returned, and `check_record` applies
the rules values alone cannot show (bytes sent, number of calls). `hint` turns a wrong value into a
likely cause, in words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .net import EVERYTHING, Net

Item = tuple[str, torch.Tensor]  # (label, tensor): one output to check


@dataclass
class Mismatch:
    """Where an output first differs from the reference."""

    index: int  # flat index of the first differing element (-1: the shapes differ)
    expected: float
    got: float
    max_abs: float
    text: str  # the finding in words


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def compare(expected: torch.Tensor, got: torch.Tensor, rtol: float, atol: float) -> Mismatch | None:
    """None if `got` matches `expected` to tolerance; else the first differing element, in words."""
    if tuple(got.shape) != tuple(expected.shape):
        return Mismatch(-1, math.nan, math.nan, math.inf, f"has shape {tuple(got.shape)} but should have {tuple(expected.shape)}")
    e, g = expected.detach().double().reshape(-1), got.detach().double().reshape(-1)
    bad = ~torch.isclose(g, e, rtol=rtol, atol=atol)
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0])
    diff = (g - e).abs().nan_to_num(nan=math.inf)
    max_abs = float(diff.max())
    count = int(bad.sum())
    text = f"element {i} should be {_fmt(float(e[i]))} but is {_fmt(float(g[i]))} ({count} of {e.numel()} elements differ, max abs difference {max_abs:.3g})"
    return Mismatch(i, float(e[i]), float(g[i]), max_abs, text)


def size_in_words(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 and nbytes % (1 << 20) == 0 else f"{nbytes / 1024:g} KiB"


class RankExercise:
    """An exercise checked on real ranks; subclasses fill in the class attributes and the methods below."""

    name: str = ""
    functions: tuple[str, ...] = ("fn",)  # what check() expects: one function, or e.g. (worker, server)
    allowed: frozenset[str] = EVERYTHING  # the Net calls the learner may use
    world_sizes: tuple[int, ...] = (2, 3, 4)
    sizes: tuple[int, ...] = ()
    timing_size: int = 1 << 16
    builtin: str = ""  # what the timing compares the learner's version with, in words
    rtol, atol = 1e-5, 1e-5

    def roles(self, world: int) -> list[str]:
        return [f"rank {r}" for r in range(world)]

    def size_label(self, size: int) -> str:
        return f"{size} element{'s' if size != 1 else ''}"

    def timing_label(self) -> str:
        return f"{size_in_words(self.timing_size * 4)} of float32"

    # ---- rank side ----------------------------------------------------------------------------------
    def run(self, fns: list[Callable], net: Net, size: int) -> list[Item]:
        raise NotImplementedError

    def timed(self, fns: list[Callable], net: Net, size: int) -> tuple[Callable[[], None], Callable[[], None]]:
        """(the learner's version, the built-in one): each a call that does one operation on this rank."""
        raise NotImplementedError

    # ---- parent side --------------------------------------------------------------------------------
    def expected(self, world: int, size: int) -> list[list[Item]]:
        """What each rank should return from `run`."""
        raise NotImplementedError

    def check_record(self, world: int, size: int, rank: int, record: dict) -> str | None:
        """A rule beyond the values (bytes, calls) that this rank broke, in words; None if none."""
        return None

    def expected_bytes(self, world: int, size: int, rank: int) -> int | None:
        """About what this rank should send, where the exercise has a byte requirement (the check allows the
        few bytes more that chunks of unequal length make some ranks send)."""
        return None

    def hint(self, world: int, size: int, rank: int, item: int, expected: torch.Tensor, got: torch.Tensor) -> str:
        """A likely cause of a wrong value, as a sentence ('' if nothing useful can be said)."""
        return ""


class Progress:
    """Rank side: what this rank is doing now, in a small file the parent reads if the rank hangs or fails."""

    def __init__(self, out_dir: str, rank: int) -> None:
        self.path = Path(out_dir, f"progress{rank}.json")
        self.case: dict = {}

    def __call__(self, doing: str, pending: list[str] | None = None) -> None:
        """`doing`: what the rank does now; `pending`: its posted isend/irecv not yet completed (a deadlock report
        says what each rank still expects). The file's time says since when (the checker's deadlock watch)."""
        self.path.write_text(json.dumps({**self.case, "doing": doing, "pending": pending or []}))


def read_progress(out_dir: str | Path, rank: int) -> dict:
    try:
        return json.loads(Path(out_dir, f"progress{rank}.json").read_text())
    except (OSError, ValueError):
        return {}

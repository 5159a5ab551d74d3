"""Hands-on exercises: write a piece of distributed training yourself, then check(name, fn) runs it on real
ranks against dpkit's reference and answers in plain words (exercises/ at the repository root has the
notebooks). Your function reaches the ranks as the text of a module file, so it must be self-contained:
it sees torch, torch.distributed as dist, math and its arguments; it talks to other ranks through the
`net` argument (dpkit.exercises.net.Net), which counts every byte.
"""

from .catalog import EXERCISES
from .checker import check
from .net import Net
from .report import CheckReport
from .source import PREAMBLE

__all__ = ["EXERCISES", "PREAMBLE", "CheckReport", "Net", "check"]

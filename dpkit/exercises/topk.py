"""Exercise 6: top-k sparsification with error feedback, one rank's side (no ranks needed to check it).

fn(grad, residual, ratio) -> (index, values, new_residual): add last step's residual to the gradient, keep the
k = max(1, round(ratio * numel)) entries of largest magnitude (their indices and values: what goes on the wire),
and keep everything else as the new residual, so that nothing is lost, only delayed. dpkit's compressor
(dpkit/strategies/compression.py, TopK) does the same before its all-gather.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from .process_group import own_process_group, rows_from_child
from .report import CheckReport
from .schedules import _raised
from .source import load_function

CASES = ((10, 0.3), (100, 0.01), (257, 0.1), (64, 1.0))  # (numel, ratio)
STEPS = 5  # error feedback over several steps: sent + residual adds up to every gradient


def reference(grad: torch.Tensor, residual: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dpkit's answer: (sorted indices, their values, the new residual)."""
    acc = grad + residual
    k = max(1, round(ratio * acc.numel()))
    index = acc.abs().topk(k).indices.sort().values
    new_residual = acc.clone()
    new_residual[index] = 0
    return index, acc[index], new_residual


def _gradients(numel: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * numel + seed)
    # distinct magnitudes: the k largest are unambiguous
    return [torch.randperm(4 * numel, generator=g)[:numel].float().sub_(2 * numel) / numel for _ in range(STEPS)]


def _problem(fn: Callable, numel: int, ratio: float) -> str | None:
    residual = torch.zeros(numel)
    sent_total = torch.zeros(numel)
    grads = _gradients(numel, 0)
    for step, grad in enumerate(grads):
        try:
            out = fn(grad.clone(), residual.clone(), ratio)
            index, values, new_residual = (torch.as_tensor(t) for t in out)
        except Exception as exc:  # noqa: BLE001 - the learner's error becomes the report
            return f"step {step}: fn(grad, residual, ratio={ratio}) raised {_raised(fn, exc)}"
        ref_index, ref_values, ref_residual = reference(grad, residual, ratio)
        k = len(ref_index)
        order = index.long().argsort()
        index, values = index.long()[order], values[order]
        where = f"step {step}, {numel} values, ratio {ratio}"
        if len(index) != k:
            return f"{where}: you sent {len(index)} entries; k = max(1, round(ratio * numel)) = {k}."
        if not torch.equal(index, ref_index):
            own = reference(grad, torch.zeros(numel), ratio)[0]
            if step > 0 and torch.equal(index, own):
                return f"{where}: you picked the largest entries of this step's gradient alone: add the residual first."
            signed = (grad + residual).topk(k).indices.sort().values
            if torch.equal(index, signed):
                return f"{where}: you picked the largest values, not the largest magnitudes (use .abs())."
            return f"{where}: your indices {index.tolist()[:8]} are not the k largest |grad + residual| {ref_index.tolist()[:8]}."
        if not torch.allclose(values, ref_values):
            return f"{where}: the values you send must be (grad + residual) at your indices."
        if not torch.allclose(new_residual, ref_residual):
            if torch.allclose(new_residual, residual):
                return f"{where}: your new residual is the old one: it must be what you did not send this step."
            if torch.allclose(new_residual, grad + residual):
                return f"{where}: your new residual still holds the values you sent: zero them."
            return f"{where}: the new residual must be grad + residual with the sent entries zeroed."
        sent_total[index] += values
        residual = new_residual
    if not torch.allclose(sent_total + residual, torch.stack(grads).sum(0), atol=1e-5):
        return (
            f"{numel} values, ratio {ratio}: after {STEPS} steps, all you sent plus the residual is not the sum of the gradients."
        )
    return None


def run_in_rank(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: check the learner's function in a process of its own, which the checker can kill (a
    function that never returns, or ends its process, must not take the notebook's kernel with it)."""
    own_process_group(out_dir, rank)
    fn = load_function(payload["folder"], *payload["function"])
    rows = []
    for numel, ratio in CASES:
        problem = _problem(fn, numel, ratio)
        rows.append({"numel": numel, "ratio": ratio, "steps": STEPS, "passed": problem is None, "problem": problem or ""})
    Path(out_dir, "rows.json").write_text(json.dumps(rows))


class TopKErrorFeedback:
    """fn(grad, residual, ratio) -> (index, values, new_residual); checked in one child process (no ranks needed),
    under a time limit."""

    name = "topk_error_feedback"
    functions = ("fn",)

    def check(self, fn: Callable, timeout_s: float = 30.0) -> CheckReport:
        rows, problem = rows_from_child(f"{__name__}:run_in_rank", fn, timeout_s, returns="(index, values, new_residual)")
        if rows is None:
            return CheckReport(self.name, False, f"{fn.__name__}: {problem}", pd.DataFrame(), None)
        failed = [r["problem"] for r in rows if not r["passed"]]
        if failed:
            message = failed[0]
        else:
            message = (
                f"Your top-k with error feedback matches dpkit's on {len(CASES)} cases of {STEPS} steps each: it sends "
                "k = ratio * numel values and indices per step, and what it holds back comes out in later steps, so "
                "everything sent plus the residual equals the sum of the gradients (with ratio 1 nothing is held back)."
            )
        return CheckReport(self.name, not failed, message, pd.DataFrame(rows), None)

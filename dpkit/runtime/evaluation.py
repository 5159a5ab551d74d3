"""Held-out evaluation during training: loss and accuracy of the whole model, outside the step clock.

Every strategy is evaluated the same way: each rank hands in the parameters it owns (owned_state, as for
final_state_dict), rank 0 merges them with the strategy's merge_states into the single-process model
(workloads.build_model) and measures it on the held-out split (workloads.build_heldout). So a sharded,
pipelined, tensor-parallel or parameter-server model is judged as the whole model it is.

The evaluation runs between steps, after a step's clock stopped: its span is its own timeline kind
"eval" (never compute, comm or idle), outside every step, so step times and their parts exclude it.
train_time_s is training time so far: the end of the last step on rank 0's clock minus the evaluations
before it. A resumed run goes on counting from the training time its checkpoint recorded (progress(),
resume()), so its time to accuracy is the checkpoint's training time plus the resumed part; the work lost
between the checkpoint and the failure is not in it (the result's resume record has that).

With target_accuracy, rank 0 decides at each evaluation whether the target is reached and broadcasts the
decision, so every rank stops after the same step; a run whose held-out loss is no longer finite
(diverged) stops there too, as it can never reach the target.

An asynchronous parameter server is evaluated at the same points, but the evaluation is a point where
every worker waits for the others (each has pushed the same number of gradients): say so beside its curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from ..workloads import build_heldout, build_model, loss_fn
from .recorder import Recorder, Span

if TYPE_CHECKING:
    from ..config import RunConfig

EVAL_COLUMNS = ["step", "samples_seen", "train_time_s", "loss", "accuracy"]
EVAL_KIND = "eval"  # the timeline kind of evaluation spans


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on (x, y); for the transformer over every next token."""
    out = model(x)
    accuracy = (out.argmax(dim=-1) == y).float().mean()
    return float(loss_fn(out, y)), float(accuracy)


def due(cfg: RunConfig, steps_done: int) -> bool:
    """Whether to evaluate once `steps_done` steps are done: at the start, every eval_every steps, at the end."""
    return cfg.eval_every is not None and (steps_done % cfg.eval_every == 0 or steps_done == cfg.steps)


class HeldOutEvaluation:
    """One rank's part in the evaluations of a run; rank 0 keeps the rows of RunResult.evals."""

    def __init__(self, cfg: RunConfig, rank: int, recorder: Recorder, group: Any = None) -> None:
        self.cfg, self.rank, self.rec, self.group = cfg, rank, recorder, group
        self.heldout = build_heldout(cfg) if rank == 0 else None
        self.rows: list[list[float]] = []
        self.eval_s = 0.0  # evaluation seconds so far, on this rank's clock
        self.train_time_before = 0.0  # training seconds of the attempts before this one (a resumed run's checkpoint)

    def train_time(self) -> float:
        """Training seconds so far on this rank's clock: the end of its last step less the evaluations, plus the
        training time a resumed checkpoint recorded."""
        last_end = self.rec.steps[-1]["end_s"] if self.rec.steps else None
        return self.train_time_before + (max(0.0, last_end - self.eval_s) if last_end is not None else 0.0)

    def progress(self) -> dict[str, Any]:
        """What a checkpoint keeps of the evaluations: the rows so far and the training time they were taken at."""
        return {"evals": self.rows, "train_time_s": self.train_time()}

    def resume(self, progress: dict[str, Any]) -> None:
        """Go on from a checkpoint's progress(); one written before train_time_s was kept resumes from its last row's."""
        self.rows = [list(row) for row in progress.get("evals", [])]
        fallback = self.rows[-1][2] if self.rows else 0.0
        self.train_time_before = float(progress.get("train_time_s", fallback))

    def __call__(self, steps_done: int, owned: dict[str, torch.Tensor], merge: Callable) -> bool:
        """Evaluate after `steps_done` steps (every rank calls it); True when every rank should stop."""
        clock = self.rec.clock
        clock.sync()
        start = clock.mark()
        states: list | None = [None] * dist.get_world_size(self.group) if self.rank == 0 else None
        dist.gather_object(owned, states, dst=0, group=self.group)
        stop = torch.zeros(1, dtype=torch.int64)
        if states is not None and self.heldout is not None:
            model = build_model(self.cfg, self.cfg.seed)  # frozen parameters stay as initialised, as in training
            model.load_state_dict({k: v.detach().cpu() for k, v in merge(states).items()}, strict=False)
            loss, accuracy = evaluate(model, *self.heldout)
            train_time = self.train_time() if steps_done else 0.0
            self.rows.append([steps_done, steps_done * self.cfg.global_batch, train_time, loss, accuracy])
            target = self.cfg.target_accuracy
            stop[0] = int(target is not None and (accuracy >= target or not math.isfinite(loss)))  # reached, or diverged
        dist.broadcast(stop, 0, group=self.group)
        end = clock.mark()
        clock.sync()
        a, b = clock.seconds(start), clock.seconds(end)  # type: ignore[arg-type]  # a mark of this clock, either kind
        self.rec.spans.append(Span(self.rank, max(self.rec.step, 0), EVAL_KIND, "held-out evaluation", a, b))
        self.eval_s += b - a
        return bool(stop[0])


def evals_frame(rows: list[list[float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=EVAL_COLUMNS).astype({"step": int, "samples_seen": int})


def learning_summary(cfg: RunConfig, evals: pd.DataFrame) -> dict[str, Any]:
    """final_accuracy, best_accuracy (held-out), and with target_accuracy the first evaluation reaching it:
    steps_to_target, samples_to_target, time_to_target_s (training time, evaluation excluded), or None each
    with target_reason saying why."""
    out: dict[str, Any] = {
        "final_accuracy": float(evals.accuracy.iloc[-1]) if len(evals) else None,
        "best_accuracy": float(evals.accuracy.max()) if len(evals) else None,
        "final_heldout_loss": float(evals.loss.iloc[-1]) if len(evals) else None,
        "steps_to_target": None,
        "samples_to_target": None,
        "time_to_target_s": None,
    }
    target = cfg.target_accuracy
    if target is None:
        out["target_reason"] = "no target_accuracy set"
        return out
    hit = evals[evals.accuracy >= target]
    if len(hit):
        first = hit.iloc[0]
        out.update(
            steps_to_target=int(first.step),
            samples_to_target=int(first.samples_seen),
            time_to_target_s=float(first.train_time_s),
            target_reason=f"reached {target:g} at step {int(first.step)}",
        )
        return out
    best = out["best_accuracy"]
    diverged = len(evals) and not math.isfinite(float(evals.loss.iloc[-1]))
    why = "training diverged (held-out loss not finite)" if diverged else f"best held-out accuracy {best:.3f}"
    out["target_reason"] = f"not reached within steps={cfg.steps}: {why}"
    return out

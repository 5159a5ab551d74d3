"""The exercises by the name check() takes."""

from __future__ import annotations

from .average import AverageGradients, AverageGradientsFlat
from .base import RankExercise
from .push_pull import PushPull
from .ring import RingAllreduce
from .schedules import PipelineSchedule
from .zero1 import Zero1Step

EXERCISES: dict[str, RankExercise | PipelineSchedule] = {
    ex.name: ex
    for ex in (AverageGradients(), AverageGradientsFlat(), RingAllreduce(), PushPull(), PipelineSchedule(), Zero1Step())
}

EXERCISES["topk_error_feedback"] = __import__(f"{__package__}.topk", fromlist=["x"]).TopKErrorFeedback()


def exercise(name: str) -> RankExercise | PipelineSchedule:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}: choose one of {', '.join(EXERCISES)}")
    return EXERCISES[name]


def rank_exercise(name: str) -> RankExercise:
    ex = exercise(name)
    if not isinstance(ex, RankExercise):
        raise ValueError(f"exercise {name!r} runs without ranks")
    return ex

"""Every hand-written all-reduce gives exactly dist.all_reduce's sum and sends the bytes its formula says.

Inputs are small integers stored as floats, so sums are exact in any order and the comparison is
equality. Lengths include 0, 1, fewer elements than ranks and lengths not divisible by the world size;
with 3 or more ranks every algorithm also runs on a subgroup (ranks 1..n-1), which checks that peers
are addressed by global rank. The ring's reduce steps move chunks in pieces; tiny pieces make the
small test tensors exercise that path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpkit.comm import ALGORITHMS, allreduce_sum, predicted_bytes_sent
from dpkit.runtime.launch import launch

LENGTHS = [0, 1, 2, 3, 5, 7, 64, 1001, 4099]


def run_check(world: int, out: Path) -> pd.DataFrame:
    payload = {"lengths": LENGTHS, "segment_bytes": 12}  # ring pieces of 3 floats: many pieces, a short last one
    launch("dpkit.benchmarks.allreduce:check_ranks", payload, world, out, threads_per_rank=1, timeout_s=120)
    return pd.DataFrame(json.loads((out / "check.json").read_text()))


@pytest.fixture(scope="module", params=[2, 3, 4])
def checked(request, tmp_path_factory) -> tuple[int, pd.DataFrame]:
    world = request.param
    return world, run_check(world, tmp_path_factory.mktemp(f"check{world}"))


def test_every_algorithm_matches_dist_all_reduce(checked) -> None:
    world, frame = checked
    wrong = frame[~frame.equal]
    assert wrong.empty, f"world {world}: sums differ from dist.all_reduce:\n{wrong.to_string()}"


def test_every_case_ran_on_every_rank(checked) -> None:
    world, frame = checked
    groups = 2 if world >= 3 else 1
    per_group_rank = len(ALGORITHMS) * len(LENGTHS) * 2  # two dtypes
    expected = world * per_group_rank + (world - 1) * per_group_rank * (groups - 1)
    assert len(frame) == expected
    assert set(frame.algo) == set(ALGORITHMS)
    assert set(frame.length) == set(LENGTHS)
    if world >= 3:
        sub = frame[frame.group != "world"]
        assert set(sub["rank"]) == set(range(1, world)) and set(sub.group_size) == {world - 1}


def test_bytes_sent_match_the_prediction(checked) -> None:
    world, frame = checked
    wrong = frame[frame.sent != frame.predicted]
    assert wrong.empty, f"world {world}: bytes sent differ from predicted_bytes_sent:\n{wrong.to_string()}"
    empty = frame[frame.length == 0]
    assert (empty.sent == 0).all()


def test_total_bytes_follow_the_designs_formulas() -> None:
    """Summed over ranks: ring 2(n-1)S, whole ring n(n-1)S, reduce-broadcast 2(n-1)S, tree 2(n-1)S (one edge each way)."""
    size = 4 * 1000  # 1000 float32
    for n in (2, 3, 4, 5, 7, 8):
        total = {a: sum(predicted_bytes_sent(a, size, n, me, 4) for me in range(n)) for a in ALGORITHMS}
        assert total["ring"] == total["native"] == 2 * (n - 1) * size
        assert total["ring-whole"] == n * (n - 1) * size
        assert total["reduce-broadcast"] == 2 * (n - 1) * size
        assert total["tree"] == 2 * (n - 1) * size
    assert predicted_bytes_sent("ring", size, 1) == 0


def test_uneven_ring_counts_whole_elements() -> None:
    # 5 float32 over 3 ranks: chunks of 2, 2, 1 elements; rank 0 skips chunk 1 then chunk 2
    assert predicted_bytes_sent("ring", 20, 3, 0, itemsize=4) == (10 - 2 - 1) * 4
    assert predicted_bytes_sent("ring", 20, 3, 2, itemsize=4) == (10 - 2 - 2) * 4


def test_unknown_algorithm_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ring"):
        allreduce_sum(torch.zeros(3), "butterfly")

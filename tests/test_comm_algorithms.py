"""Every hand-written all-reduce gives exactly dist.all_reduce's sum and sends the bytes its formula says.

Inputs are small integers stored as floats, so sums are exact in any order and the comparison is
equality. Lengths include 0, 1, fewer elements than ranks and lengths not divisible by the world size;
with 3 or more ranks every algorithm also runs on a subgroup (ranks 1..n-1), which checks that peers
are addressed by global rank. The ring's reduce steps move chunks in pieces; tiny pieces make the
small test tensors exercise that path. The textbook ring (ring.ring_allreduce) and the pipelined one
("ring") give the same sums. Every hand-written collective reads on one screen, with no measurement or
emulation code in it.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpkit.comm import ALGORITHMS, allreduce_sum, hierarchical, predicted_bytes_sent, reduce_broadcast, ring, tree
from dpkit.runtime.launch import launch

LENGTHS = [0, 1, 2, 3, 5, 7, 64, 1001]
# 4099 elements (past 2**12) took 65% of the fast tier's three launches for no path 1001 does not take (many pieces,
# a short last one, not divisible by 2, 3 or 4): the slow tier's five-rank launch runs it
SLOW_LENGTHS = [*LENGTHS, 4099]


def run_check(world: int, out: Path, lengths: list[int] = LENGTHS) -> tuple[pd.DataFrame, pd.DataFrame]:
    # ring pieces of 6 float32 / 3 float64: many pieces and a short last one in both dtypes (12 bytes, 1 float64 per
    # message, took twice the time for no more paths)
    payload = {"lengths": lengths, "segment_bytes": 24}
    launch("comm_targets:check_all", payload, world, out, threads_per_rank=1, timeout_s=120)
    return pd.DataFrame(json.loads((out / "check.json").read_text())), pd.DataFrame(json.loads((out / "rings.json").read_text()))


@pytest.fixture(scope="module", params=[2, 3, 4])
def checked_both(request, tmp_path_factory) -> tuple[int, pd.DataFrame, pd.DataFrame]:
    world = request.param
    return world, *run_check(world, tmp_path_factory.mktemp(f"check{world}"))


@pytest.fixture
def checked(checked_both) -> tuple[int, pd.DataFrame]:
    world, frame, _ = checked_both
    return world, frame


def assert_rings_agree(world: int, rings: pd.DataFrame) -> None:
    """Integer-valued floats: the textbook and the pipelined ring are equal bit for bit (and exact); random
    floats: both within float32 rounding of the float64 sum (they add in the same order, so equal too)."""
    assert set(rings.group_size) == ({world, world - 1} if world >= 3 else {world})
    exact = rings[rings.kind == "integers"]
    assert exact.equal.all() and (exact.textbook_err == 0).all(), exact[~exact.equal].to_string()
    rand = rings[rings.kind == "random"]
    assert (rand.textbook_err <= 1e-5 * world).all() and (rand.pipelined_err <= 1e-5 * world).all(), rand.to_string()
    assert (rand.max_diff <= 1e-5 * world).all()
    assert (rings.sent_textbook == rings.sent_pipelined).all()


def test_textbook_ring_equals_pipelined_ring(checked_both) -> None:
    world, _, rings = checked_both
    assert_rings_agree(world, rings)


@pytest.mark.slow
def test_every_check_at_five_ranks_and_4099_elements(tmp_path) -> None:
    """An odd size with a subgroup of four, and the longest tensor: one more launch, so in the slow tier."""
    frame, rings = run_check(5, tmp_path, SLOW_LENGTHS)
    assert_rings_agree(5, rings)
    assert set(frame.length) == set(SLOW_LENGTHS) and set(frame.algo) == set(ALGORITHMS)
    assert frame.equal.all(), frame[~frame.equal].to_string()
    assert (frame.sent == frame.predicted).all(), frame[frame.sent != frame.predicted].to_string()


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


COLLECTIVES = [ring.ring_allreduce, ring.pipelined_ring_allreduce, ring._ring_steps, ring.ring_whole_allreduce,
               tree.tree_allreduce, reduce_broadcast.reduce_broadcast_allreduce, hierarchical.hierarchical_allreduce]  # fmt: skip
NOT_IN_AN_ALGORITHM = {"recorder", "Recorder", "link", "LinkEmulator", "transport", "emulation", "span", "clock"}


@pytest.mark.parametrize("fn", COLLECTIVES, ids=lambda f: f.__name__)
def test_each_hand_written_collective_fits_on_a_screen_without_measurement_or_emulation(fn) -> None:
    """The algorithm alone: at most 150 lines, and no name of the recorder's or the link's in it (Comm records
    the messages, the group's transport paces them)."""
    source = inspect.getsource(fn)
    lines = len(source.splitlines())
    print(f"{fn.__module__}.{fn.__name__}: {lines} lines")
    assert lines <= 150
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}
    assert not names & NOT_IN_AN_ALGORITHM, f"{fn.__name__} uses {names & NOT_IN_AN_ALGORITHM}"


def test_the_textbook_ring_comes_first_in_its_file() -> None:
    """A learner opening comm/ring.py reads the textbook ring before the pipelined optimisation."""
    text = Path(ring.__file__).read_text()
    assert text.index("def ring_allreduce(") < text.index("def _pieces(") < text.index("def pipelined_ring_allreduce(")
    assert ALGORITHMS["ring"] is ring.pipelined_ring_allreduce

"""The exercises' checks (dpkit.exercises.check): every reference solution passes, and typical wrong
answers fail with a message that names the rank and the step, the way a learner needs to read it.

The wrong answers below are module-level functions on purpose: check() sends a function to the ranks
as its source text (inspect.getsource), exactly as it does with a function written in a notebook cell.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from dpkit.exercises import EXERCISES, CheckReport, check
from dpkit.exercises.base import compare
from dpkit.exercises.schedules import simulate, structure_problem
from dpkit.exercises.source import PREAMBLE_LINES, SourceError, function_source
from dpkit.strategies.pipeline import schedule

SOLUTIONS = Path(__file__).resolve().parent.parent / "exercises" / "solutions"


def solution(module: str, *names: str):
    """The reference solution(s) from exercises/solutions/<module>.py, loaded from the file."""
    spec = importlib.util.spec_from_file_location(f"dpkit_test_solution_{module}", SOLUTIONS / f"{module}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    fns = tuple(getattr(mod, n) for n in names)
    return fns[0] if len(fns) == 1 else fns


REFERENCES = {
    "average_gradients": ("average_gradients", ["average_gradients"]),
    "average_gradients_flat": ("average_gradients", ["average_gradients_flat"]),
    "ring_allreduce": ("ring_allreduce", ["ring_allreduce"]),
    "ps_push_pull": ("ps_push_pull", ["ps_worker", "ps_server"]),
    "pipeline_schedule": ("pipeline_schedule", ["pipeline_schedule"]),
    "zero1_step": ("zero1_step", ["zero1_step"]),
    "topk_error_feedback": ("topk_error_feedback", ["topk_error_feedback"]),
}


def test_every_exercise_has_a_reference_solution() -> None:
    assert set(REFERENCES) == set(EXERCISES)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFERENCES))
def test_the_reference_solution_passes(name: str) -> None:
    module, names = REFERENCES[name]
    timed = name == "ring_allreduce"  # the timing launch is the same for every exercise: once is enough here
    report = check(name, solution(module, *names), repeats=3, timing=timed)
    assert isinstance(report, CheckReport)
    assert report.passed, report.message
    assert not report.cases.empty and report.cases["passed"].all()
    if name in ("pipeline_schedule", "topk_error_feedback"):
        assert report.timing is None  # no ranks, nothing to time
        return
    assert set(report.cases["world_size"]) == {2, 3, 4}
    assert "passed" in report._repr_html_() and "PASSED" in str(report)
    if timed:
        assert report.timing is not None and report.timing["yours_s"] > 0 and report.timing["builtin_s"] > 0
        assert "measured on this machine" in report.timing_text and report.timing_text in str(report)


# ---- wrong answers: each a typical mistake ---------------------------------------------------------
def average_without_dividing(net, grads):
    for g in grads:
        net.all_reduce(g)


def flat_with_one_call_per_tensor(net, grads):
    for g in grads:
        net.all_reduce(g)
        g /= net.world_size


def ring_without_all_gather(net, t):
    n, r = net.world_size, net.rank
    chunks = list(torch.tensor_split(t, n))
    incoming = torch.empty_like(chunks[0])
    for s in range(n - 1):  # the reduce-scatter only
        send_c, recv_c = (r - s) % n, (r - s - 1) % n
        buf = incoming[: chunks[recv_c].numel()]
        request = net.irecv(buf, (r - 1) % n)
        net.send(chunks[send_c], (r + 1) % n)
        request.wait()
        chunks[recv_c] += buf


def whole_tensor_ring(net, t):
    n, r = net.world_size, net.rank
    outgoing, incoming = t.clone(), torch.empty_like(t)
    for _ in range(n - 1):
        request = net.irecv(incoming, (r - 1) % n)
        net.send(outgoing, (r + 1) % n)
        request.wait()
        t += incoming
        outgoing.copy_(incoming)


def ring_with_all_reduce(net, t):
    net.all_reduce(t)


def raises_on_rank_1(net, t):
    if net.rank == 1:
        raise RuntimeError("deliberate failure")
    net.recv(t, 1)


def both_receive_first(net, t):
    buf = torch.empty_like(t)
    net.recv(buf, (net.rank + 1) % net.world_size)
    net.send(t, (net.rank + 1) % net.world_size)


def ring_that_never_waits_for_its_sends(net, t):
    n, r = net.world_size, net.rank
    chunks = list(torch.tensor_split(t, n))
    for s in range(2 * (n - 1)):
        send_c, recv_c = (r - s) % n, (r - s - 1) % n
        buf = torch.empty_like(chunks[recv_c])
        net.isend(chunks[send_c].clone(), (r + 1) % n)  # the request is dropped: never waited for
        net.recv(buf, (r - 1) % n)
        if s < n - 1:
            chunks[recv_c] += buf
        else:
            chunks[recv_c].copy_(buf)


def uses_a_helper_from_the_notebook(net, t):
    helper(t)  # noqa: F821 - undefined on purpose


def one_f_one_b_with_one_warm_up_too_many(kind, m, p, s):
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    warm = min(p - s, m)
    actions = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        actions += [("F", warm + i), ("B", i)]
    return actions + [("B", i) for i in range(m - warm, m)]


def one_f_one_b_with_the_warm_up_reversed(kind, m, p, s):
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    warm = min(s, m)
    actions = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        actions += [("F", warm + i), ("B", i)]
    return actions + [("B", i) for i in range(m - warm, m)]


def zero1_without_momentum(net, params, grad, momentum_buf, lr, momentum):
    n, r = net.world_size, net.rank
    k = params.numel() // n
    g = torch.empty(k)
    net.reduce_scatter(g, grad)
    g /= n
    mine = params[r * k : (r + 1) * k]
    mine -= lr * g
    net.all_gather(params, mine.clone())


def zero1_without_all_gather(net, params, grad, momentum_buf, lr, momentum):
    n, r = net.world_size, net.rank
    k = params.numel() // n
    g = torch.empty(k)
    net.reduce_scatter(g, grad)
    momentum_buf.mul_(momentum).add_(g / n)
    params[r * k : (r + 1) * k] -= lr * momentum_buf


def server_that_sums(net, workers, params, lr):
    total, incoming = torch.zeros_like(params), torch.empty_like(params)
    for w in workers:
        net.recv(incoming, w)
        total += incoming
    params -= lr * total
    for w in workers:
        net.send(params, w)


def _failed(report: CheckReport, *phrases: str) -> None:
    assert not report.passed, "the wrong answer passed"
    for phrase in phrases:
        assert phrase in report.message, f"{phrase!r} not in: {report.message}"
    assert "FAILED" in str(report) and "failed" in report._repr_html_()


@pytest.mark.slow
def test_averaging_without_dividing_names_the_rank_the_gradient_and_the_cause() -> None:
    report = check("average_gradients", average_without_dividing, timing=False)
    _failed(report, "Rank 0, world size 2", "gradient 0", "should be", "but is", "divide by net.world_size")
    row = report.cases[~report.cases["passed"]].iloc[0]
    assert row["world_size"] == 2 and row["rank"] == 0


@pytest.mark.slow
def test_the_flat_exercise_wants_one_all_reduce() -> None:
    report = check("average_gradients_flat", flat_with_one_call_per_tensor, timing=False)
    _failed(report, "Rank 0", "called net.all_reduce 3 times", "one flat all-reduce")


@pytest.mark.slow
def test_a_ring_without_the_all_gather_names_the_rank_and_the_step() -> None:
    report = check("ring_allreduce", ring_without_all_gather, timing=False)
    _failed(report, "Rank 0, world size 2, 8 elements", "element 0 should be", "chunk 0", "all-gather step 1")


@pytest.mark.slow
def test_a_whole_tensor_ring_has_the_right_sums_but_sends_too_much() -> None:
    report = check("ring_allreduce", whole_tensor_ring, timing=False)
    # at n = 2 a whole tensor is as many bytes as two chunks: the excess shows from n = 3
    _failed(report, "world size 3", "right sums", "(n-1) x S", "2(n-1)/n x S")
    assert report.cases[report.cases["world_size"] == 2]["passed"].all()
    row = report.cases[~report.cases["passed"]].iloc[0]
    assert row["bytes_sent"] == 2 * 8 * 4 and row["bytes_source"] == "counted"


@pytest.mark.slow
def test_the_ring_exercise_allows_only_point_to_point() -> None:
    report = check("ring_allreduce", ring_with_all_reduce, timing=False)
    _failed(report, "ExerciseRuleError", "does not allow net.all_reduce", "line 2 of your function")


@pytest.mark.slow
def test_a_function_that_raises_on_rank_1_is_reported_with_its_line() -> None:
    report = check("ring_allreduce", raises_on_rank_1, timing=False)
    _failed(report, "Rank 1 raised RuntimeError: deliberate failure", "line 3 of your function raises_on_rank_1", "world size 2")


@pytest.mark.slow
def test_a_hang_becomes_a_report_naming_what_each_rank_waits_for() -> None:
    report = check("ring_allreduce", both_receive_first, timeout_s=60, timing=False)
    _failed(
        report,
        "Deadlock",
        "rank 0 is in net.recv from rank 1",
        "rank 1 is in net.recv from rank 0",
        "rank 0 waits to receive from rank 1, but rank 1 sends nothing now",
    )


@pytest.mark.slow
def test_an_isend_never_waited_for_is_reported() -> None:
    report = check("ring_allreduce", ring_that_never_waits_for_its_sends, timing=False)
    _failed(report, "Rank 0, world size 2, 8 elements", "isend to rank 1, isend to rank 1 not waited for", ".wait()")


@pytest.mark.slow
def test_a_function_that_needs_the_notebook_is_told_to_be_self_contained() -> None:
    report = check("ring_allreduce", uses_a_helper_from_the_notebook, timing=False)
    _failed(report, "NameError", "self-contained")


@pytest.mark.slow  # the schedule is checked in a child process (under a time limit)
def test_a_1f1b_with_a_wrong_warm_up_names_the_stage_and_the_action() -> None:
    report = check("pipeline_schedule", one_f_one_b_with_one_warm_up_too_many)
    _failed(
        report, "1f1b with m=4 micro-batches on p=2 stages", "stage 0, action #2 should be ('B', 0) but is ('F', 2)", "keeps 3"
    )
    assert report.cases[report.cases["kind"] == "gpipe"]["passed"].all()


@pytest.mark.slow
def test_a_1f1b_that_deadlocks_says_who_waits_for_whom() -> None:
    report = check("pipeline_schedule", one_f_one_b_with_the_warm_up_reversed)
    _failed(
        report, "Deadlock", "stage 0 waits at action #1 ('B', 0) for stage 1's ('B', 0)", "stage 1 waits at action #1 ('F', 1)"
    )


@pytest.mark.slow
def test_zero1_that_forgets_momentum_fails_at_step_1() -> None:
    report = check("zero1_step", zero1_without_momentum, timing=False)
    _failed(report, "Rank 0, world size 2", "parameters after step 1", "Step 0 was right", "momentum")


@pytest.mark.slow
def test_zero1_without_the_all_gather_says_so() -> None:
    report = check("zero1_step", zero1_without_all_gather, timing=False, world_sizes=[3])
    _failed(report, "world size 3", "parameters after step 0", "all-gather")


@pytest.mark.slow
def test_a_server_that_sums_instead_of_averaging() -> None:
    worker = solution("ps_push_pull", "ps_worker")
    report = check("ps_push_pull", (worker, server_that_sums), timing=False)
    _failed(report, "Rank 0 (worker 0), world size 3", "parameters after step 0", "average them")


# ---- the pieces, without ranks -------------------------------------------------------------------
def test_simulation_runs_dpkits_schedules_and_finds_a_deadlock() -> None:
    for kind in ("gpipe", "1f1b"):
        ticks, stuck = simulate([schedule(kind, 4, 3, s) for s in range(3)])
        assert ticks == 3 * (4 + 3 - 1) and stuck == []  # (m + p - 1) slots of F + B
    ticks, stuck = simulate([[("F", 0), ("B", 0), ("F", 1), ("B", 1)], [("F", 0), ("F", 1), ("B", 0), ("B", 1)]])
    assert ticks is None and len(stuck) == 2


def test_structure_problems_are_named() -> None:
    assert structure_problem([("F", 0), ("B", 0)], 1, 0) is None
    assert "before ('F', 0)" in (structure_problem([("B", 0), ("F", 0)], 1, 2) or "")
    assert "only m=1" in (structure_problem([("F", 1)], 1, 0) or "")
    assert "never runs ('B', 0)" in (structure_problem([("F", 0)], 1, 0) or "")


def test_compare_finds_the_first_differing_element() -> None:
    assert compare(torch.ones(4), torch.ones(4), 1e-5, 1e-5) is None
    found = compare(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 5.0, 0.0]), 1e-5, 1e-5)
    assert found is not None and found.index == 1 and found.got == 5.0 and found.max_abs == 3.0
    assert compare(torch.ones(3), torch.ones(4), 1e-5, 1e-5).index == -1  # type: ignore[union-attr]


def test_only_real_functions_can_be_sent_to_the_ranks() -> None:
    with pytest.raises(SourceError, match="lambda"):
        function_source(lambda net, t: None)
    with pytest.raises(SourceError, match="not a Python function"):
        function_source(print)
    assert function_source(average_without_dividing).startswith("def average_without_dividing(net, grads):")
    assert PREAMBLE_LINES > 0


def test_unknown_names_and_missing_functions_are_refused() -> None:
    with pytest.raises(ValueError, match="no exercise named"):
        check("ring", average_without_dividing)
    with pytest.raises(TypeError, match="worker, server"):
        check("ps_push_pull", average_without_dividing)

"""dpkit.measure's rule for emulated links: when a run's late messages withhold it (issue 23/26)."""

from __future__ import annotations

import pytest

from dpkit import RunConfig


def test_an_emulated_link_is_honoured_unless_its_late_messages_can_have_added_a_tenth_of_the_step() -> None:
    """A few messages late by a fraction of a millisecond leave the run measuring its link; many, or long, do not."""
    from types import SimpleNamespace

    from dpkit.measure import LATE_TOLERANCE, link_late_share, link_problem

    def result(late: int, late_s: float | None, worst_s: float = 0.002) -> SimpleNamespace:
        meta = {"link": {} if late_s is None else {"late_s": late_s}}
        if late:
            meta["link_not_honoured"] = {"messages": late, "of": 192, "worst_late_s": worst_s}
        return SimpleNamespace(meta=meta, config=RunConfig(steps=10, warmup=2), summary={"step_time_s": 0.05})

    assert link_late_share(result(0, 0.0)) == 0.0 and link_problem(result(0, 0.0)) is None
    # 14 late messages adding up to 24 ms over 8 timed steps: 3 ms a step, 6% of a 50 ms step
    assert link_late_share(result(14, 0.024)) == pytest.approx(0.06) and link_problem(result(14, 0.024)) is None
    bad = link_problem(result(97, 0.6))  # 75 ms a step: more than the step itself
    assert bad is not None and "97 of 192 messages late" in bad and "150%" in bad
    # an older record without late_s: every late message counted as late as the worst
    assert link_late_share(result(6, None, worst_s=0.01)) == pytest.approx(6 * 0.01 / 8 / 0.05)
    assert link_late_share(result(6, None, worst_s=0.01)) > LATE_TOLERANCE >= link_late_share(result(3, None, 0.01))


@pytest.mark.slow  # two Python subprocesses, one importing dpkit (torch)
def test_the_processes_that_started_this_one_are_not_counted_as_load_outside_a_run() -> None:
    """A kernel's parent (the notebook server, nbval, nbconvert) wakes to carry the run's own output: counting it
    withheld a quiet machine's speedup as '0.5 busy processes outside the run'. Here the parent (this test's main
    thread) spins while its child looks: the child must not count it; a busy unrelated process (a sibling) still counts."""
    import subprocess
    import sys
    import time

    look = (
        "import os, sys, time; from dpkit.measure import runnable_outside\n"
        "seen = set()\n"
        "for _ in range(40):\n"
        "    seen |= runnable_outside() or set(); time.sleep(0.01)\n"
        "print(int(os.getppid() in seen), int(int(sys.argv[1]) in seen))\n"
    )
    sibling = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        child = subprocess.Popen(
            [sys.executable, "-c", look, str(sibling.pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:  # this process's main thread busy: state R
            pass
        stdout, stderr = child.communicate(timeout=10)
    finally:
        sibling.kill()
        sibling.wait()
    out = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    assert out.returncode == 0, out.stderr
    parent_seen, sibling_seen = map(int, out.stdout.split())
    assert parent_seen == 0 and sibling_seen == 1


def test_the_operating_systems_own_threads_are_not_load_outside_a_run() -> None:
    """rcu_preempt, kworker and kdamond are runnable for microseconds now and then; one caught by one of a short run's
    two samples read as 'half a busy process outside the run' and withheld its speedup on a quiet machine."""
    from dpkit.measure import runnable_beside

    table = {
        1: (b"S", 0),  # init
        2: (b"S", 0),  # kthreadd
        15: (b"R", 2),  # rcu_preempt
        107: (b"R", 2),  # kdamond
        300: (b"R", 1),  # the notebook server, busy carrying output
        400: (b"S", 300),  # the kernel: me
        401: (b"R", 400),  # a rank
        402: (b"R", 400),  # a rank
        500: (b"R", 1),  # another program, busy
        501: (b"R", 500),  # its child, busy
    }
    runnable, ours = runnable_beside(table, 400)
    assert runnable == {500, 501} and ours == {400, 401, 402}

"""The same workers under torchrun (env:// rendezvous) give the same losses as run()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dpkit import RunConfig, RunResult, run


def _torchrun(cmd: list[str]) -> tuple[int, str, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # never leave torchrun's workers behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stdout, stderr


@pytest.mark.slow
def test_torchrun_matches_run(tmp_path: Path, small: RunConfig) -> None:
    cfg = small.replace(parallelism="data", world_size=2, grad_sync="bucketed", allreduce_algo="ring")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "dpkit.runtime.torchrun", "--out", str(tmp_path),
        "--parallelism", "data", "--world-size", "2", "--model", "mlp", "--hidden", "32", "--layers", "3",
        "--global-batch", "24", "--steps", "3", "--threads-per-rank", "1",
        "--grad-sync", "bucketed", "--allreduce-algo", "ring", "--timeout-s", "60",
    ]  # fmt: skip
    returncode, stdout, stderr = _torchrun(cmd)
    assert returncode == 0, stderr[-3000:]
    lines = [line for line in stdout.splitlines() if line.startswith(("RunResult(", "results: "))]
    assert lines == [lines[0], f"results: {tmp_path}"] and lines[0].startswith("RunResult(data, world_size=2")  # rank 0 only
    via_torchrun = RunResult.load(tmp_path)
    assert via_torchrun.config == cfg
    assert via_torchrun.meta["start_method"] == "torchrun"
    assert via_torchrun.losses == run(cfg).losses


@pytest.mark.slow  # starts torchrun
def test_world_size_mismatch_is_said_once_first(tmp_path: Path) -> None:
    """2 processes for a config that needs 3: one line from rank 0, before torch's ChildFailedError report."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "dpkit.worker", "--out", str(tmp_path / "r"), "--parallelism", "data", "--world-size", "3", "--global-batch", "24",
    ]  # fmt: skip
    returncode, _, stderr = _torchrun(cmd)
    assert returncode != 0
    said = [line for line in stderr.splitlines() if line.startswith("dpkit: error:")]
    assert said == [
        "dpkit: error: torchrun started 2 processes (--nproc-per-node 2 x --nnodes 1) but this config needs 3: "
        "make nproc-per-node x nnodes = 3, or change --world-size"
    ]
    assert stderr.index("dpkit: error:") < stderr.find("ChildFailedError") or "ChildFailedError" not in stderr
    assert "Traceback" not in stderr.split("dpkit: error:")[0]
    assert not (tmp_path / "r").exists()


def test_world_size_problem_counts_parameter_servers() -> None:
    from dpkit.runtime.torchrun import world_size_problem

    ps = RunConfig(parallelism="data", sync="ps", world_size=2, num_servers=1)
    assert world_size_problem(ps, 3, 3) is None
    assert "needs 3 (2 training ranks + 1 parameter servers)" in str(world_size_problem(ps, 2, 1))

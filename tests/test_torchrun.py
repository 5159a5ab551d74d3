"""The same workers under torchrun (env:// rendezvous) give the same losses as run()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dpkit import RunConfig, RunResult, run


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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # never leave torchrun's workers behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    via_torchrun = RunResult.load(tmp_path)
    assert via_torchrun.config == cfg
    assert via_torchrun.meta["start_method"] == "torchrun"
    assert via_torchrun.losses == run(cfg).losses

"""torchrun --max-restarts 1: a worker SIGKILLed mid-run makes torchrun restart the group, which resumes from the
last checkpoint (dpkit/runtime/checkpoint.py) and ends exactly as the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpkit import RunConfig, RunResult, run


def _torchrun(cmd: list[str]) -> tuple[int, str, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:  # never leave torchrun's workers behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stdout, stderr


@pytest.mark.slow  # starts torchrun, twice its workers
def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(tmp_path: Path) -> None:
    cfg = RunConfig(
        parallelism="data", world_size=2, model="mlp", hidden=32, layers=3, global_batch=24, steps=6,
        threads_per_rank=1, timeout_s=120, checkpoint_every=2, fail_rank=1, fail_at_step=3,
    )  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
        "--monitor-interval", "0.5", "-m", "dpkit.runtime.torchrun", "--out", str(tmp_path),
        "--parallelism", "data", "--world-size", "2", "--model", "mlp", "--hidden", "32", "--layers", "3",
        "--global-batch", "24", "--steps", "6", "--threads-per-rank", "1", "--timeout-s", "120",
        "--checkpoint-every", "2", "--fail-rank", "1", "--fail-at-step", "3",
    ]  # fmt: skip
    returncode, stdout, stderr = _torchrun(cmd)
    assert returncode == 0, stderr[-3000:]
    restarted = RunResult.load(tmp_path)
    assert restarted.config == cfg
    assert restarted.meta["elastic_restarts"] == 1  # the second attempt finished the run
    resumed = restarted.extra["resumed"]["0"]
    assert resumed["step"] == 2  # the checkpoint before the kill at step 3
    assert resumed["lost_s"] > 0  # the step after the checkpoint, the kill, torchrun's restart: time lost
    whole = run(cfg.replace(fail_rank=None), queue=False)
    assert restarted.losses == whole.losses
    for k, v in whole.final_state_dict.items():
        assert torch.equal(restarted.final_state_dict[k], v), k

"""ps_recovery='checkpoint' (dpkit/strategies/parameter_server/recovery.py): a SIGKILLed server costs the updates
since the last checkpoint, counted, and the run trains on to the same end as an uninterrupted one."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import rank_processes

from dpkit import RunConfig, run
from dpkit.runtime.launch import RankFailedError

PS = RunConfig(
    parallelism="data", sync="ps", world_size=2, num_servers=1, model="mlp", hidden=32, layers=3, global_batch=24,
    steps=6, warmup=1, threads_per_rank=1, timeout_s=120, checkpoint_every=2,
)  # fmt: skip


def no_process_left() -> None:
    deadline = time.monotonic() + 10
    while rank_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not rank_processes()


@pytest.mark.slow
def test_a_killed_server_recovers_from_its_checkpoint_and_the_lost_updates_are_counted() -> None:
    whole = run(PS, queue=False)
    recovered = run(PS.replace(ps_recovery="checkpoint", fail_rank=2, fail_at_step=5), queue=False)
    no_process_left()
    lost = recovered.meta["ps_recovery"]
    assert lost["failed_role"] == "parameter server 0" and lost["checkpoint_step"] == 4
    assert lost["lost_steps"] == 1 and lost["lost_updates"] == 2  # step 4's two pushes were applied, then lost
    assert lost["lost_s"] > 0 and lost["restart_s"] >= 0
    assert recovered.losses == whole.losses  # the lost step is redone from the checkpoint: same end
    for k, v in whole.final_state_dict.items():
        assert torch.equal(recovered.final_state_dict[k], v), k


@pytest.mark.slow
def test_without_recovery_a_killed_server_ends_the_run() -> None:
    with pytest.raises(RankFailedError, match="single point of failure"):
        run(PS.replace(fail_rank=2, fail_at_step=3), queue=False)
    no_process_left()


@pytest.mark.slow
def test_a_killed_worker_is_not_what_ps_recovery_recovers() -> None:
    with pytest.raises(RankFailedError) as info:
        run(PS.replace(ps_recovery="checkpoint", fail_rank=1, fail_at_step=3), queue=False)
    assert info.value.role == "worker 1"
    no_process_left()


def test_ps_recovery_needs_checkpoints_and_a_parameter_server() -> None:
    with pytest.raises(ValueError, match="RunConfig.ps_recovery='checkpoint'.*checkpoint_every"):
        PS.replace(checkpoint_every=None, ps_recovery="checkpoint")
    with pytest.raises(ValueError, match="RunConfig.ps_recovery="):
        PS.replace(sync="allreduce", ps_recovery="checkpoint")
    with pytest.raises(ValueError, match="RunConfig.ps_recovery='replicate' is not allowed"):
        PS.replace(ps_recovery="replicate")

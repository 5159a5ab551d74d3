"""ps_recovery (dpkit/strategies/parameter_server/recovery.py): with 'checkpoint' a SIGKILLed server costs the updates
since the last checkpoint, counted; with 'replicate' its backup's copy takes its place and no applied update is lost.
Either way the run trains on to the same end as an uninterrupted one."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import rank_processes

from dpkit import RunConfig, run
from dpkit.runtime.launch import RankFailedError
from dpkit.strategies.parameter_server.recovery import HandOverError, compose_hand_over
from dpkit.strategies.registry import spec_for

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
    with pytest.raises(ValueError, match="RunConfig.ps_recovery='replicate' is not allowed.*'none' or 'checkpoint'.*sync='ps'"):
        PS.replace(sync="ps-async", ps_recovery="replicate")
    with pytest.raises(ValueError, match="RunConfig.ps_recovery='replicate' is not allowed"):
        PS.replace(sync="allreduce", checkpoint_every=None, ps_recovery="replicate")
    with pytest.raises(ValueError, match="RunConfig.ps_recovery='twice' is not allowed.*'replicate'"):
        PS.replace(ps_recovery="twice")


# ---- replicate: a backup per server ---------------------------------------------------------------
REPLICATE = PS.replace(checkpoint_every=None, ps_recovery="replicate")


def test_replicate_adds_a_backup_process_per_server() -> None:
    cfg = REPLICATE.replace(num_servers=2)
    assert cfg.num_processes == 2 + 2 + 2
    assert spec_for(cfg).roles(cfg)[4:] == ["backup server 0", "backup server 1"]
    memory = spec_for(cfg).predict_memory(cfg)
    assert len(memory) == 6
    servers, backups = memory.iloc[2:4], memory.iloc[4:6]
    assert list(backups.mem_params_bytes) == list(servers.mem_params_bytes)  # a whole copy of each shard
    assert (backups.mem_optimizer_bytes.to_numpy() == servers.mem_optimizer_bytes.to_numpy()).all()


def dump(step: int, begun: int, version: int | None = None, model: float = 0.0) -> dict:
    """A hand-over as dpkit.runtime.checkpoint.hand_over writes it (version: a server's or backup's updates)."""
    state: dict = {"modules": {"model": {"w": torch.full((2,), model)}}, "opt": None, "opt_params": [], "rng": {}}
    if version is not None:
        state = {"modules": {}, "opt": None, "opt_params": [torch.full((2,), float(version))], "rng": {}}
        state["extra"] = {"version": version}
    losses = [(float(s), 0 if version is not None else 12) for s in range(step)]
    evals = [[s, 24 * s, 0.1 * s, 0.5, 0.5] for s in (0, 2, 4, 6) if s <= step]
    progress = {"losses": losses, "lrs": [0.1] * begun, "evals": evals, "train_time_s": 1.0}
    return {"step": step, "steps_begun": begun, "last_step_end_at": 100.0 + step, "progress": progress, "state": state}


def test_the_hand_over_goes_on_from_the_backup_copy_after_the_steps_every_worker_finished() -> None:
    cfg = REPLICATE.replace(num_servers=2)  # workers 0, 1; servers 2, 3; backups 4, 5
    # server 2 died at the start of step 4; server 3 had applied step 4's update (version 5) and answered worker 1
    dumps = {0: dump(4, 5, model=4.0), 1: dump(5, 5, model=5.0), 3: dump(4, 5, version=5), 4: dump(4, 5, version=4)}
    dumps[5] = dump(4, 5, version=4)  # server 3's backup had not applied it yet
    step, files, kept = compose_hand_over(cfg, dumps)
    assert step == 4 and kept["shard_versions"] == [4, 5] and kept["copies_from_ranks"] == [4, 3]
    assert sorted(files) == [0, 1, 2, 3, 4, 5]
    for w in (0, 1):  # both workers go on from the model after step 4 (worker 0's), with 4 losses, lrs and evals <= 4
        assert torch.equal(files[w]["state"]["modules"]["model"]["w"], torch.full((2,), 4.0))
        progress = files[w]["progress"]
        assert len(progress["losses"]) == 4 and len(progress["lrs"]) == 4 and [r[0] for r in progress["evals"]] == [0, 2, 4]
    assert files[2]["state"] is dumps[4]["state"] and files[4]["state"] is dumps[4]["state"]  # the backup's copy
    assert files[3]["state"] is dumps[3]["state"] and files[5]["state"] is dumps[3]["state"]  # the newer copy of shard 1
    assert all(files[r]["step"] == 4 for r in files)


def test_a_hand_over_that_cannot_make_one_state_is_refused() -> None:
    cfg = REPLICATE
    with pytest.raises(HandOverError, match=r"worker\(s\) \[1\]"):
        compose_hand_over(cfg, {0: dump(3, 4), 3: dump(3, 4, version=3)})
    with pytest.raises(HandOverError, match="neither parameter server 0 nor its backup"):
        compose_hand_over(cfg, {0: dump(3, 4), 1: dump(3, 4)})
    with pytest.raises(HandOverError, match="2 updates, the workers finished 3 steps"):
        compose_hand_over(cfg, {0: dump(3, 4), 1: dump(3, 4), 3: dump(2, 3, version=2)})


def same_end(a, b) -> None:
    assert a.losses == b.losses
    for k, v in b.final_state_dict.items():
        assert torch.equal(a.final_state_dict[k], v), k


@pytest.mark.slow
def test_a_killed_server_is_replaced_by_its_backup_and_no_applied_update_is_lost() -> None:
    whole = run(PS.replace(checkpoint_every=None), queue=False)
    replicated = run(REPLICATE, queue=False)
    same_end(replicated, whole)  # the backup changes nothing in training
    shard_bytes = 4 * sum(v.numel() for v in whole.final_state_dict.values())  # one fp32 gradient of the shard
    assert replicated.meta["ps_replication"]["bytes_per_step"] == shard_bytes
    assert replicated.meta["ps_replication"]["messages"] == REPLICATE.steps
    assert replicated.extra["replica_version"]["3"] == REPLICATE.steps and "ps_recovery" not in replicated.meta
    measured, predicted = replicated.memory_frame(), spec_for(REPLICATE).predict_memory(REPLICATE)
    columns = ["mem_params_bytes", "mem_grads_bytes", "mem_optimizer_bytes", "mem_buffers_bytes"]
    assert (measured[columns].to_numpy() == predicted[columns].to_numpy()).all()  # the backup holds what the spec says
    recovered = run(REPLICATE.replace(fail_rank=2, fail_at_step=4), queue=False)
    no_process_left()
    kept = recovered.meta["ps_recovery"]
    assert kept["mode"] == "replicate" and kept["failed_role"] == "parameter server 0"
    assert kept["taken_over_by"] == "backup server 0 (rank 3)"
    assert kept["replica_version"] == 4 and kept["resumed_step"] == 4  # every update it had applied, none older
    assert kept["lost_updates"] == 0 and kept["redone_steps"] == 1  # only the step in flight is done again
    assert kept["lost_s"] > 0 and kept["restart_s"] >= 0
    assert recovered.extra["resumed"]["0"]["step"] == 4
    same_end(recovered, whole)


@pytest.mark.slow
def test_with_two_servers_the_survivor_answers_the_repeated_step_without_applying_it_again() -> None:
    two = REPLICATE.replace(num_servers=2, optimizer="adam")  # workers 0, 1; servers 2, 3; backups 4, 5; Adam's moments too
    whole = run(two.replace(ps_recovery="none"), queue=False)
    recovered = run(two.replace(fail_rank=3, fail_at_step=3), queue=False)
    no_process_left()
    kept = recovered.meta["ps_recovery"]
    assert kept["failed_role"] == "parameter server 1" and kept["taken_over_by"] == "backup server 1 (rank 5)"
    assert kept["resumed_step"] == 3 and kept["lost_updates"] == 0
    # server 0 usually had applied step 3's update before the workers saw server 1 gone (then it answers the
    # repeated pushes of step 3 without applying them again); either way the end is the uninterrupted run's
    assert kept["shard_versions"][1] == 3 and kept["shard_versions"][0] in (3, 4)
    same_end(recovered, whole)


@pytest.mark.slow
def test_a_killed_backup_is_not_what_replicate_recovers() -> None:
    with pytest.raises(RankFailedError, match="recovers a dead server, not a dead backup") as info:
        run(REPLICATE.replace(fail_rank=3, fail_at_step=2), queue=False)
    assert info.value.role == "backup server 0"
    no_process_left()

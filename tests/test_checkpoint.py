"""Checkpoints and resume (dpkit/runtime/checkpoint.py): a resumed run ends exactly as the uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpkit import api
from dpkit.config import RunConfig
from dpkit.results import _write_atomic
from dpkit.runtime import checkpoint
from dpkit.runtime.checkpoint import CheckpointError
from dpkit.runtime.launch import RankFailedError

SMALL = dict(model="mlp", hidden=32, layers=3, global_batch=24, steps=5, warmup=1, threads_per_rank=1, timeout_s=120)


# ---- fast: files, verification, resharding, bad input ---------------------------------------------
def fake_checkpoint(root: Path, step: int, cfg: RunConfig, ranks: int = 2) -> Path:
    folder = checkpoint.step_dir(root, step)
    folder.mkdir(parents=True)
    entries = [_write_atomic(folder / checkpoint.rank_file(r), f"rank {r} at {step}".encode()) for r in range(ranks)]
    checkpoint.write_manifest(folder, step, cfg, entries)
    return folder


def test_a_truncated_or_edited_checkpoint_is_refused_and_the_previous_one_is_used(tmp_path: Path) -> None:
    cfg = RunConfig(parallelism="data", world_size=2, checkpoint_every=2)
    older, newer = fake_checkpoint(tmp_path, 2, cfg), fake_checkpoint(tmp_path, 4, cfg)
    assert checkpoint.last_good(tmp_path)[0] == newer  # type: ignore[index]
    f = newer / checkpoint.rank_file(1)
    f.write_bytes(f.read_bytes()[:-3])  # truncated
    with pytest.raises(CheckpointError, match="rank-00001.pt.*truncated"):
        checkpoint.verify(newer)
    said: list[str] = []
    assert checkpoint.last_good(tmp_path, said.append)[0] == older  # type: ignore[index]
    assert "truncated" in said[0]
    f.write_bytes(b"rank 1 at 9")  # same size, other bytes: edited
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint.verify(newer)
    (older / "manifest.json").unlink()  # an interrupted save
    with pytest.raises(CheckpointError, match="interrupted"):
        checkpoint.verify(older)
    assert checkpoint.last_good(tmp_path, said.append) is None


def test_resume_from_is_checked_before_any_process_starts(tmp_path: Path) -> None:
    cfg = RunConfig(parallelism="data", world_size=2, checkpoint_every=2, **SMALL)
    with pytest.raises(ValueError, match="resume_from=.*no checkpoint"):
        api.run(cfg, resume_from=tmp_path)
    fake_checkpoint(tmp_path / "checkpoints", 2, cfg)
    with pytest.raises(ValueError, match="resume_from=.*RunConfig.lr=0.5 differs"):
        api.run(cfg.replace(lr=0.5), resume_from=tmp_path)
    pipe = cfg.replace(parallelism="pipeline")
    fake_checkpoint(tmp_path / "pipe" / "checkpoints", 2, pipe)
    with pytest.raises(ValueError, match="world_size"):
        api.run(pipe.replace(world_size=3), resume_from=tmp_path / "pipe")
    assert checkpoint.resume_folder(cfg.replace(steps=9, checkpoint_every=None), tmp_path) == str(tmp_path / "checkpoints")


@pytest.mark.parametrize(("field", "value"), [("checkpoint_every", 0), ("checkpoint_every", -1), ("ps_recovery", "maybe")])
def test_bad_checkpoint_fields_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"RunConfig.{field}="):
        RunConfig(**{"parallelism": "data", "sync": "ps", "world_size": 2, "checkpoint_every": 2, field: value})
    with pytest.raises(ValueError, match="ps_recovery.*checkpoint_every"):
        RunConfig(parallelism="data", sync="ps", world_size=2, ps_recovery="checkpoint")


def test_new_fields_at_their_defaults_keep_older_run_ids() -> None:
    cfg = RunConfig()
    assert cfg.run_id() != cfg.replace(checkpoint_every=3).run_id()
    from dpkit.config import ADDED_AT_DEFAULT

    d = {k: v for k, v in cfg.to_dict().items() if k not in ADDED_AT_DEFAULT}
    import hashlib

    assert cfg.run_id() == hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def test_flat_shards_reshard_from_four_ranks_to_two() -> None:
    """ZeRO: 4 shards of a zero-padded flat buffer (and Adam's state alike) cut again into 2."""
    whole = torch.arange(10, dtype=torch.float32)
    four = [torch.cat([whole, torch.zeros(2)])[i * 3 : (i + 1) * 3] for i in range(4)]
    states = [
        {"opt_params": [s], "opt": {"param_groups": [], "state": {0: {"step": torch.tensor(3.0), "exp_avg": 2 * s}}}}
        for s in four
    ]
    for index in range(2):
        got = checkpoint.reshard(states, index, [5], "flat")
        assert torch.equal(got["opt_params"][0], whole[index * 5 : (index + 1) * 5])
        assert torch.equal(got["opt"]["state"][0]["exp_avg"], 2 * whole[index * 5 : (index + 1) * 5])
        assert float(got["opt"]["state"][0]["step"]) == 3.0
    assert checkpoint.reshard(states, 1, [5], "replicated") is states[0]


def test_the_evaluation_goes_on_counting_training_time_from_its_checkpoint() -> None:
    from dpkit.runtime.evaluation import HeldOutEvaluation
    from dpkit.runtime.recorder import HostClock, Recorder

    cfg = RunConfig(parallelism="data", world_size=2, eval_every=2)
    first = HeldOutEvaluation(cfg, 1, Recorder(1, HostClock(0.0)))  # rank 1: no held-out split, only the counters
    first.rec.steps.append({"end_s": 5.0})
    first.eval_s = 1.0
    saved = first.progress()
    assert saved["train_time_s"] == 4.0  # 5 s so far, 1 s of it evaluating
    resumed = HeldOutEvaluation(cfg, 1, Recorder(1, HostClock(0.0)))
    resumed.resume({**saved, "evals": [[4, 96, 4.0, 0.5, 0.5]]})
    assert resumed.train_time() == 4.0 and resumed.rows == [[4, 96, 4.0, 0.5, 0.5]]  # nothing trained yet here
    resumed.rec.steps.append({"end_s": 3.0})
    resumed.eval_s = 0.5
    assert resumed.train_time() == 4.0 + 2.5  # the checkpoint's training time plus this attempt's
    older = HeldOutEvaluation(cfg, 1, Recorder(1, HostClock(0.0)))
    older.resume({"evals": [[2, 48, 3.5, 0.5, 0.5]]})  # a checkpoint written before train_time_s was kept
    assert older.train_time() == 3.5


# ---- slow: real runs, interrupted and resumed ------------------------------------------------------
GRID = {
    "single": dict(parallelism="none", world_size=1),
    "data-bucketed": dict(parallelism="data", world_size=2),
    "data-ddp-adam": dict(parallelism="data", world_size=2, grad_sync="ddp", optimizer="adam"),
    "zero1": dict(parallelism="data", world_size=2, zero_stage=1, optimizer="adam"),
    "zero2": dict(parallelism="data", world_size=2, zero_stage=2),
    "zero3": dict(parallelism="data", world_size=2, zero_stage=3, grad_sync="flat", optimizer="adam"),
    "fsdp2": dict(parallelism="data", world_size=2, zero_stage=3, grad_sync="fsdp", optimizer="adam"),
    "ps": dict(parallelism="data", world_size=2, sync="ps"),
    "pipeline-1f1b": dict(parallelism="pipeline", world_size=2, schedule="1f1b"),
    "tensor": dict(parallelism="tensor", world_size=2, layers=2, optimizer="adam"),
    "hybrid": dict(parallelism="hybrid", world_size=4, data_parallel_size=2),
}


def assert_same_run(a, b) -> None:
    assert a.losses == b.losses
    assert a.final_state_dict.keys() == b.final_state_dict.keys()
    for k, v in a.final_state_dict.items():
        assert torch.equal(v, b.final_state_dict[k]), k


def interrupted(cfg: RunConfig, folder: Path, fail_rank: int, fail_at_step: int) -> None:
    with pytest.raises(RankFailedError):
        api.run(cfg.replace(fail_rank=fail_rank, fail_at_step=fail_at_step), out=folder, queue=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GRID))
def test_a_resumed_run_ends_exactly_as_the_uninterrupted_one(name: str, tmp_path: Path) -> None:
    cfg = RunConfig(**{**SMALL, **GRID[name]}, checkpoint_every=2)
    whole = api.run(cfg, queue=False)  # checkpoints written along the way change nothing either
    assert_same_run(whole, api.run(cfg.replace(checkpoint_every=None), queue=False))
    interrupted(cfg, tmp_path, fail_rank=cfg.num_processes - 1, fail_at_step=3)
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    resumed = api.run(cfg, out=tmp_path, resume_from=tmp_path, queue=False)
    assert_same_run(resumed, whole)
    assert resumed.extra["resumed"]["0"]["step"] == 2
    kinds = resumed.timeline.groupby("kind").size()
    assert kinds["checkpoint"] == 2 * cfg.num_processes  # one load at the start, one save at step 4, on every rank
    assert resumed.timeline[resumed.timeline.kind == "checkpoint"].step.min() == 0


@pytest.mark.slow
def test_async_parameter_server_checkpoints_and_resumes(tmp_path: Path) -> None:
    """ps-async is not deterministic (pushes arrive in the order the machine makes), so only: it checkpoints without
    hanging (the save is a barrier even for an async strategy) and a resume finishes the run."""
    cfg = RunConfig(**SMALL, parallelism="data", world_size=2, sync="ps-async", checkpoint_every=2)
    interrupted(cfg, tmp_path, fail_rank=2, fail_at_step=3)
    resumed = api.run(cfg, resume_from=tmp_path, queue=False)
    assert resumed.extra["resumed"]["2"]["step"] == 2 and len(resumed.losses) == cfg.steps


@pytest.mark.slow
def test_a_resumed_run_evaluates_as_the_uninterrupted_one_and_counts_training_time_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = RunConfig(**{**SMALL, "steps": 6}, parallelism="data", world_size=2, checkpoint_every=2, eval_every=2)
    whole = api.run(cfg, queue=False)
    interrupted(cfg, tmp_path, fail_rank=1, fail_at_step=5)
    saved = checkpoint.load_rank(checkpoint.step_dir(tmp_path / "checkpoints", 4), 0)["progress"]
    resumed = api.run(cfg, resume_from=tmp_path, queue=False)
    columns = ["step", "samples_seen", "loss", "accuracy"]
    pd.testing.assert_frame_equal(resumed.evals[columns], whole.evals[columns])
    assert resumed.evals.step.tolist() == [0, 2, 4, 6]
    assert resumed.evals.train_time_s.iloc[:3].tolist() == [row[2] for row in saved["evals"]]  # as the checkpoint has them
    steps, tl = resumed.steps, resumed.timeline
    last_end = float(steps[steps["rank"] == 0].end_s.max())
    evals = tl[(tl["rank"] == 0) & (tl.kind == "eval") & (tl.end_s <= last_end)]
    resumed_part = last_end - float((evals.end_s - evals.start_s).sum())  # rank 0's training time in this attempt
    assert resumed.evals.train_time_s.iloc[-1] == pytest.approx(saved["train_time_s"] + resumed_part, abs=1e-9)
    assert resumed.evals.train_time_s.is_monotonic_increasing


@pytest.mark.slow
def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    cfg = RunConfig(**{**SMALL, "steps": 6}, parallelism="data", world_size=2, checkpoint_every=2)
    whole = api.run(cfg, queue=False)
    interrupted(cfg, tmp_path, fail_rank=0, fail_at_step=5)
    root = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint.checkpoints(root)] == ["step-00000002", "step-00000004"]
    f = root / "step-00000004" / checkpoint.rank_file(1)
    f.write_bytes(f.read_bytes()[:-100])
    resumed = api.run(cfg, resume_from=tmp_path, queue=False)
    assert resumed.extra["resumed"]["1"]["step"] == 2
    assert_same_run(resumed, whole)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", [dict(), dict(zero_stage=1, optimizer="adam"), dict(zero_stage=2), dict(zero_stage=3)])
def test_a_checkpoint_of_four_ranks_resumes_on_two(sharding: dict, tmp_path: Path) -> None:
    cfg = RunConfig(**SMALL, parallelism="data", world_size=4, checkpoint_every=2, **sharding)
    whole = api.run(cfg, queue=False)
    interrupted(cfg, tmp_path, fail_rank=3, fail_at_step=3)
    resumed = api.run(cfg.replace(world_size=2), resume_from=tmp_path, queue=False)
    assert resumed.extra["resumed"]["0"]["from_world"] == 4
    assert resumed.losses[:2] == whole.losses[:2]  # restored from the checkpoint as they were
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)  # 2 ranks sum the gradients in another order
    for k, v in whole.final_state_dict.items():
        torch.testing.assert_close(resumed.final_state_dict[k], v, rtol=1e-5, atol=1e-6)


def test_simulated_failures_cost_least_near_the_young_interval() -> None:
    from dpkit.cost.checkpoint import simulate_waste, waste_fraction, young_interval

    c, m = 0.5, 60.0
    tau = young_interval(c, m)  # 7.7 s
    sweep = {k: simulate_waste(k * tau, c, m, work_s=300.0, trials=60) for k in (0.25, 0.5, 1.0, 2.0, 4.0)}
    assert min(sweep, key=sweep.__getitem__) in (0.5, 1.0, 2.0)
    assert sweep[1.0] < sweep[0.25] and sweep[1.0] < sweep[4.0]
    assert sweep[1.0] == pytest.approx(waste_fraction(tau, c, m), abs=0.05)  # the first-order formula, near enough
    assert simulate_waste(tau, c, 1e9, work_s=600.0, trials=3) == pytest.approx(c * (600.0 / tau - 1) / 600.0, abs=0.01)
    with pytest.raises(ValueError, match="interval_s"):
        simulate_waste(0.0, c, m, 600.0)


def test_dpkit_run_resume_refuses_a_folder_without_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dpkit.cli import main

    assert main(["run", "--parallelism", "data", "--world-size", "2", "--resume", str(tmp_path)]) == 2
    assert "resume_from=" in capsys.readouterr().err


@pytest.mark.slow
def test_dpkit_run_resume_finishes_an_interrupted_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dpkit.cli import main

    cfg = RunConfig(**SMALL, parallelism="data", world_size=2, checkpoint_every=2)
    interrupted(cfg, tmp_path, fail_rank=0, fail_at_step=3)
    args = ["run", "--parallelism", "data", "--world-size", "2", "--model", "mlp", "--hidden", "32", "--layers", "3"]
    args += ["--global-batch", "24", "--steps", "5", "--warmup", "1", "--threads-per-rank", "1", "--timeout-s", "120"]
    assert main([*args, "--checkpoint-every", "2", "--resume", str(tmp_path)]) == 0, capsys.readouterr().err
    from dpkit import RunResult

    resumed = RunResult.load(tmp_path)  # the result lands beside its checkpoints
    assert resumed.extra["resumed"]["0"]["step"] == 2
    assert_same_run(resumed, api.run(cfg, queue=False))

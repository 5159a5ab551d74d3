"""docs/cluster.md's commands: the Slurm script's torchrun command from SLURM_* values, and two "nodes" on localhost."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dpkit import RunConfig, RunResult, run
from dpkit.runtime.cluster import expand_hostlist, torchrun_command

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cluster.md"
SLURM = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "cn[07-08]", "SLURM_JOB_ID": "123"}
# the two commands docs/cluster.md gives for two machines, as run here with 127.0.0.1 as the first machine
TWO_NODE = (
    "torchrun --nnodes 2 --nproc-per-node 1 --node-rank {node} --rdzv-backend c10d --rdzv-endpoint {host}:{port} "
    "--rdzv-id {job} -m dpkit.worker --out {out} --parallelism data --world-size 2 --steps 3 --threads-per-rank 1"
)


def test_hostlist_expands_as_scontrol_does() -> None:
    assert expand_hostlist("cn[07-08]") == ["cn07", "cn08"]
    assert expand_hostlist("gpu[01-03,7],login") == ["gpu01", "gpu02", "gpu03", "gpu7", "login"]
    assert expand_hostlist("n[9-10]-ib") == ["n9-ib", "n10-ib"]
    assert expand_hostlist("node-a") == ["node-a"]


def test_torchrun_command_from_slurm_variables() -> None:
    cmd = torchrun_command({**SLURM, "DPKIT_NPROC_PER_NODE": "2"}, ["--world-size", "4"], out="r", python="py")
    assert cmd == [
        "py", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "cn07:29500", "--rdzv-id", "dpkit-123", "--max-restarts", "0",
        "-m", "dpkit.worker", "--out", "r", "--world-size", "4",
    ]  # fmt: skip
    gpus = torchrun_command({**SLURM, "SLURM_GPUS_ON_NODE": "4"}, [], out="r", port=6000, max_restarts=1)
    assert gpus[gpus.index("--nproc-per-node") + 1] == "4"  # one rank per GPU Slurm gave the node
    assert gpus[gpus.index("--rdzv-endpoint") + 1] == "cn07:6000" and gpus[gpus.index("--max-restarts") + 1] == "1"
    with pytest.raises(ValueError, match="SLURM_JOB_ID is not set"):
        torchrun_command({k: v for k, v in SLURM.items() if k != "SLURM_JOB_ID"}, [], out="r")


@pytest.mark.slow  # bash, then a Python that imports torch
def test_slurm_script_runs_one_task_per_node_and_builds_the_command(tmp_path: Path) -> None:
    """scripts/slurm_dpkit.sbatch under bash, with an `srun` that logs its arguments and runs the task once."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/bash\necho "srun $*" > "$SRUN_LOG"\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (fake / "srun").chmod(0o755)
    env = {**os.environ, **SLURM, "PATH": f"{fake}:{os.environ['PATH']}", "SRUN_LOG": str(tmp_path / "srun.log"),
           "DPKIT_PYTHON": sys.executable, "DPKIT_DRY_RUN": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    script = ROOT / "scripts" / "slurm_dpkit.sbatch"
    done = subprocess.run(["bash", str(script), "--parallelism", "data", "--world-size", "4"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "srun.log").read_text().startswith("srun --ntasks-per-node=1 ")
    expected = torchrun_command({**SLURM, "DPKIT_NPROC_PER_NODE": "2"}, ["--parallelism", "data", "--world-size", "4"],
                                out="results/slurm-123")  # fmt: skip
    assert shlex.split(done.stdout.strip()) == expected


def test_the_page_gives_these_commands_and_says_what_was_not_tested() -> None:
    text = DOC.read_text()
    for node in (0, 1):
        assert TWO_NODE.format(node=node, host="$FIRST", port=29500, job="lesson1", out="results/two-nodes") in text
    assert "scripts/slurm_dpkit.sbatch" in text and "GLOO_SOCKET_IFNAME" in text and "NCCL_SOCKET_IFNAME" in text
    assert "DPKIT_QUEUE_DIR" in text and "--max-restarts" in text
    assert "## What was not tested" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun agents and their workers, then the same run through run()
def test_two_nodes_on_localhost_train_as_run(tmp_path: Path) -> None:
    """The page's two-machine commands with both "machines" on 127.0.0.1: same losses as run()."""
    port, out = _free_port(), tmp_path / "two-nodes"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    procs = []
    try:
        for node in (0, 1):
            line = TWO_NODE.format(node=node, host="127.0.0.1", port=port, job=f"t{port}", out=out)
            procs.append(subprocess.Popen(torchrun + shlex.split(line)[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)}))  # fmt: skip
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # never leave an agent or its worker behind
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert sum("results: " in o for o, _ in outputs) == 1  # rank 0, on whichever agent the rendezvous made node 0
    result = RunResult.load(out)
    cfg = RunConfig(parallelism="data", world_size=2, steps=3, threads_per_rank=1)
    assert result.config == cfg and result.meta["start_method"] == "torchrun"
    assert result.losses == run(cfg).losses

"""`python -m dpkit.runtime.cluster`: start this node's share of a dpkit run under Slurm, through torchrun.

Slurm's srun starts one task per node (scripts/slurm_dpkit.sbatch); each task runs this module, which reads
the job from SLURM_* variables and execs torchrun with a c10d rendezvous on the job's first node:

    torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint FIRST_NODE:PORT
             --rdzv-id JOB_ID --max-restarts R -m dpkit.worker --out OUT <RunConfig options>

Every node computes the same endpoint from the same variables, so no address is passed around by hand.
`--print` (or DPKIT_DRY_RUN=1) shows the command instead of running it (what tests/test_cluster_docs.py checks).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence

DEFAULT_PORT = 29500  # torchrun's own default rendezvous port: open it between the nodes (docs/cluster.md)


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list as names, in order: "gpu[01-03,7],login" -> gpu01 gpu02 gpu03 gpu7 login.

    (What `scontrol show hostnames` prints; done here so a compute node needs no Slurm client tools.)"""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", hostlist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        if "[" in suffix:
            raise ValueError(f"SLURM_JOB_NODELIST {hostlist!r}: only one bracket group per name is supported")
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)  # node01-node12 keep their leading zeros
            hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
    return hosts


def _need(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ValueError(f"{name} is not set: run this inside a Slurm allocation (sbatch/srun), one task per node")
    return value


def torchrun_command(
    env: Mapping[str, str],
    dpkit_args: Sequence[str],
    *,
    out: str,
    nproc_per_node: int | None = None,
    port: int = DEFAULT_PORT,
    max_restarts: int = 0,
    python: str = sys.executable,
) -> list[str]:
    """The torchrun command this node runs, from Slurm's variables.

    nproc_per_node: processes (ranks) per node; default $DPKIT_NPROC_PER_NODE, else the GPUs Slurm gave this
    node ($SLURM_GPUS_ON_NODE: one rank per GPU), else 1 (on CPUs, give it: ranks x threads_per_rank <= cores)."""
    nodes = int(_need(env, "SLURM_JOB_NUM_NODES") if "SLURM_JOB_NUM_NODES" in env else _need(env, "SLURM_NNODES"))
    first = expand_hostlist(_need(env, "SLURM_JOB_NODELIST"))[0]
    job = _need(env, "SLURM_JOB_ID")
    if nproc_per_node is None:
        nproc_per_node = int(env.get("DPKIT_NPROC_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or 1)
    if nproc_per_node < 1 or nodes < 1:
        raise ValueError(f"nproc_per_node and the node count must be >= 1, not {nproc_per_node} and {nodes}")
    return [
        python, "-m", "torch.distributed.run",  # = torchrun, from the same environment as dpkit
        "--nnodes", str(nodes),
        "--nproc-per-node", str(nproc_per_node),
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"{first}:{port}",
        "--rdzv-id", f"dpkit-{job}",
        "--max-restarts", str(max_restarts),
        "-m", "dpkit.worker",
        "--out", out,
        *dpkit_args,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dpkit.runtime.cluster",
        description="run this node's torchrun for a dpkit job under Slurm (srun: one task per node)",
    )
    parser.add_argument("--out", required=True, help="result folder (on a file system every node sees)")
    parser.add_argument("--nproc-per-node", type=int, default=None, help="ranks per node (default: see torchrun_command)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"rendezvous port on the first node ({DEFAULT_PORT})")
    parser.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts of a failed worker group (0)")
    parser.add_argument("--print", action="store_true", help="print the command instead of running it (also: DPKIT_DRY_RUN=1)")
    args, dpkit_args = parser.parse_known_args(argv)
    dpkit_args = [a for a in dpkit_args if a != "--"]
    try:
        cmd = torchrun_command(
            os.environ, dpkit_args, out=args.out, nproc_per_node=args.nproc_per_node,
            port=args.port, max_restarts=args.max_restarts,
        )  # fmt: skip
    except ValueError as exc:
        print(f"dpkit: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.print or os.environ.get("DPKIT_DRY_RUN") == "1":
        print(shlex.join(cmd))
        return
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()

"""The cluster-scale model: step time, speedup, bytes, memory and time to accuracy up to 1,024 devices, predicted.

A laptop cannot run 64 devices, so this answers with the cost model (dpkit.cost): one `Cluster` (model size,
per-device batch, compute per sample, nodes of `devices_per_node` devices with a fast link inside a node and a
slower one between nodes, the sync method, buckets and overlap) priced at every device count from 1 to 1,024
(`scale`, one row each, every row kind='predicted'). Weak scaling: each device keeps its batch, so a step at n
devices trains n times the samples, and speedup = n * step(1) / step(n) (throughput against one device).

Sync methods on two-level nodes (devices i*r .. i*r+r-1 share node i, as the emulated nodes place ranks):
- ring: the flat ring over all n devices; each step waits for its slowest link (cost.model.flat_ring_time_on_nodes);
- tree: the binomial tree (dpkit/comm/tree.py); a round whose pairs cross nodes costs the inter-node link;
- hierarchical: ring inside each node, ring across nodes on 1/r of the data (cost.model.hierarchical_time);
- ps: k parameter servers on nodes of their own (every push and pull crosses between nodes), priced port by port
  with each message on the link between its two processes' nodes (ps_time_placed; on one link cost.model.ps_time);
- zero: ZeRO stage 1-3 (reduce-scatter and all-gather(s) of the flat ring, cost.model.ZERO_COLLECTIVES).

Buckets and overlap: the gradients are cut into equal buckets of at most bucket_mb (0: one flat buffer); with
overlap the all-reduces (ZeRO: the reduce-scatters) run behind the backward, bucket i ready at i/m of it, one at
a time, and only what ends past the backward is exposed. The PS pushes after the backward (dpkit's does).

Compute per sample is either measured on this machine (`measured_compute`, from a single-process profile, as the
cost model's step prediction uses) or an accelerator's assumed throughput (`assumed_compute`, ~6 FLOPs per
parameter per token for the forward and backward); its label travels with every row. Memory per device is the
model states (cost.memory.state_bytes_per_param) plus activations per sample if given; time to accuracy comes
from measured steps to a target at each global batch (analysis.time_to_accuracy.steps_to_target_at).

`predict_config` prices a RunConfig of this machine's emulated links the same way (a parameter server's servers
where the run puts them, with its real shards), so `validate` can set the model against measured emulated runs
(n <= 4): the error a figure quotes, over the rows whose links this machine honoured (row_honoured).

Deviation from issue 26's words ("within 25% median ... on 1GbE and on 2 nodes x 2 ranks"): on this 2-core machine
the 1GbE rows mostly measure the machine, not the links (four ranks share two cores; a rank still computing or
waiting for a core takes its message late; NVLink within a node is faster than any loopback), so they are run and
reported but count only where honoured. The check runs the same rows again on a custom link ten times slower
(SLOW_*, with 1GbE within a node), which this machine keeps up with (docs/cluster.md,
"Checking the cluster model on this machine", has the measurements).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .. import measure
from ..cost import memory
from ..cost.model import (
    PRESETS,
    ZERO_COLLECTIVES,
    Link,
    all_gather_terms,
    flat_ring_time_on_nodes,
    hierarchical_time,
    reduce_scatter_terms,
)
from ..cost.step_model import ComputeProfile, slowest_rank_slowdown
from ..strategies.registry import spec_for
from .time_to_accuracy import steps_to_target_at

SYNCS = ("ring", "tree", "hierarchical", "ps", "zero")
PLACEMENTS = ("own nodes", "after workers")  # where a parameter server's servers sit (ps_ranks)
MAX_DEVICES = 1024
FLOPS_PER_PARAM_TOKEN = 6.0  # training: 2 for the forward, 4 for the backward (Kaplan et al. 2020)
OPTIMIZER_BYTES_PER_PARAM = 32.0  # an Adam step reads and writes parameters, gradients and two moments


@dataclass(frozen=True)
class Accelerator:
    """A device whose speed is assumed, not measured here: sustained training FLOP/s, memory and its bandwidth."""

    name: str
    flops: float
    memory_bytes: float
    memory_bandwidth: float

    def label(self) -> str:
        return f"{self.name}, {self.flops / 1e12:.0f} TFLOP/s assumed"


#: round assumptions of sustained (not peak) throughput, for reasoning only
ACCELERATORS: dict[str, Accelerator] = {
    "H100-class": Accelerator("H100-class", 400e12, 80e9, 3.0e12),
    "A100-class": Accelerator("A100-class", 150e12, 80e9, 2.0e12),
    "consumer GPU": Accelerator("consumer GPU (RTX 4090-class)", 80e12, 24e9, 1.0e12),
}


@dataclass(frozen=True)
class Compute:
    """One device's compute: forward + backward seconds per sample, seconds of one optimizer step over the whole
    model, the backward's share of forward + backward (for the overlap), and where the numbers come from."""

    per_sample_s: float
    optimizer_s: float
    label: str
    backward_share: float = 2.0 / 3.0

    def __post_init__(self) -> None:
        if not (self.per_sample_s >= 0 and self.optimizer_s >= 0 and 0 <= self.backward_share <= 1):
            raise ValueError(
                f"Compute needs per_sample_s >= 0, optimizer_s >= 0, 0 <= backward_share <= 1; got {self.per_sample_s}, "
                f"{self.optimizer_s}, {self.backward_share}"
            )


def measured_compute(profile: ComputeProfile, slowdown: float = 1.0) -> Compute:
    """Compute as a single-process run on this machine measured it (dpkit.analysis.predict.measure_compute),
    `slowdown` times slower (ranks sharing this machine's cores: cost.step_model.slowest_rank_slowdown)."""
    fb = profile.forward_s + profile.backward_s
    threads = f"{profile.threads} thread{'s' if profile.threads != 1 else ''}"
    return Compute(
        slowdown * fb / profile.batch,
        slowdown * profile.optimizer_s,
        f"measured on this machine ({threads}, batch {profile.batch})",
        profile.backward_s / fb if fb else 2.0 / 3.0,
    )


def assumed_compute(accelerator: Accelerator | str, params: float, tokens_per_sample: int = 1) -> Compute:
    """Compute on an accelerator of assumed throughput: 6 P T FLOPs per sample (P parameters, T tokens), and an
    optimizer step that streams OPTIMIZER_BYTES_PER_PARAM per parameter through its memory."""
    acc = ACCELERATORS[accelerator] if isinstance(accelerator, str) else accelerator
    return Compute(
        FLOPS_PER_PARAM_TOKEN * params * tokens_per_sample / acc.flops,
        OPTIMIZER_BYTES_PER_PARAM * params / acc.memory_bandwidth,
        acc.label(),
    )


def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"Cluster.{name}={value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class Cluster:
    """What the panel sets: the model, the batch, the compute, the topology, the sync method and its knobs."""

    params: float
    per_device_batch: int
    compute: Compute
    devices_per_node: int = 8
    intra: Link = PRESETS["NVLink"]
    inter: Link = PRESETS["100GbE"]
    method: str = "ring"  # the sync method: one of METHODS
    servers: int = 1  # sync='ps': parameter servers
    servers_placement: str = "own nodes"  # or "after workers" (ranks n.., as dpkit's runs place them): ps_ranks
    zero_stage: int = 1  # sync='zero': 1, 2 or 3
    bucket_mb: float = 25.0  # 0: one flat buffer
    overlap: bool = True
    grad_bytes_per_param: int = 4  # fp32 gradients on the wire (2: bf16)
    precision: str = "fp32 adam"  # memory: cost.memory.STATE_BYTES
    device_memory_bytes: float = 80e9
    activation_bytes_per_sample: float = 0.0

    def __post_init__(self) -> None:
        if not self.params > 0:
            raise _bad("params", self.params, "a number of parameters > 0")
        if self.per_device_batch < 1:
            raise _bad("per_device_batch", self.per_device_batch, "an integer >= 1")
        if self.devices_per_node < 1:
            raise _bad("devices_per_node", self.devices_per_node, "an integer >= 1")
        if self.method not in SYNCS:
            raise _bad("method", self.method, f"choose one of {', '.join(map(repr, SYNCS))}")
        if self.servers < 1:
            raise _bad("servers", self.servers, "an integer >= 1")
        if self.servers_placement not in PLACEMENTS:
            raise _bad("servers_placement", self.servers_placement, f"choose one of {', '.join(map(repr, PLACEMENTS))}")
        if self.zero_stage not in (1, 2, 3):
            raise _bad("zero_stage", self.zero_stage, "1, 2 or 3")
        if not self.bucket_mb >= 0:
            raise _bad("bucket_mb", self.bucket_mb, "MiB >= 0 (0: one flat buffer)")
        if self.grad_bytes_per_param not in (2, 4):
            raise _bad("grad_bytes_per_param", self.grad_bytes_per_param, "2 (bf16) or 4 (fp32)")
        if self.precision not in memory.STATE_BYTES:
            raise _bad("precision", self.precision, f"choose one of {sorted(memory.STATE_BYTES)}")

    @property
    def grad_bytes(self) -> float:
        return self.params * self.grad_bytes_per_param

    def describe(self) -> str:
        knob = {"ps": f" k={self.servers}", "zero": f" stage {self.zero_stage}"}.get(self.method, "")
        return (
            f"{human_count(self.params)} parameters, {self.per_device_batch} samples per device, {self.method}{knob}, "
            f"nodes of {self.devices_per_node} ({self.intra.name} within, {self.inter.name} between), "
            f"compute {self.compute.label}"
        )


def human_count(x: float) -> str:
    """1.07M, 7B, 536k: a parameter count as people say it."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


# ---- topology ------------------------------------------------------------------------------------------
def device_counts(devices_per_node: int, max_devices: int = MAX_DEVICES) -> list[int]:
    """1, 2, 4 ... inside one node, then whole nodes: r, 2r, 4r ... up to max_devices."""
    r = devices_per_node
    inside = [2**i for i in range(20) if 2**i < min(r, max_devices + 1)]
    nodes = [r * 2**i for i in range(20) if r * 2**i <= max_devices]
    return inside + nodes


def nodes_of(n: int, devices_per_node: int) -> tuple[int, int]:
    """(nodes, devices in each) for n devices: one partial node below r, else n / r whole nodes."""
    if n <= devices_per_node:
        return 1, n
    if n % devices_per_node:
        raise ValueError(f"{n} devices do not fill nodes of {devices_per_node}: choose a multiple of {devices_per_node}")
    return n // devices_per_node, devices_per_node


# ---- what one collective costs on two levels --------------------------------------------------------------
def tree_time_on_nodes(size: float, nodes: int, per_node: int, intra: Link, inter: Link) -> float:
    """Binomial tree over N r devices: ceil(log2 n) rounds up and as many down, whole S each; a round costs
    the inter-node link's alpha + o + S/B if any of its pairs (i, i + m) crosses nodes, else the intra one's."""
    n = nodes * per_node
    total, m = 0.0, 1
    while m < n:
        crosses = any(i // per_node != (i + m) // per_node for i in range(0, n - m, 2 * m))
        link = inter if crosses else intra
        total += 2 * (link.alpha + link.overhead + size / link.bandwidth) + size * link.gamma
        m <<= 1
    return total


def tree_root_children_across(nodes: int, per_node: int) -> tuple[int, int]:
    """(children of the root, of them on other nodes): the root sends S to each in the broadcast."""
    n, m, children, across = nodes * per_node, 1, 0, 0
    while m < n:
        children += 1
        across += m >= per_node
        m <<= 1
    return children, across


def allreduce_on_nodes(sync: str, size: float, nodes: int, per_node: int, intra: Link, inter: Link) -> float:
    """Seconds of one all-reduce of `size` bytes over N nodes of r devices with ring, tree or hierarchical."""
    if nodes * per_node <= 1:
        return 0.0
    if sync == "ring":
        return flat_ring_time_on_nodes(size, nodes, per_node, intra, inter)
    if sync == "tree":
        return tree_time_on_nodes(size, nodes, per_node, intra, inter)
    if sync == "hierarchical":
        return hierarchical_time(size, nodes, per_node, intra, inter)
    raise _bad("sync", sync, "ring, tree or hierarchical for an all-reduce")


def ps_time_placed(
    shard_bytes: Sequence[float], workers: Sequence[int], servers: Sequence[int], per_node: int, intra: Link, inter: Link
) -> float:
    """Seconds of one synchronous push and pull with the processes where they are: worker w sends shard j
    (shard_bytes[j]) to servers[j], which answers with it; ranks i*r .. i*r+r-1 share node i, and a message takes
    the intra-node link inside a node, the inter-node link between nodes (as the emulated nodes pace them).
    Each phase lasts its latency, the per-message overheads at the busiest receiving port, and the bytes through
    the busiest port (a worker's outgoing and a server's incoming in the push, the reverse in the pull), each
    message at its own link's bandwidth. All on one link this is cost.model.ps_time exactly."""
    same = (np.asarray(workers)[:, None] // per_node) == (np.asarray(servers)[None, :] // per_node)  # [worker, server]

    def pick(a: float, b: float) -> np.ndarray:  # per [worker, server] pair: the intra value inside a node, else the inter one
        return np.where(same, a, b).astype(float)

    alpha, o = pick(intra.alpha, inter.alpha), pick(intra.overhead, inter.overhead)
    seconds = np.asarray(shard_bytes, dtype=float)[None, :] / pick(intra.bandwidth, inter.bandwidth)  # one message
    latency = float(alpha.max())
    # the push: each worker's outgoing port sends its k shards, each server's incoming port takes n of them
    push = latency + float(o.sum(axis=0).max()) + max(float(seconds.sum(axis=1).max()), float(seconds.sum(axis=0).max()))
    # the pull: each server's outgoing port answers n workers, each worker's incoming port takes k shards
    pull = latency + float(o.sum(axis=1).max()) + max(float(seconds.sum(axis=0).max()), float(seconds.sum(axis=1).max()))
    reduce = (len(workers) - 1) * max(shard_bytes) * inter.gamma  # a server adds n - 1 shards (gamma 0 on presets)
    return push + pull + reduce


def ps_inter_node_bytes(shard_bytes: Sequence[float], workers: Sequence[int], servers: Sequence[int], per_node: int) -> float:
    """Bytes the busiest process takes in from other nodes in one push and pull: a server its shard from each
    worker on another node, a worker each shard whose server is on another node."""
    across = (np.asarray(workers)[:, None] // per_node) != (np.asarray(servers)[None, :] // per_node)
    bytes_ = across * np.asarray(shard_bytes, dtype=float)[None, :]
    return float(max(bytes_.sum(axis=0).max(), bytes_.sum(axis=1).max()))


def ps_ranks(n: int, k: int, per_node: int, placement: str) -> tuple[list[int], list[int]]:
    """(worker ranks, server ranks): 'own nodes' puts the servers on nodes of their own after the workers'
    nodes (as a cluster would); 'after workers' at ranks n .. n+k-1, as dpkit's runs start them (so on emulated
    nodes of r ranks they share a node with workers unless r divides n)."""
    first = n if placement == "after workers" else math.ceil(n / per_node) * per_node
    return list(range(n)), list(range(first, first + k))


def shard_on_nodes(kind: str, size: float, nodes: int, per_node: int, intra: Link, inter: Link) -> float:
    """One ring reduce-scatter or all-gather over the flat ring: paced by its slowest link."""
    n = nodes * per_node
    terms = reduce_scatter_terms(size, n) if kind == "reduce-scatter" else all_gather_terms(size, n)
    return (inter if nodes > 1 else intra).time(terms)


def even_buckets(size: float, bucket_mb: float) -> tuple[int, float]:
    """(m, bytes each): the gradients cut into m equal buckets of at most bucket_mb MiB (0: one flat buffer)."""
    if bucket_mb <= 0 or size <= 0:
        return 1, size
    m = max(1, math.ceil(size / (bucket_mb * 2**20)))
    return m, size / m


def overlapped_exposed(m: int, each_s: float, t_backward: float) -> float:
    """Exposed seconds of m equal collectives of each_s, the i-th ready at i/m of the backward, one at a time:
    the last ends at max(t_b/m + m c, t_b + c) (the recursion end_i = max(ready_i, end_{i-1}) + c, solved)."""
    if m == 0:
        return 0.0
    end = max(t_backward / m + m * each_s, t_backward + each_s)
    return max(0.0, end - t_backward)


# ---- one device count --------------------------------------------------------------------------------------
def step_at(c: Cluster, n: int, ps_shards: Sequence[float] | None = None) -> dict[str, float]:
    """Predicted seconds of one step at n devices and its parts, bytes per device and memory per device.
    A parameter server's k servers sit on nodes of their own after the workers' nodes (every push and pull
    crosses between nodes), each with S/k, or `ps_shards` (bytes of each server's shard, as a run lays them)."""
    nodes, r = nodes_of(n, c.devices_per_node)
    size, b = c.grad_bytes, c.per_device_batch
    fb = c.compute.per_sample_s * b
    t_backward, t_forward = fb * c.compute.backward_share, fb * (1 - c.compute.backward_share)
    opt, extra = c.compute.optimizer_s, 0.0
    m, each = even_buckets(size, c.bucket_mb)
    server_bytes = float("nan")
    state = memory.state_bytes_per_param(0, n, c.precision)
    across = 0.0
    if n == 1:
        comm = exposed = sent = 0.0
    elif c.method == "ps":
        shards = list(ps_shards) if ps_shards is not None else [size / c.servers] * c.servers
        if len(shards) != c.servers:
            raise ValueError(f"ps_shards has {len(shards)} shards for Cluster.servers={c.servers}: one per server")
        workers, servers = ps_ranks(n, c.servers, c.devices_per_node, c.servers_placement)
        comm = exposed = ps_time_placed(shards, workers, servers, c.devices_per_node, c.intra, c.inter)
        opt, extra = 0.0, opt / c.servers  # the servers step, each on its shard, after the pushes
        sent = size
        across = ps_inter_node_bytes(shards, workers, servers, c.devices_per_node)
        server_bytes = n * max(shards)
        p, g, _ = memory.STATE_BYTES[c.precision]
        state = p + g  # a worker keeps no optimizer state
    elif c.method == "zero":
        state = memory.state_bytes_per_param(c.zero_stage, n, c.precision)
        opt = opt / n
        rs = m * shard_on_nodes("reduce-scatter", each, nodes, r, c.intra, c.inter)
        gathers = ZERO_COLLECTIVES[c.zero_stage].count("all-gather")
        ag = m * shard_on_nodes("all-gather", each, nodes, r, c.intra, c.inter)
        comm = rs + gathers * ag
        if not c.overlap:
            exposed = comm
        elif c.zero_stage < 3:  # reduce-scatters behind the backward, the all-gather after the optimizer
            exposed = overlapped_exposed(m, rs / m, t_backward) + ag
        else:  # each pass waits for its first gather, the rest behind that pass's compute (as the ZeRO spec)
            a1 = ag / m
            exposed = min(comm, 2 * a1 + max(0.0, ag - a1 - t_forward) + max(0.0, ag - a1 + rs - t_backward))
        sent = (len(ZERO_COLLECTIVES[c.zero_stage])) * (n - 1) / n * size
        across = sent if nodes > 1 else 0.0
    else:
        one = allreduce_on_nodes(c.method, each, nodes, r, c.intra, c.inter)
        comm = m * one
        exposed = overlapped_exposed(m, one, t_backward) if c.overlap else comm
        if c.method == "ring":
            sent = 2 * (n - 1) / n * size
            across = sent if nodes > 1 else 0.0
        elif c.method == "hierarchical":
            across = 2 * (nodes - 1) / nodes * size / r
            sent = 2 * (r - 1) / r * size + across
        else:
            children, inter_children = tree_root_children_across(nodes, r)
            sent, across = children * size, inter_children * size
    compute = fb + opt
    return {
        "compute_s": compute,
        "comm_s": comm,
        "exposed_comm_s": exposed,
        "server_s": extra,
        "step_time_s": compute + exposed + extra,
        "bytes_per_device": sent,
        "inter_node_bytes_per_device": across,
        "server_bytes": server_bytes,
        "memory_per_device_bytes": state * c.params + c.activation_bytes_per_sample * b,
        "nodes": nodes,
        "devices_per_node": r,
    }


def scale(
    c: Cluster,
    devices: Sequence[int] | None = None,
    convergence: pd.DataFrame | None = None,
    errors: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per device count (default device_counts(c.devices_per_node), 1 .. 1,024): the predicted step and
    its parts, speedup and efficiency against one device, samples/s, bytes per device (and across nodes), memory
    per device and whether it fits, and with `convergence` (steps_to_target per global_batch, measured) the
    predicted time to accuracy. `errors`: the model's median |relative error| per sync where it was measured
    against emulated runs (`validate`), quoted on the rows with n <= VALIDATED_UP_TO."""
    ns = list(devices) if devices is not None else device_counts(c.devices_per_node)
    if not ns or min(ns) < 1 or max(ns) > MAX_DEVICES:
        raise ValueError(f"devices={ns!r} is not allowed: device counts from 1 to {MAX_DEVICES}")
    one = step_at(c, 1)["step_time_s"]
    rows = []
    for n in ns:
        row: dict = {"devices": n, **step_at(c, n)}
        row["global_batch"] = n * c.per_device_batch
        row["speedup"] = n * one / row["step_time_s"] if row["step_time_s"] > 0 else float("nan")
        row["efficiency"] = row["speedup"] / n
        row["samples_per_s"] = row["global_batch"] / row["step_time_s"] if row["step_time_s"] > 0 else float("nan")
        row["fits"] = row["memory_per_device_bytes"] <= c.device_memory_bytes
        if convergence is not None:
            steps, source = steps_to_target_at(convergence, row["global_batch"])
            row.update(steps_to_target=steps, steps_source=source, time_to_target_s=steps * row["step_time_s"])
        err = (errors or {}).get(c.method)
        row["measured_error"] = err if err is not None and n <= VALIDATED_UP_TO else float("nan")
        row["sync"] = c.method
        row["compute_source"] = c.compute.label
        row["kind"] = "predicted"
        rows.append(row)
    return pd.DataFrame(rows)


# ---- against emulated runs on this machine -------------------------------------------------------------------
VALIDATED_UP_TO = 4  # the largest world size the emulated runs on this machine reach


def sync_of(cfg) -> str:  # noqa: ANN001  (a RunConfig; imported lazily: the api layer below is not needed to price)
    """The Cluster sync method a RunConfig runs: ps, zero, or its all-reduce algorithm (ring, tree, hierarchical)."""
    if spec_for(cfg).name == "parameter-server":
        return "ps"
    if cfg.zero_stage:
        return "zero"
    if cfg.allreduce_algo in ("ring", "tree", "hierarchical"):
        return str(cfg.allreduce_algo)
    raise ValueError(
        f"RunConfig.allreduce_algo={cfg.allreduce_algo!r} is not priced on nodes: use ring, tree or hierarchical (or sync='ps')"
    )


def cluster_of(cfg, compute: Compute) -> Cluster:  # noqa: ANN001
    """The Cluster a data-parallel RunConfig on emulated links is (its model's parameters, its links and nodes).
    The runs' flat grad_sync is one buffer without overlap; bucketed is buckets of bucket_mb with it."""
    from ..comm.emulation import Nodes, network_for
    from .memory_compare import parameters

    network = network_for(cfg)
    if network is None:
        raise ValueError("RunConfig.link='none' is not allowed here: the prediction needs an emulated link")
    if isinstance(network, Nodes):
        if network.inter is None or network.intra is None:
            raise ValueError("RunConfig.intra_node_link='none' is not allowed here: both levels need a link")
        r, intra, inter = network.ranks_per_node, network.intra, network.inter
    else:
        r, intra, inter = 1, network, network
    flat = cfg.grad_sync == "flat"
    return Cluster(
        params=parameters(cfg),
        per_device_batch=cfg.global_batch // cfg.world_size,
        compute=compute,
        devices_per_node=r,
        intra=intra,
        inter=inter,
        method=sync_of(cfg),
        servers=cfg.num_servers,
        zero_stage=max(1, cfg.zero_stage),
        bucket_mb=0.0 if flat else cfg.bucket_mb,
        overlap=not flat,
    )


def ps_shard_bytes(cfg) -> list[float]:  # noqa: ANN001
    """Bytes of each server's shard as a parameter-server run lays them out (whole tensors, largest first to the
    lightest shard: strategies/parameter_server/layout.assign_shards), 4 bytes per fp32 value."""
    from ..strategies.parameter_server.layout import assign_shards

    sizes = memory.params_of(cfg)[1]
    return [4.0 * sum(sizes[i] for i in shard) for shard in assign_shards(sizes, cfg.num_servers)]


def predict_config(cfg, profile: ComputeProfile, cores: int | None = None) -> dict[str, float]:  # noqa: ANN001
    """The cluster model's step for a run of this machine: compute from the single-process profile at the rank's
    batch, slowed as the ranks share the `cores` (default: this machine's; the slowest rank sets a synchronous
    step's pace: cost.step_model.slowest_rank_slowdown); a parameter server's servers where the run puts them
    (ranks n .., on the emulated nodes), with its real shards."""
    compute = measured_compute(profile, slowest_rank_slowdown(cfg.world_size, profile.threads, cores))
    c = cluster_of(cfg, compute)
    n = cfg.world_size
    if c.method != "ps" and n > c.devices_per_node and n % c.devices_per_node:
        raise ValueError(f"RunConfig.world_size={n} does not fill nodes of {c.devices_per_node}")
    if c.method == "ps":
        return step_at(replace(c, servers_placement="after workers"), n, ps_shard_bytes(cfg))
    return step_at(c, n)


#: A link this 2-core machine can honour, for the validation's second set of rows: 100 Mb/s Ethernet-class,
#: ten times slower than the 1GbE preset (a custom link: RunConfig.link="custom", stated on every row and figure).
#: Why not 1GbE alone: docs/cluster.md, "Checking the model on this machine".
SLOW_LATENCY_S, SLOW_BANDWIDTH_BPS = 100e-6, 12.5e6
SLOW_INTRA = "1GbE"  # within a node on the slow two-level rows: 10x the link between nodes, as NVLink : 100GbE
LINK_SETS = ("1GbE", "slow")  # the link, and one this machine honours


def validation_configs(quick: bool = False, links: Sequence[str] = LINK_SETS) -> list:
    """Small, communication-dominated runs of one model (an MLP of 1.07M parameters: 4.28 MB of gradients), 4
    samples per rank, flat sync (one buffer, no overlap), 1 thread per rank: ring, tree, hierarchical (= the ring on
    one link) and PS (k=1) at n = 2, 4 on one link; on 2 nodes x 2 ranks ring, tree and hierarchical, and a PS of 2
    workers + 2 servers on a node of their own. Per link set:

    - "1GbE" (the issue's rows): emulated 1GbE, NVLink within a node. This machine does not keep up with these
      links (docs/cluster.md), so these rows are measured and reported, and withheld where not honoured.
    - "slow" (the rows this machine honours): a custom link ten times slower than 1GbE (SLOW_LATENCY_S,
      SLOW_BANDWIDTH_BPS), 1GbE within a node (SLOW_INTRA).
    quick: n = 2 ring and PS, and the 2 x 2 ring and hierarchical, per link set."""
    from ..config import RunConfig

    bad = [name for name in links if name not in LINK_SETS]
    if bad or not links:
        raise ValueError(f"links={list(links)!r} is not allowed: choose from {list(LINK_SETS)}")
    out = []
    model = RunConfig(
        model="mlp", hidden=256, layers=2, global_batch=8, steps=5 if quick else 6, warmup=2, threads_per_rank=1,
        parallelism="data", grad_sync="flat", timeout_s=180,
    )  # fmt: skip
    for name in links:
        if name == "1GbE":
            base = model.replace(link="1GbE", intra_node_link="NVLink")
        else:
            base = model.replace(
                link="custom", link_latency_s=SLOW_LATENCY_S, link_bandwidth_Bps=SLOW_BANDWIDTH_BPS, intra_node_link=SLOW_INTRA
            )
        algos = ("ring",) if quick else ("ring", "tree", "hierarchical")
        for n in (2,) if quick else (2, 4):
            out += [base.replace(world_size=n, allreduce_algo=algo) for algo in algos]
            out.append(base.replace(world_size=n, sync="ps", num_servers=1))
        on_nodes = ("ring", "hierarchical") if quick else ("ring", "tree", "hierarchical")
        out += [base.replace(world_size=4, allreduce_algo=algo, ranks_per_node=2) for algo in on_nodes]
        if not quick:
            out.append(base.replace(world_size=2, sync="ps", num_servers=2, ranks_per_node=2))
    return out


def link_label(cfg) -> str:  # noqa: ANN001
    """The link a row ran on, as a figure says it: a preset's name, or the custom link's numbers."""
    if cfg.link == "custom":
        return f"custom link ({cfg.link_latency_s * 1e6:.3g} us, {cfg.link_bandwidth_Bps / 1e6:.3g} MB/s)"
    return str(cfg.link)


def topology_label(cfg) -> str:  # noqa: ANN001
    if cfg.ranks_per_node > 1:
        nodes = cfg.num_processes // cfg.ranks_per_node
        return f"{nodes} nodes x {cfg.ranks_per_node} ({cfg.intra_node_link} within, {link_label(cfg)} between)"
    return f"{cfg.num_processes} processes on {link_label(cfg)}"


def inter_node_bytes_per_step(result) -> float:  # noqa: ANN001  (a RunResult)
    """Bytes the busiest process took in from other nodes per timed step (emulated nodes count them from the
    first timed step on; NaN on one link)."""
    per_process = result.meta.get("link", {}).get("inter_node_bytes_in")
    cfg = result.config
    return max(per_process) / (cfg.steps - cfg.warmup) if per_process else float("nan")


BUSY_PER_CORE = 1.5  # load average per core (when the runs began) above which this machine, not the links, sets the step
LATE_TOLERANCE = measure.LATE_TOLERANCE  # late messages may add at most this share of a row's step (late_share_bound) ...
LATE_SHARE = 0.1  # ... or, in records without their lateness, at most this share of its paced messages may be late


def validate(configs: Sequence, repeats: int = 2, cores: int | None = None) -> pd.DataFrame:
    """Run every config `repeats` times (the configs taking turns), measure each model's compute once per round
    (one process alone), and set the measured median step beside predict_config's (compute slowed as the ranks
    share `cores`, default this machine's): one row per config with the relative error, compute and comm
    (predicted and measured), the bytes a rank sent, the messages of the timed steps the machine could not pace
    in time (link_not_honoured of paced_messages), the load average around the runs, and `honoured`: whether
    the row measures its links (row_honoured)."""
    from ..analysis.predict import _single, median_profile, profile_batch, profile_once
    from ..api import run

    if repeats < 1:
        raise ValueError(f"repeats={repeats} is not allowed: at least 1 run per config")
    cores = cores or os.cpu_count() or 1
    runs: list[list] = [[] for _ in configs]
    late: list[int] = [0 for _ in configs]
    paced: list[int] = [0 for _ in configs]
    worst: list[float] = [0.0 for _ in configs]
    late_s: list[float] = [0.0 for _ in configs]
    intra_late: list[int] = [0 for _ in configs]
    singles = {id(cfg): _single(cfg, profile_batch(cfg), 1, 8) for cfg in configs}
    profiles: dict[str, list[ComputeProfile]] = {s.run_id(): [] for s in singles.values()}
    loads = [os.getloadavg()[0]]
    for _ in range(repeats):
        for i, cfg in enumerate(configs):
            result = run(cfg)
            runs[i].append(result)
            not_honoured = result.meta.get("link_not_honoured") or {}
            late[i] += int(not_honoured.get("messages", 0))
            worst[i] = max(worst[i], float(not_honoured.get("worst_late_s", 0.0)))
            info = result.meta.get("link", {})
            paced[i] += int(info.get("messages", 0)) + int(info.get("collectives", 0))
            late_s[i] += float(info.get("late_s", 0.0))
            intra_late[i] += int(info.get("intra_node_late", 0))
        for key, single in {s.run_id(): s for s in singles.values()}.items():
            profiles[key].append(profile_once(single))
        loads.append(os.getloadavg()[0])
    rows = []
    for cfg, mine, bad, of, worst_s, late_sum, inside in zip(configs, runs, late, paced, worst, late_s, intra_late, strict=True):
        profile = median_profile(profiles[singles[id(cfg)].run_id()])
        pred = predict_config(cfg, profile, cores)
        median = _summary_median(mine)
        measured = median("step_time_s")
        key = "bytes_sent_per_step" if sync_of(cfg) == "ps" else "bytes_sent_per_step_busiest"  # a worker; the tree's root
        rows.append(
            {
                "sync": sync_of(cfg),
                "link": link_label(cfg),
                "topology": topology_label(cfg),
                "world_size": cfg.world_size,
                "processes": cfg.num_processes,
                "servers": cfg.num_servers if sync_of(cfg) == "ps" else 0,
                "parameters": cluster_of(cfg, measured_compute(profile)).params,
                "predicted_step_time_s": pred["step_time_s"],
                "measured_step_time_s": measured,
                "rel_error": (pred["step_time_s"] - measured) / measured,
                "predicted_compute_s": pred["compute_s"] + pred["server_s"],
                "measured_compute_s": median("compute_s"),
                "predicted_comm_s": pred["comm_s"],
                "measured_comm_s": median("comm_s"),
                "predicted_bytes_per_rank": pred["bytes_per_device"],
                "measured_bytes_per_rank": median(key),
                "predicted_inter_node_bytes_per_rank": pred["inter_node_bytes_per_device"],
                "measured_inter_node_bytes_per_rank": statistics.median(inter_node_bytes_per_step(r) for r in mine),
                "runs": len(mine),
                "link_not_honoured": bad,
                "paced_messages": of,
                "worst_late_s": worst_s,
                "late_s": late_sum,
                "intra_node_late": inside,
                "timed_steps": len(mine) * (cfg.steps - cfg.warmup),
                "load_1min_start": loads[0],
                "load_1min_end": loads[-1],
                "cpu_count": cores,
                "compute_slowdown": slowest_rank_slowdown(cfg.world_size, 1, cores),
                "run_id": cfg.run_id(),
            }
        )
    table = pd.DataFrame(rows)
    table["honoured"] = row_honoured(table, cores)
    return table


def _summary_median(results: list):  # noqa: ANN202
    """summary[key]'s median over a config's runs (each already a median over its timed steps)."""
    return lambda key: statistics.median(float(r.summary[key]) for r in results)


def late_share_bound(table: pd.DataFrame) -> pd.Series:
    """Per row of a validate() table: at most how much of its measured step its late messages can have added: all
    their lateness (every process's, added up: late_s) per timed step, over the step. Each message is late by how
    long after its emulated arrival the rank got it (the real transfer, or the rank itself, came later), and
    adding every process's lateness over-counts what the slowest rank's step took, so this is a bound. Records
    without late_s: (late messages per timed step) x the worst lateness."""
    if "late_s" in table:
        per_step = table.late_s / table.timed_steps.clip(lower=1)
    else:
        per_step = np.ceil(table.link_not_honoured / table.timed_steps.clip(lower=1)) * table.worst_late_s
    return per_step / table.measured_step_time_s


def row_honoured(table: pd.DataFrame, cores: int | None = None) -> pd.Series:
    """Per row of a validate() table: its times measure its emulated links, not this machine: the load average
    when the runs began was at most BUSY_PER_CORE per core (the runs' own processes raise it while they run, so
    the end value is recorded, not judged), and its late messages can have added at most LATE_TOLERANCE of its
    step (late_share_bound; records without lateness: at most LATE_SHARE of its paced messages late)."""
    cores = cores or os.cpu_count() or 1
    if "timed_steps" in table and ("late_s" in table or "worst_late_s" in table):
        on_time = late_share_bound(table) <= LATE_TOLERANCE
    else:
        on_time = table.link_not_honoured <= LATE_SHARE * table.paced_messages.clip(lower=1)
    return (table.load_1min_start <= BUSY_PER_CORE * cores) & on_time


def links_honoured(table: pd.DataFrame, cores: int | None = None) -> tuple[bool, str]:
    """Whether every row of a validate() table measures its emulated links (row_honoured), and the reason."""
    cores = cores or os.cpu_count() or 1
    load = float(table.load_1min_start.max())
    late, of = int(table.link_not_honoured.sum()), int(table.paced_messages.sum())
    if load > BUSY_PER_CORE * cores:
        return False, f"load average {load:.1f} on {cores} cores when the runs began (above {BUSY_PER_CORE} per core)"
    ok = row_honoured(table, cores)
    if not ok.all():
        worst = table[~ok]
        rows = ", ".join(
            f"{r.sync} on {r.topology} ({r.link_not_honoured} of {r.paced_messages} late, up to {bound:.0%} of the step)"
            for r, bound in zip(worst.itertuples(), late_share_bound(worst), strict=True)
        )
        return False, f"{len(worst)} of {len(table)} rows not honoured (late messages): {rows}"
    return (
        True,
        f"links honoured: load average {load:.1f} on {cores} cores, {late} of {of} messages late, each row's under {LATE_TOLERANCE:.0%} of its step",
    )


def two_node_configs(steps: int = 6, links: Sequence[str] = ("1GbE",)) -> list:
    """The lesson's pairs: 2 nodes x 2 ranks, the flat ring and the hierarchical one, per link set: NVLink within
    and 1 GbE between (the issue's), and 1GbE within and the slow custom link between (ten times slower at both
    levels: what this machine honours)."""
    pairs = [c for c in validation_configs(links=links) if c.ranks_per_node == 2 and sync_of(c) in ("ring", "hierarchical")]
    return [c.replace(steps=steps) for c in pairs]


def error_by_sync(table: pd.DataFrame, honoured_only: bool = True) -> dict[str, float]:
    """Median |relative error| of the step per sync method in a validate() table (the error the panel quotes),
    over the rows that measured their links (row_honoured; all rows with honoured_only=False)."""
    rows = table[row_honoured(table, int(table.cpu_count.iloc[0]) if "cpu_count" in table else None)] if honoured_only else table
    return {str(k): float(v) for k, v in rows.assign(a=rows.rel_error.abs()).groupby("sync").a.median().items()}

"""The alpha-beta cost model of every communication pattern in dpkit, and a step-time model on top.

A message of S bytes costs alpha + S/B (latency alpha, bandwidth B). Reductions also cost gamma
seconds per byte added (the alpha-beta-gamma form of Thakur, Rabenseifner & Gropp, 2005): on one
host the "network" is a memory copy, so adding is as expensive as moving and the fit needs it;
with gamma = 0 every formula is exactly the one in docs/formulas.md. Each pattern is written as its
*terms*: (messages on the critical path, bytes over the busiest link, bytes reduced), so that
time = messages*alpha + bytes/B + reduced*gamma and calibration is a linear least-squares fit.

A link may also have a per-message overhead o (Link.overhead): the time the *receiving* port spends
on each message it takes in (interrupt, system call, protocol processing), so one message costs
alpha + o + S/B. Latencies of messages in flight at once overlap; overheads at one port do not: a
parameter server taking n pushes at once spends n*o (ps_time), where its alpha counts once.

Two views, both in this file:
- "cluster" (the docs/formulas.md formulas, `allreduce_time`): every rank has its own independent link, so
  a pattern costs what crosses its busiest link. The what-if at 1,024 workers uses this view.
- "single host" (`host_terms`, `HostModel`): all ranks share one machine's cores and memory, as in
  `dpkit bench` on a laptop. Measured there, the cluster-view terms do not explain the algorithms' relative
  times (the whole-tensor ring is slower than reduce-broadcast though it moves fewer bytes per link,
  and with more processes than cores every hop may wait for a context switch). The single-host terms
  count what one process really does on its critical path: rounds of messages it waits for, bytes it
  copies through loopback TCP (sent *plus* received: both are a CPU copy on this host), bytes it adds,
  and bytes of fresh memory it copies outside the transfers (mu per byte). The parameters are fitted
  per world size (`fit_host`), because the per-message latency depends on processes per core.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..buffers import bucket_bytes

Terms = tuple[float, float, float]  # (messages, bytes moved, bytes reduced) on the critical path
HostTerms = tuple[float, float, float, float]  # single host: (rounds, bytes copied in+out, bytes reduced, local copies)


@dataclass(frozen=True)
class Link:
    """What one message costs: alpha seconds, plus bytes / bandwidth, plus gamma s per byte reduced."""

    alpha: float
    bandwidth: float
    gamma: float = 0.0
    name: str = "custom"
    mu: float = 0.0  # single-host view only: seconds per byte copied locally outside the transfers
    meta: dict = field(default_factory=dict, compare=False)
    overhead: float = 0.0  # o: seconds the receiving port spends per message it takes in (module docstring)

    def __post_init__(self) -> None:
        if not (self.alpha >= 0 and self.bandwidth > 0 and self.gamma >= 0 and self.mu >= 0 and self.overhead >= 0):
            raise ValueError(
                "Link needs alpha >= 0, bandwidth > 0, gamma >= 0, mu >= 0, overhead >= 0; "
                f"got {self.alpha}, {self.bandwidth}, {self.gamma}, {self.mu}, {self.overhead}"
            )

    def time(self, terms: Terms | HostTerms) -> float:
        """Each message on the critical path is taken in by one port: alpha + o each."""
        messages, moved, reduced, *local = terms
        per_message = self.alpha + self.overhead
        return messages * per_message + moved / self.bandwidth + reduced * self.gamma + (local[0] * self.mu if local else 0.0)

    def describe(self) -> str:
        return f"{self.name}: alpha = {self.alpha * 1e6:.1f} us, B = {self.bandwidth / 1e9:.3g} GB/s, gamma = {self.gamma * 1e9:.3g} ns/byte"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Link:
        return cls(**json.loads(Path(path).read_text()))


# Link presets for the what-if and for emulated links (RunConfig.link takes the key; per-direction
# bandwidth; alpha: typical small-message latency). Round, order-of-magnitude assumptions to reason
# with, not measurements. overhead (o, per message at the receiving port): about 5 us for kernel TCP
# (an interrupt, a system call and the protocol stack per message), about 1 us with RDMA (the NIC
# places the data; the host polls a completion), 0 for NVLink-class links (copy engines, no host stack).
TCP_OVERHEAD_S, RDMA_OVERHEAD_S = 5e-6, 1e-6
PRESETS: dict[str, Link] = {
    "1GbE": Link(alpha=50e-6, bandwidth=1e9 / 8, name="1GbE (TCP)", overhead=TCP_OVERHEAD_S),
    "10GbE": Link(alpha=30e-6, bandwidth=10e9 / 8, name="10GbE (TCP)", overhead=TCP_OVERHEAD_S),
    "25GbE": Link(alpha=15e-6, bandwidth=25e9 / 8, name="25GbE (TCP)", overhead=TCP_OVERHEAD_S),
    "100GbE": Link(alpha=5e-6, bandwidth=100e9 / 8, name="100GbE (RDMA)", overhead=RDMA_OVERHEAD_S),
    "NVLink": Link(alpha=3e-6, bandwidth=150e9, name="NVLink-class"),
}


def preset(name: str) -> Link:
    if name not in PRESETS:
        raise ValueError(f"link preset {name!r} is not allowed: choose one of {sorted(PRESETS)}")
    return PRESETS[name]


# ---- the patterns as terms (docs/formulas.md "Definitions") -------------------------------------------
def p2p_terms(size: float) -> Terms:
    """One point-to-point message (ping-pong one way, a pipeline activation): alpha + S/B."""
    return (1.0, float(size), 0.0)


def ring_terms(size: float, n: int) -> Terms:
    """Chunked ring (docs/formulas.md): t = 2(n-1) alpha + 2(n-1)/n S/B, plus (n-1)/n S reduced."""
    if n <= 1:
        return (0.0, 0.0, 0.0)
    return (2.0 * (n - 1), 2.0 * (n - 1) / n * size, (n - 1) / n * size)


def ring_whole_terms(size: float, n: int) -> Terms:
    """Whole-tensor ring (docs/formulas.md): t = (n-1)(alpha + S/B), plus (n-1) S reduced."""
    if n <= 1:
        return (0.0, 0.0, 0.0)
    return (float(n - 1), float(n - 1) * size, float(n - 1) * size)


def reduce_broadcast_terms(size: float, n: int) -> Terms:
    """Reduce to a root, then broadcast (docs/formulas.md: ~2(n-1) S/B through the root): the root receives and
    sends n-1 messages of S, one after another on its link, and adds (n-1) S."""
    if n <= 1:
        return (0.0, 0.0, 0.0)
    return (2.0 * (n - 1), 2.0 * (n - 1) * size, float(n - 1) * size)


def tree_terms(size: float, n: int) -> Terms:
    """Binomial tree (dpkit/comm/tree.py): ceil(log2 n) rounds up, ceil(log2 n) down, whole S each:
    t = 2 ceil(log2 n)(alpha + S/B), plus ceil(log2 n) S reduced on the critical path."""
    if n <= 1:
        return (0.0, 0.0, 0.0)
    rounds = math.ceil(math.log2(n))
    return (2.0 * rounds, 2.0 * rounds * size, float(rounds) * size)


def broadcast_terms(size: float, n: int) -> Terms:
    """Binomial-tree broadcast from one root: ceil(log2 n) rounds, each one whole message: t = ceil(log2 n)(alpha + S/B)."""
    if n <= 1:
        return (0.0, 0.0, 0.0)
    rounds = math.ceil(math.log2(n))
    return (float(rounds), float(rounds) * size, 0.0)


def native_terms(size: float, n: int) -> Terms:
    """The backend's all-reduce: gloo and NCCL both run a (chunked, pipelined) ring for large messages."""
    return ring_terms(size, n)


ALLREDUCE_TERMS = {
    "native": native_terms,
    "ring": ring_terms,
    "ring-whole": ring_whole_terms,
    "reduce-broadcast": reduce_broadcast_terms,
    "tree": tree_terms,
    "hierarchical": ring_terms,  # on one link (no nodes) it is the ring; on nodes: hierarchical_time
}


def allreduce_terms(algo: str, size: float, n: int) -> Terms:
    if algo not in ALLREDUCE_TERMS:
        raise ValueError(f"allreduce algo {algo!r} is not allowed: choose one of {sorted(ALLREDUCE_TERMS)}")
    return ALLREDUCE_TERMS[algo](size, n)


def allreduce_time(algo: str, size: float, n: int, link: Link) -> float:
    """Seconds for one all-reduce of `size` bytes over n ranks with `algo`."""
    return link.time(allreduce_terms(algo, size, n))


def ps_terms(size: float, n: int, k: int = 1) -> Terms:
    """Synchronous parameter server, model of S bytes sharded over k servers, n workers (docs/formulas.md):
    each worker moves 2S, each server 2nS/k; t = 2 alpha + 2 max(S, nS/k)/B. docs/formulas.md writes
    max(S/B, nS/(kB)) once: push and pull are separate phases in a synchronous step, so both count.
    A server adds (n-1) S/k. With k > n the workers' own links are the bottleneck."""
    if n < 1 or k < 1:
        raise ValueError(f"a parameter server needs n >= 1 workers and k >= 1 servers, not n={n}, k={k}")
    return (2.0, 2.0 * max(size, n * size / k), (n - 1) * size / k)


def ps_time(size: float, n: int, k: int, link: Link) -> float:
    """ps_terms on `link`, with the per-message overheads where they queue: each server takes in n pushes
    (n*o at its port) and each worker k pulls (k*o), where Link.time charged o for the 2 latencies."""
    return link.time(ps_terms(size, n, k)) + (n + k - 2) * link.overhead


def pipeline_p2p_time(act_bytes: float, link: Link) -> float:
    """One activation (forward) or its gradient (backward) crossing one stage boundary: alpha + A/B."""
    return link.time(p2p_terms(act_bytes))


def bubble_fraction(p: int, m: int) -> float:
    """Idle share of a GPipe/1F1B step with p stages and m micro-batches (docs/formulas.md): (p-1)/(m+p-1)."""
    return (p - 1) / (m + p - 1)


def pipeline_step_time(t_fwd: float, t_bwd: float, p: int, m: int, act_bytes: float, link: Link) -> float:
    """GPipe/1F1B step with the slowest stage taking t_fwd/t_bwd per micro-batch: m + p - 1 slots,
    each one forward and one backward plus one activation and one gradient received:
    (m + p - 1)(t_fwd + t_bwd + 2(alpha + A/B)); the bubble is p - 1 of those slots (docs/formulas.md).
    Receives block in dpkit's pipeline, so a slot pays its messages' latency even in steady state."""
    slot = t_fwd + t_bwd + (2 * pipeline_p2p_time(act_bytes, link) if p > 1 else 0.0)
    return (m + p - 1) * slot


def tensor_parallel_comm_time(act_bytes: float, tp: int, allreduces: int, link: Link | HostModel, algo: str = "native") -> float:
    """Megatron-style layers: every parallel FFN or attention block all-reduces its activations once in
    the forward (row-parallel output) and once in the backward (input gradient); `allreduces` counts them."""
    return allreduces * comm_time(algo, act_bytes, tp, link)


# ---- data parallel with buckets: how much of the all-reduce the backward hides ------------------
@dataclass
class Overlap:
    comm_s: float  # total all-reduce time
    exposed_s: float  # the part past the end of the backward
    buckets: int


def comm_time(algo: str, size: float, n: int, model: Link | HostModel) -> float:
    """One all-reduce in either view: a Link prices the docs/formulas.md (cluster) terms, a HostModel the single-host ones."""
    return model.allreduce_time(algo, size, n) if isinstance(model, HostModel) else allreduce_time(algo, size, n, model)


def bucketed_overlap(
    bucket_bytes: Sequence[float], t_backward: float, n: int, link: Link | HostModel, algo: str = "native"
) -> Overlap:
    """Buckets (in launch order) become ready as the backward produces their gradients, in proportion
    to their bytes; all-reduces run one at a time, each starting when its bucket is ready and the
    previous one is done. Exposed = how far the last one ends after the backward."""
    total = float(sum(bucket_bytes)) or 1.0
    ready = end = comm = 0.0
    for b in bucket_bytes:
        ready += t_backward * b / total
        t = comm_time(algo, b, n, link)
        end = max(ready, end) + t
        comm += t
    return Overlap(comm, max(0.0, end - t_backward) if bucket_bytes else 0.0, len(bucket_bytes))


def buckets_of(param_bytes: list[int], bucket_mb: float) -> list[int]:
    """Bucket sizes as dpkit's bucketed sync forms them (dpkit.buffers' plan): parameters in reverse order."""
    return [int(b) for b in bucket_bytes(list(reversed(param_bytes)), bucket_mb)]


# ---- calibration: linear least squares on relative error ----------------------------------------
Sample = tuple[str, int, int, float]  # (pattern: "p2p" or an all-reduce algo, bytes, ranks, seconds)


def sample_terms(pattern: str, size: float, n: int) -> Terms:
    return p2p_terms(size) if pattern == "p2p" else allreduce_terms(pattern, size, n)


def _fit_nonneg(terms: np.ndarray, t: np.ndarray, cols: list[int], known: np.ndarray | None = None) -> np.ndarray:
    """Least squares on the *relative* error (a 1 KiB and a 64 MiB message weigh the same), coefficients
    >= 0: every subset of the columns that contains the bandwidth one (1) is tried, the best kept.
    `known`: seconds of each sample already accounted for (priced with a coefficient measured apart)."""
    if np.any(t <= 0):
        raise ValueError("every measured time must be > 0")
    rhs = np.ones(len(t)) if known is None else 1.0 - known / t
    a = terms / t[:, None]
    best, best_err = None, math.inf
    for mask in range(1, 2 ** len(cols)):
        use = [c for i, c in enumerate(cols) if mask >> i & 1]
        if 1 not in use:  # bandwidth must be finite and positive
            continue
        coef, *_ = np.linalg.lstsq(a[:, use], rhs, rcond=None)
        if np.any(coef < 0):
            continue
        err = float(np.sum((a[:, use] @ coef - rhs) ** 2))
        if err < best_err:
            full = np.zeros(terms.shape[1])
            full[use] = coef
            best, best_err = full, err
    if best is None or best[1] <= 0:
        raise ValueError("the measurements do not fit alpha + S/B with B > 0 (are the times increasing with size?)")
    return best


def fit_link(samples: list[Sample], name: str = "fitted", with_gamma: bool = True) -> Link:
    """Cluster view: least-squares alpha, 1/B (and gamma) of the docs/formulas.md terms, relative error, all >= 0."""
    if not samples:
        raise ValueError("fit_link needs at least one measurement")
    terms = np.array([sample_terms(p, s, n) for p, s, n, _ in samples], dtype=float)
    best = _fit_nonneg(terms, np.array([s[3] for s in samples], dtype=float), [0, 1, 2] if with_gamma else [0, 1])
    return Link(alpha=float(best[0]), bandwidth=float(1.0 / best[1]), gamma=float(best[2]), name=name)


def relative_errors(samples: list[Sample], link: Link) -> np.ndarray:
    """(predicted - measured) / measured for each sample."""
    pred = np.array([link.time(sample_terms(p, s, n)) for p, s, n, _ in samples])
    meas = np.array([s[3] for s in samples])
    return (pred - meas) / meas


# ---- the single-host view ------------------------------------------------------------------------
def host_terms(algo: str, size: float, n: int) -> HostTerms:
    """Single host: (message latencies on the busiest process's critical path, bytes it copies in + out,
    bytes it adds, bytes it copies locally outside the transfers), for dpkit's implementations (dpkit/comm/).

    Latencies: a round in which every rank both sends and receives (the rings) counts two, because on
    one host that rank's single I/O thread carries both messages, one after the other; a round of
    one-way messages counts one, also when a root gathers from several peers at once (their sends run
    in parallel). Fitted with one alpha, the rings were under-predicted by ~25% and the tree
    over-predicted by ~25% at small sizes; counted so, both fit (`dpkit bench calibrate`).

    ring, native   2(n-1) exchange rounds: 4(n-1) latencies; a rank sends and receives 2(n-1)/n S
                   each: 4(n-1)/n S copied; its adds overlap the next piece's arrival (pipelined)
    ring-whole     n-1 exchange rounds: 2(n-1) latencies; S out and S in per round: 2(n-1) S;
                   adds (n-1) S; copies the tensor into its (reused) send buffer: S of local copies
    reduce-bcast   2 one-way rounds (the root posts all n-1 receives, then all n-1 sends, at once);
                   the root copies 2(n-1) S and adds (n-1) S
    tree           2 ceil(log2 n) one-way rounds; the root copies 2 ceil(log2 n) S, adds ceil(log2 n) S
    p2p            1 latency, S copied (one message, as ping-pong measures it)
    copy           S bytes copied locally, every rank at once (`dpkit bench calibrate` measures mu so)
    """
    if algo == "p2p":
        return (1.0, float(size), 0.0, 0.0)
    if algo == "copy":
        return (0.0, 0.0, 0.0, float(size))
    if algo not in ALLREDUCE_TERMS:
        raise ValueError(f"allreduce algo {algo!r} is not allowed: choose one of {sorted(ALLREDUCE_TERMS)}")
    if n <= 1:
        return (0.0, 0.0, 0.0, 0.0)
    if algo in ("ring", "native", "hierarchical"):
        return (4.0 * (n - 1), 4.0 * (n - 1) / n * size, 0.0, 0.0)
    if algo == "ring-whole":
        return (2.0 * (n - 1), 2.0 * (n - 1) * size, float(n - 1) * size, float(size))
    if algo == "reduce-broadcast":
        return (2.0, 2.0 * (n - 1) * size, float(n - 1) * size, 0.0)
    rounds = math.ceil(math.log2(n))
    return (2.0 * rounds, 2.0 * rounds * size, float(rounds) * size, 0.0)


def fit_copy_cost(samples: list[Sample]) -> float:
    """mu (seconds per byte) from local-copy samples ("copy", S, n, t): the relative least-squares slope
    through the origin, mu = sum(S/t) / sum((S/t)^2)."""
    x = np.array([s[1] / s[3] for s in samples], dtype=float)
    if not len(x) or not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError("fit_copy_cost needs copy samples with bytes > 0 and times > 0")
    return float(x.sum() / (x**2).sum())


def fit_host(samples: list[Sample], name: str = "single host") -> dict[int, Link]:
    """Single-host view: alpha, B, gamma, mu fitted separately for each world size in the samples
    (p2p samples count for n = 2). Why per n: with more processes than cores, a rank waiting for its
    neighbour waits for the scheduler too, so latency and effective bandwidth depend on n / cores.
    mu is measured, not fitted, where there are "copy" samples for that n (every rank copying at once):
    fitted, it soaks up whatever else the one algorithm with local copies costs and stops meaning a copy."""
    if not samples:
        raise ValueError("fit_host needs at least one measurement")
    out = {}
    for n in sorted({s[2] for s in samples}):
        copies = [s for s in samples if s[2] == n and s[0] == "copy"]
        mine = [s for s in samples if s[2] == n and s[0] != "copy"]
        if not mine:
            raise ValueError(f"fit_host: only copy samples at n={n}; alpha and B need messages")
        terms = np.array([host_terms(p, s, k) for p, s, k, _ in mine], dtype=float)
        t = np.array([s[3] for s in mine], dtype=float)
        if copies:
            mu = fit_copy_cost(copies)
            c = _fit_nonneg(terms, t, [0, 1, 2], known=terms[:, 3] * mu)
            c[3] = mu
        else:
            c = _fit_nonneg(terms, t, [0, 1, 2, 3])
        out[n] = Link(alpha=float(c[0]), bandwidth=float(1.0 / c[1]), gamma=float(c[2]), mu=float(c[3]), name=f"{name} n={n}")
    return out


@dataclass(frozen=True)
class HostModel:
    """The single-host view: one fitted Link per world size; a world size not calibrated uses the nearest."""

    links: dict[int, Link]

    def link(self, n: int) -> Link:
        if not self.links:
            raise ValueError("HostModel needs at least one calibrated world size")
        return self.links[min(self.links, key=lambda k: (abs(k - n), -k))]

    def allreduce_time(self, algo: str, size: float, n: int) -> float:
        return self.link(n).time(host_terms(algo, size, n)) if n > 1 else 0.0

    def p2p_time(self, size: float, n: int) -> float:
        return self.link(n).time(host_terms("p2p", size, n))

    def describe(self) -> str:
        return "single host: " + "; ".join(
            f"n={n}: alpha = {lk.alpha * 1e6:.0f} us, B = {lk.bandwidth / 1e9:.3g} GB/s, "
            f"gamma = {lk.gamma * 1e9:.3g} ns/B, mu = {lk.mu * 1e9:.3g} ns/B"
            for n, lk in sorted(self.links.items())
        )

    def to_json(self) -> dict:
        return {str(n): {k: v for k, v in asdict(lk).items() if k != "meta"} for n, lk in self.links.items()}

    @classmethod
    def from_json(cls, data: dict) -> HostModel:
        return cls({int(n): Link(**v) for n, v in data.items()})

    @classmethod
    def load(cls, path: str | Path) -> HostModel | None:
        """The single-host fits a calibration.json holds under meta.single_host (None in older files)."""
        data = json.loads(Path(path).read_text()).get("meta", {}).get("single_host")
        return cls.from_json(data) if data else None


def host_relative_errors(samples: list[Sample], model: HostModel) -> np.ndarray:
    pred = np.array([model.link(n).time(host_terms(p, s, n)) for p, s, n, _ in samples])
    meas = np.array([s[3] for s in samples])
    return (pred - meas) / meas


# ---- sharded data parallelism (ZeRO): the ring's two halves as collectives of their own ------------
def reduce_scatter_terms(size: float, n: int) -> Terms:
    """Ring reduce-scatter of S bytes (the first half of the chunked ring): n-1 steps of S/n each,
    t = (n-1)(alpha + S/(nB)), and every byte of the rank's shard reduced: (n-1)/n S."""
    if n <= 1:
        return (0.0, 0.0, 0.0)
    return (float(n - 1), (n - 1) / n * size, (n - 1) / n * size)


def all_gather_terms(size: float, n: int) -> Terms:
    """Ring all-gather into S bytes (the second half): t = (n-1)(alpha + S/(nB)), nothing reduced."""
    if n <= 1:
        return (0.0, 0.0, 0.0)
    return (float(n - 1), (n - 1) / n * size, 0.0)


SHARD_TERMS = {"reduce-scatter": reduce_scatter_terms, "all-gather": all_gather_terms}


# ---- two levels: nodes of r ranks, a fast link inside each node and a slower one between them ----------
def hierarchical_time(size: float, nodes: int, ranks_per_node: int, intra: Link, inter: Link) -> float:
    """Hierarchical all-reduce (dpkit/comm/hierarchical.py) of S bytes over N nodes of r ranks: a ring
    reduce-scatter and all-gather inside each node, a ring all-reduce of S/r across the nodes:
    t = 2(r-1)(alpha_intra + S/(r B_intra)) + 2(N-1)(alpha_inter + (S/r)/(N B_inter)) (+ gamma terms)."""
    r, n = ranks_per_node, nodes
    inside = intra.time(reduce_scatter_terms(size, r)) + intra.time(all_gather_terms(size, r))
    return inside + inter.time(ring_terms(size / r, n))


def flat_ring_time_on_nodes(size: float, nodes: int, ranks_per_node: int, intra: Link, inter: Link) -> float:
    """The flat ring of n = N r ranks over the same nodes: each of its 2(n-1) steps waits for its slowest
    link, which crosses between nodes (when N > 1): t = 2(n-1)(alpha_inter + S/(n B_inter))."""
    n = nodes * ranks_per_node
    return (inter if nodes > 1 else intra).time(ring_terms(size, n))


#: what each ZeRO stage sends per step, per rank, for S bytes of trainable parameters (stage 0 is plain DP)
ZERO_COLLECTIVES: dict[int, tuple[str, ...]] = {
    0: ("reduce-scatter", "all-gather"),  # an all-reduce is exactly these two halves
    1: ("reduce-scatter", "all-gather"),  # gradients reduce-scattered, updated parameters all-gathered
    2: ("reduce-scatter", "all-gather"),  # the same messages; only the memory differs
    3: ("all-gather", "all-gather", "reduce-scatter"),  # gather for the forward, again for the backward
}


def zero_terms(stage: int, size: float, n: int) -> Terms:
    """The cluster-view terms of one step of ZeRO stage `stage` over S bytes of parameters."""
    if stage not in ZERO_COLLECTIVES:
        raise ValueError(f"ZeRO stage {stage!r} is not allowed: choose one of {sorted(ZERO_COLLECTIVES)}")
    parts = [SHARD_TERMS[c](size, n) for c in ZERO_COLLECTIVES[stage]]
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))


def shard_collective_time(kind: str, size: float, n: int, model: Link | HostModel, algo: str = "native") -> float:
    """Seconds of one reduce-scatter or all-gather of S bytes. A HostModel, fitted on whole all-reduces,
    prices either as half of one (exact in messages and bytes; the adds all fall in the reduce-scatter)."""
    if isinstance(model, HostModel):
        return model.allreduce_time(algo, size, n) / 2
    return model.time(SHARD_TERMS[kind](size, n))


def zero_bytes_per_rank(stage: int, params_bytes: float, n: int) -> float:
    """Bytes one rank sends per step: 2(n-1)/n P for stages 0, 1 and 2 (ZeRO-1/2 cost no extra traffic),
    3(n-1)/n P for stage 3 (one more all-gather: the price of not keeping the parameters)."""
    return zero_terms(stage, params_bytes, n)[1]


def zero_comm_time(stage: int, size: float, n: int, model: Link | HostModel, algo: str = "native") -> float:
    """Seconds of one step's collectives over S bytes of parameters (one unit; shard_collective_time each)."""
    return sum(shard_collective_time(kind, size, n, model, algo) for kind in ZERO_COLLECTIVES[stage])

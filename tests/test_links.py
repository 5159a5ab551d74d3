"""Emulated network links (RunConfig.link, dpkit/comm/emulation/): the lessons about communication on a 2-core laptop.

Timing tests (marked slow) use links slower than this machine (1 GbE; 500 Mb/s for single messages down to
64 KiB), messages of 64 KiB and more, and the lower quartile of repeated measurements, because the machine is
shared: its load is printed with each measurement so a failure can be read against it, and the tests that
need several real transfers per emulated window skip on a machine too busy to honour the link.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from conftest import SMALL, assert_same_training, reference

from dpkit import RunConfig, run
from dpkit.benchmarks.allreduce import KIB, MIB
from dpkit.comm.emulation.ports import LATE_SLACK_S, LinkEmulator, PacedRecv, sleep_until
from dpkit.comm.link import describe, link_meta
from dpkit.cost.model import PRESETS, Link, allreduce_time, bucketed_overlap, buckets_of
from dpkit.runtime.launch import launch
from dpkit.workloads import build_model


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


# ---- configuration and labels ------------------------------------------------------------------
@pytest.mark.parametrize(
    "knobs, field",
    [
        ({"link": "2GbE"}, "link"),
        ({"link": "1gbe"}, "link"),
        ({"link": "1GbE", "link_latency_s": 1e-4}, "link_latency_s"),
        ({"link_bandwidth_Bps": 1e6}, "link_bandwidth_Bps"),
        ({"link": "custom", "link_latency_s": 1e-4}, "link_bandwidth_Bps"),
        ({"link": "custom", "link_latency_s": 0.0, "link_bandwidth_Bps": 1e6}, "link_latency_s"),
        ({"link": "custom", "link_latency_s": 1e-4, "link_bandwidth_Bps": float("inf")}, "link_bandwidth_Bps"),
        ({"link": "custom", "link_latency_s": 1e-4, "link_bandwidth_Bps": -5.0}, "link_bandwidth_Bps"),
    ],
)
def test_a_bad_link_is_a_value_error_at_construction(knobs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RunConfig.{field}=") as err:
        RunConfig(**knobs)
    if field == "link":
        for preset in PRESETS:
            assert preset in str(err.value), f"the error should name the preset {preset}: {err.value}"


def test_presets_are_the_cost_models_and_describe_says_which() -> None:
    assert PRESETS["1GbE"].alpha == 50e-6 and PRESETS["1GbE"].bandwidth == 125e6
    assert (
        describe(RunConfig(link="1GbE"))
        == "emulated link: 1GbE (TCP), alpha = 50 us, B = 125 MB/s, o = 5 us per message received"
    )
    assert describe(RunConfig()) == "no emulated link (the machine as it is)"
    custom = RunConfig(link="custom", link_latency_s=2e-3, link_bandwidth_Bps=10e6)
    assert describe(custom) == "emulated link: custom, alpha = 2 ms, B = 10 MB/s"
    assert describe(RunConfig(link="NVLink")).endswith("B = 150 GB/s")


def test_link_meta_labels_what_the_machine_could_not_honour() -> None:
    cfg = RunConfig(link="10GbE")
    fine = {"messages": 10, "collectives": 2, "late": 0, "worst_late_s": 0.0}
    meta = link_meta(cfg, [fine, fine])
    assert meta["link"]["key"] == "10GbE" and meta["link"]["messages"] == 20 and meta["link"]["collectives"] == 4
    assert "link_not_honoured" not in meta
    assert describe(meta) == "emulated link: 10GbE (TCP), alpha = 30 us, B = 1.25 GB/s, o = 5 us per message received"
    meta = link_meta(cfg, [fine, {"messages": 10, "collectives": 2, "late": 3, "worst_late_s": 0.004}])
    assert meta["link_not_honoured"] == {"messages": 3, "of": 24, "worst_late_s": 0.004}
    assert describe(meta).endswith("; not honoured for 3 of 24 messages (the machine was slower, by up to 4 ms)")
    assert link_meta(RunConfig(), [None]) == {}


# ---- the port model, without processes ------------------------------------------------------------
class _Done:
    """A real transfer that has finished (or finishes at `at`, blocking wait() until then)."""

    def __init__(self, at: float = 0.0) -> None:
        self.at = at

    def wait(self) -> None:
        sleep_until(self.at)


def _receive(em: LinkEmulator, left_at: float, size: int, done_at: float = 0.0) -> PacedRecv:
    w = PacedRecv(em, torch.tensor([left_at], dtype=torch.float64), _Done(), _Done(done_at), size)
    return w


def test_receives_queue_on_the_incoming_port_in_the_order_they_left() -> None:
    """n messages of S leaving at once arrive alpha + S/B, + 2S/B, ...: the server's port is the bottleneck;
    a message whose real transfer ends after its emulated arrival is counted as not honoured."""
    link = Link(alpha=2e-3, bandwidth=1e6)  # 4 kB take 4 ms
    em = LinkEmulator(link)
    now = time.perf_counter()
    late_done = now + 2e-3 + 3 * 4e-3 + 30e-3  # the last message's real transfer ends 30 ms after its arrival
    works = [_receive(em, now + 1e-4, 4000, late_done), _receive(em, now, 4000), _receive(em, now + 5e-5, 4000)]
    em.complete(works)
    end = time.perf_counter()
    arrivals = sorted(w.arrival - now for w in works)
    assert arrivals == pytest.approx([2e-3 + 4e-3, 2e-3 + 8e-3, 2e-3 + 12e-3], abs=1e-9)
    assert works[1].arrival < works[2].arrival < works[0].arrival  # first come (by leaving time), first served
    assert end >= late_done
    assert works[0].late_s >= 30e-3 - 1e-6  # a busy machine may wake the rank later still (never earlier)
    stats = em.stats()
    assert stats["messages"] == 3 and 1 <= stats["late"] <= 3 and stats["worst_late_s"] >= works[0].late_s
    assert em.in_free == pytest.approx(now + 14e-3)


def test_the_per_message_overhead_queues_at_the_receiving_port() -> None:
    """With o per message at the receiving port, n messages leaving at once arrive alpha + k(o + S/B): their
    latencies overlap, their overheads do not (a server taking n pushes spends n*o)."""
    link = Link(alpha=2e-3, bandwidth=1e6, overhead=1e-3)  # 4 kB take 4 ms, plus 1 ms of overhead each
    em = LinkEmulator(link)
    now = time.perf_counter()
    works = [_receive(em, now, 4000) for _ in range(3)]
    em.complete(works)
    assert sorted(w.arrival - now for w in works) == pytest.approx([2e-3 + k * 5e-3 for k in (1, 2, 3)], abs=1e-9)
    assert em.seconds((2.0, 3000.0, 0.0)) == pytest.approx(2 * (2e-3 + 1e-3) + 3e-3)  # held: each message alpha + o
    assert PRESETS["1GbE"].overhead == 5e-6 and PRESETS["100GbE"].overhead == 1e-6 and PRESETS["NVLink"].overhead == 0


def test_a_send_books_the_outgoing_port_and_sleeping_is_never_early() -> None:
    em = LinkEmulator(Link(alpha=1e-3, bandwidth=1e6))
    start = time.perf_counter()
    for _ in range(20):
        deadline = time.perf_counter() + 1e-3
        sleep_until(deadline)
        assert time.perf_counter() >= deadline
    assert em.seconds((2.0, 3000.0, 99.0)) == pytest.approx(2e-3 + 3e-3)  # gamma terms are not priced
    assert time.perf_counter() - start >= 20e-3
    assert LATE_SLACK_S < 1e-4


# ---- every algorithm, paced ------------------------------------------------------------------------
@pytest.mark.slow
def test_every_algorithm_sums_exactly_when_paced(tmp_path) -> None:
    """The hand-written all-reduces send through the paced helpers (and native is held): same sums as
    dist.all_reduce, over the world and a subgroup, many-piece rings included; the link is fast so this is quick."""
    import json

    from dpkit.runtime.launch import launch

    payload = {"lengths": [0, 1, 5, 1001], "segment_bytes": 400, "link": {"alpha": 1e-6, "bandwidth": 1e10}}
    launch("comm_targets:check_ranks", payload, 3, tmp_path, threads_per_rank=1, timeout_s=120)
    rows = json.loads((tmp_path / "check.json").read_text())
    assert {r["algo"] for r in rows} == {"native", "ring", "ring-whole", "reduce-broadcast", "tree", "hierarchical"}
    assert {r["group"] for r in rows} == {"world", "ranks 1.."}
    wrong = [r for r in rows if not r["equal"] or r["sent"] != r["predicted"]]
    assert not wrong, wrong[:5]


# ---- equal training, with the link -----------------------------------------------------------------
EQUIVALENT = {
    "flat ring": {"parallelism": "data", "world_size": 2, "grad_sync": "flat", "allreduce_algo": "ring"},
    "bucketed native": {"parallelism": "data", "world_size": 2, "grad_sync": "bucketed", "bucket_mb": 0.004},
    "ddp": {"parallelism": "data", "world_size": 2, "grad_sync": "ddp", "bucket_mb": 0.004},
    "sync ps": {"parallelism": "data", "world_size": 2, "sync": "ps"},
    "sync ps, 2 servers": {"parallelism": "data", "world_size": 3, "sync": "ps", "num_servers": 2},
    "zero-2, background reduce-scatters": {
        "parallelism": "data",
        "world_size": 2,
        "zero_stage": 2,
        "grad_sync": "bucketed",
        "bucket_mb": 0.004,
    },
    "pipeline": {"parallelism": "pipeline", "world_size": 2, "microbatches": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EQUIVALENT))
def test_training_on_an_emulated_link_equals_single_process(name: str) -> None:
    cfg = SMALL.replace(link="1GbE", **EQUIVALENT[name])
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    info = result.meta["link"]
    assert info["key"] == "1GbE" and info["alpha_s"] == 50e-6 and info["bandwidth_Bps"] == 125e6
    paced = info["collectives"] if name in ("bucketed native", "ddp") or name.startswith("zero") else info["messages"]
    assert paced > 0, f"{name}: nothing was paced: {info}"
    if info["late"]:
        assert result.meta["link_not_honoured"]["messages"] == info["late"]


# ---- timing: what the link takes -----------------------------------------------------------------
# A shared machine's noise only ever adds time (a rank woken late, a real transfer starved of CPU), and the
# emulator never lets a message through early. So the timing tests take the lower quartile of repeated
# measurements (the emulator's own accuracy), print the median beside it, and check that nothing was early.
def held_in_background(tmp_path) -> list[dict]:
    """Two native all-reduces of 40 kB started back to back on the comm thread of 4 ranks on a slow link:
    per rank, when each was started, when its real run ended and when the link delivers it."""
    payload = {"alpha": HELD_LINK.alpha, "bandwidth": HELD_LINK.bandwidth, "numel": 10_000}
    launch("rank_targets:background_held", payload, 4, tmp_path, threads_per_rank=1, timeout_s=120)
    return [json.loads((tmp_path / f"held{rank}.json").read_text()) for rank in range(4)]


HELD_LINK = Link(alpha=2e-3, bandwidth=4e6, name="slow")  # 40 kB: 2 ms + 10 ms (1.5x for the ring's 2(n-1)/n at n = 4)


def test_a_background_collective_is_held_from_when_it_was_started(tmp_path) -> None:
    """Each is delivered no earlier than its link time after it was started, and the second queues behind the
    first on the ports (lower bounds: they hold however busy the machine is)."""
    one = allreduce_time("native", 10_000 * 4, 4, HELD_LINK)
    for out in held_in_background(tmp_path):
        first, second = out["works"]
        assert out["sums"] == [10.0, 10.0]  # 1 + 2 + 3 + 4: the real transfer happened
        assert first["deliver_at"] >= first["start"] + one - 1e-6
        assert second["deliver_at"] >= first["deliver_at"] + one - 1e-6  # behind the first on the ports
        assert out["stats"]["collectives"] == 2


@pytest.mark.slow
def test_the_comm_thread_does_not_sleep_out_a_held_collective(tmp_path) -> None:
    """The second's real run ends before the first is delivered: the comm thread went on to it instead of
    sleeping out the first's 17 ms of link time. A wall-clock race (a real 40 kB all-reduce of 4 ranks against
    17 ms), so in the slow tier and only on a machine that is not too busy (it missed by 7-11 ms at load 7)."""
    require_a_machine_that_can_honour_the_link(per_core=1.5)
    for out in held_in_background(tmp_path):
        first, second = out["works"]
        assert second["real_done"] < first["deliver_at"], f"the comm thread slept out the first's link time; {load()}"


SLOW_LINK = Link(alpha=100e-6, bandwidth=50e6, name="500 Mb/s")  # slower than this machine's loopback even under load


def lower_quartile(values) -> float:
    return float(np.quantile(np.asarray(list(values), dtype=float), 0.25))


BUSY = 3.0  # load average per core above which real transfers starve (the runs then say "link_not_honoured")
BUSY_FOR_OVERLAP = 2.0  # ... above which the buckets' real transfers eat too much of a 20% saving (see the test)


def require_a_machine_that_can_honour_the_link(per_core: float = BUSY) -> None:
    """Collectives need several real transfers per emulated window; on a machine this busy (other test runs)
    they come late, the runs label it (link_not_honoured), and their times are the machine's, not the link's."""
    one = os.getloadavg()[0]
    if one > per_core * (os.cpu_count() or 1):
        pytest.skip(f"load average {one:.1f} on {os.cpu_count()} cores: too busy to time a 1 GbE link's collectives")


@pytest.mark.slow
def test_one_message_takes_alpha_plus_size_over_bandwidth() -> None:
    """Point to point, 64 KiB - 16 MiB, sender's post to receiver's completion on the shared clock: within 10%."""
    from dpkit.benchmarks import link as bench

    before = load()
    frame = bench.measure("p2p", {"slow": SLOW_LINK}, [64 * KIB, MIB, 16 * MIB], 2, repeats=8)
    print(f"\n{before}; after: {load()}")
    for row in frame.itertuples():
        times = [float(t) for t in row.times_s.split()]
        quartile = lower_quartile(times)
        print(f"{row.size_bytes:>9} B: formula {row.predicted_s * 1e3:.3f} ms, lower quartile {quartile * 1e3:.3f} ms, "
              f"median {row.measured_s * 1e3:.3f} ms, late {row.late}/{row.paced}")  # fmt: skip
        assert row.predicted_s == pytest.approx(SLOW_LINK.alpha + row.size_bytes / SLOW_LINK.bandwidth)
        assert min(times) >= row.predicted_s, "a message arrived before the link could have delivered it"
        assert quartile <= 1.10 * row.predicted_s, f"{row.size_bytes} B: {quartile:.6f} s against {row.predicted_s:.6f} s"


@pytest.mark.slow
def test_two_servers_fill_their_links_together() -> None:
    """A parameter server with k = 2 servers and n = 4 workers takes 2 alpha + 2 nS/(kB), within 10%: worker w
    pushes to server w mod k first and server j answers worker j mod n first (the benchmark's pattern sends in
    the order PushPullWorker and PushPullServer use), so both servers' links are busy at once. When every worker
    started at server 0 and both servers answered worker 0 first it took 1.13-1.33x."""
    from dpkit.benchmarks import link as bench

    require_a_machine_that_can_honour_the_link()
    frame = bench.measure("ps", {"slow": SLOW_LINK}, [MIB], 6, repeats=5, servers=2)
    row = next(frame.itertuples())
    print(
        f"\n{load()}: formula {row.predicted_s * 1e3:.2f} ms, median {row.measured_s * 1e3:.2f} ms, late {row.late}/{row.paced}"
    )
    assert row.measured_s <= 1.10 * row.predicted_s, f"{row.measured_s:.5f} s against {row.predicted_s:.5f} s"


MODEL = {"model": "mlp", "hidden": 256, "layers": 2, "threads_per_rank": 1, "timeout_s": 120}  # S = 4.1 MiB of gradients


def gradient_bytes(cfg: RunConfig) -> int:
    return sum(p.numel() * p.element_size() for p in build_model(cfg, cfg.seed).parameters())


def span_times(result, name: str) -> object:
    """Durations of the spans called `name` in the timed steps, with their rank and step."""
    tl = result.timeline
    spans = tl[(tl.name == name) & (tl.step >= result.config.warmup)]
    return spans.assign(d=spans.end_s - spans.start_s)


@pytest.mark.slow
def test_a_parameter_server_grows_linearly_while_the_ring_stays_flat() -> None:
    """1 GbE, one server: its comm time per step is n S/B (its outgoing port answers n pulls), linear in n;
    a ring rank's all-reduce is 2(n-1)/n S/B, 1.5x from n = 2 to 4, each within 15% of the formula."""
    require_a_machine_that_can_honour_the_link()
    link = PRESETS["1GbE"]
    base = RunConfig(parallelism="data", steps=6, warmup=1, link="1GbE", **MODEL)
    size = gradient_bytes(base)
    ns, ring_ns = [2, 3, 4], [2, 4]
    print(f"\n{load()}")
    server, ring = [], []
    for n in ns:
        ps = run(base.replace(world_size=n, global_batch=8 * n, sync="ps"))
        stats = ps.step_stats()
        stats = stats[(stats.step >= base.warmup) & stats.role.str.contains("server")]
        server.append(lower_quartile(stats.comm_s))
        print(f"n={n}: server comm {server[-1] * 1e3:.1f} ms (n S/B = {n * size / link.bandwidth * 1e3:.1f}); "
              f"not honoured: {ps.meta.get('link_not_honoured')}")  # fmt: skip
    for n in ring_ns:  # its steps are short: more of them, as one late real transfer delays the whole ring
        flat = run(base.replace(world_size=n, global_batch=8 * n, grad_sync="flat", allreduce_algo="ring", steps=9))
        # per step, the rank that entered the all-reduce last waited for nobody: its span is the all-reduce itself
        ring.append(lower_quartile(span_times(flat, "allreduce-flat").groupby("step").d.min()))
        print(f"n={n}: ring {ring[-1] * 1e3:.1f} ms (formula {allreduce_time('ring', size, n, link) * 1e3:.1f}); "
              f"not honoured: {flat.meta.get('link_not_honoured')}")  # fmt: skip
    print(load())
    slope, intercept = np.polyfit(ns, server, 1)
    fit = np.polyval([slope, intercept], ns)
    r2 = 1 - np.sum((np.array(server) - fit) ** 2) / np.sum((np.array(server) - np.mean(server)) ** 2)
    assert r2 >= 0.95, f"server comm per step {server} is not linear in n (R^2 = {r2:.3f})"
    assert slope == pytest.approx(size / link.bandwidth, rel=0.2), "each extra worker costs the server S/B"
    for n, t in zip(ring_ns, ring, strict=True):
        assert t == pytest.approx(allreduce_time("ring", size, n, link), rel=0.15), f"ring at n={n}"
    assert ring[-1] / ring[0] == pytest.approx(1.5, rel=0.15)


QUIET_FOR_RAW_STEPS = 1.0  # load average per core up to which the raw steps are compared as well


@pytest.mark.slow
def test_buckets_hide_the_all_reduce_behind_the_backward() -> None:
    """1 GbE: the bucketed sync's step is at least 20% shorter than the flat one's, on a model where the formula
    (cost.model.bucketed_overlap, with the measured backward and compute) says it should be.

    Two comparisons. The raw steps (median of two runs each, taking turns), on a machine whose load is at most
    QUIET_FOR_RAW_STEPS per core when the test starts. And "at equal compute", whatever the load (up to the
    guard): on a shared machine one launch can compute 2x slower than the next for the same config, which
    would swamp a 20% difference, while the emulated link's time does not depend on the CPU; so each run's step
    is split into its compute and the rest (exposed comm and waiting: the states add up to the step), and both
    syncs are compared at the flat runs' compute, the compute the formula assumes.
    The model has 18 MiB of gradients in buckets of about 2.25 MiB: every real transfer behind an emulated one
    costs CPU beside the backward (on 2 cores, about 1 ms per collective plus its bytes), which 8 buckets of
    0.6 MiB (the earlier model) paid for with a third of their link time, 8 of 2.25 MiB with a tenth. The batch is
    chosen from a measured backward to make it about one all-reduce long, and chosen again, once, if the formula
    does not then promise 20%. Measured on the 2-core VM (gloo_loop "low"): raw steps 28-32% shorter at a load of
    0.5-1.0, 19-20% with two busy programs beside the run; with the earlier model 18-22% at a load of 1-1.6."""
    require_a_machine_that_can_honour_the_link(BUSY_FOR_OVERLAP)
    quiet = os.getloadavg()[0] <= QUIET_FOR_RAW_STEPS * (os.cpu_count() or 1)
    link = PRESETS["1GbE"]
    model = {**MODEL, "hidden": 384, "layers": 4}  # 18.1 MiB in 20 tensors: 8 buckets of <= 2.5 MiB
    base = RunConfig(parallelism="data", world_size=2, global_batch=256, steps=4, warmup=2, link="1GbE", bucket_mb=2.5,
                     **model)  # fmt: skip
    grads = [p.numel() * p.element_size() for p in build_model(base, base.seed).parameters()]
    comm = allreduce_time("native", sum(grads), 2, link)
    print(f"\n{load()}")

    def measured(cfg: RunConfig) -> dict[str, float]:
        """Lower quartiles over the timed steps of: the step (its slowest rank), the compute (its busiest rank), the
        rest (the rank that computed longest waited for nobody: its step minus its compute is the exposed comm)
        and the backward."""
        result = run(cfg)
        stats = result.step_stats()
        stats = stats[stats.step >= cfg.warmup].assign(rest=lambda f: f.step_time_s - f.compute_s)
        per_step = stats.groupby("step").agg(step=("step_time_s", "max"), compute=("compute_s", "max"), rest=("rest", "min"))
        out = {k: lower_quartile(per_step[k]) for k in ("step", "compute", "rest")}
        return {**out, "backward": lower_quartile(span_times(result, "backward").d)}

    def batch_for(batch: int, backward: float) -> int:
        """The batch whose backward takes about one all-reduce, from `backward` measured at `batch` (its time
        grows more slowly than the batch: aim 30% higher)."""
        return int(min(2048, max(32, 2 * round(batch * 1.3 * comm / backward / 2))))

    batch = batch_for(base.global_batch, measured(base)["backward"])
    for _ in range(2):
        cfg = base.replace(global_batch=batch, steps=6)
        runs: dict[str, list[dict]] = {"flat": [], "bucketed": []}
        for _ in range(2):  # taking turns: a change in the machine's load hits both alike
            for sync in runs:
                runs[sync].append(measured(cfg.replace(grad_sync=sync)))
        compute = float(np.median([r["compute"] for r in runs["flat"]]))
        flat, bucketed = (compute + float(np.median([r["rest"] for r in runs[sync]])) for sync in runs)
        raw_flat, raw_bucketed = (float(np.median([r["step"] for r in runs[sync]])) for sync in runs)
        backward = float(np.median([r["backward"] for rs in runs.values() for r in rs]))
        exposed = bucketed_overlap(buckets_of(grads, cfg.bucket_mb), backward, 2, link).exposed_s
        promised = (comm - exposed) / (compute + comm)  # flat = compute + comm, bucketed = compute + exposed
        steps = ", ".join(f"{s} {r['step'] * 1e3:.0f} (compute {r['compute'] * 1e3:.0f})" for s, rs in runs.items() for r in rs)
        print(f"batch {cfg.global_batch}: steps flat {raw_flat * 1e3:.1f} ms, bucketed {raw_bucketed * 1e3:.1f} ms "
              f"({1 - raw_bucketed / raw_flat:.0%} shorter); at equal compute {compute * 1e3:.1f} ms, flat {flat * 1e3:.1f} "
              f"ms, bucketed {bucketed * 1e3:.1f} ms ({1 - bucketed / flat:.0%} shorter); measured steps: {steps} ms; "
              f"backward {backward * 1e3:.1f} ms, all-reduce {comm * 1e3:.1f} ms, exposed {exposed * 1e3:.1f} ms: "
              f"the formula promises {promised:.0%}; {load()}")  # fmt: skip
        if promised >= 0.2:
            break
        batch = int(np.sqrt(batch * batch_for(batch, backward))) // 2 * 2  # half way there: the measurement is noisy
    assert promised >= 0.2, "no batch found where the formula says the buckets save at least 20%"
    assert bucketed <= 0.8 * flat, f"at equal compute, bucketed {bucketed:.4f} s is not 20% shorter than flat {flat:.4f} s"
    if quiet:
        assert raw_bucketed <= 0.8 * raw_flat, (
            f"bucketed steps {raw_bucketed:.4f} s are not 20% shorter than flat {raw_flat:.4f} s"
        )
    else:
        print(f"raw steps not compared: the load was above {QUIET_FOR_RAW_STEPS} per core when the test started")


@pytest.mark.slow
def test_bench_link_runs_in_quick_mode_and_writes_what_it_promises(tmp_path, capsys) -> None:
    """`dpkit bench link --quick`: every pattern's rows with their formula, and the buckets-against-flat table with
    the overlap formula beside it (speed is not asserted here: test_buckets_hide_... does that)."""
    import pandas as pd

    from dpkit.cli import main as cli_main

    assert cli_main(["bench", "link", "--quick", "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "link.csv")
    assert set(frame.pattern) == {"p2p", "ring", "ps", "pipeline"} and (frame.predicted_s > 0).all()
    assert (tmp_path / "link.png").stat().st_size > 0
    buckets = pd.read_csv(tmp_path / "overlap.csv").set_index("grad_sync")
    assert list(buckets.index) == ["flat", "bucketed"]
    assert buckets.saving["flat"] == 0 and buckets.formula_saving["flat"] == 0
    assert buckets.hidden_comm_s["bucketed"] > 0 and buckets.exposed_comm_s["bucketed"] < buckets.exposed_comm_s["flat"]
    assert 0 < buckets.formula_saving["bucketed"] < 1
    assert "formula_exposed_ms" in capsys.readouterr().out

"""The cost model: each formula against hand-computed numbers, the fit against known parameters,
the crossover against a brute-force scan, and the step model against its own parts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpkit.analysis.predict import ComputeProfile, oversubscription, predict_step
from dpkit.analysis.whatif import comm_scan, crossover_table, data_parallel_scaling, ps_ring_crossover
from dpkit.comm import Comm, GroupView
from dpkit.config import RunConfig
from dpkit.cost.model import (
    PRESETS,
    HostModel,
    Link,
    allreduce_time,
    bubble_fraction,
    bucketed_overlap,
    buckets_of,
    fit_copy_cost,
    fit_host,
    fit_link,
    host_terms,
    pipeline_step_time,
    preset,
    ps_time,
    relative_errors,
    sample_terms,
    tensor_parallel_comm_time,
)
from dpkit.runtime.recorder import HostClock, Recorder
from dpkit.strategies.grad_sync import BucketedOverlapSync
from dpkit.workloads import build_model

LINK = Link(alpha=1e-3, bandwidth=1e6)  # 1 ms per message, 1 MB/s: numbers easy to do by hand
S = 1e6


@pytest.mark.parametrize(
    ("algo", "n", "expected"),
    [
        ("ring", 4, 2 * 3 * 1e-3 + 2 * 3 / 4),  # 2(n-1) alpha + 2(n-1)/n S/B
        ("native", 4, 2 * 3 * 1e-3 + 2 * 3 / 4),
        ("ring", 2, 2e-3 + 1.0),
        ("ring-whole", 4, 3 * (1e-3 + 1)),  # (n-1)(alpha + S/B)
        ("reduce-broadcast", 4, 2 * 3 * (1e-3 + 1)),  # 2(n-1)(alpha + S/B) through the root
        ("tree", 4, 2 * 2 * (1e-3 + 1)),  # 2 ceil(log2 n)(alpha + S/B)
        ("tree", 5, 2 * 3 * (1e-3 + 1)),
        ("ring", 1, 0.0),
        ("ring-whole", 1, 0.0),
        ("reduce-broadcast", 1, 0.0),
        ("tree", 1, 0.0),
    ],
)
def test_allreduce_formulas(algo: str, n: int, expected: float) -> None:
    assert allreduce_time(algo, S, n, LINK) == pytest.approx(expected, rel=1e-12)


def test_gamma_charges_the_bytes_each_pattern_adds() -> None:
    link = Link(alpha=1e-3, bandwidth=1e6, gamma=1e-6)  # adding 1 MB costs 1 s
    assert allreduce_time("ring", S, 4, link) == pytest.approx(1.506 + 0.75)
    assert allreduce_time("ring-whole", S, 4, link) == pytest.approx(3.003 + 3.0)
    assert allreduce_time("tree", S, 4, link) == pytest.approx(4.004 + 2.0)
    assert ps_time(S, 4, 1, link) == pytest.approx(8.002 + 3.0)


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [
        (4, 1, 2e-3 + 2 * 4.0),  # the server's link carries 2nS/k
        (4, 2, 2e-3 + 2 * 2.0),
        (4, 4, 2e-3 + 2 * 1.0),
        (4, 8, 2e-3 + 2 * 1.0),  # k > n: each worker's own 2S is the bottleneck
        (1, 1, 2e-3 + 2 * 1.0),  # one worker still pushes and pulls
        (1, 3, 2e-3 + 2 * 1.0),
    ],
)
def test_parameter_server_formula(n: int, k: int, expected: float) -> None:
    assert ps_time(S, n, k, LINK) == pytest.approx(expected)


def test_bad_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="butterfly"):
        allreduce_time("butterfly", S, 2, LINK)
    with pytest.raises(ValueError, match="k=0"):
        ps_time(S, 2, 0, LINK)
    with pytest.raises(ValueError, match="bandwidth"):
        Link(alpha=1e-6, bandwidth=0.0)
    with pytest.raises(ValueError, match="10GbE"):
        preset("carrier pigeon")


def test_pipeline_and_tensor_parallel_formulas() -> None:
    assert bubble_fraction(4, 4) == pytest.approx(3 / 7)
    assert bubble_fraction(1, 8) == 0.0
    # (m+p-1)(t_f + t_b + 2(alpha + A/B)) = 11 * (0.03 + 2 * 2e-3)
    assert pipeline_step_time(0.01, 0.02, 4, 8, 1000, LINK) == pytest.approx(0.374)
    assert pipeline_step_time(0.01, 0.02, 1, 8, 1000, LINK) == pytest.approx(8 * 0.03)
    assert tensor_parallel_comm_time(S, 2, 6, LINK) == pytest.approx(6 * (2e-3 + 1.0))
    assert tensor_parallel_comm_time(S, 1, 6, LINK) == 0.0


def test_bucketed_overlap_by_hand() -> None:
    link = Link(alpha=0.0, bandwidth=1e6)
    # two 1 MB buckets at n=2 take 1 s each; ready at 0.5 s and 1.0 s of a 1 s backward
    ov = bucketed_overlap([1e6, 1e6], 1.0, 2, link)
    assert ov.comm_s == pytest.approx(2.0) and ov.exposed_s == pytest.approx(1.5) and ov.buckets == 2
    # a backward long enough hides all but the last bucket's all-reduce
    ov = bucketed_overlap([1e6, 1e6], 10.0, 2, link)
    assert ov.exposed_s == pytest.approx(1.0)
    assert bucketed_overlap([], 1.0, 2, link).exposed_s == 0.0


def test_buckets_match_what_the_bucketed_sync_builds() -> None:
    cfg = RunConfig(model="mlp", hidden=64, layers=3)
    params = [p for p in build_model(cfg, 0).parameters() if p.requires_grad]
    for mb in (0.01, 0.05, 1.0):
        sync = BucketedOverlapSync(params, Comm(Recorder(0, HostClock())), GroupView((0, 1), 0), bucket_mb=mb)
        sync.remove_hooks()
        built = [sum(p.numel() * p.element_size() for p in b.params) for b in sync.buckets]
        assert buckets_of([p.numel() * p.element_size() for p in params], mb) == built


def _samples_from(link: Link, noise: float = 0.0) -> list[tuple[str, int, int, float]]:
    rng = np.random.default_rng(0)
    out = []
    for pattern, n in [("p2p", 2), ("native", 2), ("native", 4), ("ring", 3), ("ring-whole", 3), ("tree", 4)]:
        for size in [2**10 * 4**i for i in range(8)]:
            t = link.time(sample_terms(pattern, size, n)) * (1 + noise * rng.uniform(-1, 1))
            out.append((pattern, size, n, t))
    return out


def test_fit_recovers_known_parameters() -> None:
    truth = Link(alpha=40e-6, bandwidth=2e9, gamma=0.3e-9)
    fitted = fit_link(_samples_from(truth))
    assert fitted.alpha == pytest.approx(truth.alpha, rel=1e-6)
    assert fitted.bandwidth == pytest.approx(truth.bandwidth, rel=1e-6)
    assert fitted.gamma == pytest.approx(truth.gamma, rel=1e-6)
    noisy = _samples_from(truth, noise=0.05)
    assert np.median(np.abs(relative_errors(noisy, fit_link(noisy)))) < 0.05


def test_fit_keeps_coefficients_non_negative() -> None:
    truth = Link(alpha=0.0, bandwidth=1e9)  # no latency at all: an unconstrained fit could go negative
    noisy = _samples_from(truth, noise=0.1)
    fitted = fit_link(noisy)
    assert fitted.alpha >= 0 and fitted.gamma >= 0 and fitted.bandwidth > 0
    with pytest.raises(ValueError):
        fit_link([])


def test_link_round_trips_through_json(tmp_path: Path) -> None:
    link = Link(alpha=1e-5, bandwidth=3e9, gamma=1e-10, name="x", meta={"hostname": "h"})
    back = Link.load(link.save(tmp_path / "c.json"))
    assert back == link and back.meta == {"hostname": "h"}


def _scan(size: float, k: int, link: Link, n_max: int) -> int | None:
    """Walk down from n_max while the PS is slower; the crossover is where that run of n starts."""
    n = n_max
    while n >= 2 and ps_time(size, n, k, link) > allreduce_time("ring", size, n, link):
        n -= 1
    return None if n == n_max else n + 1


def test_crossover_agrees_with_a_brute_force_scan() -> None:
    links = [*PRESETS.values(), Link(alpha=50e-6, bandwidth=1e9, gamma=0.5e-9), Link(alpha=1e-3, bandwidth=1e8)]
    found = never = 0
    for link in links:
        for size in (1e3, 1e5, 4e6, 4e7, 4e9):
            for k in (1, 2, 3, 8, 64, 2000):
                exact = ps_ring_crossover(size, k, link, n_max=1024)
                assert exact == _scan(size, k, link, 1024), (link, size, k)
                found += exact is not None
                never += exact is None
    assert found > 10 and never > 10  # both outcomes are exercised


def test_more_servers_push_the_crossover_out() -> None:
    link = PRESETS["10GbE"]
    ns = [ps_ring_crossover(4e6, k, link) for k in (1, 4, 16, 64)]  # 1M parameters: latency matters
    assert all(n is not None for n in ns) and ns == sorted(ns) and ns[0] == 2 < ns[-1]
    assert ps_ring_crossover(4e8, 1, link) == 2  # bandwidth-bound: a worker moves 2S, a ring member 2(n-1)/n S
    table = crossover_table(ks=(1, 4))
    assert len(table) == len(PRESETS) * 3 * 2
    assert set(table.columns) >= {"link", "model", "servers", "crossover_workers"}


def test_scaling_tables() -> None:
    scan = comm_scan(4e8, PRESETS["25GbE"], ns=[2, 16, 1024])
    assert list(scan.workers) == [2, 16, 1024]
    assert (scan["ring"] < scan["ring-whole"])[scan.workers > 2].all() and scan["ps k=1"].is_monotonic_increasing
    dp = data_parallel_scaling(1e-3, 4e7, 1024, PRESETS["100GbE"], ns=[1, 2, 8])
    assert dp.speedup.iloc[0] == pytest.approx(1.0)
    assert (dp.efficiency <= 1.0 + 1e-12).all()


PROFILE = ComputeProfile(batch=16, forward_s=0.01, backward_s=0.02, optimizer_s=0.003, threads=1)


def _grad_bytes(cfg: RunConfig) -> float:
    return 4.0 * sum(p.numel() for p in build_model(cfg, 0).parameters() if p.requires_grad)


def test_step_model_for_data_parallel_and_parameter_server() -> None:
    link = Link(alpha=1e-4, bandwidth=1e8)
    cfg = RunConfig(parallelism="data", world_size=2, grad_sync="flat", global_batch=32, freeze=("embed",))
    pred = predict_step(cfg, link, PROFILE, cores=64)
    comm = allreduce_time("native", _grad_bytes(cfg), 2, link)
    assert pred["comm_s"] == pytest.approx(comm) and pred["exposed_comm_s"] == pytest.approx(comm)
    assert pred["step_time_s"] == pytest.approx(0.033 + comm)
    bucketed = predict_step(cfg.replace(grad_sync="bucketed", bucket_mb=0.01), link, PROFILE, cores=64)
    assert bucketed["exposed_comm_s"] < bucketed["comm_s"] and bucketed["step_time_s"] < pred["step_time_s"] + 1e-3
    one = predict_step(cfg.replace(world_size=1), link, PROFILE, cores=64)
    assert one["comm_s"] == 0.0 and one["step_time_s"] == pytest.approx(0.033)
    ps = predict_step(cfg.replace(sync="ps", num_servers=2), link, PROFILE, cores=64)
    assert ps["comm_s"] == pytest.approx(ps_time(_grad_bytes(cfg), 2, 2, link))
    assert ps["step_time_s"] == pytest.approx(0.03 + ps["comm_s"] + 0.003 / 2)


def test_bucketed_overlap_needs_a_spare_core_on_one_host() -> None:
    cfg = RunConfig(parallelism="data", world_size=2, grad_sync="bucketed", bucket_mb=0.01, global_batch=32)
    host = HostModel({2: Link(alpha=1e-4, bandwidth=1e8)})
    busy = predict_step(cfg, host, PROFILE, cores=2)  # 2 ranks x 1 thread on 2 cores: nothing spare
    assert busy["exposed_comm_s"] == pytest.approx(busy["comm_s"])
    spare = predict_step(cfg, host, PROFILE, cores=8)
    assert spare["exposed_comm_s"] < spare["comm_s"]
    cluster = predict_step(cfg, host.links[2], PROFILE, cores=2)  # the cluster view: links are not CPU work
    assert cluster["exposed_comm_s"] < cluster["comm_s"]


def test_gradient_buffer_copies_cost_2S_mu_except_per_tensor() -> None:
    link = Link(alpha=1e-4, bandwidth=1e8, mu=1e-9)
    cfg = RunConfig(parallelism="data", world_size=2, grad_sync="flat", global_batch=32)
    copies = 2 * _grad_bytes(cfg) * 1e-9
    assert predict_step(cfg, link, PROFILE, cores=64)["compute_s"] == pytest.approx(0.033 + copies)
    assert predict_step(cfg.replace(grad_sync="ddp"), link, PROFILE, cores=64)["compute_s"] == pytest.approx(0.033 + copies)
    assert predict_step(cfg.replace(grad_sync="per-tensor"), link, PROFILE, cores=64)["compute_s"] == pytest.approx(0.033)
    assert predict_step(cfg.replace(world_size=1), link, PROFILE, cores=64)["compute_s"] == pytest.approx(0.033)


def test_parameter_server_copies_cost_2S_plus_2S_over_k_mu() -> None:
    link = Link(alpha=1e-4, bandwidth=1e8, mu=1e-9)
    cfg = RunConfig(parallelism="data", world_size=2, sync="ps", num_servers=2, global_batch=32)
    size = _grad_bytes(cfg)
    pred = predict_step(cfg, link, PROFILE, cores=64)
    assert pred["compute_s"] == pytest.approx(
        0.03 + (2 * size + 2 * size / 2) * 1e-9
    )  # workers: pack + unpack; servers: sum + divide
    assert pred["step_time_s"] == pytest.approx(pred["compute_s"] + ps_time(size, 2, 2, link) + 0.003 / 2)


def test_step_model_for_pipeline_and_tensor_parallel() -> None:
    link = Link(alpha=1e-4, bandwidth=1e8)
    cfg = RunConfig(parallelism="pipeline", world_size=2, schedule="gpipe", microbatches=4, global_batch=32)
    pred = predict_step(cfg, link, PROFILE, cores=64)
    model = build_model(cfg, 0)
    sizes = [sum(p.numel() for p in b.parameters()) for b in model.children()]
    share = min(max(sum(sizes[:k]), sum(sizes[k:])) for k in range(1, len(sizes))) / sum(sizes)  # best 2-way cut
    c = 1e-4 + 4.0 * 8 * 128 / 1e8  # one boundary message: 8 samples x hidden 128 floats
    slots = pipeline_step_time(share * 0.01, share * 0.02, 2, 4, 4.0 * 8 * 128, link)
    assert slots == pytest.approx(5 * (share * 0.03 + 2 * c))
    assert pred["step_time_s"] == pytest.approx(slots + share * 0.003)
    assert pred["bubble_s"] == pytest.approx(bubble_fraction(2, 4) * slots)
    more = predict_step(cfg.replace(microbatches=8, global_batch=64), link, PROFILE, cores=64)
    assert more["bubble_s"] == pytest.approx(pred["bubble_s"])  # (p-1) slots whatever m (same micro-batch size)
    tp = predict_step(RunConfig(parallelism="tensor", world_size=2, hidden=32, layers=3), link, PROFILE, cores=64)
    act = 4.0 * 64 * 32
    assert tp["comm_s"] == pytest.approx(tensor_parallel_comm_time(act, 2, 2 * 3, link))
    assert tp["compute_s"] == pytest.approx(0.033 / 2)
    with pytest.raises(ValueError, match="ps-async"):
        predict_step(RunConfig(parallelism="data", world_size=2, sync="ps-async"), link, PROFILE, cores=64)


def test_plots_render(tmp_path: Path) -> None:
    from dpkit.viz.cost_plots import crossover_plot, fit_plot, predicted_vs_measured_plot, whatif_plot

    fit = pd.DataFrame(
        {"pattern": ["p2p", "p2p", "native", "native"], "world_size": [2, 2, 2, 2], "size_bytes": [1024, 4096, 1024, 4096],
         "time_s": [1e-4, 2e-4, 2e-4, 4e-4], "predicted_s": [1.1e-4, 1.9e-4, 2.2e-4, 3.9e-4]}
    )  # fmt: skip
    pvm = pd.DataFrame(
        {"strategy": ["a", "a", "b"], "world_size": [2, 4, 2], "predicted_step_time_s": [0.1, 0.06, 0.2],
         "measured_step_time_s": [0.11, 0.07, 0.18], "rel_error": [-0.09, -0.14, 0.11]}
    )  # fmt: skip
    link = PRESETS["10GbE"]
    figs = [
        fit_plot(fit),
        predicted_vs_measured_plot(pvm),
        whatif_plot(comm_scan(4e8, link), "10GbE", {"k=1": ps_ring_crossover(4e8, 1, link)}),
        crossover_plot(crossover_table(ks=(1, 2, 4)), "10GbE"),
    ]
    for i, fig in enumerate(figs):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 1000
        assert all(math.isfinite(v) for ax in fig.axes for v in ax.get_ylim())


def test_compare_reads_the_measured_side_from_the_run(small: RunConfig) -> None:
    from dpkit import run
    from dpkit.analysis.predict import compare, measure_compute

    cfg = small.replace(parallelism="data", world_size=2, grad_sync="flat")
    result = run(cfg)
    profile = measure_compute(cfg, cfg.global_batch // 2, threads=1)
    assert profile.forward_s > 0 and profile.backward_s > 0 and profile.optimizer_s > 0
    frame = compare(cfg, Link(alpha=1e-4, bandwidth=1e8), result=result, profile=profile).set_index("quantity")
    for q in ("step_time_s", "comm_s", "compute_s"):
        assert frame.loc[q, "measured"] == pytest.approx(result.summary[q])
    assert frame.loc["compute_s", "predicted"] == pytest.approx(profile.forward_s + profile.backward_s + profile.optimizer_s)


def test_profiles_combine_by_median_component_by_component() -> None:
    from dpkit.analysis.predict import median_profile

    runs = [ComputeProfile(16, f, b, o, 1) for f, b, o in ((0.1, 0.9, 0.5), (0.3, 0.2, 0.4), (0.2, 0.4, 0.6))]
    assert median_profile(runs) == ComputeProfile(16, 0.2, 0.4, 0.5, 1)


def test_measured_side_is_the_median_over_runs() -> None:
    from types import SimpleNamespace

    from dpkit.analysis.predict import QUANTITIES, compare_many, measured_quantities

    runs = [SimpleNamespace(summary={q: v for q in QUANTITIES}) for v in (0.3, 0.1, 0.2)]
    assert measured_quantities(runs) == {q: pytest.approx(0.2) for q in QUANTITIES}
    with pytest.raises(ValueError, match="repeats=0 is not allowed"):
        compare_many([RunConfig()], Link(alpha=1e-4, bandwidth=1e8), repeats=0)


@pytest.mark.parametrize(
    ("algo", "n", "expected"),
    [
        ("ring", 4, (12, 3 * S, 0, 0)),  # 2(n-1) exchange rounds, 2 latencies each; 2(n-1)/n S out and in; adds hidden
        ("native", 2, (4, 2 * S, 0, 0)),
        ("ring-whole", 4, (6, 6 * S, 3 * S, S)),  # (n-1) exchange rounds of S out and S in; one copy into the send buffer
        ("reduce-broadcast", 4, (2, 6 * S, 3 * S, 0)),  # the root: all receives, then all sends
        ("tree", 5, (6, 6 * S, 3 * S, 0)),  # ceil(log2 5) = 3 levels up and down
        ("p2p", 2, (1, S, 0, 0)),
        ("copy", 3, (0, 0, 0, S)),  # a local copy: mu only
        ("tree", 1, (0, 0, 0, 0)),
        ("ring-whole", 1, (0, 0, 0, 0)),
    ],
)
def test_single_host_terms_by_hand(algo: str, n: int, expected: tuple) -> None:
    assert host_terms(algo, S, n) == pytest.approx(expected)


def test_single_host_fit_recovers_parameters_per_world_size() -> None:
    truth = {2: Link(alpha=150e-6, bandwidth=3e9, gamma=0.2e-9, mu=0.3e-9), 4: Link(alpha=600e-6, bandwidth=1.5e9, mu=1e-9)}
    samples = [
        (algo, size, n, truth[n].time(host_terms(algo, size, n)))
        for n in truth
        for algo in ("native", "ring-whole", "reduce-broadcast", "tree", "p2p")
        for size in [2**10 * 4**i for i in range(8)]
    ]
    fitted = fit_host(samples)
    assert set(fitted) == {2, 4}
    for n, link in truth.items():
        for field in ("alpha", "bandwidth", "gamma", "mu"):
            assert getattr(fitted[n], field) == pytest.approx(getattr(link, field), rel=1e-6, abs=1e-15)
    model = HostModel(fitted)
    assert model.link(3) is fitted[4] and model.link(1) is fitted[2] and model.link(64) is fitted[4]  # nearest (ties: larger)
    assert model.allreduce_time("tree", S, 4) == pytest.approx(truth[4].time((4, 4 * S, 2 * S, 0)))
    assert model.allreduce_time("ring", S, 1) == 0.0
    assert HostModel.from_json(model.to_json()) == model


def test_copy_cost_is_the_relative_least_squares_slope() -> None:
    # t = 1 ms for 1 MB and 4 ms for 2 MB: x = S/t = 1e9 and 5e8; mu = (1e9 + 5e8) / (1e18 + 2.5e17) = 1.2e-9
    assert fit_copy_cost([("copy", 10**6, 2, 1e-3), ("copy", 2 * 10**6, 2, 4e-3)]) == pytest.approx(1.2e-9)
    assert fit_copy_cost([("copy", 10**6, 2, 1e-3)]) == pytest.approx(1e-9)
    with pytest.raises(ValueError, match="copy samples"):
        fit_copy_cost([])


def test_measured_copies_fix_mu_and_the_rest_is_fitted_around_it() -> None:
    truth = Link(alpha=200e-6, bandwidth=2e9, gamma=0.1e-9, mu=0.25e-9)
    sizes = [2**10 * 4**i for i in range(8)]
    samples = [(a, b, 3, truth.time(host_terms(a, b, 3))) for a in ("native", "ring-whole", "tree") for b in sizes]
    # the copies say mu is twice what would fit the all-reduces best: the measurement wins
    copies = [("copy", b, 3, 2 * truth.mu * b) for b in sizes[4:]]
    fitted = fit_host(samples + copies)[3]
    assert fitted.mu == pytest.approx(2 * truth.mu)
    assert fitted.alpha > 0 and fitted.bandwidth > 0
    exact = fit_host(samples + [("copy", b, 3, truth.mu * b) for b in sizes[4:]])[3]
    for field in ("alpha", "bandwidth", "gamma", "mu"):
        assert getattr(exact, field) == pytest.approx(getattr(truth, field), rel=1e-6, abs=1e-15)
    with pytest.raises(ValueError, match="only copy samples"):
        fit_host(copies)


def test_oversubscription_scales_compute_when_ranks_outnumber_cores() -> None:
    from dpkit.analysis.predict import slowest_rank_slowdown

    assert slowest_rank_slowdown(2, 1, cores=2) == 1.0 and slowest_rank_slowdown(3, 1, cores=2) == 2.0  # mean: 1.5
    assert slowest_rank_slowdown(4, 1, cores=2) == 2.0 and slowest_rank_slowdown(5, 2, cores=4) == 3.0
    assert oversubscription(2, 1, cores=2) == 1.0 and oversubscription(4, 1, cores=2) == 2.0
    assert oversubscription(3, 2, cores=8) == 1.0
    cfg = RunConfig(parallelism="data", world_size=4, grad_sync="flat", global_batch=32, freeze=("embed",))
    link = Link(alpha=1e-4, bandwidth=1e8)
    pred = predict_step(cfg, link, PROFILE, cores=2)
    assert pred["compute_s"] == pytest.approx(2 * 0.033)
    host = HostModel({2: Link(alpha=1e-4, bandwidth=1e8), 4: Link(alpha=1e-3, bandwidth=1e7)})
    on_host = predict_step(cfg, host, PROFILE, cores=2)
    assert on_host["comm_s"] == pytest.approx(host.links[4].time(host_terms("native", _grad_bytes(cfg), 4)))


def test_a_servers_per_message_overhead_grows_with_its_workers() -> None:
    """A PS pays 2 latencies whatever n, but its server takes n pushes in one after another: n*o (and each worker
    k pulls). The ring charges o with every one of its 2(n-1) messages. With o the PS loses to the ring sooner."""
    from dpkit.cost.model import Link, allreduce_time, ps_time

    plain = Link(alpha=30e-6, bandwidth=1.25e9)
    with_o = Link(alpha=30e-6, bandwidth=1.25e9, overhead=5e-6)
    size = 4e3  # latency-bound: 1,000 parameters
    for n, k in ((4, 1), (64, 1), (64, 4)):
        assert ps_time(size, n, k, with_o) - ps_time(size, n, k, plain) == pytest.approx((n + k) * 5e-6)
        assert allreduce_time("ring", size, n, with_o) - allreduce_time("ring", size, n, plain) == pytest.approx(
            2 * (n - 1) * 5e-6
        )

    tiny = 4.0  # one number: only latencies and overheads count
    never = [n for n in (4, 64, 1024) if allreduce_time("tree", tiny, n, plain) < ps_time(tiny, n, 1, plain)]
    assert never == []  # without o a server pays 2 alpha whatever n: the tree's 2 log2(n) alpha never wins
    loses = [n for n in (4, 64, 1024) if allreduce_time("tree", tiny, n, with_o) < ps_time(tiny, n, 1, with_o)]
    assert loses == [1024]  # with o, n o at the server's port outgrows the tree's 2 log2(n)(alpha + o)

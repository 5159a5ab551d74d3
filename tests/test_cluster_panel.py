"""The cluster-scale model (dpkit.analysis.cluster) and its panel (dpkit.viz.cluster_panel): predicted scaling to
1,024 devices on two-level nodes, checked against the cost model's formulas, and (slow) against emulated runs."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from dpkit import RunConfig
from dpkit.analysis import cluster
from dpkit.cost import memory
from dpkit.cost.model import (
    PRESETS,
    Link,
    bucketed_overlap,
    flat_ring_time_on_nodes,
    hierarchical_time,
    ps_time,
    ring_terms,
    tree_terms,
)
from dpkit.cost.step_model import ComputeProfile

NV, GBE, E100 = PRESETS["NVLink"], PRESETS["1GbE"], PRESETS["100GbE"]
COMPUTE = cluster.Compute(per_sample_s=1e-3, optimizer_s=2e-3, label="test")


def make(**kw) -> cluster.Cluster:
    base = {"params": 1e8, "per_device_batch": 8, "compute": COMPUTE, "devices_per_node": 8, "intra": NV, "inter": E100}
    return cluster.Cluster(**(base | kw))


# ---- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("method", "allreduce"), ("params", 0), ("per_device_batch", 0), ("devices_per_node", 0), ("servers", 0),
     ("zero_stage", 0), ("bucket_mb", -1), ("grad_bytes_per_param", 8), ("precision", "fp8")],
)  # fmt: skip
def test_bad_values_are_a_value_error_naming_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"Cluster.{field}="):
        make(**{field: value})


def test_device_counts_go_inside_one_node_then_by_whole_nodes_to_1024() -> None:
    assert cluster.device_counts(8) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert cluster.device_counts(6) == [1, 2, 4, 6, 12, 24, 48, 96, 192, 384, 768]
    assert cluster.nodes_of(4, 8) == (1, 4) and cluster.nodes_of(64, 8) == (8, 8)
    with pytest.raises(ValueError, match="do not fill nodes"):
        cluster.nodes_of(12, 8)


# ---- each sync method prices what the cost model says ------------------------------------------------------------
def test_one_all_reduce_on_nodes_is_the_cost_models() -> None:
    s = 4e6
    assert cluster.allreduce_on_nodes("ring", s, 4, 8, NV, GBE) == pytest.approx(flat_ring_time_on_nodes(s, 4, 8, NV, GBE))
    assert cluster.allreduce_on_nodes("hierarchical", s, 4, 8, NV, GBE) == pytest.approx(hierarchical_time(s, 4, 8, NV, GBE))
    # the tree: every round crosses with one device per node, none inside one node
    assert cluster.tree_time_on_nodes(s, 8, 1, NV, GBE) == pytest.approx(GBE.time(tree_terms(s, 8)))
    assert cluster.tree_time_on_nodes(s, 1, 8, NV, GBE) == pytest.approx(NV.time(tree_terms(s, 8)))
    # 2 nodes of 2: the first round (pairs 0-1, 2-3) stays inside, the second (0-2) crosses
    one = 2 * (NV.alpha + NV.overhead + s / NV.bandwidth) + 2 * (GBE.alpha + GBE.overhead + s / GBE.bandwidth)
    assert cluster.tree_time_on_nodes(s, 2, 2, NV, GBE) == pytest.approx(one)
    assert cluster.tree_root_children_across(2, 2) == (2, 1)


def test_equal_buckets_overlap_as_the_cost_models_simulation() -> None:
    """The closed form of the one-at-a-time recursion against cost.model.bucketed_overlap, both sides of the knee."""
    link = Link(alpha=1e-4, bandwidth=1e8)
    for m, size, t_b in [(1, 1e6, 0.01), (4, 1e6, 0.001), (10, 1e6, 0.05), (37, 5e6, 0.02), (5, 1e5, 1.0)]:
        each = link.time(ring_terms(size / m, 4))
        ov = bucketed_overlap([size / m] * m, t_b, 4, link, "ring")
        assert cluster.overlapped_exposed(m, each, t_b) == pytest.approx(ov.exposed_s, rel=1e-9, abs=1e-12)
        assert m * each == pytest.approx(ov.comm_s)


def test_a_step_is_compute_plus_what_the_backward_does_not_hide() -> None:
    c = make(bucket_mb=0, overlap=False, method="ring")
    row = cluster.step_at(c, 64)
    comm = flat_ring_time_on_nodes(4e8, 8, 8, NV, E100)
    assert row["comm_s"] == pytest.approx(comm) and row["exposed_comm_s"] == pytest.approx(comm)
    assert row["step_time_s"] == pytest.approx(8e-3 + 2e-3 + comm)
    hidden = cluster.step_at(make(bucket_mb=25, overlap=True), 64)
    assert hidden["exposed_comm_s"] < hidden["comm_s"] and hidden["step_time_s"] < row["step_time_s"] + hidden["comm_s"]


def test_hierarchical_beats_the_flat_ring_across_slow_links_and_sends_a_node_th_across() -> None:
    """2 nodes x 2 devices, NVLink within and 1 GbE between: a third of the ring's bytes cross, the step is shorter."""
    c = dict(devices_per_node=2, intra=NV, inter=GBE, bucket_mb=0, overlap=False, params=1e6)
    ring, hier = cluster.step_at(make(method="ring", **c), 4), cluster.step_at(make(method="hierarchical", **c), 4)
    s = 4e6
    assert ring["inter_node_bytes_per_device"] == pytest.approx(1.5 * s)
    assert hier["inter_node_bytes_per_device"] == pytest.approx(0.5 * s)
    assert hier["bytes_per_device"] == pytest.approx(ring["bytes_per_device"])  # the same bytes, fewer of them across
    assert hier["step_time_s"] < 0.8 * ring["step_time_s"]


def test_parameter_servers_and_zero_price_their_own_traffic_and_memory() -> None:
    ps = cluster.step_at(make(method="ps", servers=4, inter=GBE), 32)
    assert ps["comm_s"] == pytest.approx(ps_time(4e8, 32, 4, GBE))
    assert ps["server_bytes"] == pytest.approx(32 * 4e8 / 4) and ps["bytes_per_device"] == pytest.approx(4e8)
    assert ps["server_s"] == pytest.approx(2e-3 / 4) and ps["memory_per_device_bytes"] == pytest.approx(8 * 1e8)
    for stage in (1, 2, 3):
        z = cluster.step_at(make(method="zero", zero_stage=stage), 64)
        assert z["memory_per_device_bytes"] == pytest.approx(memory.state_bytes_per_param(stage, 64, "fp32 adam") * 1e8)
        assert z["bytes_per_device"] == pytest.approx((3 if stage == 3 else 2) * 63 / 64 * 4e8)
    assert cluster.step_at(make(method="ring"), 64)["memory_per_device_bytes"] == pytest.approx(16 * 1e8)


def test_a_parameter_server_is_priced_where_its_processes_are() -> None:
    """Port by port: on one link exactly cost.model.ps_time; each message on the link between its two processes'
    nodes (servers sharing the workers' node: the intra link, on a node of their own: the inter link)."""
    s = 4e6
    for n, k in [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2), (3, 4)]:
        placed = cluster.ps_time_placed([s / k] * k, range(n), range(n, n + k), 1, GBE, GBE)
        assert placed == pytest.approx(ps_time(s, n, k, GBE)), (n, k)
    assert cluster.ps_time_placed([s / 2] * 2, [0, 1], [2, 3], 4, NV, GBE) == pytest.approx(ps_time(s, 2, 2, NV))
    assert cluster.ps_time_placed([s / 2] * 2, [0, 1], [2, 3], 2, NV, GBE) == pytest.approx(ps_time(s, 2, 2, GBE))
    # 3 workers and 1 server on nodes of 2: worker 2 shares node 1 with the server, workers 0 and 1 cross
    mixed = cluster.ps_time_placed([s], [0, 1, 2], [3], 2, NV, GBE)
    assert mixed == pytest.approx(2 * GBE.alpha + 3 * GBE.overhead + 2 * (2 * s / GBE.bandwidth + s / NV.bandwidth))
    assert cluster.ps_inter_node_bytes([s], [0, 1, 2], [3], 2) == 2 * s  # the server takes in two workers' across
    assert cluster.ps_ranks(4, 2, 8, "own nodes") == ([0, 1, 2, 3], [8, 9])
    assert cluster.ps_ranks(4, 2, 8, "after workers") == ([0, 1, 2, 3], [4, 5])


def test_a_parameter_server_run_is_priced_with_its_placement_and_real_shards() -> None:
    """2 workers + 2 servers: on nodes of 2 the servers have a node of their own (every byte crosses 1 GbE); on
    one node of 4 nothing crosses. The shards are whole tensors, as the run lays them out (not exactly S/2)."""
    cfg = RunConfig(model="mlp", hidden=256, layers=2, global_batch=8, parallelism="data", world_size=2, sync="ps",
                    num_servers=2, link="1GbE", ranks_per_node=2)  # fmt: skip
    profile = ComputeProfile(batch=4, forward_s=0.0, backward_s=0.0, optimizer_s=0.0, threads=1)
    shards = cluster.ps_shard_bytes(cfg)
    assert len(shards) == 2 and sum(shards) == 4 * 1070346 and max(shards) > 4 * 1070346 / 2
    apart = cluster.predict_config(cfg, profile)
    assert apart["comm_s"] == pytest.approx(cluster.ps_time_placed(shards, [0, 1], [2, 3], 1, GBE, GBE))
    assert apart["inter_node_bytes_per_device"] == pytest.approx(2 * max(shards))  # the busiest server's intake
    together = cluster.predict_config(cfg.replace(ranks_per_node=4), profile)
    assert together["comm_s"] == pytest.approx(cluster.ps_time_placed(shards, [0, 1], [2, 3], 1, NV, NV))
    assert together["inter_node_bytes_per_device"] == 0 and together["comm_s"] < apart["comm_s"] / 100


def test_validation_runs_the_issues_links_and_one_this_machine_honours() -> None:
    both = cluster.validation_configs()
    assert len(both) == 24 and len(cluster.validation_configs(quick=True)) == 8
    slow = [c for c in both if c.link == "custom"]
    assert len(slow) == 12
    assert {(c.link_latency_s, c.link_bandwidth_Bps) for c in slow} == {(cluster.SLOW_LATENCY_S, cluster.SLOW_BANDWIDTH_BPS)}
    assert cluster.SLOW_BANDWIDTH_BPS == PRESETS["1GbE"].bandwidth / 10
    assert {c.intra_node_link for c in slow if c.ranks_per_node > 1} == {"1GbE"}
    assert {c.intra_node_link for c in both if c.link == "1GbE" and c.ranks_per_node > 1} == {"NVLink"}
    assert "12.5 MB/s" in cluster.topology_label(slow[0])
    with pytest.raises(ValueError, match="links="):
        cluster.validation_configs(links=["10GbE"])


def _validated(**columns) -> pd.DataFrame:
    base = {"sync": "ring", "topology": "t", "rel_error": 0.1, "link_not_honoured": 0, "paced_messages": 100,
            "late_s": 0.0, "worst_late_s": 0.0, "timed_steps": 8, "measured_step_time_s": 0.1, "load_1min_start": 0.5, "load_1min_end": 0.5}  # fmt: skip
    return pd.DataFrame([base | {k: v[i] for k, v in columns.items()} for i in range(len(next(iter(columns.values()))))])


def test_a_row_is_honoured_only_when_late_messages_cannot_have_moved_its_step() -> None:
    """All lateness per timed step against the step: 8 ms of lateness in 8 steps on a 100 ms step adds at most 1%;
    160 ms in 8 steps up to 20%. A load above 1.5 per core when the runs began withholds every row."""
    table = _validated(
        link_not_honoured=[0, 8, 8, 30, 8], late_s=[0.0, 0.008, 0.16, 0.03, 0.008], worst_late_s=[0.0, 0.001, 0.02, 0.001, 0.001],
        load_1min_start=[0.5, 0.5, 0.5, 0.5, 5.0], load_1min_end=[0.5, 0.5, 0.5, 6.0, 0.5],
        sync=["ring", "tree", "ps", "hierarchical", "ring"],
    )  # fmt: skip
    assert list(cluster.late_share_bound(table).round(4)) == [0.0, 0.01, 0.2, 0.0375, 0.01]
    assert list(cluster.row_honoured(table, cores=2)) == [True, True, False, True, False]
    ok, why = cluster.links_honoured(table.iloc[:4], cores=2)
    assert not ok and why == "1 of 4 rows not honoured (late messages): ps on t (8 of 100 late, up to 20% of the step)"
    assert "load average 5.0" in cluster.links_honoured(table, cores=2)[1]
    assert cluster.links_honoured(table.iloc[:2], cores=2)[0]
    assert cluster.error_by_sync(table.assign(cpu_count=2)) == {"ring": 0.1, "tree": 0.1, "hierarchical": 0.1}
    # older records: without late_s, the late messages per step at the worst lateness; without that, their count
    assert list(cluster.late_share_bound(table.drop(columns="late_s")).round(4)) == [0.0, 0.01, 0.2, 0.04, 0.01]
    old = table.drop(columns=["late_s", "worst_late_s", "timed_steps"])  # at most 10% of the messages late
    assert list(cluster.row_honoured(old, cores=2)) == [True, True, True, False, False]


def test_scale_reports_speedup_efficiency_and_fit_for_every_row() -> None:
    frame = cluster.scale(make(method="hierarchical", device_memory_bytes=1e9))
    assert list(frame.devices) == cluster.device_counts(8) and set(frame.kind) == {"predicted"}
    assert frame.speedup.iloc[0] == pytest.approx(1.0) and (frame.efficiency <= 1 + 1e-12).all()
    assert (frame.global_batch == frame.devices * 8).all()
    assert not frame.fits.any()  # 1.6 GB of states on a 1 GB device
    assert frame.measured_error.isna().all()
    with pytest.raises(ValueError, match="devices="):
        cluster.scale(make(), [0, 2048])


def test_scale_quotes_the_measured_error_only_where_it_was_measured() -> None:
    frame = cluster.scale(make(method="tree"), errors={"tree": 0.12, "ring": 0.3})
    assert (frame.loc[frame.devices <= 4, "measured_error"] == 0.12).all()
    assert frame.loc[frame.devices > 4, "measured_error"].isna().all()


def test_time_to_accuracy_is_steps_at_that_batch_times_the_step() -> None:
    measured = pd.DataFrame({"global_batch": [8, 64, 512], "steps_to_target": [800.0, 200.0, 100.0]})
    frame = cluster.scale(make(per_device_batch=8, devices_per_node=8), convergence=measured)
    row = frame.set_index("devices").loc[8]
    assert row.steps_to_target == 200.0 and row.steps_source == "measured"
    assert row.time_to_target_s == pytest.approx(200.0 * row.step_time_s)
    assert frame.set_index("devices").loc[1024, "steps_source"] == "extrapolated"


def test_assumed_compute_is_labelled_and_measured_compute_comes_from_a_profile() -> None:
    h100 = cluster.assumed_compute("H100-class", 1e9)
    assert "assumed" in h100.label and h100.per_sample_s == pytest.approx(6e9 / 400e12)
    m = cluster.measured_compute(ComputeProfile(batch=4, forward_s=0.01, backward_s=0.02, optimizer_s=0.005, threads=1), 2.0)
    assert m.per_sample_s == pytest.approx(2 * 0.03 / 4) and m.optimizer_s == pytest.approx(0.01)
    assert m.backward_share == pytest.approx(2 / 3) and "measured on this machine" in m.label


def test_a_run_config_on_emulated_nodes_is_priced_on_both_links() -> None:
    cfg = RunConfig(model="mlp", hidden=256, layers=2, global_batch=8, parallelism="data", world_size=4,
                    grad_sync="flat", allreduce_algo="hierarchical", link="1GbE", ranks_per_node=2)  # fmt: skip
    profile = ComputeProfile(batch=2, forward_s=0.0, backward_s=0.0, optimizer_s=0.0, threads=1)
    row = cluster.predict_config(cfg, profile)
    size = 4 * 1070346
    assert row["comm_s"] == pytest.approx(hierarchical_time(size, 2, 2, NV, GBE))
    assert row["inter_node_bytes_per_device"] == pytest.approx(size / 2)
    with pytest.raises(ValueError, match="allreduce_algo"):
        cluster.predict_config(cfg.replace(allreduce_algo="native"), profile)


def test_the_panel_draws_and_tabulates_up_to_1024_devices() -> None:
    from dpkit.viz import cluster_panel

    fig, frame = cluster_panel.cluster_scale(
        1e9, 8, cluster.assumed_compute("H100-class", 1e9), nodes=16, sync="zero", zero_stage=3
    )
    assert frame.devices.max() == 1024 and 128 in set(frame.devices)
    assert all("predicted" in ax.get_title() for ax in fig.axes if ax.get_title())
    assert "Predicted" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="nodes="):
        cluster_panel.cluster_scale(1e9, 8, cluster.assumed_compute("H100-class", 1e9), nodes=256)
    panel = cluster_panel.cluster_panel(errors={"ring": 0.1})
    panel.set(sync="hierarchical")  # every change redraws (nothing runs: the prediction is instant)
    assert panel.runs == 1 and panel.error is None and panel.frame is not None and panel.frame.kind.eq("predicted").all()
    panel.set(compute_choice="this machine (measured)").run()
    assert isinstance(panel.error, ValueError)  # no profile given: said, not raised into the notebook


@pytest.mark.slow
def test_every_sync_renders_1024_devices_well_under_two_seconds() -> None:
    """Counted generously on a shared 2-core machine: all five methods at every device count, model and figure."""
    from dpkit.viz import cluster_panel

    compute = cluster.assumed_compute("A100-class", 7e9)
    for sync in cluster.SYNCS:
        start = time.perf_counter()
        cluster_panel.cluster_scale(7e9, 4, compute, nodes=128, sync=sync, bucket_mb=1)
        assert time.perf_counter() - start < 2.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)), sync


# ---- against emulated runs (slow) -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_predictions_match_emulated_runs_within_25_percent_median() -> None:
    """Ring, tree, hierarchical and PS at n <= 4 on one link and on 2 nodes x 2 ranks, on 1GbE (NVLink within: the
    issue's rows) and on a link ten times slower (1GbE within) that this 2-core machine can honour. Bytes per rank
    and bytes across nodes exactly as predicted on every row, whatever the load. Steps: the median |relative error|
    at most 25%, overall and per sync method, over the rows that measured their links (cluster.row_honoured),
    which must include every slow-link row; and each slow-link row within 25%. Deviation from the issue's words: the 1GbE rows count only where this
    machine honoured their links (docs/cluster.md says why it mostly does not). Skipped, saying why, on a busy
    machine or when a slow-link row was not honoured."""
    load = os.getloadavg()[0]
    if load > cluster.BUSY_PER_CORE * (os.cpu_count() or 1):
        pytest.skip(f"load average {load:.1f} on {os.cpu_count()} cores: too busy to time emulated links")
    table = cluster.validate(cluster.validation_configs(), repeats=2)
    show = ["sync", "topology", "predicted_step_time_s", "measured_step_time_s", "rel_error", "link_not_honoured", "honoured"]
    print("\n" + table[show].to_string())
    assert (table.predicted_bytes_per_rank - table.measured_bytes_per_rank).abs().max() <= 8  # float32 padding
    on_nodes = table.dropna(subset=["measured_inter_node_bytes_per_rank"])
    assert len(on_nodes) == 8 and set(on_nodes.sync) == {"ring", "tree", "hierarchical", "ps"}
    gap = on_nodes.predicted_inter_node_bytes_per_rank - on_nodes.measured_inter_node_bytes_per_rank
    assert gap.abs().max() <= 8  # the PS's too: the model lays out the servers' real shards
    slow = table.link != "1GbE"
    assert slow.sum() == 12 and set(table[slow].sync) == {"ring", "tree", "hierarchical", "ps"}
    honoured, why = cluster.links_honoured(table[slow])
    if not honoured:
        pytest.skip(f"step times not asserted: on the slow link, {why}")
    kept = table[table.honoured]
    print(
        f"median |error| {kept.rel_error.abs().median():.1%} over {len(kept)} honoured rows; per sync {cluster.error_by_sync(table)}"
    )
    assert kept.rel_error.abs().median() <= 0.25, kept
    assert max(cluster.error_by_sync(table).values()) <= 0.25, cluster.error_by_sync(table)
    # stronger than the issue's median: every slow-link row (each topology, each sync method) within 25%
    assert (table[slow].rel_error.abs() <= 0.25).all(), table[slow]


@pytest.mark.slow
def test_bench_cluster_quick_records_predicted_beside_measured(tmp_path) -> None:
    """`dpkit bench cluster --quick`: a row per config with both steps, the load and the late messages; bytes exact."""
    from dpkit.cli import main as cli_main

    assert cli_main(["bench", "cluster", "--quick", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "cluster.csv")
    assert len(table) == len(cluster.validation_configs(quick=True))
    wanted = {"predicted_step_time_s", "measured_step_time_s", "link_not_honoured", "worst_late_s", "honoured", "link"}
    assert wanted | {"load_1min_start", "measured_at"} <= set(table.columns)
    assert set(table.link) == {"1GbE", cluster.link_label(cluster.validation_configs(quick=True, links=["slow"])[0])}
    assert (table.predicted_bytes_per_rank - table.measured_bytes_per_rank).abs().max() <= 8


def test_the_validation_figure_shows_predicted_beside_measured_and_withholds_what_was_not_honoured() -> None:
    from dpkit.viz import cluster_panel

    table = _validated(
        link_not_honoured=[0, 30, 0], late_s=[0.0, 0.5, 0.0], link=["1GbE", "1GbE", "custom link"],
        predicted_step_time_s=[0.09, 0.05, 0.2], measured_step_time_s=[0.1, 0.1, 0.2], rel_error=[-0.1, -0.5, 0.0],
        world_size=[2, 4, 2], servers=[0, 0, 1], topology=["2 processes on 1GbE", "2 nodes x 2 (NVLink within, 1GbE between)", "t"],
    )  # fmt: skip
    fig = cluster_panel.validation_figure(table.assign(cpu_count=2))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["-10%", "withheld", "+0%"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["1GbE: median |error| 10% over 1 honoured rows", "custom link: median |error| 0% over 1 honoured rows"]
    assert "Predicted" in fig._suptitle.get_text() and "emulated" in fig._suptitle.get_text()
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["ring\n2 ranks", "ring\n2x2 nodes"]


def test_the_two_level_figure_marks_each_pair_of_links_and_what_was_withheld() -> None:
    from dpkit.viz import cluster_panel

    table = _validated(
        sync=["ring", "hierarchical"], late_s=[0.0, 0.5], predicted_step_time_s=[0.13, 0.05], measured_step_time_s=[0.14, 0.07],
        rel_error=[-0.07, -0.29], predicted_inter_node_bytes_per_rank=[3e6, 1e6], measured_inter_node_bytes_per_rank=[3e6, 1e6],
        topology=["2 nodes x 2 (1GbE within, custom link between)"] * 2,
    )  # fmt: skip
    fig = cluster_panel.two_level_figure(table.assign(cpu_count=2), "why")
    assert [t.get_text() for t in fig.axes[0].texts] == ["-7%", "withheld"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "ring\n1GbE within,\ncustom link between",
        "hierarchical\n1GbE within,\ncustom link between",
    ]
    assert "emulated" in fig._suptitle.get_text()

"""Emulated nodes (RunConfig.ranks_per_node, intra_node_link) and the hierarchical all-reduce over them.

Ranks r*k .. r*k+k-1 share node r: messages inside a node are paced by the intra-node link, between nodes by
`link`, each on its own ports. The hierarchical all-reduce (dpkit/comm/hierarchical.py) sums exactly what
dist.all_reduce sums, trains exactly like one process, and on 2 nodes x 2 ranks takes well under the flat ring's
time, as dpkit.cost.model.hierarchical_time predicts: asserted on the links this machine honours (1 GbE within, a
link ten times slower between); NVLink within and 1 GbE between is run and reported beside them.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import SMALL, assert_same_training, reference

from dpkit import RunConfig, run
from dpkit.comm.emulation import Nodes, network_for
from dpkit.comm.group import GroupView
from dpkit.comm.hierarchical import node_views
from dpkit.comm.link import describe, link_meta
from dpkit.comm.transport import Transport
from dpkit.cost.model import PRESETS, flat_ring_time_on_nodes, hierarchical_time, ring_terms
from dpkit.runtime.launch import launch


# ---- configuration -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "knobs, field",
    [
        ({"parallelism": "data", "world_size": 4, "ranks_per_node": 3}, "ranks_per_node"),
        ({"parallelism": "data", "world_size": 4, "ranks_per_node": 0}, "ranks_per_node"),
        ({"parallelism": "data", "world_size": 4, "ranks_per_node": 2, "intra_node_link": "custom"}, "intra_node_link"),
        ({"parallelism": "data", "world_size": 4, "ranks_per_node": 2, "intra_node_link": "nvlink"}, "intra_node_link"),
    ],
)
def test_bad_nodes_are_a_value_error_naming_the_field(knobs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RunConfig.{field}="):
        RunConfig(**knobs)


def test_the_network_a_config_asks_for() -> None:
    assert network_for(RunConfig(parallelism="data", world_size=4, link="1GbE")) == PRESETS["1GbE"]  # one node per rank: one link
    nodes = network_for(RunConfig(parallelism="data", world_size=4, link="1GbE", ranks_per_node=2))
    assert nodes == Nodes(2, PRESETS["NVLink"], PRESETS["1GbE"])
    assert network_for(RunConfig(parallelism="data", world_size=4, ranks_per_node=2, intra_node_link="none")) == Nodes(
        2, None, None
    )
    # a parameter server's processes count: 2 workers + 2 servers = 4 processes, nodes of 2 divide them
    RunConfig(parallelism="data", world_size=2, sync="ps", num_servers=2, ranks_per_node=2)
    cfg = RunConfig(parallelism="data", world_size=4, link="1GbE", ranks_per_node=2)
    meta = link_meta(cfg, [{"messages": 1, "collectives": 0, "late": 0, "worst_late_s": 0.0}])
    assert meta["link"]["nodes"] == {"ranks_per_node": 2, "intra_node_link": "NVLink"}
    assert describe(meta).endswith("; nodes of 2 ranks, within a node NVLink-class, alpha = 3 us, B = 150 GB/s")


def test_node_views_split_a_group_into_its_nodes_and_the_ranks_across() -> None:
    nodes_of_2 = Transport(ranks_per_node=2)
    node, across = node_views(GroupView((0, 1, 2, 3, 4, 5), 3, None, nodes_of_2))  # global rank 3: node 1, second place
    assert (node.ranks, node.me) == ((2, 3), 1)
    assert (across.ranks, across.me) == ((1, 3, 5), 1)
    assert node_views(GroupView((1, 2, 3), 0, None, nodes_of_2)) is None  # nodes of 1 and 2 ranks: the flat ring
    assert node_views(GroupView((0, 1), 0, None, nodes_of_2)) is None  # one node
    assert node_views(GroupView((0, 1, 2, 3), 0, None, Transport())) is None  # a node per rank


def test_the_cost_model_prices_both_levels() -> None:
    """t = 2(r-1)(a_intra + S/(r B_intra)) + 2(N-1)(a_inter + S/(r N B_inter)); the flat ring runs at the slow
    link's pace. On 2 x 2 with NVLink inside and 1 GbE between, 4 MiB: a third of the flat ring's bytes cross nodes."""
    nv, gbe, size = PRESETS["NVLink"], PRESETS["1GbE"], 4 * 2**20
    per_msg = gbe.alpha + gbe.overhead  # NVLink-class: no per-message overhead
    expected = 2 * (nv.alpha + size / 2 / nv.bandwidth) + 2 * (per_msg + size / 4 / gbe.bandwidth)
    assert hierarchical_time(size, 2, 2, nv, gbe) == pytest.approx(expected)
    assert flat_ring_time_on_nodes(size, 2, 2, nv, gbe) == pytest.approx(gbe.time(ring_terms(size, 4)))
    assert hierarchical_time(size, 2, 2, nv, gbe) < 0.7 * flat_ring_time_on_nodes(size, 2, 2, nv, gbe)
    assert hierarchical_time(size, 1, 4, nv, gbe) == pytest.approx(nv.time(ring_terms(size, 4)))  # one node: its ring


# ---- real ranks ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("world, per_node", [(4, 2), (6, 2), (6, 3)])
def test_hierarchical_sums_exactly_on_emulated_nodes(tmp_path, world: int, per_node: int) -> None:
    """Against dist.all_reduce, over the world (nodes) and a subgroup (ranks 1.., unequal nodes: the flat ring),
    on fast emulated links; the other algorithms on the same nodes too."""
    fast = {"alpha": 1e-6, "bandwidth": 1e10}
    payload = {"lengths": [0, 1, 5, 1001], "segment_bytes": 400, "ranks_per_node": per_node, "intra": fast, "link": fast}
    launch("comm_targets:check_ranks", payload, world, tmp_path, threads_per_rank=1, timeout_s=120)
    rows = json.loads((tmp_path / "check.json").read_text())
    assert {r["algo"] for r in rows} >= {"hierarchical", "ring", "native"}
    wrong = [r for r in rows if not r["equal"]]
    assert not wrong, wrong[:5]
    flat = [r for r in rows if r["algo"] == "hierarchical" and r["group"] != "world"]  # unequal nodes: the ring's bytes
    assert flat and all(r["sent"] == r["predicted"] for r in flat)
    if (world, per_node) == (4, 2):  # on 2 x 2 a rank sends S/2 + S/2 + S/2 (only the middle S/2 between nodes)
        on_nodes = [r for r in rows if r["algo"] == "hierarchical" and r["group"] == "world" and r["length"] == 1001]
        item = {"torch.float32": 4, "torch.float64": 8}
        assert on_nodes and all(abs(r["sent"] - 1.5 * 1001 * item[r["dtype"]]) <= 2 * item[r["dtype"]] for r in on_nodes)


@pytest.mark.slow
@pytest.mark.parametrize("world, per_node", [(4, 2), (6, 2)])
def test_hierarchical_training_equals_single_process(world: int, per_node: int) -> None:
    """2 nodes x 2 ranks and 3 nodes x 2 ranks, NVLink within and 1 GbE between: the same training as one process."""
    cfg = SMALL.replace(
        parallelism="data", world_size=world, grad_sync="flat", allreduce_algo="hierarchical",
        link="1GbE", ranks_per_node=per_node,
    )  # fmt: skip
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    assert result.meta["link"]["nodes"]["ranks_per_node"] == per_node and result.meta["link"]["messages"] > 0


BUSY_FOR_NODES = 1.5  # load average per core above which the real transfers, not the links, set the step


@pytest.mark.slow
def test_hierarchical_step_is_shorter_than_the_flat_rings_on_two_nodes() -> None:
    """2 nodes x 2 ranks, 4.28 MB of gradients: the hierarchical all-reduce moves a third of the flat ring's bytes
    over the slow link, and its step must be at least 20% shorter (medians of two runs each, the runs taking
    turns), on every pair of links this machine honoured (cluster.row_honoured). The pairs: NVLink within and
    1 GbE between (the issue's; NVLink's messages are faster than this machine's loopback, so that pair is
    reported and, when not honoured, not asserted), and 1 GbE within and a custom link ten times slower between,
    which this machine honours when quiet. Skipped, saying why, on a busy machine or when that pair was not
    honoured."""
    from dpkit.analysis import cluster

    one = os.getloadavg()[0]
    if one > BUSY_FOR_NODES * (os.cpu_count() or 1):
        pytest.skip(f"load average {one:.1f} on {os.cpu_count()} cores: too busy to time emulated nodes")
    table = cluster.validate(cluster.two_node_configs(steps=6, links=("1GbE", "slow")), repeats=2)
    for link, pair in table.groupby("link", sort=False):
        side = pair.set_index("sync")
        ring, hier = side.loc["ring"], side.loc["hierarchical"]
        shorter = 1 - hier.measured_step_time_s / ring.measured_step_time_s
        print(f"\n{link} between, load {one:.2f}: flat ring {ring.measured_step_time_s * 1e3:.1f} ms, hierarchical "
              f"{hier.measured_step_time_s * 1e3:.1f} ms ({shorter:.0%} shorter); {cluster.links_honoured(pair)[1]}")  # fmt: skip
        assert 1 - hier.predicted_step_time_s / ring.predicted_step_time_s >= 0.2  # what the model says
        if side.honoured.all():
            assert shorter >= 0.2, side
    slow = table[table.link != "1GbE"]
    honoured, why = cluster.links_honoured(slow)
    if not honoured:
        pytest.skip(f"the slow pair's steps not asserted: {why}")

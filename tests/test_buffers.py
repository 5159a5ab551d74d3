"""dpkit.buffers: the one bucket plan and flat-buffer type that grad sync, ZeRO and the cost model share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpkit.buffers import MB, FlatBuffer, LiveBytes, bucket_bytes, plan_buckets
from dpkit.cost.model import buckets_of


def test_buckets_close_before_the_limit_and_a_big_tensor_is_its_own() -> None:
    sizes = [0.4 * MB, 0.4 * MB, 0.4 * MB, 3 * MB, 0.1 * MB]
    assert plan_buckets(sizes, 1.0) == [[0, 1], [2], [3], [4]]
    assert bucket_bytes(sizes, 1.0) == [0.8 * MB, 0.4 * MB, 3 * MB, 0.1 * MB]
    assert plan_buckets([], 1.0) == [] and plan_buckets([5], 1.0) == [[0]]
    assert plan_buckets(sizes, 100.0) == [[0, 1, 2, 3, 4]]


def test_the_cost_model_prices_the_buckets_the_sync_forms() -> None:
    sizes = [4 * n for n in (1000, 70_000, 300, 260_000, 12, 90_000)]
    arrival = list(reversed(sizes))  # the sync plans parameters in reverse order
    assert buckets_of(sizes, 0.5) == bucket_bytes(arrival, 0.5)


def test_flat_buffer_packs_pads_and_shards() -> None:
    a, b = torch.arange(6.0).view(2, 3), torch.arange(6.0, 11.0)
    flat = FlatBuffer([a, b], shards=4)
    assert flat.numel == 11 and flat.shard_numel == 3 and flat.data.numel() == 12
    flat.pack()
    assert flat.data.tolist() == [*range(11), 0.0]  # zero padding to 4 equal shards
    assert flat.shard(3).tolist() == [9.0, 10.0, 0.0]
    assert torch.equal(flat.view(a), a) and torch.equal(flat.view(b), b)
    flat.pack([None, torch.ones(5)])  # None counts as zeros
    assert flat.data.tolist() == [0.0] * 6 + [1.0] * 5 + [0.0]
    out = [torch.empty(2, 3), torch.empty(5)]
    flat.unpack(out)
    assert out[0].sum() == 0 and out[1].sum() == 5


def test_bound_parameters_are_views_of_the_buffer() -> None:
    p = nn.Parameter(torch.arange(4.0))
    flat = FlatBuffer([p], shards=3)
    with torch.no_grad():
        flat.bind()
        flat.shard(0).fill_(7.0)
    assert p.tolist() == [7.0, 7.0, 2.0, 3.0]


def test_transient_allocations_are_counted_with_their_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FlatBuffer, "transient", LiveBytes())
    t = torch.zeros(10)
    kept, moment = FlatBuffer([t]), FlatBuffer([t], allocated=False)
    view = kept.view(t)
    kept.free()  # built allocated: its first release is not a transient one
    assert FlatBuffer.transient.live == 0 and not kept.allocated
    moment.allocate(zero=True)
    kept.allocate(zero=True)
    assert FlatBuffer.transient.live == 80 and view.sum() == 0  # a view taken before stays valid
    moment.free()
    moment.free()  # twice: once counted
    assert FlatBuffer.transient.live == 40 and FlatBuffer.transient.peak == 80
    assert moment.data.untyped_storage().nbytes() == 0

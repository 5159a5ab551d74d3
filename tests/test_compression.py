"""Gradient compression (dpkit/strategies/compression.py): the hand-written fp16 and PowerSGD equal torch's own
DDP comm hooks on the same gradients, on real ranks; top-k keeps what it does not send."""

from __future__ import annotations

import json

import pytest

from dpkit.cost.model import PRESETS
from dpkit.cost.sending_less import compressed_bytes, sync_bytes_sent, sync_time
from dpkit.runtime.launch import launch


@pytest.mark.parametrize("kind", ["fp16", "powersgd"])
def test_hand_written_compression_equals_torch_hook(kind, tmp_path) -> None:
    # fp16: the same casts, division and sum, so bit for bit; PowerSGD: the same power iteration, warm start and
    # error feedback in a different association of the matrix products' sums: 1e-5 (values of order 1)
    payload = {"kind": kind, "steps": 4, "rank": 2}
    launch("compression_targets:compare_with_torch_hooks", payload, 2, tmp_path, threads_per_rank=1, timeout_s=120)
    for rank in range(2):
        diffs = json.loads((tmp_path / f"diff{rank}.json").read_text())
        assert len(diffs) == 4
        assert max(diffs) <= (0.0 if kind == "fp16" else 1e-5), diffs


def test_topk_ratio_one_is_a_plain_average_and_error_feedback_keeps_the_rest(tmp_path) -> None:
    launch("compression_targets:topk_equals_average", {}, 2, tmp_path, threads_per_rank=1, timeout_s=120)
    for rank in range(2):
        report = json.loads((tmp_path / f"topk{rank}.json").read_text())
        assert report["ratio1_max_diff"] <= 1e-6
        assert report["nonzero_sent"] == report["k"]
        assert report["residual_plus_sent_is_gradient"]
        assert report["sent_are_largest"]


def test_compressed_bytes_follow_the_formulas() -> None:
    shapes = [(128, 64), (128,), (10, 128), (10,)]
    numel = 128 * 64 + 128 + 10 * 128 + 10
    assert compressed_bytes("none", shapes) == 4 * numel
    assert compressed_bytes("fp16", shapes) == 2 * numel
    assert compressed_bytes("topk", shapes, topk_ratio=0.01) == 8 * round(0.01 * numel)
    # rank 2: the 128x64 matrix as 2*(128+64) values; the 10x128 one gains (10+128)*2*2 < 1280; vectors sent whole
    assert compressed_bytes("powersgd", shapes, powersgd_rank=2) == 4 * (2 * (128 + 64) + 128 + 2 * (10 + 128) + 10)


def test_sending_less_on_a_slow_link_is_faster_and_local_sgd_sends_one_hth() -> None:
    shapes = [(1024, 1024), (1024,), (10, 1024), (10,)]
    link = PRESETS["1GbE"]
    plain = sync_time("none", shapes, 2, link)
    for kind in ("fp16", "powersgd", "topk"):
        assert sync_time(kind, shapes, 2, link, powersgd_rank=2) < plain, kind
    assert sync_bytes_sent("none", shapes, 2, local_steps=4) == sync_bytes_sent("none", shapes, 2) / 4
    assert sync_bytes_sent("fp16", shapes, 4) == sync_bytes_sent("none", shapes, 4) / 2
    # top-k ships k values and k indices from each of the n-1 other ranks
    k = round(0.01 * (1024 * 1024 + 1024 + 10 * 1024 + 10))
    assert sync_bytes_sent("topk", shapes, 3, topk_ratio=0.01) == 2 * 8 * k

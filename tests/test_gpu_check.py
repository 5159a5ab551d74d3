"""The GPU check covers every registered strategy and refuses clearly without a GPU (its run needs a lent GPU)."""

from __future__ import annotations

from dpkit.benchmarks.gpu_check import base_config, strategy_configs
from dpkit.strategies.registry import SPECS, spec_for


def test_the_grid_covers_every_registered_strategy_at_world_sizes_1_to_4() -> None:
    configs = strategy_configs(base_config("cpu", dry_run=True))
    covered = {spec_for(cfg).name for cfg in configs.values()}
    assert covered == {spec.name for spec in SPECS}
    assert {cfg.world_size for cfg in configs.values()} >= {1, 2, 3, 4}
    data = [cfg for cfg in configs.values() if spec_for(cfg).name == "data-allreduce"]
    assert {cfg.grad_sync for cfg in data} >= {"per-tensor", "flat", "bucketed", "ddp"}
    assert {cfg.allreduce_algo for cfg in data} >= {"native", "ring", "ring-whole", "reduce-broadcast", "tree"}
    assert {cfg.schedule for cfg in configs.values() if cfg.parallelism == "pipeline"} == {"naive", "gpipe", "1f1b"}
    assert {cfg.sync for cfg in configs.values() if cfg.parallelism == "data"} >= {"allreduce", "ps", "ps-async"}

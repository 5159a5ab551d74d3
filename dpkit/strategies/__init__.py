"""One file per strategy; make_strategy picks the one a RunConfig asks for.

Each strategy module exposes `build(ctx) -> Strategy`. A module that is not there yet makes
run() raise NotImplementedError before any process starts.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..config import RunConfig
from .base import RankContext, Strategy


def module_for(cfg: RunConfig) -> str:
    if cfg.parallelism == "none":
        return "single"
    if cfg.parallelism == "data":
        return "data_parallel" if cfg.sync == "allreduce" else "parameter_server"
    return {"pipeline": "pipeline", "tensor": "tensor_parallel", "hybrid": "hybrid"}[cfg.parallelism]


def is_supported(cfg: RunConfig) -> bool:
    return importlib.util.find_spec(f"{__name__}.{module_for(cfg)}") is not None


def unsupported_reason(cfg: RunConfig) -> str:
    what = cfg.parallelism if cfg.parallelism != "data" else f"'data' with sync={cfg.sync!r}"
    return f"parallelism={what} is not implemented yet in dpkit (dpkit/strategies/{module_for(cfg)}.py is missing)"


def make_strategy(ctx: RankContext) -> Strategy:
    if not is_supported(ctx.cfg):
        raise NotImplementedError(unsupported_reason(ctx.cfg))
    return importlib.import_module(f"{__name__}.{module_for(ctx.cfg)}").build(ctx)

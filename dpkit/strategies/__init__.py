"""One file per strategy; make_strategy picks the one a RunConfig asks for."""

from __future__ import annotations

from ..config import RunConfig
from .base import RankContext, Strategy


def make_strategy(ctx: RankContext) -> Strategy:
    cfg: RunConfig = ctx.cfg
    if cfg.parallelism == "none":
        from .single import SingleProcess

        return SingleProcess(ctx)
    if cfg.parallelism == "data" and cfg.sync == "allreduce":
        from .data_parallel import DataParallel

        return DataParallel(ctx)
    raise NotImplementedError(unsupported_reason(cfg))


def unsupported_reason(cfg: RunConfig) -> str:
    what = cfg.parallelism if cfg.parallelism != "data" else f"data with sync={cfg.sync!r}"
    return f"parallelism={what} is not implemented yet in dpkit (see the open issues)"


def is_supported(cfg: RunConfig) -> bool:
    return cfg.parallelism == "none" or (cfg.parallelism == "data" and cfg.sync == "allreduce")

"""Which emulated link a run asked for (RunConfig.link and its custom numbers), and how it is labelled.

Configuration only: validation before any process starts, the Link a config names, the human labels and
what a run records about its link (meta["link"], meta["link_not_honoured"]). The ports that pace the
messages are in dpkit.comm.emulation.ports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...cost.model import PRESETS, Link

LINK_CHOICES: tuple[str, ...] = ("none", *PRESETS, "custom")
INTRA_NODE_CHOICES: tuple[str, ...] = ("none", *PRESETS)  # RunConfig.intra_node_link: a preset, or none (unpaced)
UNPACED = Link(alpha=0.0, bandwidth=float("inf"), name="unpaced (the machine as it is)")


@dataclass(frozen=True)
class Nodes:
    """Emulated nodes (RunConfig.ranks_per_node > 1): global ranks r*k .. r*k+k-1 share node r; messages inside
    a node take `intra`, between nodes `inter` (None: the machine as it is)."""

    ranks_per_node: int
    intra: Link | None
    inter: Link | None


# ---- which link a run asked for ---------------------------------------------------------------
def _bad(field_name: str, value: Any, allowed: str) -> ValueError:
    """The shape of dpkit's config errors (dpkit.strategies.spec.config_error), without importing strategies."""
    return ValueError(f"RunConfig.{field_name}={value!r} is not allowed: {allowed}")


def validate_link(cfg: Any) -> None:
    """RunConfig's link fields: a preset name, "none", or "custom" with both finite numbers > 0."""
    name, latency, bandwidth = cfg.link, cfg.link_latency_s, cfg.link_bandwidth_Bps
    if name not in LINK_CHOICES:
        raise _bad("link", name, f"choose one of {', '.join(map(repr, LINK_CHOICES))} (presets: {', '.join(PRESETS)})")
    for field_name, value in (("link_latency_s", latency), ("link_bandwidth_Bps", bandwidth)):
        if name != "custom" and value is not None:
            raise _bad(field_name, value, "None unless link='custom' (a preset brings its own latency and bandwidth)")
        if name == "custom" and (value is None or not math.isfinite(value) or not value > 0):
            raise _bad(field_name, value, "a finite number > 0 with link='custom'")
    k, intra = getattr(cfg, "ranks_per_node", 1), getattr(cfg, "intra_node_link", "NVLink")
    if k < 1 or cfg.num_processes % k:
        raise _bad("ranks_per_node", k, f"an integer >= 1 that divides the {cfg.num_processes} processes of this run")
    if intra not in INTRA_NODE_CHOICES:
        raise _bad("intra_node_link", intra, f"choose one of {', '.join(map(repr, INTRA_NODE_CHOICES))}")


def link_of(name: str, latency_s: float | None = None, bandwidth_Bps: float | None = None) -> Link | None:
    """The Link for a config's values: None for "none", a preset by its key, or the custom numbers."""
    if name == "none":
        return None
    if name == "custom":
        if latency_s is None or bandwidth_Bps is None:
            raise ValueError("link='custom' needs link_latency_s and link_bandwidth_Bps")
        return Link(alpha=float(latency_s), bandwidth=float(bandwidth_Bps), name="custom")
    if name not in PRESETS:
        raise _bad("link", name, f"choose one of {', '.join(map(repr, LINK_CHOICES))} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]


def link_for(cfg: Any) -> Link | None:
    """The run's emulated link (between nodes, with ranks_per_node > 1; None: the machine as it is)."""
    return link_of(cfg.link, cfg.link_latency_s, cfg.link_bandwidth_Bps)


def network_for(cfg: Any) -> Link | Nodes | None:
    """What the run's messages are paced by: one link for all, emulated nodes, or nothing (None)."""
    k = getattr(cfg, "ranks_per_node", 1)
    if k == 1:
        return link_for(cfg)
    return Nodes(k, link_of(getattr(cfg, "intra_node_link", "NVLink")), link_for(cfg))


def human_bandwidth(bps: float) -> str:
    """125e6 -> "125 MB/s": labels in the units links are quoted in."""
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} B/s"


def human_seconds(s: float) -> str:
    """5e-05 -> "50 us"."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def link_label(link: Link) -> str:
    """The human string for a run's link, e.g. "emulated link: 1GbE (TCP), alpha = 50 us, B = 125 MB/s"."""
    text = f"emulated link: {link.name}, alpha = {human_seconds(link.alpha)}, B = {human_bandwidth(link.bandwidth)}"
    return text + (f", o = {human_seconds(link.overhead)} per message received" if link.overhead else "")


def describe(cfg_or_meta: Any) -> str:
    """One line for a figure's subtitle: which link the run emulated (from a RunConfig, a RunResult, or its
    meta), and, from a result, whether the machine could honour it."""
    meta = getattr(cfg_or_meta, "meta", cfg_or_meta)
    if isinstance(meta, dict):
        info = meta.get("link")
        if not info:
            return "no emulated link (the machine as it is)"
        text = info.get("description") or link_label(
            Link(alpha=info["alpha_s"], bandwidth=info["bandwidth_Bps"], name=info["name"], overhead=info.get("overhead_s", 0.0))
        )
        late = meta.get("link_not_honoured")
        if late:
            text += (
                f"; not honoured for {late['messages']} of {late['of']} messages "
                f"(the machine was slower, by up to {human_seconds(late['worst_late_s'])})"
            )
        return text
    link = link_for(cfg_or_meta)
    return "no emulated link (the machine as it is)" if link is None else link_label(link)


def link_meta(cfg: Any, per_rank: Iterable[dict | None]) -> dict:
    """What a run records about its link: meta["link"] (the link and the paced counts) and, when some
    message could not be honoured, meta["link_not_honoured"] (count, of how many, worst lateness)."""
    network = network_for(cfg)
    if network is None:
        return {}
    link = (network.inter or UNPACED) if isinstance(network, Nodes) else network
    stats = [s for s in per_rank if s]
    total = {k: sum(s[k] for s in stats) for k in ("messages", "collectives", "late")}
    worst = max((s["worst_late_s"] for s in stats), default=0.0)
    out: dict = {
        "link": {
            "key": cfg.link,
            "name": link.name,
            "alpha_s": link.alpha,
            "bandwidth_Bps": link.bandwidth,
            "overhead_s": link.overhead,
            "description": link_label(link),
            **total,
            "worst_late_s": worst,
            "late_s": sum(s.get("late_s", 0.0) for s in stats),  # lateness added up over messages and processes
        }
    }
    if isinstance(network, Nodes):
        intra = network.intra or UNPACED
        out["link"]["nodes"] = {"ranks_per_node": network.ranks_per_node, "intra_node_link": cfg.intra_node_link}
        # per process, over the whole run: payload bytes its paced receives took in from other nodes
        out["link"]["inter_node_bytes_in"] = [int(s.get("inter_node_bytes_in", 0)) for s in stats]
        out["link"]["intra_node_late"] = sum(int(s.get("intra_node_late", 0)) for s in stats)  # of "late": inside nodes
        out["link"]["description"] += (
            f"; nodes of {network.ranks_per_node} ranks, within a node {link_label(intra).removeprefix('emulated link: ')}"
        )
    if total["late"]:
        out["link_not_honoured"] = {
            "messages": total["late"],
            "of": total["messages"] + total["collectives"],
            "worst_late_s": worst,
        }
    return out

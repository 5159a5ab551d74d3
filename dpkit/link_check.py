"""Can this machine honour an emulated link for a run's messages? Asked before the run, not after 12 late ones.

An emulated link (dpkit.comm.link) can only slow a message down: if this machine's own loopback already
takes longer to move a message than the link would, the link cannot be honoured and the run measures
the machine, not the link. A quick calibration (one 2-rank launch, cached for the process) times the
machine's own point-to-point transfer of the run's message size (dpkit.benchmarks.link's p2p pattern on
the fastest preset, which no loopback honours); a link is honourable when its formula time alpha + S/B is
at least HONOUR_MARGIN times that. Otherwise check_link says so and names the fastest preset it can honour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .analysis import memory_compare
from .config import RunConfig
from .cost.model import PRESETS, Link
from .strategies.registry import spec_for

HONOUR_MARGIN = 1.5  # the link's time over the machine's own: below this, scheduler noise makes messages late
_FLOORS: dict[int, float] = {}


def calibrate(sizes: list[int]) -> dict[int, float]:
    """The machine's own p2p time per message size in seconds (median of 5), measured once per process."""
    todo = sorted({int(s) for s in sizes} - set(_FLOORS))
    if todo:
        from .benchmarks.link import measure  # a launch: only when a check needs it

        fastest = max(PRESETS, key=lambda k: PRESETS[k].bandwidth)
        rows = measure("p2p", {fastest: PRESETS[fastest]}, todo, world=2, repeats=5, timeout_s=60.0)
        _FLOORS.update({int(r.size_bytes): float(r.measured_s) for r in rows.itertuples()})
    return {int(s): _FLOORS[int(s)] for s in sizes}


def message_bytes(cfg: RunConfig) -> int:
    """The smallest message a run of `cfg` sends, roughly: a ring all-reduce's chunk (gradient bytes / ranks) for
    all-reduce, the model's bytes over the servers for a parameter server. fp32 gradients: 4 bytes each."""
    grads = 4 * memory_compare.parameters(cfg)
    spec = spec_for(cfg)
    servers = spec.num_processes(cfg) - len(spec.training_ranks(cfg))  # parameter servers on top of the workers
    return max(1, grads // max(1, servers or cfg.world_size))


@dataclass(frozen=True)
class LinkCheck:
    link: str
    message_bytes: int
    link_s: float  # the link's formula time for one message
    machine_s: float  # this machine's own time for it
    honoured: bool
    fastest_honoured: str | None  # the fastest preset this machine can honour for these messages

    def text(self) -> str:
        size = f"{self.message_bytes / 1e3:.3g} kB"
        if self.honoured:
            return (f"{self.link} can be emulated here: a {size} message takes {self.link_s * 1e3:.3g} ms on it, "
                    f"{self.machine_s * 1e3:.3g} ms on this machine's own loopback")  # fmt: skip
        offer = (
            f"the fastest link it can honour for them is {self.fastest_honoured}"
            if self.fastest_honoured
            else "no preset is slow enough"
        )
        return (f"this machine cannot honour {self.link} for these messages: a {size} message takes {self.link_s * 1e3:.3g} ms "
                f"on {self.link} but {self.machine_s * 1e3:.3g} ms on this machine's own loopback; {offer}")  # fmt: skip


def _time(link: Link, size: int) -> float:
    return link.alpha + size / link.bandwidth


def check_link(cfg: RunConfig, floors: Callable[[list[int]], dict[int, float]] = calibrate) -> LinkCheck | None:
    """Whether this machine can honour cfg.link for cfg's messages (None for no link or a custom one)."""
    if cfg.link in ("none", "custom") or cfg.link not in PRESETS:
        return None
    size = message_bytes(cfg)
    machine = floors([size])[size]
    ok = {k: _time(v, size) >= HONOUR_MARGIN * machine for k, v in PRESETS.items()}
    by_speed = sorted(PRESETS, key=lambda k: _time(PRESETS[k], size))  # fastest first
    fastest = next((k for k in by_speed if ok[k]), None)
    return LinkCheck(cfg.link, size, _time(PRESETS[cfg.link], size), machine, ok[cfg.link], fastest)


class LinkNotHonourable(ValueError):
    """Raised before a run whose emulated link this machine cannot honour; the message offers one it can."""

"""The link knobs' names where the rest of dpkit imports them (config, the training loop, the figures).

The emulation itself lives in dpkit.comm.emulation: configuration and labels in emulation/config.py,
the paced ports in emulation/ports.py.
"""

from .emulation.config import (
    LINK_CHOICES,
    describe,
    human_bandwidth,
    human_seconds,
    link_for,
    link_label,
    link_meta,
    link_of,
    network_for,
    validate_link,
)

__all__ = [
    "LINK_CHOICES",
    "describe",
    "human_bandwidth",
    "human_seconds",
    "link_for",
    "link_label",
    "link_meta",
    "link_of",
    "network_for",
    "validate_link",
]

"""A backup server (ps_recovery='replicate'): a copy of one server's shard, kept current by its forwarded updates.

Each step the server sends its backup the averaged gradient before it applies it (server.py); the backup applies
the same optimizer step to its own copy of the shard and optimizer state. The same arithmetic on the same numbers
gives the same bits, so the copy always equals the server's latest state, for one gradient's bytes per step
(Li et al., OSDI 2014, replicate a server's key range on another server in the same way). Sync only: an
asynchronous server's state depends on the order pushes arrive in, which a relaunch cannot replay.

What happens when the server dies is recovery.py's: the backup's copy takes the server's place.
"""

from __future__ import annotations

import torch

from ...runtime.memory import Held
from ..base import RankContext
from .layout import server_rank
from .server import ParameterServer
from .traffic import received

RECEIVE = "receive forwarded update"  # the timeline name of the backup's wait for its server's update


class BackupServer(ParameterServer):
    role = "backup"
    other_compute = "apply forwarded update"

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        self.primary = server_rank(self.cfg, self.index)
        self.backup = None  # a backup forwards nothing
        self.inbox = torch.empty(1, self.layout.numel_of(self.index))  # one forwarded gradient at a time
        del self.outbox  # it answers no pulls

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        if self.params and self.version <= step:  # after a relaunch the copy may hold this step's update already
            got = self.inbox[0]
            self.ctx.comm.recv(got, self.primary, self.group, name=RECEIVE, kind="idle")
            for w in self.workers:  # the server's bookkeeping, so that the copy can stand in for it
                self._received_from(w)
            self._update(got)
            self._mark_pulled(self.workers)
        return 0.0, 0

    def owned_state(self) -> dict[str, torch.Tensor]:
        return {}  # the server owns the shard; the copy stands in only when the server died

    def held_tensors(self) -> Held:
        """The copy of the shard, the forwarded gradient (the .grad views) and its optimizer state, the inbox."""
        return Held(self.params, None, [self.opt], [self.inbox])

    def extra(self) -> dict:
        return {
            "backup_of": self.primary,
            "replica_version": self.version,
            "replication_bytes_in": received(self.ctx.comm, RECEIVE) * self.inbox[0].nbytes,
        }

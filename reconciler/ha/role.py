"""The daemon's role in its shard's election: leader or standby, the epoch of the
term it leads, until when its lease certainly holds, and who leads when it does
not. `fence` is what the engine calls before every side effect.

A daemon without a PostgreSQL store has no election: it is the leader, with no
epoch and no deadline, as before high availability existed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LeaseLost", "Role", "RoleState"]


class Role(StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


class LeaseLost(Exception):
    """A side effect refused: this daemon no longer (certainly) holds its lease."""


@dataclass
class RoleState:
    """What the daemon knows of its role; changed by the elector only."""

    daemon_id: str
    role: Role = Role.LEADER
    epoch: int = 0
    """The epoch of the term led now (or last); 0 without an election."""
    valid_until: float | None = None
    """time.monotonic() before which the lease certainly holds, minus the margin
    (the elector's deadline); None: no election (a sole daemon never loses)."""
    leader_id: str | None = None
    """The daemon leading, as the lease row says (this one's id when leading)."""
    leader_url: str = ""
    """Its advertised API URL ("" when it advertised none)."""

    @property
    def leading(self) -> bool:
        return self.role is Role.LEADER

    def fence(self) -> None:
        """Raise LeaseLost unless this daemon leads and its lease's deadline is
        ahead (monotonic clock): checked right before each apply and delete, so a
        leader paused past its lease (SIGSTOP, a stalled host) applies nothing when
        it wakes, even before its elector has run."""
        if self.role is not Role.LEADER:
            raise LeaseLost(f"not applied: daemon {self.daemon_id} is a standby now")
        if self.valid_until is not None and time.monotonic() >= self.valid_until:
            raise LeaseLost(
                f"not applied: the lease of epoch {self.epoch} was not renewed in time; "
                f"daemon {self.daemon_id} steps down"
            )

    def lead(self, epoch: int, valid_until: float) -> None:
        self.role, self.epoch, self.valid_until = Role.LEADER, epoch, valid_until
        self.leader_id = self.daemon_id

    def follow(self, leader_id: str | None, leader_url: str) -> None:
        """Standby, under `leader_id` (None: nobody leads, or unknown)."""
        self.role, self.valid_until = Role.STANDBY, None
        self.leader_id, self.leader_url = leader_id, leader_url

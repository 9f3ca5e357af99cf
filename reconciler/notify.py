"""What the daemon's notifications are and which of them go out (issue 12, part one).

A `Notification` is one condition worth telling an operator about (a revision
applied or rejected, a resource failed, drifted or healed, the source stale or
recovered). Its `key` names the condition and nothing that changes while it
lasts (no duration, count or time), so a persisting condition is one key.

`Gate` decides, per receiver, what is sent: a condition notifies once when it
starts, again only when it resolves or after `repeat`, and at most `burst`
notifications go out per `per` seconds; what the limit holds back is counted and
summarised in the next one that goes out. `Outbox` is the bounded queue between
the daemon and the senders: when full it drops the oldest and counts the drop,
so reconciliation never waits on a slow receiver.

`sign` is the generic webhook's signature (docs/operations.md): the header
`X-Reconciler-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
which a receiver checks with its copy of the secret and a bound on the age of
`t` (`verify`). Sending (the webhook, apprise) and the daemon's wiring are not
here yet.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

__all__ = [
    "SIGNATURE_HEADER",
    "Condition",
    "Gate",
    "Notification",
    "Outbox",
    "Severity",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Reconciler-Signature"


class Condition(StrEnum):
    APPLIED = "revision-applied"
    REJECTED = "revision-rejected"
    FAILED = "resource-failed"
    DRIFTED = "resource-drifted"
    HEALED = "drift-healed"
    STALE = "source-stale"
    RECOVERED = "source-recovered"
    SUPPRESSED = "notifications-suppressed"


class Severity(IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2


RESOLVES: Mapping[Condition, Condition] = {
    Condition.HEALED: Condition.DRIFTED,
    Condition.RECOVERED: Condition.STALE,
}
"""The condition each one ends (a healed drift, a source that recovered)."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One condition, told once. `subject` is what it is about (a resource id, the
    source's URL, the revision); `fields` are shown to the reader and never hold a
    secret (the daemon builds them from masked values)."""

    condition: Condition
    severity: Severity
    subject: str
    title: str
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The condition's stable identity: what happened to what, nothing more."""
        return f"{self.condition}:{self.subject}"


@dataclass
class _Held:
    sent_at: float
    resolved: bool = False


class Gate:
    """One receiver's deduplication and rate limit. `admit(n, now)` returns the
    notifications to send for `n` (itself, maybe with a summary of what the rate
    limit held back), or an empty list."""

    def __init__(self, *, repeat: float, burst: int, per: float) -> None:
        if burst < 1 or per <= 0 or repeat <= 0:
            raise ValueError("repeat and per must be positive, burst at least 1")
        self.repeat = repeat
        self.burst = burst
        self.per = per
        self._held: dict[str, _Held] = {}
        self._sent: deque[float] = deque()
        self.suppressed = 0
        """Notifications the rate limit held back since the last one sent."""
        self.deduplicated = 0

    def admit(self, notification: Notification, now: float) -> list[Notification]:
        key = notification.key
        ends = RESOLVES.get(notification.condition)
        if ends is not None:
            started = self._held.pop(f"{ends}:{notification.subject}", None)
            if started is None:  # nothing was told, so nothing to resolve
                self.deduplicated += 1
                return []
        else:
            held = self._held.get(key)
            if held is not None and now - held.sent_at < self.repeat:
                self.deduplicated += 1
                return []
        while self._sent and now - self._sent[0] >= self.per:
            self._sent.popleft()
        if len(self._sent) >= self.burst:
            self.suppressed += 1
            return []
        self._sent.append(now)
        if ends is None and notification.condition not in _ONCE:
            self._held[key] = _Held(now)
        out = [notification]
        if self.suppressed:
            out.append(
                Notification(
                    Condition.SUPPRESSED,
                    Severity.WARNING,
                    "rate-limit",
                    f"{self.suppressed} notifications held back by the rate limit",
                    {"suppressed": str(self.suppressed)},
                )
            )
            self.suppressed = 0
        return out


_ONCE = frozenset({Condition.APPLIED})
"""Conditions that are events, not states: each is told (a revision applied)."""


class Outbox:
    """The bounded queue to the senders: `put` never waits; when full the oldest
    is dropped and counted (`dropped`)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._items: deque[Notification] = deque(maxlen=size)
        self.dropped = 0

    def put(self, notification: Notification) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(notification)

    def take(self) -> list[Notification]:
        items = list(self._items)
        self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The value of `X-Reconciler-Signature` for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: bytes, body: bytes, header: str, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: the signature matches and `t` is within `tolerance`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))

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
`t` (`verify`). `Receiver` is one configured destination and what it wants;
sending to it is reconciler.notifier's (I/O), the daemon decides what to tell.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from fnmatch import fnmatchcase
from typing import Literal

__all__ = [
    "SIGNATURE_HEADER",
    "Condition",
    "Gate",
    "Notification",
    "Outbox",
    "Receiver",
    "Severity",
    "key_of",
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

RESOURCE_CONDITIONS = frozenset({Condition.FAILED, Condition.DRIFTED, Condition.HEALED})
"""Conditions about one resource: their subject is its id, "Kind/name"."""


def key_of(condition: Condition, subject: str) -> str:
    """The key of `condition` about `subject` (what `Notification.key` is)."""
    return f"{condition}:{subject}"


@dataclass(frozen=True, slots=True)
class Notification:
    """One condition, told once. `subject` is what it is about (a resource id, the
    source's URL, the revision); `fields` are shown to the reader and never hold a
    secret (the daemon builds them from masked values)."""

    condition: Condition
    severity: Severity
    subject: str
    """A resource condition's resource id ("Kind/name"); otherwise the revision id
    or the source's (redacted) URL."""
    title: str
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The condition's stable identity: what happened to what, nothing more."""
        return key_of(self.condition, self.subject)


@dataclass(frozen=True)
class Receiver:
    """One configured destination and what it wants to hear. `url` and `secret`
    are credentials (from secret files) and are never shown: not in repr, not in
    logs, not in a payload. `events` empty means every condition; `kinds` and
    `names` are globs (fnmatch, case-sensitive) on a resource condition's kind and
    name, empty meaning all; they do not filter revision or source conditions."""

    name: str
    type: Literal["webhook", "apprise"]
    url: str = field(repr=False)
    secret: bytes | None = field(default=None, repr=False)
    """The webhook's HMAC key; required for a webhook."""
    events: frozenset[Condition] = frozenset()
    kinds: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    min_severity: Severity = Severity.INFO
    repeat: float = 4 * 3600.0
    burst: int = 10
    per: float = 60.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        # messages name the receiver, never its URL or secret
        if not self.name:
            raise ValueError("a receiver needs a name")
        if self.type not in ("webhook", "apprise"):
            raise ValueError(
                f"receiver {self.name}: type {self.type!r}, expected webhook or apprise"
            )
        if not self.url:
            raise ValueError(f"receiver {self.name}: no URL")
        if self.type == "webhook" and not self.secret:
            raise ValueError(f"receiver {self.name}: a webhook needs a secret to sign with")
        if self.burst < 1 or self.per <= 0 or self.repeat <= 0 or self.timeout <= 0:
            raise ValueError(
                f"receiver {self.name}: repeat, per and timeout must be positive, burst at least 1"
            )

    def wants(self, notification: Notification) -> bool:
        """Whether this receiver is to hear of `notification` (before deduplication)."""
        if self.events and notification.condition not in self.events:
            return False
        if notification.severity < self.min_severity:
            return False
        if notification.condition in RESOURCE_CONDITIONS and (self.kinds or self.names):
            kind, _, name = notification.subject.partition("/")
            if self.kinds and not any(fnmatchcase(kind, glob) for glob in self.kinds):
                return False
            if self.names and not any(fnmatchcase(name, glob) for glob in self.names):
                return False
        return True


@dataclass
class _Held:
    sent_at: float
    expires: bool = False
    """Held only to deduplicate (an untold drift's heal): forgotten after `repeat`."""


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
        self._sweep_at = 256

    def admit(self, notification: Notification, now: float) -> list[Notification]:
        key = notification.key
        ends = RESOLVES.get(notification.condition)
        holds = ends is None and notification.condition not in _ONCE
        told = None if ends is None else self._held.pop(key_of(ends, notification.subject), None)
        if told is not None:
            pass  # it ends a condition that was told: news, whatever came before
        elif ends is Condition.STALE:  # a recovery from nothing told: nothing to tell
            self.deduplicated += 1
            return []
        else:
            # A heal of a drift never told (found and healed at once under the heal
            # policy) is news too, told once per `repeat` like a condition.
            held = self._held.get(key)
            if held is not None and now - held.sent_at < self.repeat:
                self.deduplicated += 1
                return []
            holds = holds or ends is not None
        while self._sent and now - self._sent[0] >= self.per:
            self._sent.popleft()
        if len(self._sent) >= self.burst:
            self.suppressed += 1
            return []
        self._sent.append(now)
        if holds:
            self._held[key] = _Held(now, expires=ends is not None)
            self._sweep(now)
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

    def clear(self, key: str) -> None:
        """Forget the held condition `key` without telling anyone (a failed resource
        back in sync: its next failure is news again)."""
        self._held.pop(key, None)

    def _sweep(self, now: float) -> None:
        """Forget the heals held only for deduplication once their `repeat` is over,
        now and then, so they do not pile up over the daemon's life."""
        if len(self._held) < self._sweep_at:
            return
        for key in [
            k for k, h in self._held.items() if h.expires and now - h.sent_at >= self.repeat
        ]:
            del self._held[key]
        self._sweep_at = max(256, 2 * len(self._held))


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

    def pop(self) -> Notification | None:
        """The oldest notification queued, or None."""
        return self._items.popleft() if self._items else None

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

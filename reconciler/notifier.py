"""Sending the daemon's notifications (issue 12): the I/O half of reconciler.notify.

`Notifier.notify` is what the daemon calls: synchronous, never raising, never
waiting. For each receiver it filters (`Receiver.wants`), deduplicates and rate
limits (`Gate`, before the queue, so a persisting condition costs no queue slot)
and queues (`Outbox`, bounded, dropping the oldest). One sender task per receiver
(`run`) takes from its own queue and delivers one notification at a time, so a
receiver that is down delays nobody else: it retries with backoff while its queue
fills and drops its oldest. A notification is tried at most `attempts` times
(decision 0138).

Two kinds of receiver:

- `webhook`: a POST of one JSON object (`payload`, version 1) signed with the
  receiver's secret (`X-Reconciler-Signature`, reconciler.notify.sign) through its
  own httpx client: no redirects, at most 64 KiB of the answer read.
- `apprise`: any service apprise knows by URL (Slack, Teams, Matrix, e-mail...),
  called in a thread; apprise answers only True or False.

The URLs and secrets are credentials: logs name a receiver by its name, failures
say the status or the exception's class, and a filter on the loggers of the HTTP
libraries (apprise, urllib3, httpx) blanks any part of a receiver's URL a record
would carry. `counts` and `depth` feed reconciler.metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise
import httpx

from reconciler import __version__
from reconciler.backoff import backoff
from reconciler.notify import (
    SIGNATURE_HEADER,
    Condition,
    Gate,
    Notification,
    Outbox,
    Receiver,
    Severity,
    key_of,
    sign,
)
from reconciler.secrets import mask

__all__ = ["EVENT_HEADER", "OUTCOMES", "PAYLOAD_VERSION", "Notifier", "payload"]

log: Final = logging.getLogger("reconciler.notifier")

PAYLOAD_VERSION: Final = 1
"""The webhook body's `version`: raised only when a field changes meaning or goes
away (new fields may appear in version 1)."""
EVENT_HEADER: Final = "X-Reconciler-Event"
OUTCOMES: Final = ("sent", "failed", "retried", "suppressed", "deduplicated", "dropped")
MAX_ANSWER: Final = 64 * 1024
"""Bytes of a webhook's answer read at most (the rest is never received)."""
RETRYABLE_STATUS: Final = frozenset({408, 429})
"""4xx answers worth another try (besides every 5xx)."""
_SEVERITY_NAMES: Final = {
    Severity.INFO: "info",
    Severity.WARNING: "warning",
    Severity.ERROR: "error",
}
_APPRISE_TYPES: Final = {
    Severity.INFO: apprise.NotifyType.INFO,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.ERROR: apprise.NotifyType.FAILURE,
}
_LIBRARY_LOGGERS: Final = ("apprise", "urllib3.connectionpool", "httpx")
"""Loggers that may print a receiver's URL (a request line, a connection)."""
_MIN_SECRET_PART: Final = 6
"""Parts of a URL shorter than this are not blanked on their own (they would blank
ordinary words of a log line); the whole URL and its longer parts are."""


def payload(
    notification: Notification, origin: Mapping[str, str], sent_at: float
) -> dict[str, Any]:
    """The webhook's JSON body for `notification` (version 1, docs/operations.md)."""
    return {
        "version": PAYLOAD_VERSION,
        "key": notification.key,
        "condition": str(notification.condition),
        "severity": _SEVERITY_NAMES[notification.severity],
        "subject": notification.subject,
        "title": notification.title,
        "fields": dict(notification.fields),
        "origin": dict(origin),
        "sentAt": datetime.fromtimestamp(sent_at, UTC).isoformat(timespec="milliseconds")[:-6]
        + "Z",
    }


def _text(notification: Notification) -> str:
    """An apprise body: the fields as "name: value" lines (the title goes as the
    title, which services without titles put on the first line)."""
    lines = [f"{name}: {value}" for name, value in notification.fields.items()]
    return defuse("\n".join(lines) or notification.title)


_DEFUSE = str.maketrans({"<": "\u2039", ">": "\u203a", "@": "@\u200b"})
"""Chat markup a repository's text must not carry into a chat: `@channel`, `@here`
and `@all` mentions (a zero-width space after the @), Slack's `<!channel>`,
`<@user>` and `<url|label>` (angle brackets become single guillemets)."""


def defuse(text: str) -> str:
    """`text` (names, errors: the repository's) shown as it is in a chat, without
    paging a team or disguising a link; markdown links lose their `](`."""
    return text.translate(_DEFUSE).replace("](", "]\u200b(")


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str
    after: float | None = None
    """The receiver's Retry-After, in seconds."""


@dataclass(frozen=True, slots=True)
class _Fail:
    reason: str


_Result = _Retry | _Fail | None
"""None: delivered."""


class _Redact(logging.Filter):
    """Blanks the receivers' URLs and their credential-bearing parts in the records
    of the HTTP libraries' loggers (a request line carries a webhook's path, a
    connection apprise opens its token)."""

    def __init__(self) -> None:
        super().__init__("reconciler.notifier")
        self.secrets: list[str] = []

    def add(self, url: str, *, host_is_secret: bool) -> None:
        """Blank `url` and its parts; its host too when it may be a token (apprise's
        URLs often put one there: slack://TokenA/TokenB/TokenC)."""
        parts = {url, unquote(url)}
        split = urlsplit(url)
        parts.update(p for p in (split.username, split.password) if p)
        parts.update(unquote(p) for p in split.path.split("/") if p)
        parts.update(v for _, v in parse_qsl(split.query))
        if split.fragment:
            parts.add(split.fragment)
        host = split.netloc.rpartition("@")[2].rsplit(":", 1)[0]  # as written (hostname lowers)
        if host_is_secret and host:
            parts.add(host)
        found = {p for p in parts if len(p) >= _MIN_SECRET_PART}
        if not host_is_secret:
            found.discard(host)
        self.secrets = sorted(set(self.secrets) | found)  # mask() tries the longest first

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format shows no arguments at all
            message = str(record.msg)
        blanked = mask(message, self.secrets)
        if blanked != message or record.args:
            record.msg, record.args = blanked, None
        if record.exc_info is not None and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            blanked = mask(text, self.secrets)
            if blanked != text:
                record.exc_info, record.exc_text = None, blanked  # handlers print exc_text
        return True


@dataclass
class _Sender:
    receiver: Receiver
    gate: Gate
    outbox: Outbox
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    counts: Counter[str] = field(default_factory=Counter)
    client: httpx.AsyncClient | None = None
    services: apprise.Apprise | None = None
    task: asyncio.Task[None] | None = None


class Notifier:
    """Delivers notifications to `receivers` (see the module's docstring).

    `origin` (e.g. {"daemon": hostname, "source": redacted URL}) is added to every
    webhook payload. `run` runs the senders until cancelled or closed; `close`
    sends what is queued within a timeout, then stops them."""

    def __init__(
        self,
        receivers: Sequence[Receiver],
        *,
        queue_size: int = 1000,
        attempts: int = 5,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        origin: Mapping[str, str] | None = None,
    ) -> None:
        names = [r.name for r in receivers]
        if len(set(names)) != len(names):
            raise ValueError(f"receiver names must be unique, got {sorted(names)}")
        if attempts < 1 or retry_base <= 0 or retry_cap < retry_base:
            raise ValueError("attempts at least 1, 0 < retry_base <= retry_cap")
        self.attempts = attempts
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.origin = dict(origin or {})
        self._closing = False
        self._redact = _Redact()
        for name in _LIBRARY_LOGGERS:  # before apprise first parses a URL
            logging.getLogger(name).addFilter(self._redact)
        self._senders: list[_Sender] = []
        try:
            for receiver in receivers:
                self._redact.add(receiver.url, host_is_secret=receiver.type == "apprise")
                gate = Gate(repeat=receiver.repeat, burst=receiver.burst, per=receiver.per)
                sender = _Sender(receiver, gate, Outbox(queue_size))
                if receiver.type == "apprise":
                    sender.services = _apprise(receiver)
                self._senders.append(sender)
        except BaseException:
            self._unhook()
            raise

    # the daemon's side: never waits, never raises

    def notify(self, notification: Notification) -> None:
        """Queue `notification` for every receiver that wants it and whose gate lets
        it through; wake their senders. Called on the event loop `run` runs on (or
        before it starts)."""
        now = time.monotonic()
        for sender in self._senders:
            try:
                if not sender.receiver.wants(notification):
                    continue
                gate, counts = sender.gate, sender.counts
                before = gate.deduplicated, gate.suppressed
                admitted = gate.admit(notification, now)
                counts["deduplicated"] += gate.deduplicated - before[0]
                if not admitted and gate.suppressed > before[1]:
                    counts["suppressed"] += 1
                dropped = sender.outbox.dropped
                for item in admitted:
                    sender.outbox.put(item)
                counts["dropped"] += sender.outbox.dropped - dropped
                if admitted:
                    sender.wake.set()
            except Exception:  # a notification is never worth the daemon's work
                log.exception("notification for receiver %s not queued", sender.receiver.name)

    def clear(self, condition: Condition, subject: str) -> None:
        """Forget `condition` about `subject` in every receiver's gate, silently."""
        key = key_of(condition, subject)
        for sender in self._senders:
            sender.gate.clear(key)

    def counts(self) -> dict[tuple[str, str], int]:
        """(receiver, outcome) -> total since start, every outcome of every receiver."""
        return {
            (s.receiver.name, outcome): s.counts[outcome]
            for s in self._senders
            for outcome in OUTCOMES
        }

    def depth(self) -> dict[str, int]:
        """Notifications queued per receiver (not counting one being sent)."""
        return {s.receiver.name: len(s.outbox) for s in self._senders}

    # the senders

    async def run(self) -> None:
        """One sender per receiver, until cancelled or `close`d."""
        async with asyncio.TaskGroup() as group:
            for sender in self._senders:
                if sender.task is None or sender.task.done():
                    sender.task = group.create_task(
                        self._send_loop(sender), name=f"notifier:{sender.receiver.name}"
                    )

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109  # a drain, then a stop
        """Send what is queued within `timeout` (also when `run` was never started),
        then stop the senders; what is still queued then is dropped and counted."""
        self._closing = True
        for sender in self._senders:
            sender.wake.set()
        try:
            running = [s.task for s in self._senders if s.task is not None and not s.task.done()]
            if running:
                _, pending = await asyncio.wait(running, timeout=timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            elif any(len(s.outbox) for s in self._senders):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self.run()
        finally:
            for sender in self._senders:
                sender.counts["dropped"] += len(sender.outbox.take())
                if sender.client is not None:
                    await sender.client.aclose()
                    sender.client = None
            self._unhook()

    def _unhook(self) -> None:
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).removeFilter(self._redact)

    async def _send_loop(self, sender: _Sender) -> None:
        while True:
            notification = sender.outbox.pop()
            if notification is None:
                if self._closing:
                    return
                sender.wake.clear()
                await sender.wake.wait()
                continue
            try:
                await self._deliver(sender, notification)
            except Exception:  # a bug here must not stop this receiver's sender
                sender.counts["failed"] += 1
                log.exception("notification to receiver %s not sent", sender.receiver.name)

    async def _deliver(self, sender: _Sender, notification: Notification) -> None:
        name = sender.receiver.name
        for attempt in range(1, self.attempts + 1):
            try:
                async with asyncio.timeout(sender.receiver.timeout):
                    result = await self._attempt(sender, notification)
            except TimeoutError:
                result = _Retry("timeout")
            except httpx.TransportError as error:  # connect, read, write, protocol
                result = _Retry(type(error).__name__)
            except Exception as error:  # any other failure is this notification's only
                result = _Fail(type(error).__name__)
            if result is None:
                sender.counts["sent"] += 1
                log.debug("%s sent to receiver %s", notification.condition, name)
                return
            if isinstance(result, _Fail) or attempt == self.attempts:
                sender.counts["failed"] += 1
                log.warning(
                    "notification %s to receiver %s failed after %d attempt(s): %s",
                    notification.condition,
                    name,
                    attempt,
                    result.reason,
                )
                return
            sender.counts["retried"] += 1
            delay = backoff(attempt, base=self.retry_base, cap=self.retry_cap)
            if result.after is not None:
                delay = min(max(delay, result.after), self.retry_cap)
            log.info(
                "notification %s to receiver %s: %s, retrying in %.2f s",
                notification.condition,
                name,
                result.reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def _attempt(self, sender: _Sender, notification: Notification) -> _Result:
        if sender.services is not None:
            return await _send_apprise(sender.services, notification)
        if sender.client is None:
            sender.client = httpx.AsyncClient(
                timeout=sender.receiver.timeout,
                follow_redirects=False,
                headers={"User-Agent": f"reconciler/{__version__}"},
            )
        return await self._send_webhook(sender.client, sender.receiver, notification)

    async def _send_webhook(
        self, client: httpx.AsyncClient, receiver: Receiver, notification: Notification
    ) -> _Result:
        assert receiver.secret is not None  # Receiver requires it of a webhook
        now = time.time()
        body = json.dumps(
            payload(notification, self.origin, now), ensure_ascii=False, separators=(",", ":")
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(receiver.secret, body, int(now)),
            EVENT_HEADER: str(notification.condition),
        }
        async with client.stream("POST", receiver.url, content=body, headers=headers) as answer:
            read = 0
            async for chunk in answer.aiter_raw():  # a keep-alive needs the answer read
                read += len(chunk)
                if read >= MAX_ANSWER:
                    break
        status = answer.status_code
        if 200 <= status < 300:
            return None
        reason = f"HTTP {status}"
        if status >= 500 or status in RETRYABLE_STATUS:
            return _Retry(reason, _retry_after(answer.headers.get("retry-after")))
        return _Fail(reason)  # another 4xx (or a redirect, not followed) will not change


def _apprise(receiver: Receiver) -> apprise.Apprise:
    asset = apprise.AppriseAsset(storage_mode="memory")
    services = apprise.Apprise(asset=asset)
    if not services.add(receiver.url):
        raise ValueError(f"receiver {receiver.name}: apprise does not understand its URL")
    for service in services:
        # apprise's requests time out per connect and per read; bound both
        service.socket_connect_timeout = receiver.timeout
        service.socket_read_timeout = receiver.timeout
    return services


async def _send_apprise(services: apprise.Apprise, notification: Notification) -> _Result:
    # apprise is blocking (requests); its own timeouts bound the thread, and the
    # attempt's timeout stops waiting for it
    ok = await asyncio.to_thread(
        services.notify,
        body=_text(notification),
        title=defuse(notification.title),
        notify_type=_APPRISE_TYPES[notification.severity],
    )
    return None if ok else _Retry("apprise reported a failure")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if seconds == seconds else None  # NaN: none

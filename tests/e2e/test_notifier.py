"""The notifier against real HTTP receivers on 127.0.0.1 (aiohttp, in the test's
loop): the signed webhook checked as a receiver would, retries and what is not
retried, a hanging receiver that delays nobody, the full queue, the rate limit's
summary, deduplication, apprise to a Mattermost (Slack-compatible) endpoint, and
secrets kept out of payloads, logs, reprs and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from reconciler import __version__
from reconciler.metrics import Metrics, Snapshot
from reconciler.notifier import Notifier
from reconciler.notify import SIGNATURE_HEADER, Condition, Notification, Receiver, Severity, verify

pytestmark = pytest.mark.timeout(10)

SECRET = b"whsec-7f3a9c0e5b2d4a61"
TOKEN = "mmtoken8e1c4f2a9b7d3e5f60"
HOOK_PATH_TOKEN = "pathsecret5d8e2a1c7b"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Hook:
    """A receiver: answers each request with the next of `script` (a status, a
    (status, headers) pair, or "hang" until `release` is set), then 200."""

    script: list[Any] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.path, dict(request.headers), body, time.monotonic()))
        self.arrived.set()
        step = self.script.pop(0) if self.script else 200
        if step == "hang":
            await self.release.wait()
            step = 200
        status, headers = step if isinstance(step, tuple) else (step, {})
        return web.Response(status=status, headers=headers, text="ok")

    async def wait(self, n: int, within: float = 3.0) -> list[Seen]:
        async with asyncio.timeout(within):
            while len(self.seen) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.seen

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(s.body) for s in self.seen]


@pytest.fixture
async def hooks() -> AsyncIterator[Callable[..., Awaitable[Hook]]]:
    runners: list[web.AppRunner] = []
    made: list[Hook] = []

    async def make(*script: Any) -> Hook:
        hook = Hook(list(script))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", hook.handle)
        # no access log: the receiver's own log of its path is not the notifier's
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        hook.port = runner.addresses[0][1]
        hook.url = f"http://127.0.0.1:{hook.port}/hooks/{HOOK_PATH_TOKEN}"
        runners.append(runner)
        made.append(hook)
        return hook

    yield make
    for hook in made:
        hook.release.set()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Notifier]]:
    """Notifiers whose senders run in the background; closed at the end."""
    started: list[tuple[Notifier, asyncio.Task[None]]] = []

    def start(*receivers: Receiver, **kwargs: Any) -> Notifier:
        kwargs.setdefault("retry_base", 0.01)
        kwargs.setdefault("retry_cap", 0.05)
        notifier = Notifier(receivers, **kwargs)
        started.append((notifier, asyncio.create_task(notifier.run(), name="notifier")))
        return notifier

    yield start
    for notifier, task in started:
        await notifier.close(0.5)
        await asyncio.wait_for(task, 1)


def webhook(url: str, name: str = "ops", **kwargs: Any) -> Receiver:
    return Receiver(name=name, type="webhook", url=url, secret=SECRET, **kwargs)


def failed(subject: str = "File/app-config", **fields: str) -> Notification:
    return Notification(
        Condition.FAILED,
        Severity.ERROR,
        subject,
        f"{subject} failed",
        fields or {"error": "permission denied", "state": "Failed"},
    )


async def settled(notifier: Notifier, name: str, *outcomes: str) -> dict[str, int]:
    """Wait until the receiver's queue is empty and nothing is in flight (the sum of
    final outcomes stops moving), then its counts."""
    async with asyncio.timeout(3):
        while True:
            before = notifier.counts()
            await asyncio.sleep(0.05)
            after = notifier.counts()
            if before == after and not notifier.depth()[name]:
                counts = {o: n for (r, o), n in after.items() if r == name}
                if all(counts[o] for o in outcomes):
                    return counts


async def test_the_webhook_is_signed_and_carries_the_documented_payload(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks()
    origin = {"daemon": "web-1", "source": "https://git.example/config.git"}
    notifier = running(webhook(hook.url), origin=origin)
    notifier.notify(failed())
    (seen,) = await hook.wait(1)
    assert seen.path == f"/hooks/{HOOK_PATH_TOKEN}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["X-Reconciler-Event"] == "resource-failed"
    assert seen.headers["User-Agent"] == f"reconciler/{__version__}"
    header = seen.headers[SIGNATURE_HEADER]
    assert verify(SECRET, seen.body, header, now=time.time())  # the receiver's own copy
    assert not verify(SECRET, seen.body.replace(b"denied", b"granted"), header, time.time())
    assert not verify(b"another secret", seen.body, header, now=time.time())
    body = json.loads(seen.body)
    sent_at = body.pop("sentAt")
    assert body == {
        "version": 1,
        "key": "resource-failed:File/app-config",
        "condition": "resource-failed",
        "severity": "error",
        "subject": "File/app-config",
        "title": "File/app-config failed",
        "fields": {"error": "permission denied", "state": "Failed"},
        "origin": origin,
    }
    assert sent_at.endswith("Z")
    assert abs(datetime.fromisoformat(sent_at).timestamp() - time.time()) < 60
    assert (await settled(notifier, "ops", "sent"))["sent"] == 1


async def test_a_server_error_is_retried_until_it_is_sent(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks(500, 503)
    notifier = running(webhook(hook.url))
    notifier.notify(failed())
    seen = await hook.wait(3)
    assert len({json.loads(s.body)["key"] for s in seen}) == 1
    counts = await settled(notifier, "ops", "sent")
    assert (counts["sent"], counts["retried"], counts["failed"]) == (1, 2, 0)


async def test_a_client_error_fails_at_once(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier], caplog: Any
) -> None:
    hook = await hooks(400)
    notifier = running(webhook(hook.url))
    notifier.notify(failed())
    counts = await settled(notifier, "ops", "failed")
    assert (counts["sent"], counts["retried"], counts["failed"]) == (0, 0, 1)
    assert len(hook.seen) == 1
    (record,) = [r for r in caplog.records if r.name == "reconciler.notifier"]
    assert record.levelno == logging.WARNING
    assert "receiver ops" in record.getMessage() and "HTTP 400" in record.getMessage()


async def test_a_hanging_receiver_times_out_is_retried_then_failed(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks("hang", "hang", "hang")
    notifier = running(webhook(hook.url, timeout=0.2), attempts=2)
    started = time.monotonic()
    notifier.notify(failed())
    counts = await settled(notifier, "ops", "failed")
    assert (counts["sent"], counts["retried"], counts["failed"]) == (0, 1, 1)
    assert len(hook.seen) == 2
    assert 0.4 <= time.monotonic() - started < 2


async def test_a_429_is_retried_after_its_retry_after_within_the_cap(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks((429, {"Retry-After": "3600"}), (429, {"Retry-After": "0"}))
    notifier = running(webhook(hook.url), retry_cap=0.3)
    notifier.notify(failed())
    first, second, third = await hook.wait(3)
    assert 0.25 <= second.at - first.at < 1.5  # honoured, up to the cap (not an hour)
    assert third.at - second.at < 0.25  # "0": the backoff's own short delay
    counts = await settled(notifier, "ops", "sent")
    assert (counts["sent"], counts["retried"]) == (1, 2)


async def test_connection_refused_is_retried_then_failed(
    running: Callable[..., Notifier],
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    notifier = running(webhook(f"http://127.0.0.1:{port}/hook"), attempts=3)
    notifier.notify(failed())
    counts = await settled(notifier, "ops", "failed")
    assert (counts["sent"], counts["retried"], counts["failed"]) == (0, 2, 1)


async def test_a_hanging_receiver_delays_neither_the_daemon_nor_another_receiver(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    stuck = await hooks(*["hang"] * 10)
    healthy = await hooks()
    notifier = running(
        webhook(stuck.url, "stuck", timeout=5, burst=2000),
        webhook(healthy.url, "healthy", burst=10),
    )
    notes = [failed(f"File/f{i}") for i in range(1000)]
    started = time.perf_counter()
    for note in notes:
        notifier.notify(note)
    spent = time.perf_counter() - started
    assert spent < 0.05, f"1,000 notify() calls took {spent * 1000:.1f} ms"
    seen = await healthy.wait(10, within=1.0)  # its burst of 10, promptly
    assert [json.loads(s.body)["subject"] for s in seen[:2]] == ["File/f0", "File/f1"]
    assert notifier.depth()["stuck"] == 999  # one in flight, hanging
    counts = await settled(notifier, "healthy", "sent")
    assert counts["suppressed"] == 990


async def test_a_full_queue_drops_the_oldest_and_keeps_the_newest(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks("hang")
    notifier = running(webhook(hook.url, timeout=5, burst=100), queue_size=3)
    notifier.notify(failed("File/f0"))
    await hook.wait(1)  # f0 is in flight, the receiver stalls
    for i in range(1, 10):
        notifier.notify(failed(f"File/f{i}"))
    assert notifier.depth() == {"ops": 3}
    assert notifier.counts()[("ops", "dropped")] == 6
    hook.release.set()
    await hook.wait(4)
    assert [b["subject"] for b in hook.bodies()] == ["File/f0", "File/f7", "File/f8", "File/f9"]
    assert (await settled(notifier, "ops", "sent"))["sent"] == 4


async def test_the_rate_limit_holds_back_and_summarises(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks()
    notifier = running(webhook(hook.url, burst=2, per=0.3))
    for i in range(5):
        notifier.notify(failed(f"File/f{i}"))
    await hook.wait(2)
    assert notifier.counts()[("ops", "suppressed")] == 3
    await asyncio.sleep(0.35)  # the limit's window passes (no event to await: it is time)
    notifier.notify(failed("File/late"))
    bodies = [json.loads(s.body) for s in await hook.wait(4)]
    assert [b["subject"] for b in bodies] == ["File/f0", "File/f1", "File/late", "rate-limit"]
    summary = bodies[3]
    assert summary["condition"] == "notifications-suppressed"
    assert summary["title"] == "3 notifications held back by the rate limit"
    assert summary["fields"] == {"suppressed": "3"}


async def test_deduplication_resolution_and_the_repeat_interval(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks()
    notifier = running(webhook(hook.url, repeat=0.3, burst=100))
    drifted = Notification(Condition.DRIFTED, Severity.WARNING, "File/motd", "File/motd drifted")
    healed = Notification(Condition.HEALED, Severity.INFO, "File/motd", "File/motd healed")
    notifier.notify(failed())
    notifier.notify(failed())  # the same condition: once
    notifier.notify(drifted)
    notifier.notify(healed)  # the drift told, its end too
    await hook.wait(3)
    assert notifier.counts()[("ops", "deduplicated")] == 1
    notifier.clear(Condition.FAILED, "File/app-config")  # back in sync: a new failure is news
    notifier.notify(failed())
    await hook.wait(4)
    await asyncio.sleep(0.35)  # the repeat interval passes
    notifier.notify(failed())
    bodies = [json.loads(s.body) for s in await hook.wait(5)]
    assert [b["condition"] for b in bodies] == [
        "resource-failed",
        "resource-drifted",
        "drift-healed",
        "resource-failed",
        "resource-failed",
    ]


async def test_a_receiver_gets_only_what_it_wants(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks()
    notifier = running(webhook(hook.url, kinds=("Postgres*",), min_severity=Severity.WARNING))
    notifier.notify(failed("File/app-config"))
    notifier.notify(Notification(Condition.APPLIED, Severity.INFO, "3f2a9c1", "applied"))
    notifier.notify(failed("PostgresRole/app"))
    (seen,) = await hook.wait(1)
    await settled(notifier, "ops", "sent")
    assert json.loads(seen.body)["subject"] == "PostgresRole/app" and len(hook.seen) == 1


async def test_close_sends_what_is_queued_even_without_run(
    hooks: Callable[..., Awaitable[Hook]],
) -> None:
    hook = await hooks()
    notifier = Notifier([webhook(hook.url, burst=100)], retry_base=0.01)
    for i in range(3):
        notifier.notify(failed(f"File/f{i}"))
    await notifier.close(2)
    assert [b["subject"] for b in hook.bodies()] == ["File/f0", "File/f1", "File/f2"]
    assert notifier.counts()[("ops", "sent")] == 3


async def test_close_gives_up_on_a_hanging_receiver_within_its_timeout(
    hooks: Callable[..., Awaitable[Hook]],
) -> None:
    hook = await hooks("hang")
    notifier = Notifier([webhook(hook.url, timeout=5, burst=100)])
    task = asyncio.create_task(notifier.run())
    notifier.notify(failed("File/f0"))
    notifier.notify(failed("File/f1"))
    await hook.wait(1)
    started = time.monotonic()
    await notifier.close(0.2)
    assert time.monotonic() - started < 0.5
    await asyncio.wait_for(task, 1)
    assert notifier.counts()[("ops", "dropped")] == 1  # f1, never sent


def mattermost(port: int, name: str = "chat", **kwargs: Any) -> Receiver:
    return Receiver(name=name, type="apprise", url=f"mmost://127.0.0.1:{port}/{TOKEN}", **kwargs)


async def test_apprise_posts_to_a_mattermost_webhook(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks()
    notifier = running(mattermost(hook.port))
    notifier.notify(failed())
    (seen,) = await hook.wait(1)
    assert seen.path == f"/hooks/{TOKEN}"  # mmost:// is plain http on the given port
    text = json.loads(seen.body)["text"]
    assert text.splitlines() == [
        "File/app-config failed",
        "error: permission denied",
        "state: Failed",
    ]
    assert (await settled(notifier, "chat", "sent"))["sent"] == 1


async def test_a_failing_apprise_endpoint_is_retried_and_counted(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks(500, 500, 500)
    notifier = running(mattermost(hook.port), attempts=2)
    notifier.notify(failed())
    counts = await settled(notifier, "chat", "failed")
    assert (counts["sent"], counts["retried"], counts["failed"]) == (0, 1, 1)
    assert len(hook.seen) == 2


async def test_secrets_stay_out_of_payloads_logs_reprs_and_metrics(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier], caplog: Any
) -> None:
    for name in (None, "apprise", "httpx", "httpcore", "urllib3", "reconciler"):
        caplog.set_level(logging.DEBUG, logger=name)
    good, bad = await hooks(), await hooks(500, 500, 500, 500)
    receivers = (
        webhook(good.url, "ok-hook"),
        webhook(bad.url, "bad-hook"),
        mattermost(good.port, "ok-chat"),
        mattermost(bad.port, "bad-chat"),
    )
    notifier = running(*receivers, attempts=2)
    notifier.notify(failed())
    for name in ("ok-hook", "ok-chat"):
        await settled(notifier, name, "sent")
    for name in ("bad-hook", "bad-chat"):
        await settled(notifier, name, "failed")
    secrets = (SECRET.decode(), TOKEN, HOOK_PATH_TOKEN)
    payloads = [s.body.decode() for s in good.seen + bad.seen]
    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any(r.name == "apprise" for r in caplog.records)  # apprise spoke, at DEBUG
    assert any(r.name == "httpx" for r in caplog.records)
    assert any("bad-hook" in line for line in logged) and any("bad-chat" in line for line in logged)
    metrics = Metrics(
        lambda: Snapshot(notifications=notifier.counts(), notification_queue=notifier.depth()),
        version="0.0.0-test",
    )
    exposition = metrics.render(
        Snapshot(notifications=notifier.counts(), notification_queue=notifier.depth())
    ).decode()
    for secret in secrets:
        for where, texts in (("payload", payloads), ("log", logged)):
            leaks = [t for t in texts if secret in t]
            assert not leaks, f"{secret} in a {where}: {leaks[0]}"
        assert all(secret not in repr(r) for r in receivers)
        assert secret not in repr(notifier.counts()) and secret not in exposition


async def test_the_counts_render_as_metrics(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    hook = await hooks(500)
    notifier = running(webhook(hook.url, "ops"))
    notifier.notify(failed())
    notifier.notify(failed())
    await settled(notifier, "ops", "sent")
    snapshot = Snapshot(notifications=notifier.counts(), notification_queue=notifier.depth())
    text = Metrics(lambda: snapshot, version="0.0.0-test").render(snapshot).decode()
    assert "# TYPE reconciler_notifications_total counter" in text
    assert "# TYPE reconciler_notification_queue_depth gauge" in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if f.name.startswith("reconciler_notification")
    }
    total = "reconciler_notifications_total"
    assert samples[(total, (("outcome", "sent"), ("receiver", "ops")))] == 1
    assert samples[(total, (("outcome", "retried"), ("receiver", "ops")))] == 1
    assert samples[(total, (("outcome", "deduplicated"), ("receiver", "ops")))] == 1
    assert samples[(total, (("outcome", "dropped"), ("receiver", "ops")))] == 0
    assert samples[("reconciler_notification_queue_depth", (("receiver", "ops"),))] == 0


async def test_the_http_libraries_logs_never_show_a_receivers_url_or_its_parts(
    caplog: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = ("T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7F")
    url = "slack://{}/{}/{}/#ops".format(*tokens)
    notifier = Notifier([Receiver(name="slack", type="apprise", url=url)])
    try:
        posted = "https://hooks.slack.com/services/{}/{}/{}".format(*tokens)
        logging.getLogger("apprise").debug("posting to %s", posted)
        logging.getLogger("httpx").info("HTTP Request: POST %s", posted)
        try:
            raise ValueError(f"no answer from {url}")
        except ValueError:
            logging.getLogger("urllib3.connectionpool").exception("failed")
    finally:
        await notifier.close(0)
    logging.getLogger("apprise").debug("after close: %s", tokens[0])  # the filter is gone
    assert "failed" in caplog.text and "ValueError" in caplog.text
    after = caplog.records[-1]
    for token in tokens:
        assert token not in caplog.text.replace(after.getMessage(), "")
    assert tokens[0] in after.getMessage()


async def test_a_hostile_name_cannot_mention_everyone_in_a_chat(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    """A resource name and an error come from the repository: in a chat they must
    not become `@channel`/`@here`/`@all` mentions or Slack's `<!channel>` and
    `<url|text>` links that page a whole team or disguise a link."""
    hook = await hooks()
    notifier = running(mattermost(hook.port))
    notifier.notify(
        Notification(
            Condition.FAILED,
            Severity.ERROR,
            "File/@channel",
            "File/@channel failed <!here>",
            {"error": "@all see <https://evil.example|the docs> <@U123> @here"},
        )
    )
    (seen,) = await hook.wait(1)
    text = json.loads(seen.body)["text"]
    for mention in ("@channel", "@here", "@all", "<!here>", "<https://", "<@U123>"):
        assert mention not in text, text
    assert "channel" in text and "evil.example" in text  # shown, defused


async def test_a_hostile_revision_makes_a_bounded_payload(
    hooks: Callable[..., Awaitable[Hook]], running: Callable[..., Notifier]
) -> None:
    """A revision with thousands of errors, each huge and multi-line: the
    rejection's payload holds the count, the first three errors cut to one line of
    at most 300 characters, and a title of at most 200."""
    from types import SimpleNamespace

    from reconciler.daemon.announce import Announcer
    from reconciler.sources.base import Revision

    hook = await hooks()
    notifier = running(webhook(hook.url))
    announcer = Announcer(SimpleNamespace())  # type: ignore[arg-type]  # rejected() reads none of it
    announcer.notifier = notifier
    errors = [f"bad.yaml:{i}: " + "x\n" * 20_000 for i in range(5_000)]
    announcer.rejected(Revision("f" * 40, Path("/nonexistent"), "s" * 10_000), errors, "invalid")
    (seen,) = await hook.wait(1)
    body = json.loads(seen.body)
    assert len(seen.body) < 3_000
    assert body["fields"]["errors"] == "5000" and "error 4" not in body["fields"]
    assert (
        body["fields"]["error 1"].startswith("bad.yaml:0: x x") and "\n" not in seen.body.decode()
    )
    assert len(body["fields"]["error 1"]) == 300 and len(body["title"]) <= 200

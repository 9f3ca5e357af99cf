"""Prometheus metrics of one daemon: its own `CollectorRegistry`, never the global one.

Two kinds of series:

- Counters and the latency histogram change as things happen; the engine reports
  into them through its `Telemetry` protocol and the daemon counts fetches and
  rejected revisions.
- Everything that describes the present (each resource's state and drift, counts
  by state, the enforced revision, queue depth, source freshness) is made at
  scrape time from a `Snapshot` by a custom collector, so a removed resource or an
  old revision leaves no stale series behind.

Label values are kinds, resource names, states, phases and results; revisions
appear only in `reconciler_source_revision_info`. A scrape takes its snapshot on
the event loop (a copy of in-memory state) and renders the text in a thread, so
it never holds up reconciliation for longer than the copy.

The per-resource families are most of a scrape (two series per resource):
prometheus-client's generic text writer needs about 35 us a series on this
machine, too slow at 10,000 resources, so `render` writes those families itself
and the rest with `generate_latest`. `registry` still holds every collector, so
`generate_latest(registry)` gives the same exposition (a test checks that).
"""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.fsm import State

BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Reconcile latency buckets, 1 ms to 60 s (+Inf above)."""

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Event loop lag buckets (reconciler.looplag): 1 ms to 10 s; the target is 50 ms."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus reads (newer prometheus-client
versions announce 1.0.0 for the same text)."""

PHASES = ("detect", "plan", "apply", "verify", "prune")

MAX_RESOURCE_SERIES = 50_000
"""Per-resource series a scrape carries at most (each resource has two); beyond
it the aggregates stay complete and the per-resource series of the rest are left
out, so a huge config repository cannot blow up Prometheus."""

FAMILIES: dict[str, str] = {
    "reconciler_resource_state": "gauge",
    "reconciler_resource_drifted": "gauge",
    "reconciler_resources": "gauge",
    "reconciler_reconcile_duration_seconds": "histogram",
    "reconciler_transitions_total": "counter",
    "reconciler_drift_detected_total": "counter",
    "reconciler_apply_total": "counter",
    "reconciler_prune_total": "counter",
    "reconciler_source_fetch_total": "counter",
    "reconciler_source_revision_info": "gauge",
    "reconciler_revision_rejected_total": "counter",
    "reconciler_source_head_rejected": "gauge",
    "reconciler_source_last_success_timestamp_seconds": "gauge",
    "reconciler_source_interval_seconds": "gauge",
    "reconciler_last_converged_timestamp_seconds": "gauge",
    "reconciler_queue_depth": "gauge",
    "reconciler_event_loop_lag_seconds": "histogram",
    "reconciler_notifications_total": "counter",
    "reconciler_notification_queue_depth": "gauge",
    "reconciler_leader": "gauge",
    "reconciler_leader_epoch": "gauge",
    "reconciler_role": "gauge",
    "reconciler_shard_unclaimed_resources": "gauge",
    "reconciler_shard_conflicting_resources": "gauge",
    "reconciler_build_info": "gauge",
}
"""Every reconciler_* family /metrics exposes, by the name it is exposed under
(counters with their `_total`), and its type. Dashboards and alerts are checked
against it."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The present, copied on the event loop at the start of a scrape."""

    resources: dict[str, State] = field(default_factory=dict)
    """The state of every resource in the inventory, by id (Kind/name)."""
    revision: str | None = None
    """The revision enforced now."""
    head_rejected: bool = False
    last_fetch_success: float | None = None
    interval: float | None = None
    last_converged: float | None = None
    queue_depth: int = 0
    notifications: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Notifications by (receiver, outcome), totals since start (reconciler.notifier)."""
    notification_queue: Mapping[str, int] = field(default_factory=dict)
    """Notifications queued per receiver."""
    role: str = "leader"
    """"leader" or "standby" (high availability; a daemon without election leads)."""
    epoch: int = 0
    """The epoch of the lease led now, or last led; 0 without an election."""
    shard_unclaimed: int = 0
    """Resources of the enforced revision no shard claims (0 without --shard)."""
    shard_conflicting: int = 0
    """Resources of the enforced revision two or more shards claim."""


class Metrics:
    """The registry and the series of one daemon. Implements the engine's
    `Telemetry` protocol."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, version: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: noise in the text format
        self.registry = CollectorRegistry(auto_describe=True)
        """Every collector of the daemon."""
        self._rest = CollectorRegistry(auto_describe=True)
        """All but the per-resource families, which `render` writes itself."""
        self._snapshot = snapshot
        self._current = Snapshot()
        self._render_lock = threading.Lock()
        self._renderer = ThreadPoolExecutor(1, thread_name_prefix="metrics")
        self._rendering: asyncio.Future[bytes] | None = None
        """The render in flight (on the loop's side)."""
        self._next: asyncio.Future[bytes] | None = None
        """The render after it, shared by the scrapes that came meanwhile."""
        """One thread renders every scrape: its large, short-lived strings then come
        from one malloc arena, not from one per worker of the default executor."""
        registry = self._rest  # and each collector in `self.registry` too, below
        system = (
            ProcessCollector(registry=registry),
            PlatformCollector(registry=registry),
            GCCollector(registry=registry),
        )
        self.duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Time a resource spent in one phase of a reconcile (detect, plan, apply, "
            "verify, prune); a batched observation counts once per resource in it.",
            ["kind", "phase"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.transitions_total = Counter(
            "reconciler_transitions",
            "State machine transitions, by kind and states (from_state none: new).",
            ["kind", "from_state", "to_state"],
            registry=registry,
        )
        self.drift_total = Counter(
            "reconciler_drift_detected",
            "Drift checks that found the object changed out of band.",
            ["kind"],
            registry=registry,
        )
        self.apply_total = Counter(
            "reconciler_apply",
            "Applies, by result (success, error).",
            ["kind", "result"],
            registry=registry,
        )
        self.prune_total = Counter(
            "reconciler_prune",
            "Resources pruned (deleted or released) after leaving the desired state.",
            ["kind"],
            registry=registry,
        )
        self.fetch_total = Counter(
            "reconciler_source_fetch",
            "Fetches of the source, by result (success, error).",
            ["result"],
            registry=registry,
        )
        self.rejected_total = Counter(
            "reconciler_revision_rejected",
            "Revisions rejected whole (invalid manifests, refused mass prune).",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "reconciler_event_loop_lag_seconds",
            "How much later than asked the daemon's event loop ran a 10 ms timer, "
            "sampled every 10 ms: how long the loop was busy with one thing.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        for result in ("success", "error"):  # present from the start, so rate() works
            self.fetch_total.labels(result)
        self._resources = _Resources(self)
        self.registry.register(self._resources)
        for collector in (
            *system,
            self.duration,
            self.transitions_total,
            self.drift_total,
            self.apply_total,
            self.prune_total,
            self.fetch_total,
            self.rejected_total,
            self.loop_lag,
        ):
            self.registry.register(collector)
        for present in (_Present(self), _BuildInfo(version)):
            self._rest.register(present)
            self.registry.register(present)

    # Telemetry (called by the engine on the event loop)

    def transitions(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        for (kind, source, target), n in counts.items():
            self.transitions_total.labels(kind, source, target).inc(n)

    def phase(self, kind: str, phase: str, seconds: float, n: int = 1) -> None:
        child = self.duration.labels(kind, phase)
        if n == 1:
            child.observe(seconds)
            return
        # n equal observations at once: a pass's batched detect covers up to every
        # resource, and n calls of observe() cost 26 ms per 12,000 on the event loop.
        # prometheus-client's Histogram keeps per-bucket (not cumulative) counts
        # and the sum; tests/unit/test_metrics.py checks the result against observe().
        child._sum.inc(seconds * n)
        bucket = bisect.bisect_left(child._upper_bounds, seconds)
        child._buckets[bucket].inc(n)

    def applied(self, kind: str, ok: bool) -> None:
        self.apply_total.labels(kind, "success" if ok else "error").inc()

    def drifted(self, kind: str) -> None:
        self.drift_total.labels(kind).inc()

    def pruned(self, kind: str) -> None:
        self.prune_total.labels(kind).inc()

    # the daemon's events

    def fetched(self, ok: bool) -> None:
        self.fetch_total.labels("success" if ok else "error").inc()

    def rejected(self) -> None:
        self.rejected_total.inc()

    # scraping

    def render(self, snapshot: Snapshot) -> bytes:
        """The exposition text for `snapshot` (thread-safe; blocking)."""
        with self._render_lock:
            self._current = snapshot
            try:
                return self._resources.text(snapshot).encode() + generate_latest(self._rest)
            finally:
                self._current = Snapshot()

    async def exposition(self) -> tuple[bytes, str]:
        """Copy the present on the loop, render in a thread: (body, content type).

        Scrapes that arrive while one renders share the next render, which copies
        the present once that one is done: each answer is as fresh as its request,
        and a burst of scrapes costs two renders, not one each (a render of 12,000
        resources keeps the GIL from the loop for tens of ms)."""
        if self._next is None:
            self._next = asyncio.ensure_future(self._render_next(self._rendering))
        body = await asyncio.shield(self._next)
        return body, CONTENT_TYPE

    async def _render_next(self, previous: asyncio.Future[bytes] | None) -> bytes:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own scrapes'
        current = self._next
        self._next, self._rendering = None, current  # later scrapes: the render after
        try:
            snapshot = self._snapshot()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._renderer, self.render, snapshot)
        finally:
            if self._rendering is current:
                self._rendering = None


_STATE_HELP = "1 for the state each resource is in now (one series per resource)."
_DRIFTED_HELP = "1 while a resource differs from git and its policy did not heal it yet."
_RESOURCES_HELP = "Resources by kind and state."


def _counts(resources: dict[str, State]) -> list[tuple[tuple[str, str], int]]:
    counts: dict[tuple[str, str], int] = {}
    for rid, current in resources.items():
        key = (rid.partition("/")[0], current.value)
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items())


def _label(value: str) -> str:
    """A label value escaped for the text format (backslash, quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


class _Resources(Collector):
    """The per-resource families and the counts by state: the bulk of a scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lines: dict[str, tuple[State, str, str, str]] = {}
        """The two lines of each resource as last written, by id, with the state they
        were written for: a scrape rewrites only the lines of resources whose state
        changed (used under the metrics' render lock)."""

    def describe(self) -> Iterable[Metric]:
        return ()  # made at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snap = self._metrics._current
        state = GaugeMetricFamily(
            "reconciler_resource_state", _STATE_HELP, labels=["kind", "name", "state"]
        )
        drifted = GaugeMetricFamily(
            "reconciler_resource_drifted", _DRIFTED_HELP, labels=["kind", "name"]
        )
        for i, (rid, current) in enumerate(snap.resources.items()):
            if i >= MAX_RESOURCE_SERIES // 2:
                break
            kind, _, name = rid.partition("/")
            state.add_metric([kind, name, current.value], 1)
            drifted.add_metric([kind, name], 1 if current is State.DRIFTED else 0)
        by_state = GaugeMetricFamily(
            "reconciler_resources", _RESOURCES_HELP, labels=["kind", "state"]
        )
        for (kind, value), n in _counts(snap.resources):
            by_state.add_metric([kind, value], n)
        yield state
        yield drifted
        yield by_state

    def text(self, snap: Snapshot) -> str:
        """The same families as `collect`, in the text format, written directly."""
        cache = self._lines
        if len(cache) > 2 * len(snap.resources) + 1024:  # forget removed resources
            self._lines = cache = {rid: cache[rid] for rid in snap.resources if rid in cache}
        state_lines: list[str] = []
        drifted_lines: list[str] = []
        counts: dict[tuple[str, State], int] = {}
        shown = MAX_RESOURCE_SERIES // 2
        for rid, current in snap.resources.items():
            lines = cache.get(rid)
            if lines is None or lines[0] is not current:
                lines = cache[rid] = _resource_lines(rid, current)
            key = (lines[1], current)
            counts[key] = counts.get(key, 0) + 1
            if shown:
                shown -= 1
                state_lines.append(lines[2])
                drifted_lines.append(lines[3])
        count_lines = [
            f'reconciler_resources{{kind="{kind}",state="{value}"}} {float(n)!r}'
            for kind, value, n in sorted(
                (kind, current.value, n) for (kind, current), n in counts.items()
            )
        ]
        return "\n".join(
            [
                f"# HELP reconciler_resource_state {_STATE_HELP}",
                "# TYPE reconciler_resource_state gauge",
                *state_lines,
                f"# HELP reconciler_resource_drifted {_DRIFTED_HELP}",
                "# TYPE reconciler_resource_drifted gauge",
                *drifted_lines,
                f"# HELP reconciler_resources {_RESOURCES_HELP}",
                "# TYPE reconciler_resources gauge",
                *count_lines,
                "",
            ]
        )


def _resource_lines(rid: str, current: State) -> tuple[State, str, str, str]:
    """(state, escaped kind, state line, drifted line) of one resource."""
    kind, _, name = rid.partition("/")
    kind = _label(kind)
    labels = f'kind="{kind}",name="{_label(name)}"'
    drifted = "1.0" if current is State.DRIFTED else "0.0"
    return (
        current,
        kind,
        f'reconciler_resource_state{{{labels},state="{current.value}"}} 1.0',
        f"reconciler_resource_drifted{{{labels}}} {drifted}",
    )


class _Present(Collector):
    """Series describing the source and the queue, made from the scrape's snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # made at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snap = self._metrics._current
        info = GaugeMetricFamily(
            "reconciler_source_revision_info",
            "The revision enforced now (value 1).",
            labels=["revision"],
        )
        if snap.revision is not None:
            info.add_metric([snap.revision], 1)
        yield info
        yield GaugeMetricFamily(
            "reconciler_source_head_rejected",
            "1 while the newest fetched revision is rejected (an older one stays enforced).",
            value=1 if snap.head_rejected else 0,
        )
        if snap.last_fetch_success is not None:
            yield GaugeMetricFamily(
                "reconciler_source_last_success_timestamp_seconds",
                "Unix time of the last successful fetch of the source.",
                value=snap.last_fetch_success,
            )
        if snap.interval is not None:
            yield GaugeMetricFamily(
                "reconciler_source_interval_seconds",
                "The configured poll interval of the source.",
                value=snap.interval,
            )
        if snap.last_converged is not None:
            yield GaugeMetricFamily(
                "reconciler_last_converged_timestamp_seconds",
                "Unix time of the end of the last pass after which no resource was failed "
                "or blocked.",
                value=snap.last_converged,
            )
        yield GaugeMetricFamily(
            "reconciler_queue_depth",
            "Resources waiting for a pass.",
            value=snap.queue_depth,
        )
        yield from _notification_families(snap)
        yield from _role_families(snap)
        yield GaugeMetricFamily(
            "reconciler_shard_unclaimed_resources",
            "Resources of the enforced revision that no shard claims: applied by no daemon.",
            value=snap.shard_unclaimed,
        )
        yield GaugeMetricFamily(
            "reconciler_shard_conflicting_resources",
            "Resources of the enforced revision that two or more shards claim: applied by "
            "no daemon.",
            value=snap.shard_conflicting,
        )


ROLES = ("leader", "standby")


def _role_families(snap: Snapshot) -> Iterator[Metric]:
    """The daemon's role in its shard's election: `sum(reconciler_leader)` over a
    shard's replicas is 1 when all is well."""
    yield GaugeMetricFamily(
        "reconciler_leader",
        "1 while this daemon leads its shard (applies), 0 as a standby.",
        value=1 if snap.role == "leader" else 0,
    )
    yield GaugeMetricFamily(
        "reconciler_leader_epoch",
        "The epoch of the lease this daemon leads under, or last led under (0: never).",
        value=snap.epoch,
    )
    role = GaugeMetricFamily(
        "reconciler_role", "This daemon's role (value 1 for the current one).", labels=["role"]
    )
    for name in ROLES:
        role.add_metric([name], 1 if snap.role == name else 0)
    yield role


def _notification_families(snap: Snapshot) -> Iterator[Metric]:
    """The notifier's counts and queues: a few series per receiver, none (but the
    families) without receivers."""
    total = CounterMetricFamily(
        "reconciler_notifications",
        "Notifications by receiver and outcome: sent, failed (after its last attempt "
        "or at once), retried (attempts after the first), suppressed (rate limit), "
        "deduplicated, dropped (full queue or shutdown).",
        labels=["receiver", "outcome"],
    )
    for (receiver, outcome), n in sorted(snap.notifications.items()):
        total.add_metric([receiver, outcome], n)
    yield total
    depth = GaugeMetricFamily(
        "reconciler_notification_queue_depth",
        "Notifications waiting to be sent, per receiver.",
        labels=["receiver"],
    )
    for receiver, n in sorted(snap.notification_queue.items()):
        depth.add_metric([receiver], n)
    yield depth


class _BuildInfo(Collector):
    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "reconciler_build_info", "The running reconciler (value 1).", labels=["version"]
        )
        info.add_metric([self._version], 1)
        yield info

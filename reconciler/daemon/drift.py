"""The daemon's drift scheduler: the work queue, the resync heap, the providers'
watches and the heal backoff.

Watch events and due resyncs put resource ids on a deduplicated queue; the work
loop turns each batch into targeted passes (`Engine.converge(only=...)`), side
by side for disjoint resources (`claims`, decision 0126). After every pass (a revision's too)
`after_pass` schedules each resource the pass touched: at its backoff after a
failure or a heal, else at its resync period, jittered.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler import logs
from reconciler.backoff import backoff
from reconciler.engine import APPLIED, UNSETTLED, Outcome, Report, Result
from reconciler.fsm import Event, State
from reconciler.model import WATCHING, DesiredState, ResourceId

if TYPE_CHECKING:
    from reconciler.daemon.claims import Claim
    from reconciler.daemon.lifecycle import Daemon

log = logging.getLogger("reconciler.daemon")

QUIET_AFTER_APPLY = 1.0
"""Seconds during which watch events of a resource just applied are taken as our own."""
WATCH_OVERLAP = 5.0
"""Seconds a replaced watch stream keeps running at most while the new ones start."""
WATCH_HANDOVER = 0.2
"""Seconds a replaced watch stream keeps running once the new ones are in place, to
deliver what it saw before (a watch reports a change within its debounce, 0.1 s)."""
HEAL_RESET = 900.0
"""A resource not healed for this long starts its heal backoff again from 2 s."""


_PACED = 256
"""Results gone through between two checks of the daemon's pacer."""
_LOG_SLICE = 8
"""Result lines logged between two checks of the daemon's pacer (decision 0128)."""


@dataclass
class _Heal:
    count: int = 0
    last: float = 0.0


@dataclass
class Queue:
    """Resource ids waiting for a pass, deduplicated, by trigger."""

    items: dict[ResourceId, Event] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, rid: ResourceId, trigger: Event) -> None:
        self.items.setdefault(rid, trigger)
        self.wake.set()

    def take(self) -> dict[ResourceId, Event]:
        items, self.items = self.items, {}
        self.wake.clear()
        return items

    def defer(self, items: dict[ResourceId, Event]) -> None:
        """Put back ids a pass in flight holds, without waking the work loop: the
        end of a claim wakes it (`released`)."""
        for rid, trigger in items.items():
            self.items.setdefault(rid, trigger)

    def released(self) -> None:
        """A claim ended: deferred ids may be free now."""
        if self.items:
            self.wake.set()


class DriftScheduler:
    """When each resource is looked at next, and the passes that look."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.queue = Queue()
        self.rewatch = asyncio.Event()
        """Set when the watches must start again (a new desired state, a recreated watch root)."""
        self._due: dict[ResourceId, float] = {}
        self._heap: list[tuple[float, ResourceId]] = []
        self._blocked: set[ResourceId] = set()
        self._rescheduled = asyncio.Event()
        self._quiet: dict[ResourceId, float] = {}
        self._heals: dict[ResourceId, _Heal] = {}
        self.drift: dict[ResourceId, list[dict[str, Any]]] = {}
        """The drifted fields of each resource the last pass left Drifted."""
        self.last_pass: dict[str, Any] | None = None
        self._unsettled: set[ResourceId] = set()
        """Resources whose last pass left them failed or blocked."""
        self.last_converged: float | None = None

    # drift: watch events and periodic resyncs become targeted passes

    async def watch_loop(self) -> None:
        """One watch stream per kind, started again on `rewatch`. The new streams
        start before the old ones stop, which end once every new one has yielded
        `WATCHING` (or after `WATCH_OVERLAP`) and then `WATCH_HANDOVER`, so that no
        change is missed while the watches restart (decision 0127)."""
        running: list[asyncio.Task[None]] = []
        try:
            while True:
                self.rewatch.clear()
                started = [
                    (asyncio.create_task(self._drain(stream, ready), name=f"watch {kind}"), ready)
                    for kind, stream in self._watch_streams()
                    for ready in (asyncio.Event(),)
                ]
                if started and running:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(WATCH_OVERLAP):
                            for _, ready in started:
                                await ready.wait()
                    await asyncio.sleep(WATCH_HANDOVER)
                await _cancel(running)
                running = [task for task, _ in started]
                await self.rewatch.wait()
        finally:
            await _cancel(running)

    def _watch_streams(self) -> list[tuple[str, AsyncIterator[ResourceId]]]:
        daemon = self._daemon
        if daemon.desired is None or daemon.registry is None:
            return []
        streams = []
        for kind in daemon.registry:
            specs = {  # drift: ignore is never checked, so never watched
                rid: res.spec
                for rid, res in daemon.desired.resources.items()
                if res.kind == kind and res.policy.drift != "ignore"
            }
            try:
                stream = daemon.registry[kind].watch(specs) if specs else None
            except Exception as exc:
                log.warning("%s watch failed: %s; relying on resync", kind, exc)
                stream = None
            if stream is not None:
                streams.append((kind, stream))
        return streams

    async def _drain(self, stream: AsyncIterator[ResourceId], ready: asyncio.Event) -> None:
        try:
            async for rid in stream:
                if rid == WATCHING:
                    ready.set()
                    continue
                quiet_until = self._quiet.get(rid, 0.0)
                if time.monotonic() < quiet_until:
                    # likely our own write: look again when the window closes rather
                    # than now, so a hand edit made meanwhile is still caught
                    self._schedule(rid, quiet_until)
                    continue
                self.queue.put(rid, Event.WATCH)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a watcher failing must not stop the daemon
            log.warning("watch stopped: %s; relying on periodic resync", exc)
        finally:
            ready.set()  # a stream that ended replaces nothing
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def resync_loop(self) -> None:
        """Queue each resource when its next look is due. `_due` holds the current
        time per resource; the heap may hold stale entries, skipped when popped."""
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                at, rid = heapq.heappop(self._heap)
                if self._due.get(rid) == at:
                    del self._due[rid]
                    self.queue.put(rid, Event.RESYNC)
            wait = self._heap[0][0] - now if self._heap else 1.0
            self._rescheduled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(wait, 0.01), 1.0)):
                    await self._rescheduled.wait()

    def _schedule(self, rid: ResourceId, at: float) -> None:
        self._due[rid] = at
        heapq.heappush(self._heap, (at, rid))
        if len(self._heap) > 4 * len(self._due) + 1024:  # drop stale entries now and then
            self._heap = [(t, r) for r, t in self._due.items()]
            heapq.heapify(self._heap)
        self._rescheduled.set()

    async def work_loop(self) -> None:
        """Turn queued ids into drift passes, side by side (decision 0126): the ids
        a pass in flight holds (or whose dependencies it holds) wait in the queue
        until it lets them go; each batch's free ids start a pass at once."""
        daemon = self._daemon
        claims = daemon.claims
        async with asyncio.TaskGroup() as group:
            while True:
                await self.queue.wake.wait()
                await asyncio.sleep(0.02)  # coalesce a burst of events into one pass
                if daemon.stopping:
                    return
                desired = claims.desired or daemon.desired
                if claims.holding or desired is None or daemon.engine is None:
                    self.queue.wake.clear()  # looked at again when the revision pass claims
                    continue
                batch = self.queue.take()
                engine = daemon.engine
                deferred: dict[ResourceId, Event] = {}
                by_trigger: dict[Event, set[ResourceId]] = {}
                held: dict[Event, set[ResourceId]] = {}
                taken: dict[ResourceId, Event] = {}  # what this batch's passes hold, by pass
                for rid, trigger in batch.items():
                    if rid not in desired.resources:
                        continue
                    deps = desired.dependencies.get(rid, ())
                    # what the pass may drive in its second pass is held with the id
                    want = {rid, *engine.refreshers(desired, (rid,))}
                    if (
                        not claims.free(rid, deps)
                        or not all(claims.free(r, ()) for r in want)
                        or any(taken.get(r, trigger) is not trigger for r in (*want, *deps))
                    ):
                        deferred[rid] = trigger
                        continue
                    by_trigger.setdefault(trigger, set()).add(rid)
                    held.setdefault(trigger, set()).update(want)
                    taken.update(dict.fromkeys(want, trigger))
                for trigger, rids in by_trigger.items():
                    claim = claims.take(held[trigger])
                    claims.drift_started()
                    group.create_task(
                        self._drift_pass(desired, rids, trigger, claim), name="drift pass"
                    )
                self.queue.defer(deferred)

    async def _drift_pass(
        self, desired: DesiredState, rids: set[ResourceId], trigger: Event, claim: Claim
    ) -> None:
        daemon = self._daemon
        assert daemon.engine is not None
        try:
            logs.REVISION.set(desired.revision)  # for what the engine and providers log
            report = await daemon.engine.converge(desired, only=rids, trigger=trigger)
            await self.after_pass(report)
            await self.log_results(report)
        finally:
            daemon.claims.drift_ended(claim)
        if self._restarts_watches(report):
            self.rewatch.set()  # e.g. a recreated directory needs its watch again

    def _restarts_watches(self, report: Report) -> bool:
        """Whether the pass created or healed an object whose provider declares
        that this gives the watches something new to follow (`restarts_watches`)."""
        registry, desired = self._daemon.registry, self._daemon.desired
        if registry is None or desired is None:
            return False
        kinds = {
            res.kind
            for rid, r in report.results.items()
            if r.action in (Outcome.CREATED, Outcome.HEALED)
            and (res := desired.resources.get(rid)) is not None
        }
        return any(registry[kind].restarts_watches for kind in kinds)

    def on_settled(self, result: Result) -> None:
        """The engine's on_settled: the resource's drift entry, and the end of the
        claim of the pass that settled it, so another pass may take it up now."""
        if result.action in APPLIED:
            # its own write's watch events, arriving before the pass ends
            self._quiet[result.id] = time.monotonic() + QUIET_AFTER_APPLY
        self.settled(result)
        self._daemon.claims.settled(result.id)

    def settled(self, result: Result) -> None:
        """Keep a resource's drift entry as it settles (the engine's on_settled),
        so the API never shows Drifted without the fields that drifted."""
        rid = result.id
        if result.state is State.DRIFTED and result.plan:
            # a drift entry names its values for what they are: what the system
            # holds and what the repository says (a plan's before/after would
            # read as a history); sensitive values never leave the plan
            self.drift[rid] = [
                {"field": c.field, "observed": c.before, "desired": c.after}
                if not c.sensitive
                else {"field": c.field, "sensitive": True}
                for c in result.plan.changes
            ]
        else:
            self.drift.pop(rid, None)

    async def after_pass(self, report: Report, *, resync_all: bool = False) -> None:
        """Schedule the next look at every resource the pass touched (or, after a
        start, at all): a failure's backoff, a heal's backoff, or the resync period.
        Paced (decision 0128): 12,000 resources at once would hold the loop ~40 ms."""
        desired = self._daemon.claims.desired or self._daemon.desired
        assert desired is not None
        pacer = self._daemon.pacer
        now = time.monotonic()
        ids = desired.resources if resync_all else report.results
        for i, rid in enumerate(ids):
            if i % _PACED == _PACED - 1:
                await pacer.pause()
            res = desired.resources.get(rid)
            if res is None:
                self._due.pop(rid, None)
                continue
            result = report.results.get(rid)
            if result is not None and result.action in APPLIED:
                self._quiet[rid] = now + QUIET_AFTER_APPLY
            if result is not None:
                self.settled(result)
            else:
                self.drift.pop(rid, None)
            if result is not None and result.retry_in is not None:
                self._schedule(rid, now + result.retry_in)
            elif result is not None and result.state is State.FAILED:
                self._due.pop(rid, None)  # permanent: waits for a new spec
            elif res.policy.drift == "ignore" and (result is None or result.state is State.IN_SYNC):
                self._due.pop(rid, None)  # a resync would be a drift check: none under ignore
            else:
                self._schedule(rid, now + res.policy.resync * random.uniform(0.9, 1.1))
        for i, (rid, result) in enumerate(report.results.items()):
            if i % _PACED == _PACED - 1:
                await pacer.pause()
            if result.action in UNSETTLED and rid in desired.resources:
                self._unsettled.add(rid)
            else:
                self._unsettled.discard(rid)
        if not self._unsettled:
            self.last_converged = time.time()
        self.last_pass = {
            "at": time.time(),
            "seconds": report.seconds,
            "summary": report.summary(),
        }
        await self._wake_dependents(report)

    async def log_results(self, report: Report) -> None:
        """One line per resource the pass acted on, a slice per loop iteration: a
        pass of 12,000 creations logged in one call would hold the loop."""
        pacer = self._daemon.pacer
        for i, (rid, result) in enumerate(report.results.items()):
            if i % _LOG_SLICE == _LOG_SLICE - 1:
                await pacer.pause()  # a line is a write(): a few dozen per iteration
            where = {"revision": report.revision, "resource": rid}
            if result.action == Outcome.DRIFTED and result.retry_in is not None:
                log.warning(
                    "%s drifted again; next heal in %.0f s (heal backoff)",
                    rid,
                    result.retry_in,
                    extra=where,
                )
            elif result.action == Outcome.DRIFTED:
                fields = ", ".join(c.field for c in result.plan.changes) if result.plan else ""
                log.warning("%s drifted (%s); policy: not healed now", rid, fields, extra=where)
            elif result.action in UNSETTLED:
                log.error("%s %s: %s", rid, result.action, result.error, extra=where)
            elif result.action not in (Outcome.UNCHANGED, Outcome.SUSPENDED):
                log.info("%s %s", rid, result.action, extra=where)
        await self._daemon.announcer.results(report)

    async def _wake_dependents(self, report: Report) -> None:
        """A resource that came into sync unblocks its Blocked dependents now,
        not at their next resync."""
        desired = self._daemon.claims.desired or self._daemon.desired
        assert desired is not None
        pacer = self._daemon.pacer
        for i, (rid, result) in enumerate(report.results.items()):
            if i % _PACED == _PACED - 1:
                await pacer.pause()
            if result.state is State.BLOCKED:
                self._blocked.add(rid)
            else:
                self._blocked.discard(rid)
        ready = {rid for rid, r in report.results.items() if r.state is State.IN_SYNC}
        for rid in list(self._blocked) if ready else ():
            if any(dep in ready for dep in desired.dependencies.get(rid, ())):
                self.queue.put(rid, Event.RESYNC)

    def heal_wait(self, rid: ResourceId) -> float:
        """The engine's heal gate, a backoff against fighting another writer: 0 to
        heal now, else seconds to wait. Heals of one resource within HEAL_RESET of
        each other wait 2 s, 4 s, ... up to 5 min."""
        now = time.monotonic()
        heal = self._heals.setdefault(rid, _Heal())
        if heal.count and now - heal.last > HEAL_RESET:
            heal.count = 0
        if heal.count:
            wait = heal.last + backoff(heal.count, base=2.0, jitter=0.0) - now
            if wait > 0:
                return wait
        heal.count += 1
        heal.last = now
        return 0.0


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

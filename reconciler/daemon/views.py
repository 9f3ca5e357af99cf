"""The daemon's views: the JSON documents the HTTP server serves (the `Backend`
of `reconciler.server`: status, resources, events, bundle instances, a page of
the status page's table) and the snapshot the metrics registry reads at each
scrape.

Each view answers from the daemon's memory and the store's inventory and
history; every store read the API makes is here. The inventory is memory; the
history is read on the store's thread (`events` is a coroutine), so no view
waits for SQLite on the event loop (decision 0119).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

from reconciler import shards
from reconciler.fsm import State
from reconciler.metrics import Snapshot
from reconciler.model import DesiredState
from reconciler.sources.base import redact
from reconciler.store import Record
from reconciler.web import PageQuery

if TYPE_CHECKING:
    from reconciler.daemon.announce import Announcer
    from reconciler.daemon.drift import DriftScheduler
    from reconciler.daemon.leading import Leadership
    from reconciler.daemon.settings import DaemonSettings
    from reconciler.daemon.sync import SourceState, Syncer
    from reconciler.looplag import LoopLag
    from reconciler.pacing import Pacer
    from reconciler.store import OffLoopStore


_SLICE = 64
"""Resources built between two checks of the pacer."""
_PAGE_SLICE = 1024
"""Records filtered between two checks of the pacer (a look at each is ~0.3 µs)."""

_SEVERITY: Final = {
    state: i
    for i, state in enumerate(
        (
            State.FAILED,
            State.DRIFTED,
            State.BLOCKED,
            State.PRUNING,
            State.APPLYING,
            State.VERIFYING,
            State.PLANNING,
            State.DETECTING,
            State.PENDING,
            State.SUSPENDED,
            State.IN_SYNC,
        )
    )
}
"""The status page sorts states by how much they need a look, not by name."""
_SORT_KEYS: Final[dict[str, Callable[[Record], Any]]] = {
    "id": attrgetter("id"),
    "kind": lambda r: (r.kind, r.id),
    "state": lambda r: (_SEVERITY.get(r.state, len(_SEVERITY)), r.id),
    "transition": lambda r: (r.last_transition, r.id),
    "error": lambda r: (r.last_error or "", r.id),
    "instance": lambda r: (r.instance, r.id),
}


class ApiViews:
    """The server's backend, mixed into `Daemon`: what it reads of the daemon is
    declared here."""

    settings: DaemonSettings
    started: float
    store: OffLoopStore | None
    loop_lag: LoopLag
    desired: DesiredState | None
    source_state: SourceState
    scheduler: DriftScheduler
    syncer: Syncer
    pacer: Pacer
    announcer: Announcer
    leadership: Leadership
    _shard_memo: tuple[DesiredState, dict[str, object] | None, tuple[int, int]] | None = None
    """The sharding report and counts of the last revision asked about."""

    def live(self) -> bool:
        return True

    def ready(self) -> tuple[bool, str]:
        if self.store is None:
            return False, "state store not open"
        if not self.leadership.role.leading:
            return True, "standby"  # serves the read API; takes over when elected
        if self.desired is None:
            return False, "no revision loaded yet"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        state = self.source_state
        counts: dict[str, int] = {}
        if self.store is not None:  # kept by the store: counting 12,000 records holds the loop
            counts = {state.value: n for state, n in self.store.state_counts().items()}
        return {
            "source": {"url": state.url, "ref": self.settings.ref, "path": self.settings.path},
            "revision": None
            if state.current is None
            else {"id": state.current.id, "summary": state.current.summary},
            "lastGoodRevision": None if self.desired is None else self.desired.revision,
            "lastFetch": {
                "at": state.last_fetch,
                "ok": state.last_fetch_ok,
                "lastSuccess": state.last_success,
            },
            "lastError": state.last_error,
            "rejected": state.rejected,
            "recovery": self.syncer.recovery,
            "lastPass": self.scheduler.last_pass,
            "resources": counts,
            "instances": _instances_json(self.desired),
            "queue": len(self.scheduler.queue.items),
            "startedAt": self.started,
            "eventLoop": self.loop_lag.status(),
            "ha": self.leadership.status(),
            "shards": self._shards(),
        }

    def _shards(self) -> dict[str, object] | None:
        """The enforced revision's sharding (this shard, the unclaimed and the
        conflicting resources), worked out once per revision, not at every call."""
        desired = self.desired
        if desired is None:
            return None
        memo = self._shard_memo
        if memo is None or memo[0] is not desired:
            memo = (desired, shards.report(desired), shards.counts(desired))
            self._shard_memo = memo
        return memo[1]

    def _resource_json(self, record: Any) -> dict[str, Any]:
        return {
            "id": record.id,
            "kind": record.kind,
            "name": record.name,
            "state": record.state.value,
            "lastTransition": record.last_transition,
            "lastError": record.last_error,
            "attempts": record.attempts,
            "createdByReconciler": record.created,
            "drift": self.scheduler.drift.get(record.id),
            "instance": record.instance or None,
        }

    async def resources(self, kind: str | None) -> list[dict[str, Any]]:
        """Built a slice at a time: 12,000 records at once would hold the loop."""
        store = self.store
        if store is None:
            return []
        found = []
        for i, rid in enumerate(sorted(store.ids())):
            if i % _SLICE == _SLICE - 1:
                await self.pacer.pause()
            if kind is not None and rid.partition("/")[0] != kind:
                continue
            record = store.record(rid)
            if record is not None:  # None: pruned meanwhile
                found.append(self._resource_json(record))
        return found

    async def page(self, query: PageQuery) -> dict[str, Any]:
        """One page of the status page's table: the records matching the query's
        filter, sorted, and that page of them built; the kinds present (for the
        page's filter). One walk over the inventory (a copy the store keeps in
        memory), paced; only the page's rows are built."""
        inventory = {} if self.store is None else self.store.inventory()
        needle = query.q.casefold()
        state, kind = query.state, query.kind
        kinds: set[str] = set()
        matched: list[Record] = []
        for i, record in enumerate(inventory.values()):
            if i % _PAGE_SLICE == _PAGE_SLICE - 1:
                await self.pacer.pause()
            kinds.add(record.kind)
            if state is not None and record.state.value != state:
                continue
            if kind is not None and record.kind != kind:
                continue
            if needle and needle not in record.id.casefold():
                continue
            matched.append(record)
        await self.pacer.pause()
        matched.sort(key=_SORT_KEYS[query.sort], reverse=query.order == "desc")
        size = query.size
        pages = max(1, -(-len(matched) // size))
        number = min(query.page, pages)  # past the end (the list shrank): the last page
        shown = matched[(number - 1) * size : number * size]
        return {
            "total": len(inventory),
            "matched": len(matched),
            "page": number,
            "pages": pages,
            "size": size,
            "kinds": sorted(kinds),
            "rows": [self._resource_json(record) for record in shown],
        }

    def resource(self, kind: str, name: str) -> dict[str, Any] | None:
        if self.store is None:
            return None
        record = self.store.inventory().get(f"{kind}/{name}")
        return None if record is None else self._resource_json(record)

    async def events(
        self,
        *,
        resource: str | None,
        kind: str | None,
        since: float | None,
        limit: int,
        instance: str | None,
    ) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        history = await self.store.history(
            resource, limit, kind=kind, since=since, instance=instance
        )
        return [t.to_json() for t in history]

    # metrics

    def metrics_snapshot(self) -> Snapshot:
        """What the metrics registry reads of the daemon at each scrape."""
        state = self.source_state
        notifier = self.announcer.notifier
        self._shards()
        unclaimed, conflicting = (0, 0) if self._shard_memo is None else self._shard_memo[2]
        return Snapshot(
            resources=self.store.states() if self.store is not None else {},
            revision=None if self.desired is None else self.desired.revision,
            head_rejected=state.rejected is not None,
            last_fetch_success=state.last_success,
            interval=self.settings.interval,
            last_converged=self.scheduler.last_converged,
            queue_depth=len(self.scheduler.queue.items),
            notifications={} if notifier is None else notifier.counts(),
            notification_queue={} if notifier is None else notifier.depth(),
            role=self.leadership.role.role.value,
            epoch=self.leadership.role.epoch,
            shard_unclaimed=unclaimed,
            shard_conflicting=conflicting,
        )


def _instances_json(desired: DesiredState | None) -> list[dict[str, Any]]:
    """The bundle instances of the enforced revision, each with how many resources
    it made itself (not counting those of the instances nested in it)."""
    if desired is None or not desired.instances:
        return []
    made: dict[str, int] = {}
    for res in desired.resources.values():
        if res.instance:
            made[res.instance] = made.get(res.instance, 0) + 1
    return [
        {
            "id": inst.id,
            "source": redact(inst.source),
            "location": str(inst.location),
            "parent": inst.parent or None,
            "ref": inst.ref or None,
            "commit": inst.commit or None,
            "resources": made.get(inst.id, 0),
        }
        for inst in sorted(desired.instances.values(), key=lambda inst: inst.id)
    ]

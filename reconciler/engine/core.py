"""The Engine: the object the CLI and the daemon hold. It binds providers to a
desired state, runs passes (`converge`, one `Pass` each, plus a second pass for
resources that refresh on something the first applied) and answers the read-only
queries (`preview`, `prune_refusal`, `changed`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from reconciler import graph
from reconciler.engine import queries
from reconciler.engine.passes import Pass
from reconciler.engine.records import (
    APPLIED,
    MassPruneRefused,
    NoTelemetry,
    Planned,
    Report,
    Result,
    Telemetry,
)
from reconciler.fsm import Event
from reconciler.model import Changes, DesiredState, Provider, ResourceId
from reconciler.pacing import Pacer
from reconciler.registry import Registry
from reconciler.store.base import Record, Store


def _loaded(registry: Registry) -> list[Provider[Any]]:
    """The providers in use (a lazy registry's loaded ones; any other mapping's all)."""
    loaded = getattr(registry, "loaded", None)
    return list(loaded()) if callable(loaded) else list(registry.values())


class Engine:
    """Converges desired states; one `converge` call is one pass over all resources."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        *,
        concurrency: int = 16,
        retries: int = 0,
        allow_mass_prune: bool = False,
        max_prune_share: float = 0.5,
        on_settled: Callable[[Result], None] | None = None,
        heal_gate: Callable[[ResourceId], float] | None = None,
        fence: Callable[[], None] | None = None,
        telemetry: Telemetry | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.concurrency = concurrency
        self.retries = retries
        self.allow_mass_prune = allow_mass_prune
        self.max_prune_share = max_prune_share
        self.on_settled = on_settled
        self.heal_gate = heal_gate
        """Seconds a drifted resource must still wait before it may be healed again
        (the daemon's backoff against fighting another writer); None: heal at once."""
        self.fence = fence
        """Called right before each side effect (an apply, a delete); raising refuses
        it, and the resource fails with that error (the daemon's check that its
        lease still holds, decision 0148); None: always allowed."""
        self.telemetry: Telemetry = telemetry if telemetry is not None else NoTelemetry()
        self.pacer = pacer
        """Paces a pass's work on the loop a few ms per iteration (the daemon's,
        shared with its API; decision 0128); None: as fast as it goes (one-shot)."""
        self._bound: DesiredState | None = None
        self.refreshing: set[str] = set()
        """Kinds whose provider `refreshes` on others (of the providers in use)."""
        self._refreshers: dict[ResourceId, list[ResourceId]] = {}
        """For each resource some resource `refreshes` on, those resources."""
        self._ordered: tuple[DesiredState, list[ResourceId]] | None = None
        """The last desired state's dependency order: every pass over it walks it."""

    def bind(self, desired: DesiredState) -> None:
        """Give the providers that ask for it (`Provider.bind`) their specs of the
        desired state about to be enforced; once per desired state."""
        if desired is self._bound:
            return
        for kind in {res.kind for res in desired.resources.values()}:
            _ = self.registry[kind]  # in use from now on, even for a tree from the cache
        providers = _loaded(self.registry)
        binders = [p for p in providers if type(p).bind is not Provider.bind]
        self.refreshing = {p.kind for p in providers if type(p).refreshes is not Provider.refreshes}
        if binders:
            specs: dict[str, dict[ResourceId, BaseModel]] = {p.kind: {} for p in binders}
            for rid, res in desired.resources.items():
                of_kind = specs.get(res.kind)
                if of_kind is not None:
                    of_kind[rid] = res.spec
            for provider in binders:
                provider.bind(specs[provider.kind])
        self._refreshers = {}
        if self.refreshing:
            for rid, res in desired.resources.items():
                if res.kind in self.refreshing:
                    for target in self.registry[res.kind].refreshes(res.spec):
                        self._refreshers.setdefault(target, []).append(rid)
        self._bound = desired

    async def order(self, desired: DesiredState) -> list[ResourceId]:
        """Every id of `desired`, each after its dependencies; worked out once per
        desired state, with a pacer on a thread (12,000 ids: ~10 ms of the loop)."""
        if self._ordered is None or self._ordered[0] is not desired:
            edges = desired.dependencies
            if self.pacer is None:
                order = graph.topological_order(edges)
            else:
                order = await asyncio.to_thread(graph.topological_order, edges)
            self._ordered = (desired, order)
        return self._ordered[1]

    def _install_changes(self) -> None:
        """The change tokens of the resources something refreshes on: when each
        was last applied (its last `applied` transition in the store's history)."""
        applied = self.store.last_events(self._refreshers, Event.APPLIED)
        tokens = {rid: repr(at) for rid, at in applied.items()}
        for changes in self._changes():
            changes.install(tokens)

    def _changes(self) -> list[Changes]:
        providers = _loaded(self.registry)
        unique = {id(p.settings.changes): p.settings.changes for p in providers}
        return list(unique.values())

    def applied(self, rid: ResourceId, at: float) -> None:
        """`rid` was applied at `at` (the time of its `applied` transition): the
        token its refreshers compare moves on at once, so a refresher driven later
        in the same pass sees it. Nothing else (a resume, a spec change with an
        empty plan) moves it."""
        if rid in self._refreshers:
            for changes in self._changes():
                changes.set(rid, repr(at))

    async def converge(
        self,
        desired: DesiredState,
        *,
        only: Collection[ResourceId] | None = None,
        trigger: Event = Event.RESYNC,
    ) -> Report:
        """Drive resources until they rest and prune what left the desired state;
        one pass. `only` limits the pass to some resources (a new revision's changes,
        drift events, due resyncs); the others keep their recorded state. `trigger`
        is the event that starts a check of an unchanged resource (resync or watch).
        Raises MassPruneRefused before touching anything."""
        started = time.perf_counter()
        self.bind(desired)
        inventory = self.store.inventory()
        removed, handovers = queries.removals(self.registry, desired, inventory)
        refusal = self._prune_refusal([r for r in removed if r not in handovers], inventory)
        if refusal is not None:
            raise MassPruneRefused(refusal)
        if only is not None:
            removed = [rid for rid in removed if rid in only]
        if desired.revision != self.store.last_revision():
            self.store.set_revision(desired.revision)
        if self._refreshers:
            self._install_changes()
        pass_ = Pass(self, desired, inventory, handovers, only, trigger)
        try:
            await pass_.run(removed)
        finally:
            await asyncio.to_thread(self.store.flush)  # off the loop
            self.telemetry.transitions(pass_.transitions)
        results = pass_.results
        refresh = self._to_refresh(desired, results)
        if refresh:  # a second pass, with the tokens of what this one applied
            inventory = self.store.inventory()
            again = Pass(self, desired, inventory, {}, refresh, trigger, refresh=refresh)
            try:
                await again.run([])
            finally:
                await asyncio.to_thread(self.store.flush)
                self.telemetry.transitions(again.transitions)
            results = {**results, **again.results}
        return Report(desired.revision, results, time.perf_counter() - started)

    def refreshers(self, desired: DesiredState, ids: Iterable[ResourceId]) -> set[ResourceId]:
        """The resources that refresh on one of `ids`: what a pass over `ids` may
        drive in its second pass (the daemon claims them with `ids`)."""
        self.bind(desired)
        found: set[ResourceId] = set()
        for rid in ids:
            found.update(self._refreshers.get(rid, ()))
        return found

    def _to_refresh(
        self, desired: DesiredState, results: Mapping[ResourceId, Result]
    ) -> set[ResourceId]:
        """The resources that refresh on one this pass applied."""
        found: set[ResourceId] = set()
        for target, refreshers in self._refreshers.items():
            result = results.get(target)
            if result is not None and result.action in APPLIED:
                # those this pass drove saw the new token already
                found.update(r for r in refreshers if r in desired.resources and r not in results)
        return found

    # read-only queries (reconciler/engine/queries.py)

    def changed(self, desired: DesiredState) -> set[ResourceId]:
        """What a new revision changes against the inventory: added, removed, or a
        new spec, policy (prune, drift ...) or dependency list. The daemon gives
        only these to the pass of a new revision; watches and resyncs do the rest."""
        return queries.changed(desired, self.store.inventory())

    def prune_refusal(self, desired: DesiredState) -> str | None:
        """Why `converge` would refuse this desired state (mass prune), or None."""
        inventory = self.store.inventory()
        removed, handovers = queries.removals(self.registry, desired, inventory)
        return self._prune_refusal([r for r in removed if r not in handovers], inventory)

    def _prune_refusal(self, removed: list[ResourceId], inventory: dict[str, Record]) -> str | None:
        if self.allow_mass_prune:
            return None
        return queries.prune_refusal(removed, inventory, max_share=self.max_prune_share)

    async def preview(self, desired: DesiredState) -> list[Planned]:
        """What `converge` would do, from one observation of everything; no
        transitions, no writes, no side effects."""
        self.bind(desired)
        inventory = self.store.inventory()
        if self._refreshers:
            self._install_changes()
        return await queries.preview(self.registry, desired, inventory, self.concurrency)

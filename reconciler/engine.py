"""The engine: drives every resource of a desired state through the state
machine, in dependency order, concurrently, and prunes what left the desired state.

One task per resource runs the loop of DESIGN.md: look up the action for the
current state, run it, ask `fsm.step` for the next state, record the transition.
A task first waits for its dependencies to settle; a dependency that did not end
in sync blocks it. Observation is batched: every observe request made in the same
loop iteration goes to the provider in one `observe_many` call per kind, so a
no-op pass over thousands of files costs one thread hop per batch, not per file.
Side effects (apply, delete, observe batches) share a global concurrency limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from reconciler import fsm, graph
from reconciler.backoff import backoff
from reconciler.fsm import Event, State
from reconciler.model import (
    PREPARED,
    Action,
    Changes,
    DesiredState,
    Observed,
    PermanentError,
    Plan,
    Policy,
    Provider,
    ProviderError,
    Resource,
    ResourceId,
    TemporaryError,
)
from reconciler.registry import Registry
from reconciler.store.base import Record, Store

MAX_BATCH = 2048
"""Observations per observe_many call."""
MAX_APPLY_BATCH = 32
"""Applies per apply_many call: small, so batches still run side by side."""
SATISFIES_DEPENDENTS = frozenset({State.IN_SYNC, State.DRIFTED, State.SUSPENDED})
"""Final states that let dependents proceed. Drifted under warn still exists, and a
suspended resource was paused on purpose: neither blocks its dependents."""


class MassPruneRefused(Exception):
    pass


class Telemetry(Protocol):
    """Where the engine reports what it does, for metrics. Called on the event
    loop; implementations must be quick and must not block."""

    def transitions(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Transitions of one pass: (kind, from state or "none", to state) -> count."""

    def phase(self, kind: str, phase: str, seconds: float, n: int = 1) -> None:
        """`n` resources spent `seconds` in a phase: detect, plan, apply, verify, prune."""

    def applied(self, kind: str, ok: bool) -> None: ...

    def drifted(self, kind: str) -> None: ...

    def pruned(self, kind: str) -> None: ...


class _NoTelemetry:
    def transitions(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        pass

    def phase(self, kind: str, phase: str, seconds: float, n: int = 1) -> None:
        pass

    def applied(self, kind: str, ok: bool) -> None:
        pass

    def drifted(self, kind: str) -> None:
        pass

    def pruned(self, kind: str) -> None:
        pass


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class Outcome:
    event: Event
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """What a pass did to one resource."""

    id: ResourceId
    state: State
    action: str
    """created, updated, healed, unchanged, drifted, deleted, released, failed,
    blocked, suspended"""
    error: str | None = None
    plan: Plan | None = None
    retry_in: float | None = None
    """When to look again (backoff of a failure, or of a repeated heal); None: on
    the next change or resync."""
    instance: str = ""
    """The bundle instance that made the resource (for a prune: as recorded)."""


@dataclass(frozen=True, slots=True, repr=False)
class Report:
    revision: str
    results: dict[ResourceId, Result]
    seconds: float

    def __repr__(self) -> str:  # asyncio reprs a finished task's result: keep it short
        return f"<Report {self.revision}: {len(self.results)} resources, {self.seconds:.3f} s>"

    def count(self, action: str) -> int:
        return sum(1 for r in self.results.values() if r.action == action)

    @property
    def ok(self) -> bool:
        return not any(r.action in ("failed", "blocked") for r in self.results.values())


@dataclass(frozen=True, slots=True)
class Planned:
    """One line of a preview: what apply would do to a resource, without doing it."""

    id: ResourceId
    kind: str
    action: str
    """create, update, drift (heal), drift-warn, delete, release, none, suspended, error"""
    describe: str
    plan: Plan | None = None
    error: str | None = None
    note: str | None = None
    instance: str = ""
    """The Bundle instance that made the resource (see `Resource.instance`)."""
    observed: Observed | None = field(default=None, repr=False, compare=False)
    """What the preview observed, for a line with a `plan` (None: absent). It may
    hold a secret in clear (a file's content): never rendered; saved plans keep
    only its keyed digest."""


ResultT = TypeVar("ResultT")


class _Batcher(Generic[ResultT]):
    """Coalesces the requests made in one loop iteration into one provider call
    per kind and batch: `observe_many` for observations, `apply_many` for applies.
    A call that fails as a whole is retried item by item, so one bad object
    cannot fail the others of its batch."""

    def __init__(
        self,
        registry: Registry,
        limit: asyncio.Semaphore,
        call: Callable[[Provider[Any], list[Any]], Awaitable[Sequence[Any]]],
        what: str,
        max_batch: int,
    ) -> None:
        self._registry = registry
        self._limit = limit
        self._call = call
        self._what = what
        self._max_batch = max_batch
        self._pending: dict[str, list[tuple[Any, asyncio.Future[ResultT]]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, kind: str, item: Any) -> asyncio.Future[ResultT]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        self._pending.setdefault(kind, []).append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for kind, items in pending.items():
            for start in range(0, len(items), self._max_batch):
                batch = items[start : start + self._max_batch]
                task = asyncio.create_task(self._run(kind, batch), name=f"{self._what} {kind}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, kind: str, items: list[tuple[Any, asyncio.Future[ResultT]]]) -> None:
        try:
            async with self._limit:
                results = await self._call(self._registry[kind], [item for item, _ in items])
            if len(results) != len(items):
                raise ProviderError(
                    f"{kind} provider answered {len(results)} of {len(items)} {self._what} items"
                )
        except asyncio.CancelledError:
            for _, future in items:
                future.cancel()
            raise
        except Exception as exc:
            if len(items) == 1:
                items[0][1].set_exception(exc)
                return
            await asyncio.gather(*(self._run(kind, [item]) for item in items))
            return
        for (_, future), result in zip(items, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def _observer(registry: Registry, limit: asyncio.Semaphore) -> _Batcher[Observed | None]:
    async def call(provider: Provider[Any], specs: list[Any]) -> Sequence[Observed | None]:
        return await provider.observe_many(specs)

    return _Batcher(registry, limit, call, "observe", MAX_BATCH)


def _applier(registry: Registry, limit: asyncio.Semaphore) -> _Batcher[str | None]:
    async def call(
        provider: Provider[Any], items: list[Any]
    ) -> Sequence[BaseException | str | None]:
        return await provider.apply_many(items)

    return _Batcher(registry, limit, call, "apply", MAX_APPLY_BATCH)


_APPLIED = frozenset({"created", "updated", "healed"})
"""Results of a pass that changed the object."""

_CLEAN_CHECK = frozenset({Event.RESYNC, Event.WATCH, Event.OBSERVED, Event.PLAN_EMPTY})
"""The events of a drift check that finds nothing: InSync back to InSync."""

_PHASES = {
    State.DETECTING: "detect",
    State.PLANNING: "plan",
    State.APPLYING: "apply",
    State.VERIFYING: "verify",
}
"""The phase of reconcile latency each action's state is timed under."""


def _loaded(registry: Registry) -> list[Provider[Any]]:
    """The providers in use (a lazy registry's loaded ones; any other mapping's all)."""
    loaded = getattr(registry, "loaded", None)
    return list(loaded()) if callable(loaded) else list(registry.values())


def _kind(rid: ResourceId) -> str:
    return rid.partition("/")[0]


_FINAL_ACTIONS = {
    State.FAILED: "failed",
    State.BLOCKED: "blocked",
    State.SUSPENDED: "suspended",
    State.DRIFTED: "drifted",
}


def _dump(model: BaseModel) -> str:
    return model.model_dump_json(by_alias=True)


class _PolicyDumps:
    """Policy JSON as stored, dumped once per policy object: resources share them
    (every resource without a `policy:` block shares DEFAULT_POLICY)."""

    def __init__(self) -> None:
        self._dumps: dict[int, tuple[Policy, str]] = {}

    def __call__(self, policy: Policy) -> str:
        known = self._dumps.get(id(policy))
        if known is None:  # the policy is kept alive with its dump, so its id stays its own
            known = self._dumps[id(policy)] = (policy, _dump(policy))
        return known[1]


class _Work:
    """One resource's pass: what the actions share between states."""

    __slots__ = (
        "changed",
        "created",
        "deps",
        "observed",
        "plan",
        "policy_json",
        "provider",
        "record",
        "resource",
        "result",
        "retried",
        "retry_in",
    )

    def __init__(
        self,
        resource: Resource,
        provider: Provider[Any],
        record: Record | None,
        deps: tuple[ResourceId, ...],
        policy_json: str,
    ) -> None:
        self.resource = resource
        self.provider = provider
        self.record = record
        self.deps = deps
        self.changed = record is None or record.spec_hash != resource.spec_hash
        self.created: bool | None = None if record is None else record.created
        self.observed: Observed | None = None
        self.plan: Plan | None = None
        self.result = "unchanged"
        self.retried = False
        self.retry_in: float | None = None
        self.policy_json = policy_json


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
        telemetry: Telemetry | None = None,
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
        self.telemetry: Telemetry = telemetry if telemetry is not None else _NoTelemetry()
        self._bound: DesiredState | None = None
        self.refreshing: set[str] = set()
        """Kinds whose provider `refreshes` on others (of the providers in use)."""
        self._refreshers: dict[ResourceId, list[ResourceId]] = {}
        """For each resource some resource `refreshes` on, those resources."""

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
        removed, handovers = self._removals(desired, inventory)
        refusal = self._prune_refusal([r for r in removed if r not in handovers], inventory)
        if refusal is not None:
            raise MassPruneRefused(refusal)
        if only is not None:
            removed = [rid for rid in removed if rid in only]
        if desired.revision != self.store.last_revision():
            self.store.set_revision(desired.revision)
        if self._refreshers:
            self._install_changes()
        pass_ = _Pass(self, desired, inventory, handovers, only, trigger)
        try:
            await pass_.run(removed)
        finally:
            self.store.flush()
            self.telemetry.transitions(pass_.transitions)
        results = pass_.results
        refresh = self._to_refresh(desired, results)
        if refresh:  # a second pass, with the tokens of what this one applied
            inventory = self.store.inventory()
            again = _Pass(self, desired, inventory, {}, refresh, trigger, refresh=refresh)
            try:
                await again.run([])
            finally:
                self.store.flush()
                self.telemetry.transitions(again.transitions)
            results = {**results, **again.results}
        return Report(desired.revision, results, time.perf_counter() - started)

    def _to_refresh(
        self, desired: DesiredState, results: Mapping[ResourceId, Result]
    ) -> set[ResourceId]:
        """The resources that refresh on one this pass applied."""
        found: set[ResourceId] = set()
        for target, refreshers in self._refreshers.items():
            result = results.get(target)
            if result is not None and result.action in _APPLIED:
                # those this pass drove saw the new token already
                found.update(r for r in refreshers if r in desired.resources and r not in results)
        return found

    def changed(self, desired: DesiredState) -> set[ResourceId]:
        """What a new revision changes against the inventory: added, removed, or a
        new spec, policy (prune, drift ...) or dependency list. The daemon gives
        only these to the pass of a new revision; watches and resyncs do the rest."""
        inventory = self.store.inventory()
        policy_json = _PolicyDumps()
        changed = {rid for rid in inventory if rid not in desired.resources}
        for rid, res in desired.resources.items():
            record = inventory.get(rid)
            if (
                record is None
                or record.spec_hash != res.spec_hash
                or record.policy != policy_json(res.policy)
                or record.deps != desired.dependencies.get(rid, ())
                or record.instance != res.instance
            ):
                changed.add(rid)
        return changed

    def _removals(
        self, desired: DesiredState, inventory: dict[str, Record]
    ) -> tuple[list[ResourceId], dict[ResourceId, ResourceId]]:
        """The recorded resources the desired state no longer has, and which of
        them are handed over (see `_handovers`) rather than pruned."""
        removed = [rid for rid in inventory if rid not in desired.resources]
        return removed, self._handovers(desired, inventory, removed)

    def _handovers(
        self, desired: DesiredState, inventory: dict[str, Record], removed: list[ResourceId]
    ) -> dict[ResourceId, ResourceId]:
        """Removed resources whose object (same path) a resource of the new desired
        state now owns, such as a rename: the old id is released, never deleted,
        and the new id inherits whether reconciler created the object."""
        if not removed:
            return {}
        owners: dict[str, ResourceId] = {}
        for rid, res in desired.resources.items():
            path = self.registry[res.kind].path(res.spec)
            if path is not None:
                owners[path] = rid
        handovers = {}
        for rid in removed:
            spec = self._stored_spec(inventory[rid])
            provider = self.registry.get(inventory[rid].kind)
            path = provider.path(spec) if provider is not None and spec is not None else None
            if path is not None and path in owners:
                handovers[rid] = owners[path]
        return handovers

    def _stored_spec(self, record: Record) -> BaseModel | None:
        provider = self.registry.get(record.kind)
        if provider is None or record.spec is None:
            return None
        try:
            return provider.Spec.model_validate_json(record.spec, context=PREPARED)
        except ValueError:
            return None

    def prune_refusal(self, desired: DesiredState) -> str | None:
        """Why `converge` would refuse this desired state (mass prune), or None."""
        inventory = self.store.inventory()
        removed, handovers = self._removals(desired, inventory)
        return self._prune_refusal([r for r in removed if r not in handovers], inventory)

    def _prune_refusal(self, removed: list[ResourceId], inventory: dict[str, Record]) -> str | None:
        if not removed or self.allow_mass_prune:
            return None
        share = len(removed) / len(inventory)
        if len(removed) == len(inventory):
            return (
                f"this revision would prune all {len(inventory)} managed resources; "
                "refusing (pass --allow-mass-prune if that is intended)"
            )
        if share > self.max_prune_share:
            return (
                f"this revision would prune {len(removed)} of {len(inventory)} managed "
                f"resources ({share:.0%}, over the limit of {self.max_prune_share:.0%}); "
                "refusing (pass --allow-mass-prune if that is intended)"
            )
        return None

    async def preview(self, desired: DesiredState) -> list[Planned]:
        """What `converge` would do, from one observation of everything; no
        transitions, no writes, no side effects."""
        self.bind(desired)
        inventory = self.store.inventory()
        if self._refreshers:
            self._install_changes()
        observer = _observer(self.registry, asyncio.Semaphore(self.concurrency))

        async def one(res: Resource) -> Planned:
            provider = self.registry[res.kind]
            describe = provider.describe(res.spec)
            instance = res.instance
            if res.policy.suspend:
                return Planned(res.id, res.kind, "suspended", describe, instance=instance)
            if _unchecked(res, inventory.get(res.id)):
                return Planned(
                    res.id, res.kind, "none", describe, note=_UNCHECKED_NOTE, instance=instance
                )
            try:
                observed = await observer.submit(res.kind, res.spec)
                plan = provider.plan(res.spec, observed).without(res.policy.ignore_fields)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return Planned(
                    res.id, res.kind, "error", describe, error=_error_text(exc), instance=instance
                )
            record = inventory.get(res.id)
            if plan.empty:
                action = "none"
            elif (
                record is not None
                and record.spec_hash == res.spec_hash
                and res.policy.drift != "ignore"
            ):
                # a drift check, as in the engine: even an object deleted by hand
                action = "drift" if res.policy.drift == "heal" else "drift-warn"
            else:
                action = "create" if plan.action is Action.CREATE else "update"
            return Planned(
                res.id, res.kind, action, describe, plan, observed=observed, instance=instance
            )

        planned = list(await asyncio.gather(*(one(r) for r in desired.resources.values())))
        removed, handovers = self._removals(desired, inventory)
        for rid in removed:
            record = inventory[rid]
            spec = self._stored_spec(record)
            provider = self.registry.get(record.kind)
            describe = provider.describe(spec) if provider is not None and spec is not None else ""
            note = None
            gone = _gone(record, desired)
            if rid in handovers:
                action, note = "release", f"(renamed: now managed as {handovers[rid]}, kept)"
            elif record.created and _stored_policy(record).prune:
                action = "delete"
                if gone:
                    note = f"(created by reconciler, {gone}: will delete)"
            else:
                action = "release"
                if gone:
                    note = f"(adopted or prune: false, {gone}: will release, object kept)"
            planned.append(
                Planned(rid, record.kind, action, describe, note=note, instance=record.instance)
            )
        return planned


_UNCHECKED_NOTE = "(drift not checked: policy drift: ignore)"


def _unchecked(res: Resource, record: Record | None) -> bool:
    """Whether a pass leaves `res` alone: under `policy.drift: ignore` a resource
    whose spec converged is never observed again (no drift check, no drift); only
    a new spec (or a failure, a dependency, a resume) brings it back into a pass."""
    return (
        res.policy.drift == "ignore"
        and not res.policy.suspend
        and record is not None
        and record.state in (State.IN_SYNC, State.DRIFTED)
        and record.spec_hash == res.spec_hash
    )


def _gone(record: Record, desired: DesiredState) -> str:
    """Why a recorded resource of a bundle instance left the desired state: the
    instance itself was removed, or it no longer makes this resource ("" for a
    resource written flat: nothing to add to "removed from desired state")."""
    if not record.instance:
        return ""
    if record.instance not in desired.instances:
        return f"instance {record.instance} removed"
    return f"no longer made by instance {record.instance}"


def _stored_policy(record: Record) -> Policy:
    return Policy.model_validate_json(record.policy) if record.policy else Policy()


class _Pass:
    """One `converge` call: the resource tasks, their shared observer and limit,
    and the state machine's actions."""

    def __init__(
        self,
        engine: Engine,
        desired: DesiredState,
        inventory: dict[str, Record],
        handovers: dict[ResourceId, ResourceId],
        only: Collection[ResourceId] | None = None,
        trigger: Event = Event.RESYNC,
        *,
        refresh: Collection[ResourceId] = (),
    ):
        self.engine = engine
        self.refresh = frozenset(refresh)
        """Resources checked as changed: something they refresh on was applied."""
        self.store = engine.store
        self.registry = engine.registry
        self.desired = desired
        self.inventory = inventory
        self.handovers = handovers
        self.targets = (
            set(desired.resources) if only is None else set(only) & set(desired.resources)
        )
        self.trigger = trigger
        self.inherited = {new: inventory[old].created for old, new in handovers.items()}
        self.limit = asyncio.Semaphore(engine.concurrency)
        self.observer = _observer(engine.registry, self.limit)
        self.applier = _applier(engine.registry, self.limit)
        self.settled: dict[ResourceId, asyncio.Future[State]] = {}
        self.results: dict[ResourceId, Result] = {}
        self.errors: dict[ResourceId, str] = {}
        self.held: dict[ResourceId, list[tuple[State, State, Outcome]]] = {}
        self.retried: dict[ResourceId, int] = {}
        self.telemetry = engine.telemetry
        self.transitions: Counter[tuple[str, str, str]] = Counter()
        """Every transition of the pass, held back or written, for the metrics."""
        self._commit: asyncio.Future[None] | None = None
        self._policy_json = _PolicyDumps()
        self.actions: dict[State, Callable[[_Work], Awaitable[Outcome | None]]] = {
            State.DETECTING: self._detect,
            State.PLANNING: self._plan,
            State.DRIFTED: self._drifted,
            State.APPLYING: self._apply,
            State.VERIFYING: self._verify,
        }

    async def run(self, removed: list[ResourceId]) -> None:
        loop = asyncio.get_running_loop()
        for rid in (*self.desired.resources, *removed):
            self.settled[rid] = loop.create_future()
        for rid in self.desired.resources:
            if rid not in self.targets:  # outside this pass: as last recorded
                record = self.inventory.get(rid)
                self.settled[rid].set_result(record.state if record else State.PENDING)
        for rid in [rid for rid in self.targets if rid in self.desired.resources]:
            if _unchecked(self.desired.resources[rid], self.inventory.get(rid)):
                self._leave_alone(rid)
        checks = await self._observe_in_sync()
        async with asyncio.TaskGroup() as group:
            for rid in graph.topological_order(self.desired.dependencies):
                if rid not in self.targets:
                    continue
                if rid in checks and self._clean_check(rid, checks[rid]):
                    continue
                group.create_task(self.drive(rid), name=f"reconcile {rid}")
            removed_set = set(removed)
            dependents: dict[ResourceId, list[ResourceId]] = {rid: [] for rid in removed}
            for rid in removed:
                for dep in self.inventory[rid].deps:
                    if dep in removed_set:
                        dependents[dep].append(rid)
            for rid in removed:
                group.create_task(self.prune(rid, dependents[rid]), name=f"prune {rid}")

    # the fast path: resources in sync with an unchanged spec

    async def _observe_in_sync(self) -> dict[ResourceId, Observed | BaseException | None]:
        """Observe, all at once, every resource that was in sync with this spec.
        Observation has no side effects, so dependency order does not matter."""
        candidates = [
            res
            for rid, res in self.desired.resources.items()
            if rid in self.targets
            and (record := self.inventory.get(rid)) is not None
            and record.state is State.IN_SYNC
            and record.spec_hash == res.spec_hash
            and not res.policy.suspend
            and rid not in self.refresh
        ]
        futures = [self.observer.submit(res.kind, res.spec) for res in candidates]
        started = time.perf_counter()
        seen = await asyncio.gather(*futures, return_exceptions=True)
        elapsed = time.perf_counter() - started
        for kind, n in Counter(res.kind for res in candidates).items():
            self.telemetry.phase(kind, "detect", elapsed, n)
        return {res.id: observed for res, observed in zip(candidates, seen, strict=True)}

    def _clean_check(self, rid: ResourceId, observed: Observed | BaseException | None) -> bool:
        """Settle a drift check that finds nothing, inline: the machine steps
        InSync -> Detecting -> Planning -> InSync and nothing is written. Anything
        else (drift, an error, a dependency not yet settled) takes the full path."""
        if isinstance(observed, BaseException):
            return False
        deps = self.desired.dependencies.get(rid, ())
        for dep in deps:
            future = self.settled[dep]
            if not future.done() or future.result() not in SATISFIES_DEPENDENTS:
                return False
        res = self.desired.resources[rid]
        try:
            plan = self.registry[res.kind].plan(res.spec, observed)
        except Exception:
            return False
        if not plan.without(res.policy.ignore_fields).empty:
            return False
        state = State.IN_SYNC
        for event in (self.trigger, Event.OBSERVED, Event.PLAN_EMPTY):
            new = fsm.step(state, event)
            self.transitions[res.kind, state.value, new.value] += 1
            state = new
        self._converged(self._work(res, deps))
        self._settle(rid, Result(rid, state, "unchanged", instance=res.instance))
        return True

    def _leave_alone(self, rid: ResourceId) -> None:
        """A resource under `drift: ignore` with a converged spec: settled in sync
        without being observed. One found Drifted (under warn or heal before)
        stops being reported so; a new policy or dependency list is recorded."""
        res = self.desired.resources[rid]
        record = self.inventory[rid]
        state = record.state
        if state is State.DRIFTED:
            state = self._step(
                rid, state, Outcome(Event.DRIFT_IGNORED, "policy drift: ignore: not checked")
            )
        self._converged(self._work(res, self.desired.dependencies.get(rid, ())))
        self.targets.discard(rid)
        self._settle(rid, Result(rid, state, "unchanged", instance=res.instance))

    def _work(self, res: Resource, deps: tuple[ResourceId, ...]) -> _Work:
        policy_json = self._policy_json(res.policy)
        work = _Work(res, self.registry[res.kind], self.inventory.get(res.id), deps, policy_json)
        if res.id in self.refresh:
            work.changed = True
        if work.record is None and res.id in self.inherited:
            work.created = self.inherited[res.id]
        return work

    # the full path: one task per resource

    def _step(self, rid: ResourceId, state: State, outcome: Outcome) -> State:
        """One transition, recorded; a drift check's first steps are held back until
        it is clear whether it finds anything."""
        new = fsm.step(state, outcome.event)
        self.transitions[_kind(rid), state.value, new.value] += 1
        held = self.held.get(rid)
        if held is not None:
            if outcome.event in _CLEAN_CHECK:
                held.append((state, new, outcome))
                return new
            self._write_held(rid)
        at = self._transition(rid, state, new, outcome.event, outcome.reason, outcome.error)
        if outcome.event is Event.APPLIED:
            self.engine.applied(rid, at)
        return new

    def _transition(
        self,
        rid: ResourceId,
        source: State | None,
        target: State,
        event: str,
        reason: str | None,
        error: str | None,
    ) -> float:
        """Record a transition with the resource's bundle instance: the desired
        resource's, so even a new resource's first event has it; a resource being
        pruned keeps the one recorded with its last spec."""
        res = self.desired.resources.get(rid)
        instance = None if res is None else res.instance
        return self.store.transition(rid, source, target, event, reason, error, instance=instance)

    def _write_held(self, rid: ResourceId) -> None:
        for source, target, outcome in self.held.pop(rid, ()):
            self._transition(rid, source, target, outcome.event, outcome.reason, outcome.error)

    def _end_check(self, rid: ResourceId, state: State) -> None:
        """A drift check that went InSync -> Detecting -> Planning -> InSync without
        an error leaves no history (a clean check); anything else is recorded."""
        if rid in self.held and state is State.IN_SYNC and rid not in self.errors:
            del self.held[rid]
        else:
            self._write_held(rid)

    def _settle(self, rid: ResourceId, result: Result) -> None:
        self.results[rid] = result
        self.settled[rid].set_result(result.state)
        if self.engine.on_settled is not None:
            self.engine.on_settled(result)

    async def _dependencies_ready(self, deps: Iterable[ResourceId]) -> bool:
        ready = True
        for dep in deps:
            if await self.settled[dep] not in SATISFIES_DEPENDENTS:
                ready = False
        return ready

    async def drive(self, rid: ResourceId) -> None:
        res = self.desired.resources[rid]
        deps = self.desired.dependencies.get(rid, ())
        work = self._work(res, deps)
        try:
            ready = await self._dependencies_ready(deps)
            if res.kind in self.engine.refreshing and self._refresh_due(work):
                work.changed = True  # acts on a change applied this pass: not drift
            state = await self._start(work, ready)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a provider or the engine: record, never crash
            state, self.errors[rid] = State.FAILED, _error_text(exc)
            self._write_held(rid)
            self._transition(rid, None, state, Event.ERROR, None, self.errors[rid])
            self.transitions[res.kind, "none", state.value] += 1
        self._end_check(rid, state)
        action = _FINAL_ACTIONS.get(state, work.result)
        error = self.errors.get(rid) if action in ("failed", "blocked") else None
        retry_in = work.retry_in if state in (State.FAILED, State.DRIFTED) else None
        self._settle(rid, Result(rid, state, action, error, work.plan, retry_in, res.instance))

    def _refresh_due(self, work: _Work) -> bool:
        """Whether a resource this one refreshes on was applied earlier in the pass."""
        for target in work.provider.refreshes(work.resource.spec):
            result = self.results.get(target)
            if result is not None and result.action in _APPLIED:
                return True
        return False

    async def _start(self, work: _Work, ready: bool) -> State:
        """The event that starts a pass, chosen by the state the resource was left in."""
        rid, res, record = work.resource.id, work.resource, work.record
        state = record.state if record is not None else None
        if state is None:
            state = State.PENDING
            self._transition(rid, None, state, "new", None, None)
            self.transitions[res.kind, "none", state.value] += 1
        if res.policy.suspend:
            if state is not State.SUSPENDED:
                state = self._step(rid, state, Outcome(Event.SUSPEND))
            return state
        if state is State.SUSPENDED:
            state = self._step(rid, state, Outcome(Event.RESUME))
        elif state in fsm.ACTIVE:
            state = self._step(rid, state, Outcome(Event.RESTART, "resumed after a stop"))
        elif state in (State.PENDING, State.BLOCKED):
            if not ready:
                return self._block(rid, state, work.deps)
            start = Event.START if state is State.PENDING else Event.DEPENDENCY_READY
            state = self._step(rid, state, Outcome(start))
        elif state is State.FAILED:
            attempted = record.spec if record is not None else None
            new_spec = attempted is not None and attempted != _dump(res.spec)
            state = self._step(rid, state, Outcome(Event.SPEC_CHANGED if new_spec else Event.RETRY))
        else:
            event = Event.SPEC_CHANGED if work.changed else self.trigger
            if state is State.IN_SYNC and event is self.trigger:
                self.held[rid] = []
            state = self._step(rid, state, Outcome(event))
        if not ready:
            return self._block(rid, state, work.deps)
        return await self._loop(work, state)

    def _block(self, rid: ResourceId, state: State, deps: tuple[ResourceId, ...]) -> State:
        waiting = [d for d in deps if self.settled[d].result() not in SATISFIES_DEPENDENTS]
        reason = "waiting for " + ", ".join(f"{d} ({self.settled[d].result()})" for d in waiting)
        self.errors[rid] = reason
        return self._step(rid, state, Outcome(Event.DEPENDENCY_NOT_READY, reason, reason))

    async def _loop(self, work: _Work, state: State) -> State:
        """The state machine proper: action, step, record, until a rest state."""
        rid = work.resource.id
        while (action := self.actions.get(state)) is not None:
            try:
                outcome = await self._timed(action, work, state)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors[rid] = _error_text(exc)
                state = self._step(rid, state, Outcome(Event.ERROR, error=self.errors[rid]))
                if not await self._retry(work, exc):
                    return state
                state = self._step(rid, state, Outcome(Event.RETRY))
                continue
            if outcome is None:
                break
            state = self._step(rid, state, outcome)
            if outcome.error is not None:
                self.errors[rid] = outcome.error
                await self._retry(work, None)
        return state

    async def _timed(
        self,
        action: Callable[[_Work], Awaitable[Outcome | None]],
        work: _Work,
        state: State,
    ) -> Outcome | None:
        phase = _PHASES.get(state)
        started = time.perf_counter()
        try:
            return await action(work)
        finally:
            if phase is not None:
                seconds = time.perf_counter() - started
                self.telemetry.phase(work.resource.kind, phase, seconds)

    async def _retry(self, work: _Work, exc: BaseException | None) -> bool:
        """After a failure: record the attempt and its backoff; wait it out and
        return True when this pass may try again (temporary errors, retries left)."""
        rid = work.resource.id
        done = self.retried.get(rid, 0)
        attempts = (work.record.attempts if work.record is not None else 0) + 1 + done
        delay = backoff(attempts)
        if isinstance(exc, TemporaryError) and exc.delay is not None:
            delay = exc.delay
        permanent = exc is not None and not isinstance(exc, TemporaryError)
        if isinstance(exc, PermanentError):
            work.retry_in = None  # waits for a new spec
            self.store.schedule_retry(rid, attempts, None)
        else:
            work.retry_in = delay
            self.store.schedule_retry(rid, attempts, time.time() + delay)
        work.retried = True
        if permanent or exc is None or done >= self.engine.retries:
            return False
        self.retried[rid] = done + 1
        await asyncio.sleep(delay)
        return True

    # actions, one per active state

    async def _detect(self, work: _Work) -> Outcome:
        work.observed = await self.observer.submit(work.resource.kind, work.resource.spec)
        return Outcome(Event.OBSERVED)

    async def _plan(self, work: _Work) -> Outcome:
        res = work.resource
        plan = work.provider.plan(res.spec, work.observed).without(res.policy.ignore_fields)
        work.plan = plan
        if plan.empty:
            if work.created is None:
                work.created = False  # found in place on first sight: adopted
            self._converged(work)
            return Outcome(Event.PLAN_EMPTY)
        fields = ", ".join(c.field for c in plan.changes)
        if work.changed or res.policy.drift == "ignore":
            # under ignore a resource reaches a plan only to finish what it was
            # doing (a new spec, a retry, a resume), never as a drift check
            return Outcome(Event.PLAN_CHANGED, f"{plan.action}: {fields}")
        work.result = "drifted"
        self.telemetry.drifted(res.kind)
        return Outcome(Event.DRIFT, f"drifted: {fields}")

    async def _drifted(self, work: _Work) -> Outcome | None:
        if work.resource.policy.drift != "heal":
            return None
        gate = self.engine.heal_gate
        wait = gate(work.resource.id) if gate is not None else 0.0
        if wait > 0:
            work.retry_in = wait  # stays Drifted until the heal backoff has passed
            return None
        return Outcome(Event.HEAL)

    async def _apply(self, work: _Work) -> Outcome:
        res, plan = work.resource, work.plan
        assert plan is not None
        if plan.action is Action.CREATE:
            work.created = True
        elif work.created is None:
            work.created = False
        if work.result == "drifted":
            work.result = "healed"
        else:
            work.result = "created" if plan.action is Action.CREATE else "updated"
        self.store.intend(
            res.id,
            _dump(res.spec),
            work.policy_json,
            work.deps,
            work.created,
            instance=res.instance,
        )
        await self._durable()
        try:
            note = await self.applier.submit(res.kind, (res.spec, plan))
        except Exception:
            self.telemetry.applied(res.kind, False)
            raise
        self.telemetry.applied(res.kind, True)
        return Outcome(Event.APPLIED, note)

    async def _verify(self, work: _Work) -> Outcome:
        res = work.resource
        observed = await self.observer.submit(res.kind, res.spec)
        plan = work.provider.plan(res.spec, observed).without(res.policy.ignore_fields)
        if plan.empty:
            self._converged(work)
            return Outcome(Event.VERIFIED)
        fields = ", ".join(c.field for c in plan.changes)
        return Outcome(
            Event.NOT_CONVERGED, error=f"provider did not converge: {fields} still differ"
        )

    def _converged(self, work: _Work) -> None:
        res, record = work.resource, work.record
        if (
            record is None
            or record.spec_hash != res.spec_hash
            or record.created != work.created
            or record.policy != work.policy_json
            or record.deps != work.deps
            or record.instance != res.instance
            or record.attempts
            or work.retried
        ):
            self.store.converged(
                res.id,
                res.spec_hash,
                _dump(res.spec),
                work.policy_json,
                work.deps,
                work.created,
                instance=res.instance,
            )

    async def _durable(self) -> None:
        """Commit buffered intent before a side effect. Every resource that reaches
        this point in the same loop iteration shares one commit (group commit)."""
        if self._commit is None:
            loop = asyncio.get_running_loop()
            self._commit = loop.create_future()
            loop.call_soon(self._commit_now)
        await asyncio.shield(self._commit)

    def _commit_now(self) -> None:
        commit, self._commit = self._commit, None
        assert commit is not None
        try:
            self.store.flush()
        except Exception as exc:
            commit.set_exception(exc)
        else:
            commit.set_result(None)

    # pruning

    async def prune(self, rid: ResourceId, dependents: list[ResourceId]) -> None:
        """Delete (created) or release (adopted) a resource that left the desired
        state, after everything that depended on it is gone."""
        for dependent in dependents:
            await self.settled[dependent]
        record = self.inventory[rid]
        gone = _gone(record, self.desired)
        removal = f"removed from desired state: {gone}" if gone else "removed from desired state"
        state = self._step(rid, record.state, Outcome(Event.REMOVE, removal))
        started = time.perf_counter()
        try:
            if rid in self.handovers:
                action, reason = "released", f"released: now managed as {self.handovers[rid]}"
            elif record.created and _stored_policy(record).prune:
                provider = self.registry.get(record.kind)
                if provider is None:
                    raise ProviderError(f"no provider for kind {record.kind!r}; cannot delete")
                if record.spec is None:
                    raise ProviderError("no recorded spec; cannot delete")
                spec = provider.Spec.model_validate_json(record.spec, context=PREPARED)
                await self._durable()
                async with self.limit:
                    await provider.delete(spec)
                action, reason = "deleted", "deleted (created by reconciler)"
            else:
                action, reason = "released", "released (adopted, or prune: false)"
            if gone:
                reason = f"{reason}, {gone}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _error_text(exc)
            state = self._step(rid, state, Outcome(Event.ERROR, error=error))
            self._settle(rid, Result(rid, state, "failed", error, instance=record.instance))
            return
        self.telemetry.phase(record.kind, "prune", time.perf_counter() - started)
        self.telemetry.pruned(record.kind)
        state = self._step(rid, state, Outcome(Event.PRUNED, reason))
        self.store.forget(rid)
        self._settle(rid, Result(rid, state, action, instance=record.instance))

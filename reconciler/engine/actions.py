"""The actions of the state machine's working states (`fsm.ACTIONS`): observe,
plan, heal or report, apply, verify, and delete or release. Each takes the work of
one resource and returns the `Step` to take (or None: rest); the pass driver
(`passes.py`) looks them up by state in IMPLEMENTATIONS and does the stepping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from reconciler import fsm
from reconciler.engine.queries import dump, stored_policy
from reconciler.engine.records import Outcome, Step
from reconciler.fsm import Event, State
from reconciler.model import (
    PREPARED,
    Action,
    Observed,
    Plan,
    Provider,
    ProviderError,
    Resource,
    ResourceId,
)
from reconciler.store.base import Record

if TYPE_CHECKING:
    from reconciler.engine.batcher import Batcher
    from reconciler.engine.core import Engine
    from reconciler.engine.records import Telemetry
    from reconciler.pacing import Pacer
    from reconciler.registry import Registry
    from reconciler.store.base import Store


class Subject:
    """What the pass driver needs of any resource it steps: its id and kind, its
    record, what the pass did and when to look again."""

    __slots__ = ("id", "kind", "record", "result", "retried", "retry_in")

    def __init__(self, rid: ResourceId, kind: str, record: Record | None) -> None:
        self.id = rid
        self.kind = kind
        self.record = record
        self.result = Outcome.UNCHANGED
        self.retried = False
        self.retry_in: float | None = None


class Work(Subject):
    """One desired resource's pass: what the actions share between states."""

    __slots__ = (
        "changed",
        "created",
        "deps",
        "observed",
        "plan",
        "policy_json",
        "provider",
        "resource",
    )

    def __init__(
        self,
        resource: Resource,
        provider: Provider[Any],
        record: Record | None,
        deps: tuple[ResourceId, ...],
        policy_json: str,
    ) -> None:
        super().__init__(resource.id, resource.kind, record)
        self.resource = resource
        self.provider = provider
        self.deps = deps
        self.changed = record is None or record.spec_hash != resource.spec_hash
        self.created: bool | None = None if record is None else record.created
        self.observed: Observed | None = None
        self.plan: Plan | None = None
        self.policy_json = policy_json


class Removal(Subject):
    """A recorded resource that left the desired state, on its way to Gone."""

    __slots__ = ("gone",)

    def __init__(self, record: Record, gone: str) -> None:
        super().__init__(record.id, record.kind, record)
        self.record: Record = record
        self.gone = gone
        """Why it left with its bundle instance ("" for a resource written flat)."""


class Actions:
    """The actions, as methods of the pass (`passes.Pass`) that provides the
    attributes declared here."""

    engine: Engine
    store: Store
    registry: Registry
    observer: Batcher[Observed | None]
    applier: Batcher[str | None]
    limit: asyncio.Semaphore
    pacer: Pacer | None
    telemetry: Telemetry
    handovers: dict[ResourceId, ResourceId]
    _commit: asyncio.Future[None] | None

    async def _detect(self, work: Work) -> Step:
        work.observed = await self.observer.submit(work.kind, work.resource.spec)
        return Step(Event.OBSERVED)

    async def _plan(self, work: Work) -> Step:
        res = work.resource
        plan = work.provider.plan(res.spec, work.observed).without(res.policy.ignore_fields)
        work.plan = plan
        if plan.empty:
            if work.created is None:
                work.created = False  # found in place on first sight: adopted
            self._converged(work)
            return Step(Event.PLAN_EMPTY)
        fields = ", ".join(c.field for c in plan.changes)
        if work.changed or res.policy.drift == "ignore":
            # under ignore a resource reaches a plan only to finish what it was
            # doing (a new spec, a retry, a resume), never as a drift check
            return Step(Event.PLAN_CHANGED, f"{plan.action}: {fields}")
        work.result = Outcome.DRIFTED
        self.telemetry.drifted(res.kind)
        return Step(Event.DRIFT, f"drifted: {fields}")

    async def _drifted(self, work: Work) -> Step | None:
        if work.resource.policy.drift != "heal":
            return None
        gate = self.engine.heal_gate
        wait = gate(work.id) if gate is not None else 0.0
        if wait > 0:
            work.retry_in = wait  # stays Drifted until the heal backoff has passed
            return None
        return Step(Event.HEAL)

    async def _apply(self, work: Work) -> Step:
        res, plan = work.resource, work.plan
        assert plan is not None
        if plan.action is Action.CREATE:
            work.created = True
        elif work.created is None:
            work.created = False
        if work.result is Outcome.DRIFTED:
            work.result = Outcome.HEALED
        else:
            work.result = Outcome.CREATED if plan.action is Action.CREATE else Outcome.UPDATED
        self.store.intend(
            res.id,
            dump(res.spec),
            work.policy_json,
            work.deps,
            work.created,
            instance=res.instance,
        )
        await self._durable()
        if self.engine.fence is not None:
            self.engine.fence()
        try:
            note = await self.applier.submit(res.kind, (res.spec, plan))
        except Exception:
            self.telemetry.applied(res.kind, False)
            raise
        self.telemetry.applied(res.kind, True)
        return Step(Event.APPLIED, note)

    async def _verify(self, work: Work) -> Step:
        res = work.resource
        observed = await self.observer.submit(res.kind, res.spec)
        if self.pacer is not None:
            await self.pacer.pause()
        plan = work.provider.plan(res.spec, observed).without(res.policy.ignore_fields)
        if plan.empty:
            self._converged(work)
            return Step(Event.VERIFIED)
        fields = ", ".join(c.field for c in plan.changes)
        return Step(Event.NOT_CONVERGED, error=f"provider did not converge: {fields} still differ")

    async def _prune(self, work: Removal) -> Step:
        """Delete what reconciler created and may prune; release the rest (adopted,
        `prune: false`, or handed over to a new id)."""
        rid, record = work.id, work.record
        if rid in self.handovers:
            work.result = Outcome.RELEASED
            reason = f"released: now managed as {self.handovers[rid]}"
        elif record.created and stored_policy(record).prune:
            provider = self.registry.get(record.kind)
            if provider is None:
                raise ProviderError(f"no provider for kind {record.kind!r}; cannot delete")
            if record.spec is None:
                raise ProviderError("no recorded spec; cannot delete")
            spec = provider.Spec.model_validate_json(record.spec, context=PREPARED)
            await self._durable()
            async with self.limit:
                if self.engine.fence is not None:
                    self.engine.fence()
                await provider.delete(spec)
            work.result, reason = Outcome.DELETED, "deleted (created by reconciler)"
        else:
            work.result, reason = Outcome.RELEASED, "released (adopted, or prune: false)"
        if work.gone:
            reason = f"{reason}, {work.gone}"
        self.telemetry.pruned(record.kind)
        return Step(Event.PRUNED, reason)

    def _converged(self, work: Work) -> None:
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
                dump(res.spec),
                work.policy_json,
                work.deps,
                work.created,
                instance=res.instance,
            )

    async def _durable(self) -> None:
        """Commit buffered intent before a side effect. Every resource that reaches
        this point in the same loop iteration shares one commit (group commit),
        written on a thread so the loop goes on (flushes run one at a time, in
        order: a later commit returns only after the earlier one is written)."""
        if self._commit is None:
            self._commit = asyncio.ensure_future(self._commit_now())
        await asyncio.shield(self._commit)

    async def _commit_now(self) -> None:
        # runs an iteration after the first _durable: all who reached it share it
        self._commit = None
        await asyncio.to_thread(self.store.flush)


ActionFn = Callable[[Actions, Any], Awaitable[Step | None]]
"""An action: called with the pass and the work of one resource (`Work`, or
`Removal` for Pruning)."""

IMPLEMENTATIONS: dict[State, ActionFn] = {
    State.DETECTING: Actions._detect,
    State.PLANNING: Actions._plan,
    State.DRIFTED: Actions._drifted,
    State.APPLYING: Actions._apply,
    State.VERIFYING: Actions._verify,
    State.PRUNING: Actions._prune,
}
"""The implementation of every action of `fsm.ACTIONS`, by state."""

if set(IMPLEMENTATIONS) != set(fsm.ACTIONS):
    raise AssertionError("every action of fsm.ACTIONS needs its implementation, and only those")

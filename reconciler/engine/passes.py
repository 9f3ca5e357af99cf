"""One pass (`Engine.converge`): the pass driver. Every resource of the pass gets
a task that starts it by the start table (`fsm.STARTS`, or `fsm.PRUNE` for one
removed from the desired state), then runs the loop of DESIGN.md: look up the
action of the current state (`fsm.ACTIONS`, implemented in `actions.py`), run it,
ask `fsm.step` for the next state, record the transition. A task first waits for
its dependencies to settle; a dependency that did not end in sync blocks it.

The fast path settles a drift check that finds nothing without a task: it
observes every such resource in one batch and replays `fsm.quiet_path`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from reconciler import fsm
from reconciler.backoff import backoff
from reconciler.engine.actions import IMPLEMENTATIONS, ActionFn, Actions, Removal, Subject, Work
from reconciler.engine.batcher import applier, observer
from reconciler.engine.queries import PolicyDumps, dump, gone, unchecked
from reconciler.engine.records import APPLIED, UNSETTLED, Outcome, Result, Step, error_text
from reconciler.fsm import Event, Since, State
from reconciler.model import (
    DesiredState,
    Observed,
    PermanentError,
    Resource,
    ResourceId,
    TemporaryError,
)
from reconciler.store.base import Record

if TYPE_CHECKING:
    from reconciler.engine.core import Engine

SATISFIES_DEPENDENTS = frozenset({State.IN_SYNC, State.DRIFTED, State.SUSPENDED})
"""Final states that let dependents proceed. Drifted under warn still exists, and a
suspended resource was paused on purpose: neither blocks its dependents."""

_FINAL = {
    State.FAILED: Outcome.FAILED,
    State.BLOCKED: Outcome.BLOCKED,
    State.SUSPENDED: Outcome.SUSPENDED,
    State.DRIFTED: Outcome.DRIFTED,
}
"""What a pass that left a resource in these states did, whatever it tried."""


def _kind(rid: ResourceId) -> str:
    return rid.partition("/")[0]


_START_SLICE = 256
"""Resources started per loop iteration without a pacer: starting 12,000 in one
would hold the loop (the API, watches, heals) until each had run to its first wait."""
_PACED_SLICE = 32
"""Resources started or settled by the fast path between two checks of the pacer."""
_PACED_PREPARED = 1024
"""Resources prepared (a future each) between two checks of the pacer."""
_PACED_STARTS = 128
"""Resources started per loop iteration at most with a pacer: a start costs the
starter little, so the pacer's clock does not see what their first steps cost."""


class Pass(Actions):
    """One `converge` call: the resource tasks, their shared observer and limit;
    the actions themselves are in `Actions`."""

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
        self.inherited = {
            new: inventory[old].created
            for old, new in handovers.items()
            if old not in desired.elsewhere  # handed to another shard: not an id here
        }
        self.limit = asyncio.Semaphore(engine.concurrency)
        self.pacer = engine.pacer
        self.observer = observer(engine.registry, self.limit, self.pacer)
        self.applier = applier(engine.registry, self.limit, self.pacer)
        self.settled: dict[ResourceId, asyncio.Future[State]] = {}
        self.results: dict[ResourceId, Result] = {}
        self.errors: dict[ResourceId, str] = {}
        self.held: dict[ResourceId, list[tuple[State, State, Step]]] = {}
        self.retried: dict[ResourceId, int] = {}
        self.telemetry = engine.telemetry
        self.transitions: Counter[tuple[str, str, str]] = Counter()
        """Every transition of the pass, held back or written, for the metrics."""
        self._commit: asyncio.Future[None] | None = None
        self._policy_json = PolicyDumps()
        self.actions: dict[State, tuple[fsm.Action, ActionFn]] = {
            state: (action, IMPLEMENTATIONS[state]) for state, action in fsm.ACTIONS.items()
        }
        quiet = [s for s in fsm.CHECKED if fsm.quiet_check(s, trigger)]
        self.quiet: dict[State, tuple[tuple[str, str], ...]] = {
            s: tuple((a.value, b.value) for a, _, b in fsm.quiet_path(s, trigger)) for s in quiet
        }
        """The states whose drift check may come back to them unrecorded (InSync),
        with the transitions that check counts when it finds nothing."""
        self.quiet_events = frozenset(e for s in quiet for _, e, _ in fsm.quiet_path(s, trigger))
        """The events of such a check, held back until it is clear it found nothing."""

    async def run(self, removed: list[ResourceId]) -> None:
        loop = asyncio.get_running_loop()
        pacer = self.pacer
        order = await self.engine.order(self.desired)
        for i, rid in enumerate((*self.desired.resources, *removed)):
            if pacer is not None and i % _PACED_PREPARED == _PACED_PREPARED - 1:
                await pacer.pause()
            self.settled[rid] = loop.create_future()
            if rid not in self.targets and rid in self.desired.resources:
                record = self.inventory.get(rid)  # outside this pass: as last recorded
                self.settled[rid].set_result(record.state if record else fsm.INITIAL)
        for rid in [rid for rid in self.targets if rid in self.desired.resources]:
            if unchecked(self.desired.resources[rid], self.inventory.get(rid)):
                self._leave_alone(rid)
        checks = await self._observe_quiet()
        async with asyncio.TaskGroup() as group:
            started = done = 0
            for rid in order:
                if rid not in self.targets:
                    continue
                done += 1
                if pacer is not None and done % _PACED_SLICE == 0:
                    await pacer.pause()  # the loop serves others, the started ones run
                if rid in checks and self._clean_check(rid, checks[rid]):
                    continue
                group.create_task(self.drive(rid), name=f"reconcile {rid}")
                started += 1
                if started % (_START_SLICE if pacer is None else _PACED_STARTS) == 0:
                    await asyncio.sleep(0)  # the started ones run: the loop serves others
            removed_set = set(removed)
            dependents: dict[ResourceId, list[ResourceId]] = {rid: [] for rid in removed}
            for rid in removed:
                for dep in self.inventory[rid].deps:
                    if dep in removed_set:
                        dependents[dep].append(rid)
            for rid in removed:
                group.create_task(self.prune(rid, dependents[rid]), name=f"prune {rid}")

    # the fast path: drift checks of resources in sync with an unchanged spec

    async def _observe_quiet(self) -> dict[ResourceId, Observed | BaseException | None]:
        """Observe, all at once, every resource whose check may find nothing (in
        sync with this spec). Observation has no side effects, so dependency order
        does not matter."""
        candidates = [
            res
            for rid, res in self.desired.resources.items()
            if rid in self.targets
            and (record := self.inventory.get(rid)) is not None
            and record.state in self.quiet
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
        """Settle a drift check that finds nothing, inline: replay the table's quiet
        path (InSync -> Detecting -> Planning -> InSync); nothing is written.
        Anything else (drift, an error, a dependency not yet settled) takes the
        full path."""
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
        state = self.inventory[rid].state
        for source, target in self.quiet[state]:
            self.transitions[res.kind, source, target] += 1
        self._converged(self._work(res, deps))
        self._settle(rid, Result(rid, state, Outcome.UNCHANGED, instance=res.instance))
        return True

    def _leave_alone(self, rid: ResourceId) -> None:
        """A resource under `drift: ignore` with a converged spec: settled without
        being observed, by its start entry's `unchecked` event (one found Drifted
        stops being reported so); a new policy or dependency list is recorded."""
        res = self.desired.resources[rid]
        state = self.inventory[rid].state
        event = fsm.STARTS[state].unchecked
        if event is not None:
            state = self._step(rid, state, Step(event, "policy drift: ignore: not checked"))
        self._converged(self._work(res, self.desired.dependencies.get(rid, ())))
        self.targets.discard(rid)
        self._settle(rid, Result(rid, state, Outcome.UNCHANGED, instance=res.instance))

    def _work(self, res: Resource, deps: tuple[ResourceId, ...]) -> Work:
        policy_json = self._policy_json(res.policy)
        work = Work(res, self.registry[res.kind], self.inventory.get(res.id), deps, policy_json)
        if res.id in self.refresh:
            work.changed = True
        if work.record is None and res.id in self.inherited:
            work.created = self.inherited[res.id]
        return work

    # recording

    def _step(self, rid: ResourceId, state: State, outcome: Step) -> State:
        """One transition, recorded; a drift check's first steps are held back until
        it is clear whether it finds anything."""
        new = fsm.step(state, outcome.event)
        self.transitions[_kind(rid), state.value, new.value] += 1
        held = self.held.get(rid)
        if held is not None:
            if outcome.event in self.quiet_events:
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
        event: Event,
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
        """A drift check that came back to its state without an error leaves no
        history (a clean check); anything else is recorded."""
        if rid in self.held and state in self.quiet and rid not in self.errors:
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

    # the full path: one task per resource

    async def drive(self, rid: ResourceId) -> None:
        if self.pacer is not None:
            await self.pacer.pause()  # thousands start at once: a few run per iteration
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
            state, self.errors[rid] = State.FAILED, error_text(exc)
            self._write_held(rid)
            self._transition(rid, None, state, Event.ERROR, None, self.errors[rid])
            self.transitions[res.kind, "none", state.value] += 1
        self._end_check(rid, state)
        action = _FINAL.get(state, work.result)
        error = self.errors.get(rid) if action in UNSETTLED else None
        retry_in = work.retry_in if state in (State.FAILED, State.DRIFTED) else None
        self._settle(rid, Result(rid, state, action, error, work.plan, retry_in, res.instance))

    def _refresh_due(self, work: Work) -> bool:
        """Whether a resource this one refreshes on was applied earlier in the pass."""
        for target in work.provider.refreshes(work.resource.spec):
            result = self.results.get(target)
            if result is not None and result.action in APPLIED:
                return True
        return False

    async def _start(self, work: Work, ready: bool) -> State:
        """Start the pass by the start table: the event for the state the resource
        was left in (a new one enters `fsm.INITIAL` first)."""
        rid, res, record = work.id, work.resource, work.record
        if record is None:
            state = fsm.INITIAL
            self._transition(rid, None, state, Event.NEW, None, None)
            self.transitions[res.kind, "none", state.value] += 1
        else:
            state = record.state
        start = fsm.STARTS[state]
        if res.policy.suspend:
            return state if start.suspend is None else self._step(rid, state, Step(start.suspend))
        if start.gated and not ready:
            return self._block(rid, state, work.deps)
        event = start.event
        if start.changed is not None and self._spec_new(work, start.since):
            event = start.changed
        elif event is None:  # a drift check: held back until it finds something
            event = self.trigger
            if state in self.quiet:
                self.held[rid] = []
        state = self._step(rid, state, Step(event, start.reason))
        if not ready:
            return self._block(rid, state, work.deps)
        return await self._loop(work, state)

    @staticmethod
    def _spec_new(work: Work, since: Since) -> bool:
        if since is Since.CONVERGED:
            return work.changed
        attempted = work.record.spec if work.record is not None else None
        return attempted is not None and attempted != dump(work.resource.spec)

    def _block(self, rid: ResourceId, state: State, deps: tuple[ResourceId, ...]) -> State:
        waiting = [d for d in deps if self.settled[d].result() not in SATISFIES_DEPENDENTS]
        reason = "waiting for " + ", ".join(f"{d} ({self.settled[d].result()})" for d in waiting)
        self.errors[rid] = reason
        return self._step(rid, state, Step(Event.DEPENDENCY_NOT_READY, reason, reason))

    async def _loop(self, work: Subject, state: State) -> State:
        """The state machine proper: action, step, record, until a rest state."""
        rid = work.id
        pacer = self.pacer
        while (entry := self.actions.get(state)) is not None:
            action, run = entry
            if pacer is not None:  # a batch's answer wakes thousands at once
                await pacer.pause()
            try:
                outcome = await self._timed(action, run, work)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors[rid] = error_text(exc)
                state = self._step(rid, state, Step(Event.ERROR, error=self.errors[rid]))
                if not action.retries or not await self._retry(work, exc):
                    return state
                state = self._step(rid, state, Step(Event.RETRY))
                continue
            if outcome is None:
                break
            state = self._step(rid, state, outcome)
            if outcome.error is not None:
                self.errors[rid] = outcome.error
                await self._retry(work, None)
        return state

    async def _timed(self, action: fsm.Action, run: ActionFn, work: Subject) -> Step | None:
        started = time.perf_counter()
        try:
            return await run(self, work)
        finally:
            if action.phase is not None:
                seconds = time.perf_counter() - started
                self.telemetry.phase(work.kind, action.phase, seconds)

    async def _retry(self, work: Subject, exc: BaseException | None) -> bool:
        """After a failure: record the attempt and its backoff; wait it out and
        return True when this pass may try again (temporary errors, retries left)."""
        rid = work.id
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

    # pruning: the same loop, started by fsm.PRUNE

    async def prune(self, rid: ResourceId, dependents: list[ResourceId]) -> None:
        """Delete (created) or release (adopted) a resource that left the desired
        state, after everything that depended on it is gone."""
        for dependent in dependents:
            await self.settled[dependent]
        record = self.inventory[rid]
        work = Removal(record, gone(record, self.desired))
        why = f": {work.gone}" if work.gone else ""
        state = self._step(rid, record.state, Step(fsm.PRUNE, f"removed from desired state{why}"))
        state = await self._loop(work, state)
        if state is not State.GONE:
            result = Result(rid, state, Outcome.FAILED, self.errors[rid], instance=record.instance)
            self._settle(rid, result)
            return
        self.store.forget(rid)
        self._settle(rid, Result(rid, state, work.result, instance=record.instance))

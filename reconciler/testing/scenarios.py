"""The conformance scenarios: `ProviderConformance`, a test class to subclass.

    from reconciler.testing import Case, ProviderConformance

    class TestIniValue(ProviderConformance):
        cases = (Case(provider=IniValueProvider, spec=..., ...),)

The plugin (`reconciler.testing.plugin`, loaded by pytest through the `pytest11`
entry point) parametrizes every scenario over `cases`, the drift scenario over
each case's drifts and the invalid-spec scenario over its invalid specs. The
scenarios are plain functions that run their own event loop, so a provider's
package needs no asyncio plugin; a target they talk to must therefore serve from
a thread or a process of its own, as a real server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from reconciler.manifests import ManifestError
from reconciler.model import WATCHING, Action, Plan
from reconciler.testing.kit import Case, Drift, Harness, Invalid, fields


def _run(h: Harness, scenario: Coroutine[Any, Any, None], *, setup: bool = True) -> None:
    async def bounded() -> None:
        try:
            async with asyncio.timeout(h.case.timeout):
                if setup:
                    await h.setup()
                await scenario
        finally:
            await h.cleanup()

    asyncio.run(bounded())


class ProviderConformance:
    """Every scenario, for each case of `cases`. Subclass it in a `Test*` class."""

    __reconciler_conformance__: ClassVar[bool] = True
    cases: ClassVar[tuple[Case, ...]] = ()

    @pytest.fixture
    def conformance_harness(
        self, conformance_case: Case, tmp_path: Path, request: pytest.FixtureRequest
    ) -> Harness:
        fixture = conformance_case.fixture
        target = request.getfixturevalue(fixture) if fixture else None
        return Harness(conformance_case, tmp_path, target)

    def test_create_from_nothing(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _create(conformance_harness))

    def test_second_pass_is_a_no_op(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _second_pass(conformance_harness))

    def test_drift_is_detected_and_healed(
        self, conformance_harness: Harness, conformance_drift: Drift
    ) -> None:
        _run(conformance_harness, _drift(conformance_harness, conformance_drift))

    def test_update(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _update(conformance_harness))

    def test_delete(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _delete(conformance_harness))

    def test_prune_with_the_stored_spec(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _prune(conformance_harness))

    def test_observe_and_plan_have_no_side_effects(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _no_side_effects(conformance_harness))

    def test_batched_in_order(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _batched(conformance_harness))

    def test_invalid_spec_is_rejected(
        self, conformance_harness: Harness, conformance_invalid: Invalid
    ) -> None:
        # only the loader is involved: nothing for the case's setup to make
        _run(conformance_harness, _reject(conformance_harness, conformance_invalid), setup=False)

    def test_secrets_are_never_shown(self, conformance_harness: Harness) -> None:
        if conformance_harness.case.secret is None:
            pytest.skip(f"{conformance_harness.kind}: the case has no secret-bearing spec")
        _run(conformance_harness, _secrets(conformance_harness))

    def test_watch_reports_a_change(self, conformance_harness: Harness) -> None:
        _run(conformance_harness, _watch(conformance_harness))


async def _create(h: Harness) -> None:
    data, spec = h.spec()
    assert not await h.exists(data), "the object exists before the test made it"
    observed = await h.observe(spec)
    if h.case.absent_is_none:
        assert observed is None, f"an object never made was observed as {observed!r}"

    plan = h.provider.plan(spec, observed)
    assert plan.action is Action.CREATE
    assert plan.changes, "a create plan lists what it will set"
    await h.apply(spec, plan)

    await h.check(data)
    observed = await h.observe(spec)
    assert observed is not None
    assert h.provider.plan(spec, observed).empty


async def _second_pass(h: Harness) -> None:
    data, spec = h.spec()
    first = await h.converge(spec)
    assert first.action is Action.CREATE
    before = await h.snapshot()

    second = await h.plan(spec)

    assert second.empty
    assert second.action is Action.NONE and second.changes == ()
    assert await h.snapshot() == before, "a second pass changed the system"
    await h.check(data)


async def _drift(h: Harness, drift: Drift) -> None:
    data, spec = h.spec()
    await h.converge(spec)

    await h.drift(drift, data)
    plan = await h.plan(spec)

    assert not plan.empty, f"{drift.name} drift not detected"
    assert drift.field in fields(plan), f"plan {plan} does not name {drift.field}"
    healed = await h.converge(spec)
    assert not healed.empty
    await h.check(data)


async def _update(h: Harness) -> None:
    data, spec = h.spec()
    await h.converge(spec)
    new_data = h.case.changed(data)
    new_spec = h.parse(new_data)

    plan = await h.plan(new_spec)

    assert plan.action is h.case.update_action
    assert fields(plan) == h.case.changed_fields
    await h.converge(new_spec)
    await h.check(new_data)
    if h.case.updates_replace:
        assert not (await h.plan(spec)).empty, "the old spec still matches after an update"


async def _delete(h: Harness) -> None:
    absent = h.spec(2)[1]
    before = await h.snapshot()
    await h.provider.delete(absent)  # never created: not an error, and nothing changes
    assert await h.snapshot() == before, "deleting an absent object changed the system"

    data, spec = h.spec(0)
    await h.converge(spec)
    other_data, other_spec = h.spec(1)
    await h.converge(other_spec)

    await h.provider.delete(spec)

    assert not await h.exists(data)
    if h.case.absent_is_none:
        assert await h.observe(spec) is None
    assert (await h.plan(spec)).action is Action.CREATE
    await h.provider.delete(spec)  # gone already: not an error
    await h.check(other_data)  # deleting one object leaves the others alone


async def _prune(h: Harness) -> None:
    data, spec = h.spec()
    await h.converge(spec)
    stored = h.stored(spec)

    h.desired({})  # the resource leaves the manifests; its spec comes from the store
    restored = h.restore(stored)

    assert h.stored(restored) == stored, "the stored spec does not read back as it was"
    assert h.provider.describe(restored) == h.provider.describe(spec)
    assert h.provider.path(restored) == h.provider.path(spec)
    await h.provider.delete(restored)
    if h.case.delete_removes:
        assert not await h.exists(data)


async def _no_side_effects(h: Harness) -> None:
    absent = h.spec(0)[1]
    in_sync = h.spec(1)[1]
    drifted_data, drifted = h.spec(2)
    changed_data, original = h.spec(3)
    for spec in (in_sync, drifted, original):
        await h.converge(spec)
    await h.drift(h.case.drifts[0], drifted_data)
    changed = h.parse(h.case.changed(changed_data), 3)
    specs = [absent, in_sync, drifted, changed]
    before = await h.snapshot()

    observed = await h.provider.observe_many(specs)
    plans = [h.provider.plan(s, o) for s, o in zip(specs, observed, strict=True)]
    for spec in specs:
        await h.plan(spec)

    assert await h.snapshot() == before, "observe or plan changed the system"
    expected = [Action.CREATE, Action.NONE, Action.UPDATE, h.case.update_action]
    assert [p.action for p in plans] == expected
    again = [h.provider.plan(s, o) for s, o in zip(specs, observed, strict=True)]
    assert again == plans, "plan is not a function of spec and observation"


async def _batched(h: Harness) -> None:
    """The engine's path: one observe_many of many objects, one apply_many of the
    plans, then everything in sync: absent, in-sync, drifted and changed objects
    mixed, each answered in order."""
    count = max(h.case.many, 4)
    datas = {n: h.case.spec(h, n) for n in range(count)}
    first = h.load(datas)
    for n in range(count):
        if n % 4:
            await h.converge(first[n])
        if n % 4 == 2:
            await h.drift(h.case.drifts[0], datas[n])
    datas |= {n: h.case.changed(datas[n]) for n in range(count) if n % 4 == 3}
    loaded = h.load(datas)
    specs = [loaded[n] for n in range(count)]

    observed = await h.provider.observe_many(specs)
    assert len(observed) == count, f"observe_many of {count} specs answered {len(observed)}"
    if h.case.absent_is_none:
        assert [o is None for o in observed] == [n % 4 == 0 for n in range(count)]
    for spec, seen in zip(specs, observed, strict=True):
        assert seen == await h.observe(spec), "observe_many answered out of order"
    plans = [h.provider.plan(s, o) for s, o in zip(specs, observed, strict=True)]
    assert [p.empty for p in plans] == [n % 4 == 1 for n in range(count)]
    assert all(p.action is Action.CREATE for p in plans[::4]), "a new object plans no CREATE"
    # the objects are distinguishable, so an answer out of order would show
    assert not h.provider.plan(specs[1], observed[2]).empty
    items = [(s, p) for s, p in zip(specs, plans, strict=True) if not p.empty]

    results = await h.apply_many(items)

    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"apply_many failed: {failed}"
    after = await h.provider.observe_many(specs)
    for n, (spec, seen) in enumerate(zip(specs, after, strict=True)):
        assert h.provider.plan(spec, seen).empty, f"object {n} did not converge"
        await h.check(datas[n])
    assert await h.provider.observe_many(specs[::-1]) == after[::-1]
    assert await h.provider.observe_many([]) == []


async def _reject(h: Harness, invalid: Invalid) -> None:
    issues = h.reject(invalid.data(h))
    if invalid.field is not None:
        named = [i.field for i in issues]
        assert invalid.field in named, f"expected an error at {invalid.field}, found {issues}"


async def _secrets(h: Harness) -> None:
    """A secret given by reference appears in no plan, note, error or stored spec,
    before and after it is rotated; the stored spec still deletes the object."""
    assert h.case.secret is not None
    values = [f"kit-secret-{secrets.token_hex(12)}", f"kit-rotated-{secrets.token_hex(12)}"]
    shown: list[str] = []

    def no_secret(text: str, what: str) -> None:
        for value in values:
            assert value not in text, f"the secret appears in {what}: {text}"

    def seen(plan: Plan) -> None:
        shown.append(repr(plan))
        shown.extend(f"{c.field}: {c.before} -> {c.after}" for c in plan.changes)

    with h.secret_env(values[0]) as name:
        data = h.case.secret(h, {"valueFrom": {"env": name}})
        spec = h.parse(data)
        shown += [repr(spec), str(spec), h.stored(spec), h.provider.describe(spec)]
        plan = await h.plan(spec)
        seen(plan)
        note = await h.apply(spec, plan)
        shown.append(str(note))
        assert (await h.plan(spec)).empty

        os.environ[name] = values[1]
        rotated = h.parse(data)
        shown += [repr(rotated), h.stored(rotated)]
        assert h.stored(rotated) != h.stored(spec), "a rotated secret is not a spec change"
        plan = await h.plan(rotated)
        assert not plan.empty, "a rotated secret plans no change: it would never be applied"
        seen(plan)
        shown.append(str(await h.apply(rotated, plan)))
        assert (await h.plan(rotated)).empty

        try:
            h.desired({0: {**data, "kitUnknownField": 1}})
        except ManifestError as exc:
            shown.append(str(exc))
        else:
            raise AssertionError(f"{h.kind} accepted an unknown field")

    for text in shown:
        no_secret(text, "a plan, a note, an error or the stored spec")
    stored = h.stored(rotated)
    h.desired({})
    restored = h.restore(stored)
    assert h.stored(restored) == stored
    await h.provider.delete(restored)
    if h.case.delete_removes:
        assert not await h.exists(data)


async def _watch(h: Harness) -> None:
    """An out-of-band change makes the watch yield the resource's id within a few
    seconds. A stream that yields `WATCHING` must see the first change made after
    it; one that does not cannot say when its watch has started, so the change is
    repeated (a quarter of a second apart) until it is seen."""
    data, spec = h.spec()
    rid = h.rid()
    specs: dict[str, BaseModel] = {rid: spec}
    # asked first, so a provider that cannot watch costs no converge; a stream
    # made before the object would see its creation, so it is made again after
    probe = h.provider.watch(specs)
    if probe is None:
        pytest.skip(f"{h.kind} cannot watch (watch returns None)")
    await _close(probe)
    await h.converge(spec)
    stream = h.provider.watch(specs)
    assert stream is not None, "watch answered None after it answered a stream"
    seen: asyncio.Queue[str] = asyncio.Queue()
    watching = asyncio.Event()

    async def consume() -> None:
        async for found in stream:
            if found == WATCHING:
                assert not watching.is_set(), "watch yielded WATCHING twice"
                watching.set()
                continue
            assert found in specs, f"watch yielded {found!r}, not one of its ids"
            seen.put_nowait(found)

    task = asyncio.create_task(consume(), name="kit-watch")
    try:
        async with asyncio.timeout(10):
            while True:
                if not watching.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watching.wait(), 0.25)
                ready = watching.is_set()
                await h.drift(h.case.drifts[0], data)
                try:
                    found = await asyncio.wait_for(seen.get(), 5.0 if ready else 0.25)
                except TimeoutError:
                    assert not ready, "a change made after WATCHING was not reported in 5 s"
                    assert not task.done() or task.exception() is None, task.exception()
                    await h.converge(spec)
                    continue
                assert found == rid
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _close(stream)


async def _close(stream: AsyncIterator[str]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()

"""The engine, driven with the real filesystem providers on tmp directories and
with `Thing`, a small provider over an in-memory dict defined here, against the
real SQLite store. Desired states come from the real loader."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from reconciler.engine import (
    Engine,
    MassPruneRefused,
    Outcome,
    PlanAction,
    Report,
    Result,
    backoff,
)
from reconciler.fsm import Event, State
from reconciler.manifests import load
from reconciler.model import (
    API_VERSION,
    NO_CHANGES,
    Action,
    Change,
    DesiredState,
    Observed,
    PermanentError,
    Plan,
    Provider,
    ProviderSettings,
    TemporaryError,
)
from reconciler.providers.directory import DirectoryProvider
from reconciler.providers.files import FileProvider
from reconciler.providers.symlink import SymlinkProvider
from reconciler.registry import Registry
from reconciler.store import Record, SqliteStore
from reconciler.store.sqlite import DB_NAME

S = State

# --- the test provider ----------------------------------------------------------


class ThingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    value: str = ""
    colour: str = ""


Hook = Callable[[ThingSpec], Awaitable[None]]


class ThingProvider(Provider[ThingSpec]):
    """Objects in a dict; failures, hooks and call counts on demand."""

    kind = "Thing"
    Spec = ThingSpec

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self.target: dict[str, dict[str, str]] = {}
        self.batches: list[list[str]] = []
        self.applied: list[str] = []
        self.deleted: list[str] = []
        self.apply_errors: dict[str, list[BaseException]] = {}
        self.delete_errors: dict[str, list[BaseException]] = {}
        self.observe_errors: dict[str, BaseException] = {}
        self.hooks: dict[str, Hook] = {}
        self.delete_hooks: dict[str, Hook] = {}
        self.inert: set[str] = set()
        """Keys whose apply succeeds without changing anything."""

    async def observe_many(self, specs: Sequence[ThingSpec]) -> list[Observed | None]:
        self.batches.append([s.key for s in specs])
        await asyncio.sleep(0)
        for spec in specs:
            if spec.key in self.observe_errors:
                raise self.observe_errors[spec.key]
        return [dict(self.target[s.key]) if s.key in self.target else None for s in specs]

    def plan(self, spec: ThingSpec, observed: Observed | None) -> Plan:
        wanted = {"value": spec.value, "colour": spec.colour}
        if observed is None:
            return Plan(Action.CREATE, tuple(Change(f"/{k}", None, v) for k, v in wanted.items()))
        changes = tuple(
            Change(f"/{k}", observed.get(k), v) for k, v in wanted.items() if observed.get(k) != v
        )
        return Plan(Action.UPDATE, changes) if changes else NO_CHANGES

    async def apply(self, spec: ThingSpec, plan: Plan) -> None:
        self.applied.append(spec.key)
        hook = self.hooks.get(spec.key)
        if hook is not None:
            await hook(spec)
        await asyncio.sleep(0)
        errors = self.apply_errors.get(spec.key)
        if errors:
            raise errors.pop(0)
        if spec.key not in self.inert:
            self.target[spec.key] = {"value": spec.value, "colour": spec.colour}

    async def delete(self, spec: ThingSpec) -> None:
        self.deleted.append(spec.key)
        hook = self.delete_hooks.get(spec.key)
        if hook is not None:
            await hook(spec)
        await asyncio.sleep(0)
        errors = self.delete_errors.get(spec.key)
        if errors:
            raise errors.pop(0)
        self.target.pop(spec.key, None)

    @property
    def observed_specs(self) -> int:
        return sum(len(b) for b in self.batches)


# --- the rig --------------------------------------------------------------------


Doc = dict[str, Any]


def _policy(policy: dict[str, Any]) -> dict[str, Any]:
    return {"policy": policy} if policy else {}


def thing(name: str, value: str | None = None, colour: str = "", **policy: Any) -> Doc:
    spec = {"key": name, "value": name if value is None else value, "colour": colour}
    return {
        "apiVersion": API_VERSION,
        "kind": "Thing",
        "metadata": {"name": name},
        "spec": spec,
        **_policy(policy),
    }


def file_(name: str, path: Path, content: str = "hello\n", **extra: Any) -> Doc:
    policy = extra.pop("policy", {})
    return {
        "apiVersion": API_VERSION,
        "kind": "File",
        "metadata": {"name": name},
        "spec": {"path": str(path), "content": content, **extra},
        **_policy(policy),
    }


def directory(name: str, path: Path, **policy: Any) -> Doc:
    return {
        "apiVersion": API_VERSION,
        "kind": "Directory",
        "metadata": {"name": name},
        "spec": {"path": str(path)},
        **_policy(policy),
    }


def symlink(name: str, path: Path, target: str) -> Doc:
    return {
        "apiVersion": API_VERSION,
        "kind": "Symlink",
        "metadata": {"name": name},
        "spec": {"path": str(path), "target": target},
    }


@dataclass
class Rig:
    root: Path
    config: Path
    state: Path
    things: ThingProvider
    registry: Registry
    settled: list[Result] = field(default_factory=list)

    def desired(self, *docs: Doc) -> DesiredState:
        manifest = self.config / "manifests.yaml"
        # no documents: the tree says so, or the loader refuses the empty file (0094)
        text = yaml.safe_dump_all(docs, sort_keys=False) if docs else "# reconciler: empty\n"
        manifest.write_text(text)
        return load(self.config, self.registry)

    async def converge(self, *docs: Doc, **engine: Any) -> Report:
        """One pass, as one run of the CLI would: open the store, converge, close."""
        desired = self.desired(*docs)
        store = SqliteStore(self.state)
        try:
            return await Engine(
                self.registry, store, on_settled=self.settled.append, **engine
            ).converge(desired)
        finally:
            store.close()

    def inventory(self) -> dict[str, Record]:
        store = SqliteStore(self.state, readonly=True)
        try:
            return store.inventory()
        finally:
            store.close()

    def states(self, rid: str) -> list[State]:
        return [t.to_state for t in self.history(rid)]

    def history(self, rid: str | None = None) -> list[Any]:
        store = SqliteStore(self.state, readonly=True)
        try:
            return store.history(rid, limit=10_000)
        finally:
            store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    settings = ProviderSettings(roots=(str(root),))
    things = ThingProvider(settings)
    registry = Registry(
        [
            things,
            FileProvider(settings),
            DirectoryProvider(settings),
            SymlinkProvider(settings),
        ]
    )
    return Rig(root, config, tmp_path / "state", things, registry)


def actions(report: Report) -> dict[str, str]:
    return {rid: r.action for rid, r in report.results.items()}


CREATE_PATH = [S.PENDING, S.DETECTING, S.PLANNING, S.APPLYING, S.VERIFYING, S.IN_SYNC]


# --- create, idempotence, batching ----------------------------------------------


async def test_first_converge_creates(rig: Rig) -> None:
    report = await rig.converge(thing("a"), thing("b", "bee", "blue"))
    assert actions(report) == {"Thing/a": "created", "Thing/b": "created"}
    assert all(r.state is S.IN_SYNC and r.error is None for r in report.results.values())
    assert report.ok
    assert rig.things.target == {
        "a": {"value": "a", "colour": ""},
        "b": {"value": "bee", "colour": "blue"},
    }
    inventory = rig.inventory()
    assert {rid: (r.state, r.created) for rid, r in inventory.items()} == {
        "Thing/a": (S.IN_SYNC, True),
        "Thing/b": (S.IN_SYNC, True),
    }
    assert inventory["Thing/a"].spec_hash == rig.desired(thing("a")).resources["Thing/a"].spec_hash
    assert sorted(r.id for r in rig.settled) == ["Thing/a", "Thing/b"]


async def test_second_converge_is_a_no_op(rig: Rig) -> None:
    docs = [thing(f"t{i}") for i in range(5)]
    await rig.converge(*docs)
    applied = len(rig.things.applied)
    report = await rig.converge(*docs)
    assert set(actions(report).values()) == {"unchanged"}
    assert len(report.results) == 5
    assert len(rig.things.applied) == applied == 5
    assert all(r.state is S.IN_SYNC for r in report.results.values())
    # a drift check that finds nothing leaves no history (the engine's clean fast path)
    assert rig.states("Thing/t0") == CREATE_PATH


async def test_real_files_directories_and_symlinks(rig: Rig) -> None:
    app = rig.root / "srv" / "app"
    docs = [
        directory("app", app),
        file_("config", app / "config.ini", "[server]\nport = 8080\n", mode="0640"),
        symlink("current", rig.root / "srv" / "current", "app"),
    ]
    report = await rig.converge(*docs)
    assert actions(report) == {
        "Directory/app": "created",
        "File/config": "created",
        "Symlink/current": "created",
    }
    assert (app / "config.ini").read_text() == "[server]\nport = 8080\n"
    assert (app / "config.ini").stat().st_mode & 0o777 == 0o640
    assert (rig.root / "srv" / "current").readlink() == Path("app")
    again = await rig.converge(*docs)
    assert set(actions(again).values()) == {"unchanged"}


async def test_observe_is_batched_per_kind(rig: Rig) -> None:
    docs = [thing(f"t{i:02}") for i in range(40)]
    await rig.converge(*docs)
    # the first detect of every resource goes out in one call
    assert len(rig.things.batches[0]) == 40
    assert rig.things.observed_specs == 80  # detect + verify, each resource once
    rig.things.batches.clear()
    await rig.converge(*docs)
    assert [len(b) for b in rig.things.batches] == [40]


async def test_one_failing_observation_does_not_fail_its_batch(rig: Rig) -> None:
    rig.things.observe_errors["b"] = PermanentError("cannot read b")
    report = await rig.converge(thing("a"), thing("b"), thing("c"))
    assert actions(report) == {"Thing/a": "created", "Thing/b": "failed", "Thing/c": "created"}
    assert report.results["Thing/b"].error == "cannot read b"
    assert sorted(rig.things.batches[0]) == ["a", "b", "c"]


# --- dependencies and concurrency -----------------------------------------------


async def test_dependency_applied_before_dependent(rig: Rig) -> None:
    # listed dependents first, so that file order alone would apply them first
    report = await rig.converge(
        thing("c", dependsOn=["Thing/b"]),
        thing("b", dependsOn=["Thing/a"]),
        thing("a"),
    )
    assert set(actions(report).values()) == {"created"}
    assert rig.things.applied == ["a", "b", "c"]
    history = rig.history()
    in_sync = {t.id: t.seq for t in history if t.to_state is S.IN_SYNC}
    detecting = {t.id: t.seq for t in history if t.to_state is S.DETECTING}
    assert in_sync["Thing/a"] < detecting["Thing/b"]
    assert in_sync["Thing/b"] < detecting["Thing/c"]


async def test_file_waits_for_its_directory(rig: Rig) -> None:
    app = rig.root / "app"
    report = await rig.converge(
        file_("config", app / "config.ini", mode="0600"), directory("app", app)
    )
    assert set(actions(report).values()) == {"created"}
    history = rig.history()
    dir_done = next(t.seq for t in history if t.id == "Directory/app" and t.to_state is S.IN_SYNC)
    file_start = next(t.seq for t in history if t.id == "File/config" and t.to_state is S.DETECTING)
    assert dir_done < file_start


async def test_independent_resources_are_applied_concurrently(rig: Rig) -> None:
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def meet(spec: ThingSpec) -> None:
        started[spec.key].set()
        other = "b" if spec.key == "a" else "a"
        async with asyncio.timeout(5):
            await started[other].wait()

    rig.things.hooks = {"a": meet, "b": meet}
    report = await rig.converge(thing("a"), thing("b"))
    assert actions(report) == {"Thing/a": "created", "Thing/b": "created"}


async def test_failure_blocks_dependents_only(rig: Rig) -> None:
    rig.things.apply_errors["a"] = [PermanentError("a is broken")]
    report = await rig.converge(
        thing("a"),
        thing("b", dependsOn=["Thing/a"]),
        thing("c", dependsOn=["Thing/b"]),
        thing("d"),
    )
    assert actions(report) == {
        "Thing/a": "failed",
        "Thing/b": "blocked",
        "Thing/c": "blocked",
        "Thing/d": "created",
    }
    assert not report.ok
    assert report.results["Thing/a"].error == "a is broken"
    b_error = report.results["Thing/b"].error
    assert b_error is not None and "Thing/a" in b_error and "Failed" in b_error
    c_error = report.results["Thing/c"].error
    assert c_error is not None and "Thing/b" in c_error and "Blocked" in c_error
    assert report.results["Thing/b"].state is S.BLOCKED
    assert sorted(rig.things.applied) == ["a", "d"]
    assert rig.states("Thing/b") == [S.PENDING, S.BLOCKED]
    assert rig.inventory()["Thing/b"].last_error == b_error

    # once the dependency is fixed the blocked ones follow
    report = await rig.converge(
        thing("a"),
        thing("b", dependsOn=["Thing/a"]),
        thing("c", dependsOn=["Thing/b"]),
        thing("d"),
    )
    assert actions(report) == {
        "Thing/a": "created",
        "Thing/b": "created",
        "Thing/c": "created",
        "Thing/d": "unchanged",
    }
    assert rig.states("Thing/b")[:3] == [S.PENDING, S.BLOCKED, S.DETECTING]


async def test_in_sync_dependent_of_a_failing_heal_is_blocked(rig: Rig) -> None:
    docs = [thing("a"), thing("b", dependsOn=["Thing/a"]), thing("c")]
    await rig.converge(*docs)
    rig.things.target["a"]["value"] = "by hand"
    rig.things.apply_errors["a"] = [PermanentError("read-only")]
    report = await rig.converge(*docs)
    assert actions(report) == {"Thing/a": "failed", "Thing/b": "blocked", "Thing/c": "unchanged"}
    assert "Thing/a" in (report.results["Thing/b"].error or "")
    assert rig.inventory()["Thing/b"].state is S.BLOCKED


async def test_provider_did_not_converge(rig: Rig) -> None:
    rig.things.inert.add("a")
    report = await rig.converge(thing("a"))
    result = report.results["Thing/a"]
    assert (result.action, result.state) == ("failed", S.FAILED)
    assert result.error is not None and "did not converge" in result.error
    assert "/value" in result.error
    assert rig.states("Thing/a")[-2:] == [S.VERIFYING, S.FAILED]


async def test_unexpected_exception_is_a_failure_not_a_crash(rig: Rig) -> None:
    rig.things.apply_errors["a"] = [RuntimeError("bug in provider")]
    report = await rig.converge(thing("a"), thing("b"))
    assert actions(report) == {"Thing/a": "failed", "Thing/b": "created"}
    assert report.results["Thing/a"].error == "RuntimeError: bug in provider"


# --- retries and backoff --------------------------------------------------------


async def test_temporary_error_is_retried_until_it_succeeds(rig: Rig) -> None:
    rig.things.apply_errors["a"] = [
        TemporaryError("busy", delay=0.01),
        TemporaryError("still busy", delay=0.01),
    ]
    report = await rig.converge(thing("a"), retries=2)
    assert actions(report) == {"Thing/a": "created"}
    assert rig.things.applied == ["a", "a", "a"]
    assert rig.things.target["a"] == {"value": "a", "colour": ""}
    states = rig.states("Thing/a")
    assert states.count(S.FAILED) == 2
    assert states[-3:] == [S.APPLYING, S.VERIFYING, S.IN_SYNC]
    record = rig.inventory()["Thing/a"]
    assert (record.attempts, record.next_attempt, record.last_error) == (0, None, None)


async def test_retries_run_out(rig: Rig) -> None:
    rig.things.apply_errors["a"] = [TemporaryError("busy", delay=0.01) for _ in range(3)]
    report = await rig.converge(thing("a"), retries=2)
    assert report.results["Thing/a"].action == "failed"
    assert report.results["Thing/a"].error == "busy"
    assert rig.things.applied == ["a", "a", "a"]
    record = rig.inventory()["Thing/a"]
    assert record.state is S.FAILED
    assert record.attempts == 3
    assert record.next_attempt is not None


async def test_permanent_error_is_not_retried(rig: Rig) -> None:
    rig.things.apply_errors["a"] = [PermanentError("bad spec")]
    report = await rig.converge(thing("a"), retries=3)
    assert report.results["Thing/a"].action == "failed"
    assert report.results["Thing/a"].error == "bad spec"
    assert rig.things.applied == ["a"]
    assert rig.inventory()["Thing/a"].attempts == 1


async def test_failed_resource_is_retried_on_the_next_pass(rig: Rig) -> None:
    rig.things.apply_errors["a"] = [PermanentError("bad")]
    await rig.converge(thing("a"))
    report = await rig.converge(thing("a"))
    assert actions(report) == {"Thing/a": "created"}
    history = rig.history("Thing/a")
    assert (history[len(CREATE_PATH) - 2].to_state, history[len(CREATE_PATH) - 1].event) == (
        S.FAILED,
        Event.RETRY,
    )
    assert rig.inventory()["Thing/a"].attempts == 0


async def test_heal_that_succeeds_on_retry_clears_the_retry_state(rig: Rig) -> None:
    await rig.converge(thing("a"))
    rig.things.target["a"]["value"] = "by hand"
    rig.things.apply_errors["a"] = [TemporaryError("busy", delay=0.01)]
    report = await rig.converge(thing("a"), retries=1)
    assert actions(report) == {"Thing/a": "healed"}
    record = rig.inventory()["Thing/a"]
    assert record.state is S.IN_SYNC
    assert (record.attempts, record.next_attempt) == (0, None), (
        "an in-sync resource still carries the retry count of a failure healed in the same pass"
    )


def test_backoff_grows_exponentially_from_one_second() -> None:
    no_jitter = [backoff(n, rng=lambda: 0.0) for n in range(1, 11)]
    assert no_jitter == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff(0, rng=lambda: 0.0) == 1.0


def test_backoff_is_capped() -> None:
    assert backoff(9, rng=lambda: 0.0) == 256.0
    assert backoff(9, rng=lambda: 0.999) == 300.0
    for attempt in (10, 11, 50, 1_000):
        assert backoff(attempt, rng=lambda: 0.0) == 300.0
        assert backoff(attempt, rng=lambda: 0.999) == 300.0


def test_backoff_is_capped_after_any_number_of_attempts() -> None:
    # attempts accumulate across passes: ~1000 failures at the 5 min cap is 3.5 days
    for attempt in (1_025, 10**9):
        assert backoff(attempt, rng=lambda: 0.0) == 300.0


def test_backoff_jitter_stays_within_bounds() -> None:
    rng = random.Random(1234).random
    for attempt in range(1, 12):
        base = min(300.0, 2.0 ** (attempt - 1))
        seen = [backoff(attempt, rng=rng) for _ in range(200)]
        assert all(base <= d <= min(300.0, base * 1.5) for d in seen), attempt
        if base * 1.5 <= 300:
            assert max(seen) - min(seen) > base * 0.3, "no jitter"
    assert backoff(1, rng=lambda: 1.0) == 1.5
    assert backoff(3, base=0.5, cap=10.0, rng=lambda: 0.0) == 2.0
    assert backoff(10, base=0.5, cap=10.0, rng=lambda: 0.5) == 10.0


def test_heal_backoff_is_the_same_function_without_jitter() -> None:
    # the daemon's heal backoff: 2 s, 4 s ... up to 5 min, exactly
    def never() -> float:
        raise AssertionError("no jitter asked for, none drawn")

    waits = [backoff(n, base=2.0, jitter=0.0, rng=never) for n in range(1, 12)]
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


# --- prune ----------------------------------------------------------------------


async def test_prune_deletes_in_reverse_dependency_order(rig: Rig) -> None:
    app = rig.root / "app"
    keep = [file_("keep1", rig.root / "keep1"), file_("keep2", rig.root / "keep2")]
    await rig.converge(directory("app", app), file_("config", app / "config.ini"), *keep)
    assert (app / "config.ini").is_file()
    report = await rig.converge(*keep)
    assert actions(report) == {
        "Directory/app": "deleted",
        "File/config": "deleted",
        "File/keep1": "unchanged",
        "File/keep2": "unchanged",
    }
    assert report.results["Directory/app"].state is S.GONE
    assert not app.exists()
    assert set(rig.inventory()) == {"File/keep1", "File/keep2"}
    history = rig.history()
    file_gone = next(t.seq for t in history if t.id == "File/config" and t.to_state is S.GONE)
    dir_pruning = next(
        t.seq for t in history if t.id == "Directory/app" and t.to_state is S.PRUNING
    )
    assert file_gone < dir_pruning
    assert rig.states("File/config")[-2:] == [S.PRUNING, S.GONE]


async def test_prune_chain_of_things_in_reverse_order(rig: Rig) -> None:
    keep = [thing(f"k{i}") for i in range(3)]
    await rig.converge(
        thing("a"), thing("b", dependsOn=["Thing/a"]), thing("c", dependsOn=["Thing/b"]), *keep
    )
    await rig.converge(*keep)
    assert rig.things.deleted == ["c", "b", "a"]


async def test_adopted_objects_are_released_not_deleted(rig: Rig) -> None:
    rig.things.target["same"] = {"value": "same", "colour": ""}
    rig.things.target["other"] = {"value": "old", "colour": ""}
    existing = rig.root / "existing.conf"
    existing.write_text("by hand\n")
    keep = [thing(f"k{i}") for i in range(3)]
    first = await rig.converge(thing("same"), thing("other"), file_("existing", existing), *keep)
    assert actions(first)["Thing/same"] == "unchanged"
    assert actions(first)["Thing/other"] == "updated"
    assert actions(first)["File/existing"] == "updated"
    inventory = rig.inventory()
    assert [inventory[r].created for r in ("Thing/same", "Thing/other", "File/existing")] == [
        False,
        False,
        False,
    ]
    report = await rig.converge(*keep)
    assert actions(report) == {
        "Thing/same": "released",
        "Thing/other": "released",
        "File/existing": "released",
        "Thing/k0": "unchanged",
        "Thing/k1": "unchanged",
        "Thing/k2": "unchanged",
    }
    assert rig.things.deleted == []
    assert set(rig.things.target) == {"same", "other", "k0", "k1", "k2"}
    assert existing.read_text() == "hello\n"
    assert set(rig.inventory()) == {"Thing/k0", "Thing/k1", "Thing/k2"}


async def test_prune_false_releases(rig: Rig) -> None:
    await rig.converge(thing("a", prune=False), thing("b"), thing("c"))
    report = await rig.converge(thing("b"), thing("c"))
    assert actions(report)["Thing/a"] == "released"
    assert rig.things.deleted == []
    assert "a" in rig.things.target
    assert "Thing/a" not in rig.inventory()


async def test_failed_delete_keeps_the_record(rig: Rig) -> None:
    rig.things.delete_errors["a"] = [PermanentError("in use")]
    await rig.converge(thing("a"), thing("b"), thing("c"))
    report = await rig.converge(thing("b"), thing("c"))
    result = report.results["Thing/a"]
    assert (result.action, result.state, result.error) == ("failed", S.FAILED, "in use")
    assert rig.inventory()["Thing/a"].state is S.FAILED
    again = await rig.converge(thing("b"), thing("c"))
    assert actions(again)["Thing/a"] == "deleted"
    assert "a" not in rig.things.target


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (["a", "b"], [], "prune all 2 managed resources"),
        (["a", "b"], ["c"], "prune all 2 managed resources"),
        (
            ["a", "b", "c", "d"],
            ["a"],
            "prune 3 of 4 managed resources (75%, over the limit of 50%)",
        ),
    ],
    ids=["everything", "everything, replaced", "over the share"],
)
async def test_mass_prune_is_refused(
    rig: Rig, before: list[str], after: list[str], message: str
) -> None:
    await rig.converge(*(thing(n) for n in before))
    inventory = rig.inventory()
    applied = list(rig.things.applied)
    with pytest.raises(MassPruneRefused) as info:
        await rig.converge(*(thing(n) for n in after))
    assert message in str(info.value)
    assert "--allow-mass-prune" in str(info.value)
    assert rig.things.applied == applied
    assert rig.things.deleted == []
    assert set(rig.things.target) == set(before)
    assert rig.inventory() == inventory


async def test_mass_prune_allowed_when_asked(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"), thing("c"))
    report = await rig.converge(thing("d"), allow_mass_prune=True)
    assert actions(report) == {
        "Thing/a": "deleted",
        "Thing/b": "deleted",
        "Thing/c": "deleted",
        "Thing/d": "created",
    }
    assert set(rig.things.target) == {"d"}


async def test_prune_share_limit_is_configurable(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"), thing("c"), thing("d"))
    with pytest.raises(MassPruneRefused):
        await rig.converge(thing("a"), thing("b"), thing("c"), max_prune_share=0.2)
    report = await rig.converge(thing("a"), thing("b"), thing("c"), max_prune_share=0.25)
    assert actions(report)["Thing/d"] == "deleted"


# --- suspend, drift -------------------------------------------------------------


async def test_suspend_and_resume(rig: Rig) -> None:
    report = await rig.converge(thing("a", suspend=True), thing("b", dependsOn=["Thing/a"]))
    assert actions(report) == {"Thing/a": "suspended", "Thing/b": "created"}
    assert report.results["Thing/a"].state is S.SUSPENDED
    assert "a" not in rig.things.target
    assert all("a" not in batch for batch in rig.things.batches)
    again = await rig.converge(thing("a", suspend=True), thing("b", dependsOn=["Thing/a"]))
    assert actions(again)["Thing/a"] == "suspended"
    resumed = await rig.converge(thing("a"), thing("b", dependsOn=["Thing/a"]))
    assert actions(resumed)["Thing/a"] == "created"
    assert rig.states("Thing/a") == [S.PENDING, S.SUSPENDED, *CREATE_PATH[1:]]
    assert rig.history("Thing/a")[2].event == Event.RESUME


async def test_suspended_resource_is_not_healed(rig: Rig) -> None:
    await rig.converge(thing("a"))
    rig.things.target["a"]["value"] = "by hand"
    report = await rig.converge(thing("a", suspend=True))
    assert actions(report) == {"Thing/a": "suspended"}
    assert rig.things.target["a"]["value"] == "by hand"
    report = await rig.converge(thing("a"))
    assert actions(report) == {"Thing/a": "healed"}
    assert rig.things.target["a"]["value"] == "a"


async def test_drift_is_healed(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"))
    rig.things.target["a"]["value"] = "by hand"
    report = await rig.converge(thing("a"), thing("b"))
    assert actions(report) == {"Thing/a": "healed", "Thing/b": "unchanged"}
    assert rig.things.target["a"]["value"] == "a"
    assert rig.things.applied.count("a") == 2
    assert rig.inventory()["Thing/a"].state is S.IN_SYNC


async def test_healed_drift_is_recorded_in_history(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"))
    rig.things.target["a"]["value"] = "by hand"
    await rig.converge(thing("a"), thing("b"))
    assert rig.states("Thing/a")[len(CREATE_PATH) :] == [
        S.DETECTING,
        S.PLANNING,
        S.DRIFTED,
        S.APPLYING,
        S.VERIFYING,
        S.IN_SYNC,
    ]


async def test_drift_under_warn_is_reported_and_untouched(rig: Rig) -> None:
    await rig.converge(thing("a", drift="warn"))
    rig.things.target["a"]["value"] = "by hand"
    for _ in range(2):
        report = await rig.converge(thing("a", drift="warn"))
        result = report.results["Thing/a"]
        assert (result.action, result.state) == ("drifted", S.DRIFTED)
        assert result.plan is not None and [c.field for c in result.plan.changes] == ["/value"]
    assert rig.things.target["a"]["value"] == "by hand"
    assert rig.things.applied == ["a"]
    assert rig.states("Thing/a")[len(CREATE_PATH) :] == [
        *(S.DETECTING, S.PLANNING, S.DRIFTED),
        *(S.DETECTING, S.PLANNING, S.DRIFTED),
    ]
    # fixed by hand: back in sync without an apply
    rig.things.target["a"]["value"] = "a"
    report = await rig.converge(thing("a", drift="warn"))
    assert actions(report) == {"Thing/a": "unchanged"}
    assert report.results["Thing/a"].state is S.IN_SYNC


async def test_deleted_by_hand_under_warn_is_reported_not_recreated(rig: Rig) -> None:
    await rig.converge(thing("a", drift="warn"))
    del rig.things.target["a"]
    report = await rig.converge(thing("a", drift="warn"))
    assert actions(report) == {"Thing/a": "drifted"}
    assert "a" not in rig.things.target


async def test_drift_of_a_real_file(rig: Rig) -> None:
    path = rig.root / "app.conf"
    mode_path = rig.root / "mode.conf"
    docs = [
        file_("app", path, "port = 8080\n"),
        file_("mode", mode_path, "x\n", mode="0600", policy={"drift": "warn"}),
    ]
    await rig.converge(*docs)
    path.write_text("port = 9999\n")
    mode_path.chmod(0o644)
    report = await rig.converge(*docs)
    assert actions(report) == {"File/app": "healed", "File/mode": "drifted"}
    assert path.read_text() == "port = 8080\n"
    assert mode_path.stat().st_mode & 0o777 == 0o644


async def test_drift_ignore_never_observes_a_converged_resource(rig: Rig) -> None:
    """policy.drift: ignore: once its spec converged, a resource is not looked at
    by a resync or watch pass (no observation, no history, never Drifted), and a
    hand edit stays; other resources of the same pass are still checked."""
    docs = (thing("a", drift="ignore"), thing("b"))
    report = await rig.converge(*docs)
    assert actions(report) == {"Thing/a": "created", "Thing/b": "created"}
    rig.things.target["a"]["value"] = "by hand"
    del rig.things.target["b"]
    history = rig.history("Thing/a")
    observed_before = [key for batch in rig.things.batches for key in batch]
    for trigger in (Event.RESYNC, Event.WATCH):
        store = SqliteStore(rig.state)
        try:
            report = await Engine(rig.registry, store).converge(rig.desired(*docs), trigger=trigger)
        finally:
            store.close()
        assert report.results["Thing/a"].action == "unchanged"
        assert report.results["Thing/a"].state is S.IN_SYNC
    observed = [key for batch in rig.things.batches for key in batch]
    assert observed[len(observed_before) :].count("a") == 0
    assert observed[len(observed_before) :].count("b") >= 2  # b was checked (and healed)
    assert rig.things.target["a"]["value"] == "by hand"
    assert rig.history("Thing/a") == history
    assert rig.inventory()["Thing/a"].state is S.IN_SYNC


async def test_drift_ignore_still_applies_a_new_spec(rig: Rig) -> None:
    await rig.converge(thing("a", "one", drift="ignore"))
    rig.things.target["a"]["colour"] = "by hand"
    report = await rig.converge(thing("a", "two", drift="ignore"))
    assert actions(report) == {"Thing/a": "updated"}
    assert rig.things.target["a"] == {"value": "two", "colour": ""}
    assert rig.states("Thing/a")[len(CREATE_PATH) :] == [
        S.DETECTING,
        S.PLANNING,
        S.APPLYING,
        S.VERIFYING,
        S.IN_SYNC,
    ]
    # a failed update is retried as an update, never turned into a drift
    rig.things.apply_errors["a"] = [TemporaryError("busy")]
    report = await rig.converge(thing("a", "three", drift="ignore"))
    assert report.results["Thing/a"].state is S.FAILED
    rig.things.target["a"]["value"] = "by hand"
    report = await rig.converge(thing("a", "three", drift="ignore"))
    assert actions(report) == {"Thing/a": "updated"}
    assert rig.things.target["a"]["value"] == "three"
    assert S.DRIFTED not in rig.states("Thing/a")


async def test_a_drifted_resource_switched_to_ignore_stops_being_drifted(rig: Rig) -> None:
    await rig.converge(thing("a", drift="warn"))
    rig.things.target["a"]["value"] = "by hand"
    report = await rig.converge(thing("a", drift="warn"))
    assert report.results["Thing/a"].state is S.DRIFTED
    observed = rig.things.observed_specs

    report = await rig.converge(thing("a", drift="ignore"))
    assert actions(report) == {"Thing/a": "unchanged"}
    assert report.results["Thing/a"].state is S.IN_SYNC
    assert rig.things.observed_specs == observed  # let be, not looked at
    assert rig.things.target["a"]["value"] == "by hand"
    (last,) = rig.history("Thing/a")[-1:]
    assert (last.from_state, last.to_state, last.event) == (
        S.DRIFTED,
        S.IN_SYNC,
        Event.DRIFT_IGNORED,
    )
    assert json.loads(rig.inventory()["Thing/a"].policy or "{}")["drift"] == "ignore"
    # back to heal: the next pass checks it again and heals
    report = await rig.converge(thing("a", drift="heal"))
    assert actions(report) == {"Thing/a": "healed"}


async def test_preview_under_drift_ignore_shows_no_drift(rig: Rig) -> None:
    await rig.converge(thing("a", drift="ignore"))
    rig.things.target["a"]["value"] = "by hand"
    observed = rig.things.observed_specs
    store = SqliteStore(rig.state)
    try:
        engine = Engine(rig.registry, store)
        (same,) = await engine.preview(rig.desired(thing("a", drift="ignore")))
        (changed,) = await engine.preview(rig.desired(thing("a", "new", drift="ignore")))
    finally:
        store.close()
    assert (same.action, same.note) == ("none", "(drift not checked: policy drift: ignore)")
    assert rig.things.observed_specs == observed + 1  # only the changed spec was observed
    assert changed.action == "update"


async def test_ignore_fields_are_excluded_from_drift(rig: Rig) -> None:
    doc = thing("a", colour="red", ignoreFields=["/colour"])
    await rig.converge(doc)
    rig.things.target["a"]["colour"] = "green"
    report = await rig.converge(doc)
    assert actions(report) == {"Thing/a": "unchanged"}
    assert rig.things.target["a"]["colour"] == "green"
    rig.things.target["a"]["value"] = "by hand"
    report = await rig.converge(doc)
    assert actions(report) == {"Thing/a": "healed"}
    assert rig.things.target["a"] == {"value": "a", "colour": "red"}


async def test_spec_change_updates(rig: Rig) -> None:
    await rig.converge(thing("a", "one"))
    report = await rig.converge(thing("a", "two"))
    assert actions(report) == {"Thing/a": "updated"}
    assert rig.things.target["a"]["value"] == "two"
    assert rig.history("Thing/a")[len(CREATE_PATH)].event == Event.SPEC_CHANGED
    new_hash = rig.desired(thing("a", "two")).resources["Thing/a"].spec_hash
    assert rig.inventory()["Thing/a"].spec_hash == new_hash


# --- history, crash safety, intent ----------------------------------------------


async def test_transitions_are_recorded_in_order(rig: Rig) -> None:
    await rig.converge(thing("a"))
    history = rig.history("Thing/a")
    assert [t.to_state for t in history] == CREATE_PATH
    assert [t.from_state for t in history] == [None, *CREATE_PATH[:-1]]
    assert [t.event for t in history] == [
        "new",
        Event.START,
        Event.OBSERVED,
        Event.PLAN_CHANGED,
        Event.APPLIED,
        Event.VERIFIED,
    ]
    assert [t.seq for t in history] == sorted(t.seq for t in history)


async def _crash_during_apply(rig: Rig, write_first: bool) -> None:
    """Run a pass and kill it while the provider's apply for `a` is under way."""
    entered = asyncio.Event()

    async def hang(spec: ThingSpec) -> None:
        if write_first:
            rig.things.target[spec.key] = {"value": spec.value, "colour": spec.colour}
        entered.set()
        await asyncio.Event().wait()

    rig.things.hooks["a"] = hang
    desired = rig.desired(thing("a"), thing("b"), thing("c"))
    store = SqliteStore(rig.state)
    try:
        task = asyncio.create_task(Engine(rig.registry, store).converge(desired))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        store.close()
    del rig.things.hooks["a"]


async def test_crash_in_applying_resumes_from_detecting(rig: Rig) -> None:
    await _crash_during_apply(rig, write_first=False)
    record = rig.inventory()["Thing/a"]
    assert record.state is S.APPLYING
    assert record.created is True
    report = await rig.converge(thing("a"), thing("b"), thing("c"))
    assert actions(report)["Thing/a"] == "created"
    assert rig.things.target["a"] == {"value": "a", "colour": ""}
    history = rig.history("Thing/a")
    restart = next(i for i, t in enumerate(history) if t.event == Event.RESTART)
    assert (history[restart].from_state, history[restart].to_state) == (S.APPLYING, S.DETECTING)
    assert [t.to_state for t in history[restart:]] == CREATE_PATH[1:]


async def test_crash_after_the_write_still_owns_the_object(rig: Rig) -> None:
    await _crash_during_apply(rig, write_first=True)
    report = await rig.converge(thing("a"), thing("b"), thing("c"))
    assert report.results["Thing/a"].state is S.IN_SYNC
    assert rig.inventory()["Thing/a"].created is True
    # created by reconciler, so a prune deletes it instead of releasing it
    report = await rig.converge(thing("b"), thing("c"))
    assert actions(report)["Thing/a"] == "deleted"
    assert "a" not in rig.things.target


async def test_crash_while_pruning_resumes(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"), thing("c"))
    entered = asyncio.Event()

    async def hang(spec: ThingSpec) -> None:
        entered.set()
        await asyncio.Event().wait()

    rig.things.delete_hooks["a"] = hang
    desired = rig.desired(thing("b"), thing("c"))
    store = SqliteStore(rig.state)
    try:
        task = asyncio.create_task(Engine(rig.registry, store).converge(desired))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        store.close()
    del rig.things.delete_hooks["a"]
    assert rig.inventory()["Thing/a"].state is S.PRUNING
    report = await rig.converge(thing("b"), thing("c"))
    assert actions(report)["Thing/a"] == "deleted"
    assert "a" not in rig.things.target
    assert "Thing/a" not in rig.inventory()


async def test_crash_while_pruning_then_back_in_desired_state(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"), thing("c"))
    store = SqliteStore(rig.state)
    store.transition("Thing/a", S.IN_SYNC, S.PRUNING, Event.REMOVE)
    store.close()
    report = await rig.converge(thing("a"), thing("b"), thing("c"))
    assert report.results["Thing/a"].state is S.IN_SYNC
    assert rig.history("Thing/a")[-3].event == Event.RESTART


async def test_policy_change_alone_is_recorded(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"), thing("c"))
    report = await rig.converge(thing("a", prune=False), thing("b"), thing("c"))
    assert set(actions(report).values()) == {"unchanged"}
    assert json.loads(rig.inventory()["Thing/a"].policy or "{}")["prune"] is False
    report = await rig.converge(thing("b"), thing("c"))
    assert actions(report)["Thing/a"] == "released"
    assert "a" in rig.things.target


async def test_intent_is_recorded_before_create(rig: Rig) -> None:
    rows: list[tuple[Any, ...]] = []

    async def look(spec: ThingSpec) -> None:
        db = sqlite3.connect(f"file:{rig.state / DB_NAME}?mode=ro", uri=True)
        try:
            rows.extend(
                db.execute(
                    "SELECT r.created, r.spec, s.state FROM resources r "
                    "JOIN status s ON s.id = r.id WHERE r.id = ?",
                    (f"Thing/{spec.key}",),
                ).fetchall()
            )
        finally:
            db.close()

    rig.things.hooks["a"] = look
    report = await rig.converge(thing("a"))
    assert actions(report) == {"Thing/a": "created"}
    assert len(rows) == 1
    created, spec, state = rows[0]
    assert created == 1
    assert json.loads(spec) == {"key": "a", "value": "a", "colour": ""}
    assert state == S.APPLYING


async def test_intent_of_an_update_to_an_adopted_object(rig: Rig) -> None:
    rig.things.target["a"] = {"value": "old", "colour": ""}
    rows: list[tuple[Any, ...]] = []

    async def look(spec: ThingSpec) -> None:
        db = sqlite3.connect(f"file:{rig.state / DB_NAME}?mode=ro", uri=True)
        try:
            rows.extend(db.execute("SELECT created FROM resources WHERE id = 'Thing/a'"))
        finally:
            db.close()

    rig.things.hooks["a"] = look
    await rig.converge(thing("a"))
    assert rows == [(0,)]


# --- preview --------------------------------------------------------------------


async def test_preview_has_no_side_effects(rig: Rig) -> None:
    await rig.converge(thing("a"), thing("b"), thing("c"))
    rig.things.target["b"]["value"] = "by hand"
    desired = rig.desired(thing("a", "new"), thing("b"), thing("d"), thing("c"))
    history = rig.history()
    store = SqliteStore(rig.state)
    try:
        planned = await Engine(rig.registry, store).preview(desired)
    finally:
        store.close()
    assert {p.id: p.action for p in planned} == {
        "Thing/a": "update",
        "Thing/b": "drift",
        "Thing/c": "none",
        "Thing/d": "create",
    }
    assert rig.things.applied == ["a", "b", "c"]
    assert rig.history() == history


# --- the tables own the behaviour -------------------------------------------------


async def test_every_event_the_store_records_is_an_event_of_the_machine(rig: Rig) -> None:
    # new, start, a block, a failure and its retry, drift, heal, warn, suspend and
    # resume, a spec change and prunes (delete, release, a failed delete)
    rig.things.apply_errors["bad"] = [PermanentError("bad is broken")]
    await rig.converge(
        thing("a"),
        thing("bad"),
        thing("after", dependsOn=["Thing/bad"]),
        thing("w", drift="warn"),
        thing("s"),
        thing("gone"),
        thing("kept", prune=False),
        thing("stuck"),
        thing("x1"),
        thing("x2"),
        thing("x3"),
    )
    rig.things.target["a"]["value"] = "by hand"
    rig.things.target["w"]["value"] = "by hand"
    rig.things.delete_errors["stuck"] = [RuntimeError("stuck")]
    report = await rig.converge(
        thing("a"),
        thing("bad", "fixed"),
        thing("after", dependsOn=["Thing/bad"]),
        thing("w", drift="warn"),
        thing("s", suspend=True),
        thing("x1"),
        thing("x2"),
        thing("x3"),
    )
    assert report.results["Thing/stuck"].action == "failed"
    assert report.results["Thing/gone"].action == "deleted"
    assert report.results["Thing/kept"].action == "released"
    await rig.converge(
        thing("a"),
        thing("bad", "fixed"),
        thing("w", drift="warn"),
        thing("s"),
        allow_mass_prune=True,
    )
    recorded = {t.event for t in rig.history()}
    members = {str(e) for e in Event}
    assert recorded <= members, recorded - members
    assert {"new", "start", "dependency-not-ready", "heal", "drift", "suspend", "resume"} <= (
        recorded
    )
    assert {"spec-changed", "remove", "pruned", "error", "applied"} <= recorded


async def test_a_failed_prune_is_not_scheduled_for_a_retry(rig: Rig) -> None:
    # Pruning's action retries: False (fsm.ACTIONS): the next pass tries again
    await rig.converge(thing("a"), thing("b"), thing("c"))
    rig.things.delete_errors["c"] = [RuntimeError("disk on fire")]
    report = await rig.converge(thing("a"), thing("b"), retries=3)
    result = report.results["Thing/c"]
    assert (result.state, result.action, result.retry_in) == (S.FAILED, "failed", None)
    assert result.error == "RuntimeError: disk on fire"
    assert rig.things.deleted == ["c"]
    record = rig.inventory()["Thing/c"]
    assert (record.attempts, record.next_attempt) == (0, None)
    assert [t.event for t in rig.history("Thing/c")][-2:] == [Event.REMOVE, Event.ERROR]
    report = await rig.converge(thing("a"), thing("b"))
    assert report.results["Thing/c"].action == "deleted"
    assert "Thing/c" not in rig.inventory()


async def test_result_and_plan_actions_are_the_enums(rig: Rig) -> None:
    report = await rig.converge(thing("a"))
    assert report.results["Thing/a"].action is Outcome.CREATED
    assert json.dumps({"action": report.results["Thing/a"].action}) == '{"action": "created"}'
    store = SqliteStore(rig.state)
    try:
        planned = await Engine(rig.registry, store).preview(rig.desired(thing("a", "b")))
    finally:
        store.close()
    assert [p.action for p in planned] == [PlanAction.UPDATE]
    assert f"{planned[0].action}" == "update"

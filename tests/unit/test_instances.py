"""Bundle instances through the real engine and the real SQLite store: every
resource remembers the instance that made it (inventory, events, results,
preview), and removing an instance prunes exactly what it made, under the usual
guards. Desired states are built here with `instance` set on the resources, as
the bundle loader sets it (the e2e tests load real Bundle documents)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.daemon import Daemon, DaemonSettings
from reconciler.engine import Engine, MassPruneRefused, Planned, Report
from reconciler.fsm import State
from reconciler.model import DesiredState, Instance, Location, Policy, Resource
from reconciler.server import ServerSettings, start
from reconciler.store import OffLoopStore, SqliteStore
from tests.unit.test_engine import Doc, Rig, ThingSpec, actions, rig, thing

__all__ = ["rig"]  # the fixture, imported for pytest

S = State
A, B = "Bundle/team-a-web", "Bundle/team-b-web"


def instance(iid: str, source: str = "bundles/webapp", parent: str = "") -> Instance:
    return Instance(iid, source, Location("apps.yaml", 3), {"port": 8080}, parent)


def resource(doc: Doc, made_by: str) -> Resource:
    """The Resource the loader makes of a Thing document (spec hash: sha256 of the
    dumped spec, as the loader takes it)."""
    spec = ThingSpec.model_validate(doc["spec"])
    policy = Policy.model_validate(doc.get("policy", {}))
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32]
    name = doc["metadata"]["name"]
    return Resource("Thing", name, spec, policy, digest, Location("m.yaml", 1), {}, made_by)


def bundled(
    rig: Rig, made: Mapping[str, str], *docs: Doc, instances: tuple[str, ...] | None = None
) -> DesiredState:
    """The desired state of `docs`, each resource in `made` (name -> instance id)
    marked as made by that instance; `instances` lists the instances of the
    revision (default: every one named in `made`)."""
    resources = {}
    for doc in docs:
        res = resource(doc, made.get(doc["metadata"]["name"], ""))
        resources[res.id] = res
    dependencies = {rid: res.policy.depends_on for rid, res in resources.items()}
    ids = sorted(set(made.values())) if instances is None else instances
    revision = hashlib.sha256(repr(sorted(resources)).encode()).hexdigest()[:12]
    return DesiredState(revision, resources, dependencies, {iid: instance(iid) for iid in ids})


async def converge(rig: Rig, desired: DesiredState, **options: Any) -> Report:
    store = SqliteStore(rig.state)
    try:
        engine = Engine(rig.registry, store, **options)
        return await engine.converge(desired)
    finally:
        store.close()


async def preview(rig: Rig, desired: DesiredState) -> dict[str, Planned]:
    store = SqliteStore(rig.state)
    try:
        return {p.id: p for p in await Engine(rig.registry, store).preview(desired)}
    finally:
        store.close()


TWO_TEAMS = {"a1": A, "a2": A, "b1": B, "b2": B}
FLAT = [thing(f"k{i}") for i in range(4)]


def two_teams(rig: Rig, *extra: Doc) -> DesiredState:
    docs = [thing(n) for n in TWO_TEAMS]
    return bundled(rig, TWO_TEAMS, *docs, *FLAT, *extra)


def team_b_only(rig: Rig, instances: tuple[str, ...] = (B,)) -> DesiredState:
    made = {n: i for n, i in TWO_TEAMS.items() if i == B}
    return bundled(rig, made, *(thing(n) for n in made), *FLAT, instances=instances)


async def test_every_record_event_and_result_names_its_instance(rig: Rig) -> None:
    report = await converge(rig, two_teams(rig))
    assert set(actions(report).values()) == {"created"}
    assert report.results["Thing/a1"].instance == A
    assert report.results["Thing/k0"].instance == ""
    inventory = rig.inventory()
    assert {rid: r.instance for rid, r in inventory.items() if r.instance} == {
        "Thing/a1": A,
        "Thing/a2": A,
        "Thing/b1": B,
        "Thing/b2": B,
    }
    # from the very first event on, before any spec was recorded
    a1 = rig.history("Thing/a1")
    assert a1[0].event == "new"
    assert {t.instance for t in a1} == {A}
    assert {t.instance for t in rig.history("Thing/k0")} == {""}
    assert {t["instance"] for t in (t.to_json() for t in a1)} == {A}


async def test_preview_names_the_instance_of_every_line(rig: Rig) -> None:
    planned = await preview(rig, two_teams(rig))
    assert planned["Thing/a1"].action == "create"
    assert planned["Thing/a1"].instance == A
    assert planned["Thing/k0"].instance == ""
    await converge(rig, two_teams(rig))
    planned = await preview(rig, team_b_only(rig))
    # the prune lines come from the store: the instance is gone from the desired state
    assert {rid: (p.action, p.instance) for rid, p in planned.items() if p.action != "none"} == {
        "Thing/a1": ("delete", A),
        "Thing/a2": ("delete", A),
    }
    assert planned["Thing/a1"].note == (
        f"(created by reconciler, instance {A} removed: will delete)"
    )
    assert planned["Thing/b1"].instance == B


async def test_removing_an_instance_prunes_exactly_what_it_made(rig: Rig) -> None:
    await converge(rig, two_teams(rig))
    report = await converge(rig, team_b_only(rig))
    assert {rid: r.action for rid, r in report.results.items() if r.action != "unchanged"} == {
        "Thing/a1": "deleted",
        "Thing/a2": "deleted",
    }
    assert report.results["Thing/a1"].instance == A
    assert sorted(rig.things.deleted) == ["a1", "a2"]
    assert set(rig.things.target) == {"b1", "b2", "k0", "k1", "k2", "k3"}
    assert "Thing/a1" not in rig.inventory()
    # the record is gone; its prune events still say which instance made it and why
    pruned = [(t.event, t.reason, t.instance) for t in rig.history("Thing/a1")][-2:]
    assert pruned == [
        ("remove", f"removed from desired state: instance {A} removed", A),
        ("pruned", f"deleted (created by reconciler), instance {A} removed", A),
    ]
    pruned_of_a = sorted(t.id for t in rig.history() if t.instance == A and t.event == "pruned")
    assert pruned_of_a == ["Thing/a1", "Thing/a2"]


async def test_a_resource_an_instance_no_longer_makes_says_so(rig: Rig) -> None:
    await converge(rig, two_teams(rig))
    made = {"a1": A, "b1": B, "b2": B}
    kept = bundled(rig, made, *(thing(n) for n in made), *FLAT)
    report = await converge(rig, kept)
    assert report.results["Thing/a2"].action == "deleted"
    assert rig.history("Thing/a2")[-1].reason == (
        f"deleted (created by reconciler), no longer made by instance {A}"
    )


async def test_a_removed_instance_over_the_prune_share_is_refused(rig: Rig) -> None:
    """The share limit counts an instance's resources like any others: a removed
    instance that made most of the inventory is refused, and nothing is touched."""
    made = {f"x{i}": A for i in range(6)}
    await converge(rig, bundled(rig, made, *(thing(n) for n in made), thing("k0")))
    before = rig.inventory()
    with pytest.raises(MassPruneRefused, match="prune 6 of 7 managed resources"):
        await converge(rig, bundled(rig, {}, thing("k0"), instances=()))
    assert rig.things.deleted == []
    assert rig.inventory() == before
    report = await converge(rig, bundled(rig, {}, thing("k0"), instances=()), allow_mass_prune=True)
    assert sorted(rid for rid, r in report.results.items() if r.action == "deleted") == sorted(
        f"Thing/x{i}" for i in range(6)
    )


async def test_adopted_and_prune_false_members_of_a_removed_instance_are_released(
    rig: Rig,
) -> None:
    rig.things.target["a1"] = {"value": "a1", "colour": ""}  # there before: adopted
    docs = [thing("a1"), thing("a2", prune=False), thing("b1"), thing("b2"), *FLAT]
    await converge(rig, bundled(rig, {"a1": A, "a2": A, "b1": B, "b2": B}, *docs))
    assert rig.inventory()["Thing/a1"].created is False
    planned = await preview(rig, team_b_only(rig))
    assert planned["Thing/a1"].action == "release"
    assert planned["Thing/a1"].note == (
        f"(adopted or prune: false, instance {A} removed: will release, object kept)"
    )
    report = await converge(rig, team_b_only(rig))
    assert (report.results["Thing/a1"].action, report.results["Thing/a2"].action) == (
        "released",
        "released",
    )
    assert rig.things.deleted == []
    assert {"a1", "a2"} <= set(rig.things.target)
    assert rig.history("Thing/a1")[-1].reason == (
        f"released (adopted, or prune: false), instance {A} removed"
    )


async def test_moving_a_resource_between_instances_is_recorded_without_an_apply(
    rig: Rig,
) -> None:
    """Same spec, another instance (a bundle inlined, or renamed): a change the
    daemon picks up, recorded on a clean pass, with nothing applied or pruned."""
    await converge(rig, two_teams(rig))
    applied = list(rig.things.applied)
    moved = {**TWO_TEAMS, "a1": B}
    desired = bundled(rig, moved, *(thing(n) for n in moved), *FLAT)
    store = SqliteStore(rig.state)
    try:
        assert Engine(rig.registry, store).changed(desired) == {"Thing/a1"}
    finally:
        store.close()
    report = await converge(rig, desired)
    assert set(actions(report).values()) == {"unchanged"}
    assert rig.things.applied == applied
    assert rig.inventory()["Thing/a1"].instance == B
    store = SqliteStore(rig.state)
    try:
        assert Engine(rig.registry, store).changed(desired) == set()
    finally:
        store.close()


# --- the daemon's API, served for real ----------------------------------------------


async def test_the_api_shows_each_resource_instance_and_the_revision_instances(
    rig: Rig,
) -> None:
    """The daemon's views over a real store, served by the real server on
    127.0.0.1: resources name their instance, the status lists the instances of
    the enforced revision, events (a removed instance's prunes among them) too."""
    await converge(rig, two_teams(rig))
    inner = "Bundle/team-b-web-db"
    made = {"b1": B, "b2": inner}
    desired = bundled(rig, made, *(thing(n) for n in made), *FLAT)
    desired = dataclasses.replace(
        desired,
        instances={
            B: instance(B),
            inner: Instance(
                inner,
                "https://***@git.example/db.git//pg",
                Location("bundles/webapp/db.yaml", 1),
                {},
                B,
                "v1.2",
                "0123abcd" * 5,
            ),
        },
    )
    await converge(rig, desired)
    daemon = Daemon(DaemonSettings(repo=str(rig.config), state_dir=rig.state, roots=()))
    daemon.store = OffLoopStore(SqliteStore(rig.state))
    daemon.desired = desired
    server = await start(daemon, ServerSettings(port=0))
    base = f"http://127.0.0.1:{server.port}/api/v1"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{base}/status") as response:
                status = await response.json()
            async with http.get(f"{base}/resources") as response:
                resources = (await response.json())["resources"]
            async with http.get(f"{base}/resources/Thing/b2") as response:
                b2 = await response.json()
            async with http.get(f"{base}/events", params={"instance": A}) as response:
                of_a = (await response.json())["events"]
        # `reconciler status` on the same server (urllib blocks: run it off the loop)
        shown = await asyncio.to_thread(
            CliRunner().invoke, cli, ["status", "--url", f"http://127.0.0.1:{server.port}"]
        )
    finally:
        await server.stop()
        await daemon.store.close()
    assert shown.exit_code == 0, shown.output
    header, table = shown.output.split("\n\n", 1)
    assert (
        f"instances  2: {B} (bundles/webapp, 1), "
        f"{inner} (https://***@git.example/db.git//pg@0123abcd0123, 1)"
    ) in header
    rows = [line.split() for line in table.splitlines()]
    assert [row[:3] for row in rows] == [
        ["INSTANCE", "RESOURCE", "STATE"],
        *(["-", f"Thing/k{i}", "InSync"] for i in range(4)),  # flat first
        [B, "Thing/b1", "InSync"],
        [inner, "Thing/b2", "InSync"],
    ]
    assert status["instances"] == [
        {
            "id": B,
            "source": "bundles/webapp",
            "location": "apps.yaml:3",
            "parent": None,
            "ref": None,
            "commit": None,
            "resources": 1,
        },
        {
            "id": inner,
            "source": "https://***@git.example/db.git//pg",
            "location": "bundles/webapp/db.yaml:1",
            "parent": B,
            "ref": "v1.2",
            "commit": "0123abcd" * 5,
            "resources": 1,
        },
    ]
    assert {r["id"]: r["instance"] for r in resources} == {
        "Thing/b1": B,
        "Thing/b2": inner,
        **{f"Thing/k{i}": None for i in range(4)},
    }
    assert b2["instance"] == inner
    # team A's resources are gone from the inventory; their events remain, named
    assert {e["id"] for e in of_a} == {"Thing/a1", "Thing/a2"}
    assert {e["instance"] for e in of_a} == {A}
    assert [e["event"] for e in of_a if e["id"] == "Thing/a1"][-2:] == ["remove", "pruned"]


# --- reconciler events ------------------------------------------------------------


async def test_events_cli_shows_and_filters_by_instance(rig: Rig) -> None:
    await converge(rig, two_teams(rig))
    await converge(rig, team_b_only(rig))
    state = ["events", "--state-dir", str(rig.state), "--limit", "1000"]
    table = CliRunner().invoke(cli, state)
    assert table.exit_code == 0, table.output
    rows = [line.split() for line in table.output.splitlines()]
    assert rows[0] == ["TIME", "RESOURCE", "INSTANCE", "TRANSITION", "EVENT", "REASON"]
    by_id = {row[2]: row[3] for row in rows[1:]}
    assert (by_id["Thing/a1"], by_id["Thing/b1"], by_id["Thing/k0"]) == (A, B, "-")
    only_a = CliRunner().invoke(cli, [*state, "--instance", A, "--json"])
    assert only_a.exit_code == 0, only_a.output
    found = json.loads(only_a.output)["events"]
    assert {e["id"] for e in found} == {"Thing/a1", "Thing/a2"}
    assert {e["instance"] for e in found} == {A}
    assert found[-1]["reason"].endswith(f"instance {A} removed")
    bad = CliRunner().invoke(cli, [*state, "--instance", "team-a"])
    assert bad.exit_code == 1
    assert "--instance: expected Bundle/name such as Bundle/team-a-web, found 'team-a'" in (
        bad.output
    )


async def test_events_table_of_a_flat_tree_has_no_instance_column(rig: Rig) -> None:
    await converge(rig, bundled(rig, {}, thing("k0"), instances=()))
    table = CliRunner().invoke(cli, ["events", "--state-dir", str(rig.state)])
    assert table.output.splitlines()[0].split() == [
        "TIME",
        "RESOURCE",
        "TRANSITION",
        "EVENT",
        "REASON",
    ]

"""Refresh on change: a resource that `refreshes` on another (a Command's
`refreshOn`) acts after that one is applied — created, updated or healed — as a
change, not as drift, and only then; through the real engine, store and File
provider."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from reconciler.engine import Engine, Report
from reconciler.fsm import Event
from reconciler.manifests import load
from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    Observed,
    Plan,
    Provider,
    ProviderSettings,
    ResourceId,
)
from reconciler.providers.files import FileProvider
from reconciler.registry import Registry
from reconciler.store import SqliteStore


class RestartSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    service: str
    refresh_on: tuple[str, ...] = Field(default=(), alias="refreshOn")


class Restarter(Provider[RestartSpec]):
    """Restarts a 'service' (appends to a list) when a resource it refreshes on
    changed since its last restart: what a Command with refreshOn does."""

    kind = "Restart"
    Spec = RestartSpec

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self.seen: dict[str, dict[str, str | None]] = {}
        self.restarts: list[str] = []

    def references(self, spec: RestartSpec) -> Sequence[tuple[tuple[str | int, ...], ResourceId]]:
        return [(("refreshOn", i), rid) for i, rid in enumerate(spec.refresh_on)]

    def refreshes(self, spec: RestartSpec) -> Sequence[ResourceId]:
        return spec.refresh_on

    def _tokens(self, spec: RestartSpec) -> dict[str, str | None]:
        return {rid: self.settings.changes.token(rid) for rid in spec.refresh_on}

    async def observe_many(self, specs: Sequence[RestartSpec]) -> list[Observed | None]:
        return [
            None if s.service not in self.seen else {"tokens": self.seen[s.service]} for s in specs
        ]

    def plan(self, spec: RestartSpec, observed: Observed | None) -> Plan:
        if observed is None:
            return Plan(Action.CREATE, (Change("/service", None, spec.service),))
        now = self._tokens(spec)
        stale = [
            rid
            for rid, token in now.items()
            if token is not None and observed["tokens"].get(rid) not in (None, token)
        ]
        if stale:
            return Plan(
                Action.UPDATE, tuple(Change(f"/refreshOn/{r}", "old", "new") for r in stale)
            )
        return NO_CHANGES

    async def apply(self, spec: RestartSpec, plan: Plan) -> str:
        self.restarts.append(spec.service)
        self.seen[spec.service] = self._tokens(spec)
        return f"restarted {spec.service}"

    async def delete(self, spec: RestartSpec) -> None:
        self.seen.pop(spec.service, None)


HEAD = "apiVersion: reconciler/v1\n"


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.config = tmp_path / "config"
        self.config.mkdir()
        self.state = tmp_path / "state"
        settings = ProviderSettings(roots=(str(self.root),))
        self.restarter = Restarter(settings)
        self.registry = Registry([FileProvider(settings), self.restarter])

    def write(self, content: str, policy: str = "") -> None:
        (self.config / "m.yaml").write_text(
            HEAD + "kind: File\nmetadata: {name: conf}\n"
            f"spec: {{path: {self.root}/app.conf, content: {content!r}}}\n{policy}---\n"
            + HEAD
            + "kind: Restart\nmetadata: {name: app}\n"
            "spec: {service: app, refreshOn: [File/conf]}\n"
        )

    async def converge(self, **kwargs: Any) -> Report:
        desired = load(self.config, self.registry)
        store = SqliteStore(self.state)
        try:
            return await Engine(self.registry, store).converge(desired, **kwargs)
        finally:
            store.close()

    def reasons(self, rid: str) -> list[str | None]:
        store = SqliteStore(self.state, readonly=True)
        try:
            return [t.reason for t in store.history(rid, limit=1000)]
        finally:
            store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


async def test_a_refresh_follows_an_apply_only(rig: Rig) -> None:
    rig.write("a\n")
    report = await rig.converge()
    assert report.results["Restart/app"].action == "created"
    assert rig.restarter.restarts == ["app"]
    assert "restarted app" in rig.reasons("Restart/app")  # apply's note is the event reason

    report = await rig.converge()  # nothing changed: no restart
    assert {r.action for r in report.results.values()} == {"unchanged"}
    assert rig.restarter.restarts == ["app"]

    rig.write("b\n")  # the config file's spec changes: a targeted pass of the file alone
    report = await rig.converge(only={"File/conf"})
    assert report.results["File/conf"].action == "updated"
    assert report.results["Restart/app"].action == "updated"  # a change, not drift
    assert rig.restarter.restarts == ["app", "app"]

    (rig.root / "app.conf").write_text("by hand\n")  # drift healed by a watch pass
    report = await rig.converge(only={"File/conf"}, trigger=Event.WATCH)
    assert report.results["File/conf"].action == "healed"
    assert report.results["Restart/app"].action == "updated"
    assert rig.restarter.restarts == ["app", "app", "app"]

    rig.write("c\n")  # a full pass: the refresh comes in the same pass, as a change
    report = await rig.converge()
    assert report.results["File/conf"].action == "updated"
    assert report.results["Restart/app"].action == "updated"
    assert rig.restarter.restarts == ["app"] * 4

    report = await rig.converge()  # and then it rests
    assert {r.action for r in report.results.values()} == {"unchanged"}
    assert rig.restarter.restarts == ["app"] * 4


async def test_a_resume_or_a_restart_is_no_change(rig: Rig) -> None:
    rig.write("a\n")
    await rig.converge()
    assert rig.restarter.restarts == ["app"]
    rig.write("a\n", policy="policy: {suspend: true}\n")
    await rig.converge()
    rig.write("a\n")  # resumed: observed again, found in sync, not applied
    report = await rig.converge()
    assert report.results["File/conf"].action == "unchanged"
    assert report.results["Restart/app"].action == "unchanged"
    assert rig.restarter.restarts == ["app"]
    # a new engine (a restart) reads the same token from the store's history
    report = await rig.converge()
    assert {r.action for r in report.results.values()} == {"unchanged"}
    assert rig.restarter.restarts == ["app"]


async def test_a_refresh_target_must_exist(rig: Rig) -> None:
    from reconciler.manifests import ManifestError

    (rig.config / "m.yaml").write_text(
        HEAD + "kind: Restart\nmetadata: {name: app}\nspec: {service: app, refreshOn: [File/x]}\n"
    )
    with pytest.raises(ManifestError, match=r"spec.refreshOn\[0\]: names File/x, which is not"):
        load(rig.config, rig.registry)

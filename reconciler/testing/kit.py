"""The conformance kit's pieces: what a provider author describes (`Case`,
`Drift`, `Invalid`) and the `Harness` that drives a provider the way the engine
does.

A `Case` says how to build the provider, how to make valid specs (and a changed
variant of one), how to change the real object out of band, how to check and
find the real object, how to snapshot the real system (to prove that observe and
plan change nothing), which specs must be rejected and, optionally, how to put a
secret into a spec. The defaults are the strict contract; a kind that differs by
its nature says so in the case, each difference named and documented: a plan
other than UPDATE for a changed spec (`update_action`), no absent state
(`absent_is_none`), updates that only add (`updates_replace`), and scenarios that
do not apply at all (`skip`, each with its reason, reported as a pytest skip).
Every callable of a case receives the `Harness` first: its
`root` (a fresh directory, the only allowed root), `token` (unique per test, for
names on a shared server) and `target` (the value of the pytest fixture the case
names, such as a server's address). A callable may be a coroutine function.

The harness loads specs through the real loader (`reconciler.manifests.load` on
a config tree in a temporary directory), so a spec is validated, prepared and
hashed as in production and an invalid one is reported as `file:line: field:
message`; it binds the providers (`Provider.bind`) as the engine does before a
pass, and it observes and applies through `observe_many` and `apply_many`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from reconciler.manifests import EMPTY_MARK, Issue, ManifestError, load
from reconciler.model import (
    API_VERSION,
    PREPARED,
    Action,
    DesiredState,
    Plan,
    Provider,
    ProviderSettings,
    ResourceId,
    resource_id,
)
from reconciler.registry import Registry

__all__ = [
    "Case",
    "Drift",
    "Harness",
    "Invalid",
    "SpecData",
    "fields",
    "tree_snapshot",
]

SpecData = dict[str, Any]
"""A spec as a user writes it under `spec:` (before validation)."""

MANIFEST = "kit.yaml"
"""The manifest file the harness writes into its config tree."""


def tree_snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `root` (itself included, symlinks not followed): type,
    mode, owner, size, mtime, ctime and content (file bytes, link target)."""
    snapshot: dict[str, tuple[Any, ...]] = {}

    def visit(path: str) -> None:
        st = os.lstat(path)
        payload: Any = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                payload = handle.read()
        elif stat.S_ISLNK(st.st_mode):
            payload = os.readlink(path)
        snapshot[os.path.relpath(path, root)] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            payload,
        )
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name))

    visit(str(root))
    return snapshot


def _root_snapshot(h: Harness) -> Any:
    return tree_snapshot(h.root)


def fields(plan: Plan) -> set[str]:
    """The JSON pointers a plan names."""
    return {change.field for change in plan.changes}


@dataclass(frozen=True)
class Drift:
    """One out-of-band change of a real object (`make(h, data)`, data being the
    spec it was made from) and the field a plan must then name."""

    name: str
    field: str
    make: Callable[[Harness, SpecData], Awaitable[None] | None]


@dataclass(frozen=True)
class Invalid:
    """A spec the loader must reject; `field`, when given, is the field an error
    must name (`spec.path`, `spec.vars.db`)."""

    name: str
    data: Callable[[Harness], SpecData]
    field: str | None = None


@dataclass(frozen=True)
class Case:
    """One provider, described for the conformance scenarios."""

    provider: Callable[[ProviderSettings], Provider[Any]]
    """The provider class (or a factory taking the settings)."""
    spec: Callable[[Harness, int], SpecData]
    """The n-th valid spec: different n, different objects whose observations differ."""
    changed: Callable[[SpecData], SpecData]
    """A different valid spec for the same object (an update)."""
    changed_fields: frozenset[str]
    """The fields an update from `spec` to `changed` must name."""
    check: Callable[[Harness, SpecData], Awaitable[None] | None]
    """Assert that the real object matches the spec."""
    exists: Callable[[Harness, SpecData], Awaitable[bool] | bool]
    """Whether the real object exists, looked at without the provider."""
    drifts: tuple[Drift, ...]
    """At least one; the first is also used by the batch and watch scenarios, so it
    must be repeatable (another edit of the same object)."""
    invalid: tuple[Invalid, ...] = ()
    snapshot: Callable[[Harness], Awaitable[Any] | Any] = _root_snapshot
    """The state of the real system, compared (==) to prove a call changed nothing.
    The default is every entry under the root; a remote target snapshots its server."""
    secret: Callable[[Harness, Mapping[str, Any]], SpecData] | None = None
    """A valid spec holding the given secret reference (`{valueFrom: {env: X}}`)
    where a secret goes; None when the kind takes no secrets."""
    documents: Callable[[Harness], Sequence[Mapping[str, Any]]] | None = None
    """Other manifests loaded beside each spec, whole documents (a Connection)."""
    companions: tuple[Callable[[ProviderSettings], Provider[Any]], ...] = ()
    """Other providers those documents need (the Connection provider)."""
    fixture: str | None = None
    """A pytest fixture whose value becomes `Harness.target` (a server)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of the providers' `ProviderSettings` besides `roots` and
    `state_dir` (which they may override), for example `{"allow_commands": True}`."""
    setup: Callable[[Harness], Awaitable[None] | None] | None = None
    """Called at the start of each scenario but the invalid-spec one, in its event
    loop: make what the specs refer to but the provider does not manage (a
    grantee role, a table)."""
    cleanup: Callable[[Harness], Awaitable[None] | None] | None = None
    """Called at the end of each scenario, in its event loop: close what the
    provider opened in that loop (client pools), remove what it made on a shared
    server."""
    skip: Mapping[str, str] = field(default_factory=dict)
    """Scenarios that do not apply to the kind by its nature: the scenario's test
    name (`test_delete`) to the reason, reported as that test's skip. Skipping
    `test_delete` also says that delete does not remove the object: the prune and
    secret scenarios then require only that delete of the stored spec succeeds."""
    absent_is_none: bool = True
    """Whether observe answers None for an object that was never made. False for a
    kind without an absent state (a Command's observation says whether it must
    run, before its first run too): the scenarios then require that what observe
    answers for such an object plans a CREATE."""
    update_action: Action = Action.UPDATE
    """The action of the plan of `changed` for an object made from `spec` (a
    changed Command is a new run: CREATE)."""
    updates_replace: bool = True
    """Whether, once `changed` is applied, the original spec plans a change again
    (a field holds one value). False for a kind whose updates only add (a grant's
    privileges are granted, never revoked by an update)."""
    marks: tuple[pytest.MarkDecorator, ...] = ()
    """Marks of every test of the case, for example a skipif."""
    name: str | None = None
    """The test id; default: the provider's kind."""
    many: int = 9
    """Objects in the batch scenario."""
    timeout: float = 30.0
    """Seconds each scenario may take."""

    def __post_init__(self) -> None:
        for scenario, reason in self.skip.items():
            if not scenario.startswith("test_") or not str(reason).strip():
                raise ValueError(
                    f"{self.kind}: skip maps a scenario's test name (test_delete) to the "
                    f"reason it does not apply; found {scenario!r}: {reason!r}"
                )
        if self.update_action not in (Action.CREATE, Action.UPDATE):
            raise ValueError(
                f"{self.kind}: update_action is CREATE or UPDATE, found {self.update_action}"
            )

    @property
    def kind(self) -> str:
        return self.name or str(getattr(self.provider, "kind", "provider"))

    @property
    def delete_removes(self) -> bool:
        """Whether delete removes the object (see `skip`)."""
        return "test_delete" not in self.skip

    def __str__(self) -> str:
        return self.kind


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Harness:
    """One case bound to a fresh temporary directory: the provider, its settings
    (the directory's `root` as the only root, `state` as the state directory,
    and the case's `settings`), and its calls as the engine makes them."""

    def __init__(self, case: Case, tmp: Path, target: Any = None) -> None:
        self.case = case
        self.tmp = tmp
        self.target = target
        self.token = secrets.token_hex(4)
        self.root = tmp / "root"
        self.config = tmp / "config"
        self.state = tmp / "state"
        for directory in (self.root, self.config, self.state):
            directory.mkdir(exist_ok=True)
        arguments: dict[str, Any] = {"roots": (str(self.root),), "state_dir": str(self.state)}
        self.settings = ProviderSettings(**(arguments | dict(case.settings)))
        self.provider = case.provider(self.settings)
        companions = [make(self.settings) for make in case.companions]
        self.registry = Registry([self.provider, *companions])
        self.kind = self.provider.kind

    # loading

    def rid(self, n: int = 0) -> ResourceId:
        return resource_id(self.kind, f"kit-{n}")

    def write(self, specs: Mapping[int, SpecData]) -> int:
        """Write the manifest of these specs (and the case's other documents);
        returns the line where the last document starts."""
        documents = list(self.case.documents(self) if self.case.documents else ())
        documents += [
            {
                "apiVersion": API_VERSION,
                "kind": self.kind,
                "metadata": {"name": f"kit-{n}"},
                "spec": data,
            }
            for n, data in specs.items()
        ]
        text, line = "", 1
        for document in documents:
            line = text.count("\n") + 1
            text += "---\n" + yaml.safe_dump(dict(document), sort_keys=False, width=1 << 30)
        if not documents:  # every object left the manifests: an empty tree on purpose
            text = EMPTY_MARK + "\n"
        (self.config / MANIFEST).write_text(text)
        return line

    def desired(self, specs: Mapping[int, SpecData]) -> DesiredState:
        """Load these specs through the real loader and bind the providers to the
        result, as the engine does before a pass; raises ManifestError."""
        self.write(specs)
        desired = load(self.config, self.registry)
        for provider in self.registry.values():
            provider.bind(
                {rid: r.spec for rid, r in desired.resources.items() if r.kind == provider.kind}
            )
        return desired

    def load(self, specs: Mapping[int, SpecData]) -> dict[int, BaseModel]:
        """The prepared specs, by n."""
        try:
            desired = self.desired(specs)
        except ManifestError as exc:
            raise AssertionError(f"the case's spec was rejected: {exc}") from None
        return {n: desired.resources[self.rid(n)].spec for n in specs}

    def parse(self, data: SpecData, n: int = 0) -> BaseModel:
        """One spec, loaded alone (with the case's other documents)."""
        return self.load({n: data})[n]

    def spec(self, n: int = 0) -> tuple[SpecData, BaseModel]:
        data = self.case.spec(self, n)
        return data, self.parse(data, n)

    def reject(self, data: SpecData) -> list[Issue]:
        """The issues the loader reports for a spec that must be invalid, checked
        to be at the spec's document in the manifest and to name a spec field."""
        line = self.write({0: data})
        try:
            load(self.config, self.registry)
        except ManifestError as exc:
            issues = exc.issues
        else:
            raise AssertionError(f"{self.kind} accepted an invalid spec: {data!r}")
        ours = [
            i
            for i in issues
            if i.file == MANIFEST and i.line is not None and i.line >= line and i.field
        ]
        assert ours, f"no issue names a field of the spec's document (line {line}+): {issues}"
        for issue in ours:
            assert issue.field.startswith("spec"), f"not an error of the spec: {issue}"
        return ours

    @staticmethod
    def stored(spec: BaseModel) -> str:
        """The spec as the state store keeps it."""
        return spec.model_dump_json(by_alias=True)

    def restore(self, stored: str) -> BaseModel:
        """The spec read back from the store, as delete (prune) receives it."""
        return self.provider.Spec.model_validate_json(stored, context=PREPARED)

    @contextlib.contextmanager
    def secret_env(self, value: str) -> Iterator[str]:
        """An environment variable holding `value` while the block runs; yields its name."""
        name = f"RECONCILER_KIT_SECRET_{self.token.upper()}"
        os.environ[name] = value
        try:
            yield name
        finally:
            os.environ.pop(name, None)

    # the real system, through the case

    async def check(self, data: SpecData) -> None:
        await _call(self.case.check, self, data)

    async def exists(self, data: SpecData) -> bool:
        return bool(await _call(self.case.exists, self, data))

    async def drift(self, drift: Drift, data: SpecData) -> None:
        await _call(drift.make, self, data)

    async def snapshot(self) -> Any:
        return await _call(self.case.snapshot, self)

    async def setup(self) -> None:
        if self.case.setup is not None:
            await _call(self.case.setup, self)

    async def cleanup(self) -> None:
        if self.case.cleanup is not None:
            await _call(self.case.cleanup, self)

    # the provider, as the engine calls it

    async def observe(self, spec: BaseModel) -> Any:
        observed = await self.provider.observe_many([spec])
        assert len(observed) == 1, f"observe_many of one spec answered {len(observed)} entries"
        return observed[0]

    async def plan(self, spec: BaseModel) -> Plan:
        return self.provider.plan(spec, await self.observe(spec))

    async def apply(self, spec: BaseModel, plan: Plan) -> str | None:
        """One item through `apply_many`; raises what the item failed with."""
        results = await self.apply_many([(spec, plan)])
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def apply_many(
        self, items: Sequence[tuple[BaseModel, Plan]]
    ) -> list[BaseException | str | None]:
        results = list(await self.provider.apply_many(items))
        assert len(results) == len(items), (
            f"apply_many of {len(items)} items answered {len(results)} results"
        )
        for result in results:
            assert result is None or isinstance(result, BaseException | str), (
                f"apply_many answered {result!r}: expected None, a note or an exception"
            )
        return results

    async def converge(self, spec: BaseModel) -> Plan:
        """Observe, plan, apply when needed, then verify that the plan is empty;
        returns the plan that was applied."""
        plan = await self.plan(spec)
        if not plan.empty:
            await self.apply(spec, plan)
        after = await self.plan(spec)
        assert after.empty, f"{self.kind} did not converge; still planned: {after}"
        return plan

"""Records that flow between the layers, the provider contract and its errors.

Providers depend on this module alone, the loader produces its records, the
engine consumes them. Everything that crosses a layer boundary is immutable. It
imports only the modules below it, `errors` (the error taxonomy), `secrets`
(Sensitive, SecretSources, SecretRef, reading references) and `shared` (the
Connections and Changes tables of ProviderSettings), and re-exports their names,
so `from reconciler.model import Sensitive` keeps working.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

# The errors, the secrets and the shared tables live in modules below this one; their
# names are re-exported here, where providers have always found them.
from reconciler.errors import PermanentError as PermanentError
from reconciler.errors import ProviderError as ProviderError
from reconciler.errors import SpecError as SpecError
from reconciler.errors import TemporaryError as TemporaryError
from reconciler.secrets import MAX_SECRET_FILE as MAX_SECRET_FILE
from reconciler.secrets import PREPARED as PREPARED
from reconciler.secrets import PROCESS_DIGEST_KEY as PROCESS_DIGEST_KEY
from reconciler.secrets import SECRET_PIECE as SECRET_PIECE
from reconciler.secrets import SENSITIVE as SENSITIVE
from reconciler.secrets import UNREAD_SECRET as UNREAD_SECRET
from reconciler.secrets import WITHHELD_MESSAGE as WITHHELD_MESSAGE
from reconciler.secrets import SecretRef as SecretRef
from reconciler.secrets import SecretSources as SecretSources
from reconciler.secrets import Sensitive as Sensitive
from reconciler.secrets import SensitiveStr as SensitiveStr
from reconciler.secrets import is_prepared as is_prepared
from reconciler.secrets import is_secret_ref as is_secret_ref
from reconciler.secrets import keyed, read_secret
from reconciler.secrets import mask as mask
from reconciler.secrets import quotes_a_secret as quotes_a_secret
from reconciler.shared import Changes as Changes
from reconciler.shared import Connections as Connections
from reconciler.shared import ConnectionT as ConnectionT
from reconciler.shared import RunRecords as RunRecords

API_VERSION = "reconciler/v1"
CONNECTION_KIND = "Connection"

ResourceId = str

WATCHING: ResourceId = "\x00watching"
"""What a `Provider.watch` stream may yield, once, when its watch is in place: the
daemon keeps the stream it replaces running until then and 0.2 s more, so that a
change made while a watch restarts is still seen; a stream should report a change
within 0.1 s (decision 0127)."""
"""`Kind/name`, unique in a desired state."""

Observed = Mapping[str, Any]
"""What a provider saw of one object; `None` stands for absent."""


def resource_id(kind: str, name: str) -> ResourceId:
    return f"{kind}/{name}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from `30`, `30s`, `5m`, `1h`, `250ms`; raises ValueError otherwise
    (whatever `value` is: it comes from a manifest)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as 30s or 5m, found {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"expected a duration such as 30s or 5m, found {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not seconds > 0 or seconds == float("inf"):  # NaN compares false
        raise ValueError(f"expected a positive duration, found {value!r}")
    return seconds


def _resource_ids(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        if item.count("/") != 1 or not all(item.split("/")):
            raise ValueError(f"expected a resource id Kind/name, found {item!r}")
    return value


def _json_pointers(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        if not item.startswith("/"):
            raise ValueError(f"expected a JSON pointer such as /mode, found {item!r}")
    return value


ResourceIds = Annotated[tuple[str, ...], AfterValidator(_resource_ids)]
"""A list of resource ids (`Kind/name`) in a spec or policy."""
JsonPointers = Annotated[tuple[str, ...], AfterValidator(_json_pointers)]
"""A list of JSON pointers (`/a/b`) in a spec or policy."""


class Policy(BaseModel):
    """Engine knobs of one resource (`policy:` in a manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    depends_on: ResourceIds = Field(default=(), alias="dependsOn")
    drift: Literal["heal", "warn", "ignore"] = "heal"
    prune: bool = True
    suspend: bool = False
    resync: float = 300.0
    ignore_fields: JsonPointers = Field(default=(), alias="ignoreFields")

    @field_validator("resync", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class Location:
    """Where a document came from: file relative to the config root, 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def __reduce__(self) -> tuple[type[Location], tuple[str, int]]:
        return (Location, (self.file, self.line))  # pickles far faster than the default


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    name: str
    spec: BaseModel
    policy: Policy
    spec_hash: str
    location: Location
    labels: Mapping[str, str] = field(default_factory=dict)
    instance: str = ""
    """The id of the Bundle instance that made this resource (`Bundle/team-a-web`);
    empty for a resource written out in the tree itself."""

    @property
    def id(self) -> ResourceId:
        return resource_id(self.kind, self.name)

    def __reduce__(self) -> tuple[type[Resource], tuple[Any, ...]]:
        fields = (self.kind, self.name, self.spec, self.policy, self.spec_hash, self.location)
        return (Resource, (*fields, self.labels, self.instance))


BUNDLE_KIND = "Bundle"
"""The kind of the documents that instantiate a bundle (reconciler.bundles)."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One instantiation of a bundle (a `Bundle` document), with where it came from."""

    id: str
    """`Bundle/<name>`, the name after the prefixes of the instances around it."""
    source: str
    """The bundle's directory in the tree (`bundles/webapp`), or `repo//path` for a
    remote bundle."""
    location: Location
    """The `Bundle` document."""
    values: Mapping[str, Any]
    """The parameters as the bundle received them, defaults filled in (plain JSON;
    a secret parameter holds its reference, never the secret)."""
    parent: str = ""
    """The instance whose bundle declared this one; empty at the top of the tree."""
    ref: str = ""
    """A remote bundle's ref as written (branch, tag or commit)."""
    commit: str = ""
    """The commit a remote bundle's ref resolved to when the revision was loaded."""


SHARD_KIND = "Shard"
"""The kind of the documents that declare a shard (reconciler.shards): not a resource."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term of a shard's label selector, as Kubernetes has them: `operator` is
    In, NotIn, Exists or DoesNotExist (a matchLabels entry is In with one value)."""

    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Shard:
    """A `Shard` document: the resources whose labels match every requirement."""

    name: str
    location: Location
    requirements: tuple[Requirement, ...]


@dataclass(frozen=True, slots=True)
class DesiredState:
    """A validated revision: every resource and its dependency edges."""

    revision: str
    resources: Mapping[ResourceId, Resource]
    dependencies: Mapping[ResourceId, tuple[ResourceId, ...]]
    instances: Mapping[str, Instance] = field(default_factory=dict)
    """The bundle instances of the revision, by id (see `Resource.instance`)."""
    digest: str = ""
    """The SHA-256 of the config tree as the loader read it ("" when not loaded from
    a tree); `revision` is its first 12 digits unless a source names it."""
    cacheable: bool = True
    """False when the revision rests on more than its files (resolved secrets, a
    branch-following remote bundle): nothing made of it may be kept between runs."""
    shards: Mapping[str, Shard] = field(default_factory=dict)
    """The shards the revision declares, by name (reconciler.shards)."""
    shard: str = ""
    """The shard this state was selected for ("" for the whole revision)."""
    elsewhere: Mapping[ResourceId, tuple[str, ...]] = field(default_factory=dict)
    """In a shard's selection: the revision's resources it does not enforce, each
    with the shards that claim it (none: unclaimed; two or more: a conflict)."""


class Action(StrEnum):
    NONE = "none"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs; `field` is a JSON pointer into the spec.

    A sensitive change (see `Change.masked`) carries SENSITIVE in place of both
    values, so no renderer of a plan can show a secret, whether it knows about
    secrets or not."""

    field: str
    before: Any
    after: Any
    sensitive: bool = False

    @classmethod
    def masked(cls, field: str, *, absent: bool = False) -> Change:
        """A change of a field whose values are secret: `before` is None when the
        object is `absent` (a create), else SENSITIVE; `after` is SENSITIVE."""
        return cls(field, None if absent else SENSITIVE, SENSITIVE, sensitive=True)


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    changes: tuple[Change, ...] = ()

    @property
    def empty(self) -> bool:
        return self.action is Action.NONE

    def without(self, pointers: Sequence[str]) -> Plan:
        """The plan minus changes under the given JSON pointers (policy.ignoreFields).

        A create is never filtered: an absent object is absent whatever is ignored.
        """
        if not pointers or self.action is not Action.UPDATE:
            return self
        kept = tuple(
            c
            for c in self.changes
            if not any(c.field == p or c.field.startswith(p + "/") for p in pointers)
        )
        return Plan(Action.UPDATE, kept) if kept else NO_CHANGES


NO_CHANGES = Plan(Action.NONE)


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What every provider instance is built with."""

    roots: tuple[str, ...] = ()
    state_dir: str | None = None
    """The state directory, where a provider may keep what it must remember
    between runs (a Command's record of its last run), under its kind's name;
    None: nothing is kept (a one-shot `validate`)."""
    secret_sources: SecretSources | None = None
    """Where secret references may read; None: anywhere (the library's default;
    the command line and the daemon always give a list)."""
    allow_commands: bool = False
    """Whether Command resources may run: a command reaches beyond the roots, so
    the operator opts in (`--allow-commands`); without it a Command is an error."""
    connections: Connections = field(default_factory=Connections, repr=False, compare=False)
    """The enforced revision's connections (not part of the settings' identity)."""
    changes: Changes = field(default_factory=Changes, repr=False, compare=False)
    """When the resources some provider `refreshes` on last changed."""
    run_records: RunRecords | None = field(default=None, repr=False, compare=False)
    """Records kept by a store several daemons share (PostgreSQL), instead of
    files in `state_dir`, so a new leader sees what the last one ran."""


@dataclass(frozen=True, slots=True)
class PrepareContext:
    """Where a manifest lives, for specs that refer to other files of the config
    tree; and the resolver of secret references (`secret`), which remembers what
    it resolved so the loader never caches it and errors never show it."""

    manifest: Path
    config_root: Path
    digest_key: Callable[[], bytes] | None = None
    """Gives the key of the digests that stand for sensitive values in dumped
    specs, when the first is made; the loader keeps one per state directory so
    digests compare across runs."""
    resolved: list[str] = field(default_factory=list)
    """Every secret value resolved through this context (in a form-only load,
    UNREAD_SECRET for each reference: a load that holds one is never cached)."""
    sources: SecretSources | None = None
    """Where references may read (None: anywhere); with `form_only`, nothing is read."""

    def secret(
        self, value: Any, where: tuple[str | int, ...], *, whole_file: bool = False
    ) -> Sensitive | None:
        """The secret `value` refers to, if it is a reference; None if it is not.

        `where` is the field's path in the spec, for errors. A file is read as
        UTF-8 text; trailing line breaks are dropped (a value written with `echo`)
        unless `whole_file` (a key or certificate used as a file's content).
        Raises SpecError naming the variable or file, never a value."""
        if not is_secret_ref(value):
            return None
        text = read_secret(value, where, self.sources, whole_file=whole_file)
        self.resolved.append(text)
        return self.sensitive(text)

    def sensitive(self, text: str) -> Sensitive:
        """`text`, made from a secret, as a Sensitive value with its digest."""
        key = self.digest_key() if self.digest_key is not None else PROCESS_DIGEST_KEY
        return keyed(text, key)

    def mask(self, text: str) -> str:
        """`text` (an error message) without any secret resolved so far: each one
        masked, and the whole message withheld if it still holds a piece of one
        (a slice, its reverse, another case: see `quotes_a_secret`)."""
        if not self.resolved or (self.sources is not None and self.sources.form_only):
            return text  # nothing read: the placeholder is no secret to hide
        text = mask(text, self.resolved)
        return WITHHELD_MESSAGE if quotes_a_secret(text, self.resolved) else text


SpecT = TypeVar("SpecT", bound=BaseModel)


class Provider(abc.ABC, Generic[SpecT]):
    """Manages one kind of object. Subclass it and register the class under the
    `reconciler.providers` entry-point group.

    `observe_many` is the primitive so a networked provider can read many objects
    in one round trip; `plan` is pure; `apply` and `delete` are the only calls
    with side effects.
    """

    kind: ClassVar[str]
    Spec: ClassVar[type[BaseModel]]
    summary: ClassVar[str] = ""
    connection_type: ClassVar[str | None] = None
    """The `type` of Connection this kind's specs name in `spec.connection`
    (`postgres`, `http`), or None when it uses none. A spec that names one
    depends on it implicitly; the loader checks it exists and is of this type."""
    quick_check: ClassVar[bool] = False
    """True when everything `observe` looks at is the lstat of `path(spec)` (type,
    mode, owner, group), a regular file's bytes and a symlink's target: a no-op
    `apply` may then compare those facts alone with the last no-op's (noop.py,
    decision 0131). Leave it False if the provider observes anything else."""
    restarts_watches: ClassVar[bool] = False
    """True when creating or healing an object of this kind can give the watches
    something new to follow (a directory made: file watches follow existing
    directories only); the daemon then starts every kind's watch again."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    def prepare(self, spec: SpecT, ctx: PrepareContext) -> SpecT:
        """Check a parsed spec against settings and resolve references into the
        config tree; raise SpecError. Runs at load time, so a failure rejects the
        whole revision before anything is applied."""
        return spec

    def describe(self, spec: SpecT) -> str:
        """One line shown next to the resource id in plans."""
        return ""

    def path(self, spec: SpecT) -> str | None:
        """The filesystem path the resource owns, for implicit dependencies."""
        return None

    def references(self, spec: SpecT) -> Sequence[tuple[tuple[str | int, ...], ResourceId]]:
        """Other resources the spec names, each with the field that names it: implicit
        dependencies, which must be defined in the same revision. The default names
        the spec's `connection` when the kind has a `connection_type`."""
        if self.connection_type is None:
            return ()
        name = getattr(spec, "connection", None)
        return ((("connection",), resource_id(CONNECTION_KIND, name)),) if name else ()

    def refreshes(self, spec: SpecT) -> Sequence[ResourceId]:
        """Resources whose change (an apply) this spec must act on (a Command's
        `refreshOn`). After such a resource is applied the engine checks this one
        again as a change, not a drift check: its observe compares
        `settings.changes.token(rid)` with what it recorded and its plan says
        whether to act. Each must also be among `references` (a dependency)."""
        return ()

    def accepts(self, field: tuple[str | int, ...], target: Resource) -> str | None:
        """Why the resource a reference names cannot serve (None when it can); the
        loader reports it at the referring field."""
        if field == ("connection",) and self.connection_type is not None:
            spec = getattr(target.spec, "root", target.spec)
            found = getattr(spec, "type", None)
            if target.kind != CONNECTION_KIND or found != self.connection_type:
                return (
                    f"{target.id} is a connection of type {found!r}; "
                    f"{self.kind} needs one of type {self.connection_type!r}"
                )
        return None

    def connection(self, spec: SpecT, expected: type[ConnectionT]) -> ConnectionT:
        """The connection the spec names, from the enforced revision; PermanentError
        when it is gone."""
        name = getattr(spec, "connection", None)
        if not isinstance(name, str):
            raise PermanentError(f"{self.kind} spec names no connection")
        return self.settings.connections.get(name, expected)

    def bind(self, specs: Mapping[ResourceId, SpecT]) -> None:
        """Called with every spec of this kind in the desired state about to be
        enforced (before each pass over a new desired state, plan included) and
        before any observe. Most providers need nothing from it."""

    @abc.abstractmethod
    async def observe_many(self, specs: Sequence[SpecT]) -> list[Observed | None]:
        """Observe each spec's object, in order; `None` for absent. No side effects."""

    async def observe(self, spec: SpecT) -> Observed | None:
        return (await self.observe_many([spec]))[0]

    @abc.abstractmethod
    def plan(self, spec: SpecT, observed: Observed | None) -> Plan:
        """The changes that would make `observed` equal `spec`. Pure."""

    @abc.abstractmethod
    async def apply(self, spec: SpecT, plan: Plan) -> str | None:
        """Carry out a non-empty plan. May return a short note for the resource's
        event and status (a command's exit code and output tail, redacted)."""

    async def apply_many(
        self, items: Sequence[tuple[SpecT, Plan]]
    ) -> Sequence[BaseException | str | None]:
        """Carry out several plans; per item None (or a note, as `apply` returns)
        or the exception it raised. The engine batches applies through this;
        override it to save round trips."""
        results = await asyncio.gather(
            *(self.apply(spec, plan) for spec, plan in items), return_exceptions=True
        )
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                raise result
        return list(results)

    @abc.abstractmethod
    async def delete(self, spec: SpecT) -> None:
        """Remove the object; an absent object is not an error."""

    def watch(self, specs: Mapping[ResourceId, SpecT]) -> AsyncIterator[ResourceId] | None:
        """Optional: an endless stream of the ids whose objects changed, for instant
        drift detection (the daemon restarts it when the specs change). None when
        the provider cannot watch; the daemon then relies on periodic resyncs.
        Yield `WATCHING` once the watch is in place: until then (or for a few
        seconds) and 0.2 s more the stream it replaces keeps running."""
        return None

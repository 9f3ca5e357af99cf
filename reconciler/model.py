"""Records that flow between the layers, the provider contract and its errors.

This module imports nothing else of reconciler: providers depend on it alone, the
loader produces its records, the engine consumes them. Everything that crosses a
layer boundary is immutable.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

API_VERSION = "reconciler/v1"

ResourceId = str
"""`Kind/name`, unique in a desired state."""

Observed = Mapping[str, Any]
"""What a provider saw of one object; `None` stands for absent."""


def resource_id(kind: str, name: str) -> ResourceId:
    return f"{kind}/{name}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float) -> float:
    """Seconds from `30`, `30s`, `5m`, `1h`, `250ms`; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s or 5m, found {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"expected a duration such as 30s or 5m, found {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, found {value!r}")
    return seconds


class Policy(BaseModel):
    """Engine knobs of one resource (`policy:` in a manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    depends_on: tuple[str, ...] = Field(default=(), alias="dependsOn")
    drift: Literal["heal", "warn", "ignore"] = "heal"
    prune: bool = True
    suspend: bool = False
    resync: float = 300.0
    ignore_fields: tuple[str, ...] = Field(default=(), alias="ignoreFields")

    @field_validator("resync", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("depends_on")
    @classmethod
    def _ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item.count("/") != 1 or not all(item.split("/")):
                raise ValueError(f"expected a resource id Kind/name, found {item!r}")
        return value

    @field_validator("ignore_fields")
    @classmethod
    def _pointers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item.startswith("/"):
                raise ValueError(f"expected a JSON pointer such as /mode, found {item!r}")
        return value


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

    @property
    def id(self) -> ResourceId:
        return resource_id(self.kind, self.name)

    def __reduce__(self) -> tuple[type[Resource], tuple[Any, ...]]:
        fields = (self.kind, self.name, self.spec, self.policy, self.spec_hash, self.location)
        return (Resource, (*fields, self.labels))


@dataclass(frozen=True, slots=True)
class DesiredState:
    """A validated revision: every resource and its dependency edges."""

    revision: str
    resources: Mapping[ResourceId, Resource]
    dependencies: Mapping[ResourceId, tuple[ResourceId, ...]]


class Action(StrEnum):
    NONE = "none"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs; `field` is a JSON pointer into the spec."""

    field: str
    before: Any
    after: Any
    sensitive: bool = False


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


class ProviderError(Exception):
    """Base of what a provider may raise; the engine turns it into an outcome."""


class TemporaryError(ProviderError):
    """Retry later: after `delay` seconds if given, else after the engine's backoff."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ProviderError):
    """Retrying the same spec cannot help; wait for a new spec."""


class SpecError(ValueError):
    """Raised by `Provider.prepare`: a spec that is well-formed but unusable."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What every provider instance is built with."""

    roots: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PrepareContext:
    """Where a manifest lives, for specs that refer to other files of the config tree."""

    manifest: Path
    config_root: Path


PREPARED: Mapping[str, Any] = {"prepared": True}
"""Validation context of a spec read back after `Provider.prepare` (from the state
store): validators of what only a user writes (such as "exactly one of") skip it."""


def is_prepared(info: ValidationInfo) -> bool:
    context = info.context
    return isinstance(context, Mapping) and bool(context.get("prepared"))


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

    @abc.abstractmethod
    async def observe_many(self, specs: Sequence[SpecT]) -> list[Observed | None]:
        """Observe each spec's object, in order; `None` for absent. No side effects."""

    async def observe(self, spec: SpecT) -> Observed | None:
        return (await self.observe_many([spec]))[0]

    @abc.abstractmethod
    def plan(self, spec: SpecT, observed: Observed | None) -> Plan:
        """The changes that would make `observed` equal `spec`. Pure."""

    @abc.abstractmethod
    async def apply(self, spec: SpecT, plan: Plan) -> None:
        """Carry out a non-empty plan."""

    async def apply_many(self, items: Sequence[tuple[SpecT, Plan]]) -> list[BaseException | None]:
        """Carry out several plans; per item None or the exception it raised. The
        engine batches applies through this; override it to save round trips."""
        results = await asyncio.gather(
            *(self.apply(spec, plan) for spec, plan in items), return_exceptions=True
        )
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                raise result
        return [result if isinstance(result, BaseException) else None for result in results]

    @abc.abstractmethod
    async def delete(self, spec: SpecT) -> None:
        """Remove the object; an absent object is not an error."""

    def watch(self, specs: Mapping[ResourceId, SpecT]) -> AsyncIterator[ResourceId] | None:
        """Optional: an endless stream of the ids whose objects changed, for instant
        drift detection (the daemon restarts it when the specs change). None when
        the provider cannot watch; the daemon then relies on periodic resyncs."""
        return None

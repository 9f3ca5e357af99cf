"""Sharding (issue 13, decision 0152): one repository split between several
daemons, each enforcing the resources its shard's label selector claims.

A shard is declared in the repository, as a document of kind `Shard`:

    apiVersion: reconciler/v1
    kind: Shard
    metadata: {name: payments}
    spec:
      selector:
        matchLabels: {team: payments}
        matchExpressions:
          - {key: tier, operator: In, values: [web, db]}
          - {key: legacy, operator: DoesNotExist}

so every daemon knows every shard and a change of sharding is a reviewed commit.
A selector matches a resource's `metadata.labels` as Kubernetes' label selectors
do (every term must hold; NotIn and DoesNotExist also hold when the key is absent).

Pure functions over the model: the loader validates `Shard` documents with
`ShardSpec` and checks dependencies with `crossing`; `select` makes one shard's
part of a loaded revision, which a daemon run with `--shard` enforces (the one-shot
commands `validate`, `graph`, `plan` and `apply` load the whole revision).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reconciler.model import (
    DesiredState,
    Location,
    Requirement,
    Resource,
    ResourceId,
    Shard,
)

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

LABEL_KEY = (
    r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A label key as Kubernetes writes them: an optional DNS prefix and `/`, a name
of at most 63 letters, digits, `-`, `_` and `.`."""
_KEY_WORDS = "an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.'"


class Expression(BaseModel):
    """One entry of `matchExpressions`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    key: str = Field(pattern=LABEL_KEY)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values(self) -> Expression:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty list of values")
        if self.operator in ("Exists", "DoesNotExist") and self.values is not None:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class Selector(BaseModel):
    """`spec.selector` of a Shard."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[Expression] = Field(default_factory=list, alias="matchExpressions")

    @model_validator(mode="after")
    def _not_empty(self) -> Selector:
        # Kubernetes' empty selector matches everything: here it would claim every
        # resource of every other shard, so it is refused (decision 0152)
        if not self.match_labels and not self.match_expressions:
            raise ValueError(
                "an empty selector would claim every resource: give matchLabels or matchExpressions"
            )
        for key in self.match_labels:
            if not re.match(LABEL_KEY, key):
                raise ValueError(f"matchLabels: {key!r} is not a label key ({_KEY_WORDS})")
        return self


class ShardSpec(BaseModel):
    """`spec` of a Shard document."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    selector: Selector


def requirements(selector: Selector) -> tuple[Requirement, ...]:
    """A validated selector as the model's requirements (matchLabels first)."""
    terms = [Requirement(k, "In", (v,)) for k, v in sorted(selector.match_labels.items())]
    terms += [
        Requirement(e.key, e.operator, tuple(e.values or ())) for e in selector.match_expressions
    ]
    return tuple(terms)


def shard(name: str, location: Location, spec: ShardSpec) -> Shard:
    return Shard(name, location, requirements(spec.selector))


def matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy every requirement, as Kubernetes' selectors decide."""
    for term in requirements:
        value = labels.get(term.key)
        op = term.operator
        if op == "In":
            ok = value is not None and value in term.values
        elif op == "NotIn":
            ok = value is None or value not in term.values
        elif op == "Exists":
            ok = value is not None
        else:
            ok = value is None
        if not ok:
            return False
    return True


def claims(
    resources: Mapping[ResourceId, Resource], shards: Mapping[str, Shard]
) -> dict[ResourceId, tuple[str, ...]]:
    """The shards claiming each resource, by name in order (empty: unclaimed)."""
    ordered = sorted(shards.values(), key=lambda s: s.name)
    return {
        rid: tuple(s.name for s in ordered if matches(s.requirements, res.labels))
        for rid, res in resources.items()
    }


def describe(claimants: tuple[str, ...]) -> str:
    """Who enforces a resource claimed by `claimants`, in words."""
    if not claimants:
        return "no shard (unclaimed)"
    if len(claimants) == 1:
        return f"shard {claimants[0]}"
    return f"no shard (claimed by {_both(claimants)})"


def _both(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _owner(claimants: tuple[str, ...]) -> str | None:
    """The shard that enforces a resource: its only claimant, else none."""
    return claimants[0] if len(claimants) == 1 else None


def crossing(
    claimed: Mapping[ResourceId, tuple[str, ...]],
    dependencies: Mapping[ResourceId, tuple[ResourceId, ...]],
) -> list[tuple[ResourceId, ResourceId, str]]:
    """The dependencies that cross shards, as (resource, dependency, message): a
    resource that one shard enforces may depend only on resources of that shard,
    since no daemon sees both (a resource enforced by no shard may depend on
    anything: nothing applies it)."""
    found = []
    for rid, deps in dependencies.items():
        mine = _owner(claimed.get(rid, ()))
        if mine is None:
            continue
        for dep in deps:
            theirs = claimed.get(dep, ())
            if _owner(theirs) == mine:
                continue
            if not theirs:
                where = "which no shard claims"
            elif len(theirs) == 1:
                where = f"of shard {theirs[0]}"
            else:
                where = f"which shards {_both(theirs)} both claim"
            found.append(
                (
                    rid,
                    dep,
                    f"{rid} of shard {mine} depends on {dep}, {where}: a dependency "
                    "across shards; give both the labels of one shard",
                )
            )
    return found


class ShardError(Exception):
    """A revision cannot be enforced as this daemon's shard; `location` is where
    to look in the tree, when there is one place."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        super().__init__(message)
        self.location = location


def select(state: DesiredState, name: str) -> DesiredState:
    """The part of a loaded revision that shard `name` enforces ("" for a daemon
    without --shard, which is refused a revision that declares shards). The rest
    of the revision's resources are listed in `elsewhere`: a shard releases them,
    never deletes them, as another shard may now manage them."""
    shards = state.shards
    declared = ", ".join(sorted(shards)) or "none"
    if not name:
        if not shards:
            return state
        first = min(shards.values(), key=lambda s: (s.location.file, s.location.line))
        raise ShardError(
            f"the revision declares shards ({declared}) but this daemon has no --shard: "
            "run one daemon per shard, each with --shard NAME",
            first.location,
        )
    if name not in shards:
        raise ShardError(f"the revision declares no Shard named {name} (declared: {declared})")
    claimed = claims(state.resources, shards)
    mine = {rid for rid, c in claimed.items() if c == (name,)}
    resources = {rid: res for rid, res in state.resources.items() if rid in mine}
    dependencies = {
        rid: tuple(d for d in deps if d in mine)
        for rid, deps in state.dependencies.items()
        if rid in mine
    }
    used = {res.instance for res in resources.values() if res.instance}
    pending = list(used)
    while pending:  # an instance's parents stay with it
        instance = state.instances.get(pending.pop())
        parent = instance.parent if instance is not None else ""
        if parent and parent not in used:
            used.add(parent)
            pending.append(parent)
    instances = {iid: i for iid, i in state.instances.items() if iid in used}
    elsewhere = {rid: c for rid, c in claimed.items() if rid not in mine}
    return dataclasses.replace(
        state,
        resources=resources,
        dependencies=dependencies,
        instances=instances,
        shard=name,
        elsewhere=elsewhere,
    )


def report(state: DesiredState, *, cap: int = 100) -> dict[str, object] | None:
    """The sharding of an enforced revision for /api/v1/status: this shard, how
    many resources it claims, the unclaimed ids and the conflicts (each capped at
    `cap`, with their counts). None when the revision is not sharded."""
    if not state.shard:
        return None
    unclaimed = sorted(rid for rid, c in state.elsewhere.items() if not c)
    conflicts = sorted((rid, c) for rid, c in state.elsewhere.items() if len(c) > 1)
    return {
        "name": state.shard,
        "declared": sorted(state.shards),
        "claimed": len(state.resources),
        "unclaimed_count": len(unclaimed),
        "unclaimed": unclaimed[:cap],
        "conflicting_count": len(conflicts),
        "conflicting": [{"id": rid, "shards": list(c)} for rid, c in conflicts[:cap]],
    }


def counts(state: DesiredState | None) -> tuple[int, int]:
    """(unclaimed, conflicting) resources of an enforced revision, for the metrics."""
    if state is None:
        return 0, 0
    unclaimed = sum(1 for c in state.elsewhere.values() if not c)
    return unclaimed, sum(1 for c in state.elsewhere.values() if len(c) > 1)

"""The `Bundle` document's spec (`BundleSpec`: source, values, name prefix,
patches) and what a remote source needs: `RemoteSource`, and the `RemoteFetcher`
protocol the git source implements (reconciler.sources.bundles) with its
`RemoteTree` and `BundleSourceError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

_PREFIX = r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$"
_SHA = re.compile(r"^[0-9a-f]{40}$")


class BundleSourceError(Exception):
    """A remote bundle could not be fetched; the message says why, without
    credentials, and is shown at the `Bundle` document's `spec.source`."""


@dataclass(frozen=True, slots=True)
class RemoteTree:
    """A remote bundle's directory at one commit, exported on the local disk."""

    root: Path
    """The directory named by `path` in the commit (read-only for the loader)."""
    commit: str
    """The full commit id the ref resolved to."""


class RemoteFetcher(Protocol):
    """Fetches remote bundles with the main repository's git credentials."""

    def fetch(self, repo: str, ref: str, path: str) -> RemoteTree:
        """The tree of `path` at `ref` (branch, tag or commit) of `repo`; raises
        BundleSourceError. A commit id is served from the cache without a network
        round trip once fetched; a branch or tag is resolved again at each call
        (a fetcher may remember a resolution for the life of one load)."""
        ...


def pinned(ref: str) -> bool:
    """Whether a ref is a full commit id (the same tree whenever it is fetched)."""
    return bool(_SHA.match(ref))


class RemoteSource(BaseModel):
    """A bundle in another git repository, fetched at `ref`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str = Field(min_length=1, max_length=2048)
    ref: str = Field(min_length=1, max_length=255)
    path: str = Field(default=".", min_length=1, max_length=1024)


class PatchTarget(BaseModel):
    """Which documents of the bundle a patch changes: kind and name as the bundle
    writes them (before the prefix), each a glob; an absent one matches all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str | None = None
    name: str | None = None


class Patch(BaseModel):
    """A merge patch (a mapping, RFC 7396) or a JSON Patch (a list, RFC 6902)
    of whole documents (`spec`, `policy`, `metadata.labels`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: PatchTarget = Field(default_factory=PatchTarget)
    patch: dict[str, Any] | list[dict[str, Any]]


class BundleSpec(BaseModel):
    """The spec of a `Bundle` document."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str | RemoteSource
    """A directory of the tree, relative to the manifest (`./bundles/webapp`), or a
    remote bundle."""
    values: dict[str, Any] = Field(default_factory=dict)
    name_prefix: str = Field(default="", alias="namePrefix", pattern=_PREFIX)
    patches: list[Patch] = Field(default_factory=list, max_length=1000)

    @field_validator("source")
    @classmethod
    def _relative(cls, value: str | RemoteSource) -> str | RemoteSource:
        if isinstance(value, str):
            if not value or value.startswith("/"):
                raise ValueError("expected a directory relative to this file (./bundles/x)")
            if "\0" in value:
                raise ValueError("a path holds no NUL character")
        return value

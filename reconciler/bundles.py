"""Bundles: a directory of manifests with declared parameters, instantiated by
`Bundle` documents with values, a name prefix and patches.

This module holds what the loader needs to expand an instance (bundle.yaml's
parameters, value checks, `${{ values.x }}` substitution, name prefixes,
patches) and the interface of the fetcher of remote bundles, which lives with
the git source (`reconciler.sources.bundles`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["BundleSourceError", "RemoteFetcher", "RemoteTree"]


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

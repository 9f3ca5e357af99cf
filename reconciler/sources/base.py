"""The source contract: what the daemon asks of a git repository or a directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.secrets import redact as redact


@dataclass(frozen=True, slots=True)
class Revision:
    """One immutable snapshot of the config tree."""

    id: str
    """Commit SHA for git, a digest of the tree for a local directory."""
    path: Path
    """A directory holding the config tree (the configured subpath) at this revision.
    It is never modified afterwards; a later fetch writes a new directory."""
    summary: str = ""
    """One line about it (a commit's subject); never secret-bearing."""


class SourceError(Exception):
    """A fetch failed. The message is safe to log and show: no credentials."""


class Source(Protocol):
    url: str
    """Where revisions come from, with any credentials redacted."""

    async def fetch(self) -> Revision:
        """The newest revision (possibly the same id as last time); SourceError."""
        ...

"""A plain local directory as a source: the revision id is a digest of the tree,
and changes are noticed with watchfiles (after a short debounce)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from reconciler.sources.base import Revision, SourceError


class LocalSource:
    def __init__(self, directory: Path, *, debounce_ms: int = 300) -> None:
        self.directory = directory
        self.url = str(directory)
        self.debounce_ms = debounce_ms

    async def fetch(self) -> Revision:
        from reconciler.manifests import tree_digest

        if not self.directory.is_dir():
            raise SourceError(f"{self.directory} is not a directory")
        try:
            digest = await asyncio.to_thread(tree_digest, self.directory)
        except OSError as exc:
            raise SourceError(f"cannot read {self.directory}: {exc.strerror}") from None
        return Revision(id=f"dir-{digest[:12]}", path=self.directory, summary="local directory")

    async def changes(self) -> AsyncIterator[None]:
        """One item per burst of changes under the directory."""
        import watchfiles

        async for _ in watchfiles.awatch(self.directory, debounce=self.debounce_ms, step=50):
            yield None

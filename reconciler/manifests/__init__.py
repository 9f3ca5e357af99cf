"""The manifest loader: a config tree in, one immutable DesiredState or every
error found out.

Every `*.yaml`/`*.yml` under the path is read (several documents per file),
each document's envelope checked, its spec validated by the provider's pydantic
model and prepared by the provider; then ids, dependencies and paths are checked
across documents. Nothing is returned unless all of it is valid, so a bad
revision is rejected whole. Errors name file, line and field.

Parsing uses libyaml (CSafeLoader) with a mapping constructor that rejects
duplicate keys; a document with anchors is measured before construction so an
alias bomb is refused instead of expanded. Everything a revision may hold is
bounded (`Limits`): no input can make a load exhaust memory or recurse without end.

The package, by role: `tree` reads a tree and digests it, `loader` is `load`
and its cache glue, `documents` validates documents (their envelope through
`envelope`'s pydantic models), `expand` expands Bundle documents, `collect` holds
the state of one load and reports issues; `limits` and `issues` are the records
they share. Everything a caller needs is imported from here.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.cache import Cache
    from reconciler.manifests.collect import ParseMemo
    from reconciler.manifests.issues import EMPTY_MARK, Issue, ManifestError
    from reconciler.manifests.limits import Limits
    from reconciler.manifests.loader import load
    from reconciler.manifests.tree import manifest_files, tree_digest, tree_files

__all__ = [
    "EMPTY_MARK",
    "Cache",
    "Issue",
    "Limits",
    "ManifestError",
    "ParseMemo",
    "load",
    "manifest_files",
    "tree_digest",
    "tree_files",
]

_WHERE = {
    "Cache": "reconciler.cache",
    "ParseMemo": "reconciler.manifests.collect",
    "EMPTY_MARK": "reconciler.manifests.issues",
    "Issue": "reconciler.manifests.issues",
    "ManifestError": "reconciler.manifests.issues",
    "Limits": "reconciler.manifests.limits",
    "load": "reconciler.manifests.loader",
    "manifest_files": "reconciler.manifests.tree",
    "tree_digest": "reconciler.manifests.tree",
    "tree_files": "reconciler.manifests.tree",
}


def __getattr__(name: str) -> Any:
    """The package's names, imported when first used: the no-op shortcut of
    `apply` digests a tree (`tree`) without paying for the validating loader
    and pydantic (decision 0131)."""
    if name == "_NAME":
        from reconciler.manifests.envelope import NAME_PATTERN

        value: Any = re.compile(NAME_PATTERN)
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value

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

import re

from reconciler.cache import Cache
from reconciler.manifests.collect import ParseMemo
from reconciler.manifests.envelope import NAME_PATTERN as _NAME_PATTERN
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

_NAME = re.compile(_NAME_PATTERN)
"""What a resource name must match; reconciler.schemas says the same (a test compares them)."""

"""Bundles: a directory of manifests with declared parameters, instantiated by
`Bundle` documents with values, a name prefix and patches (docs/bundles.md).

This package holds the parts of an instantiation that need no file system:
bundle.yaml's model and the value checks (`definition`), the `Bundle`
document's spec and the remote fetcher's protocol (`document`), `${{ values.x }}`
substitution (`substitution`) and patches (`patches`). The loader
(`reconciler.manifests`) reads the files and reports errors at file:line; the
fetcher of remote bundles lives with the git source (`reconciler.sources.bundles`)
behind `RemoteFetcher`. Every name is re-exported here: import from
`reconciler.bundles`, not from the modules behind it.

Values reach a bundle's manifests by substitution in parsed YAML, never by
rendering text: a string that is exactly `${{ values.port }}` becomes the
value itself (an integer, a list, a secret reference), one that holds it among
other text gets it as text. There are no expressions, so nothing a bundle or a
value holds can run, loop or grow past the size of its values.
"""

from __future__ import annotations

from reconciler.bundles.definition import (
    DEFINITION_FILE,
    MAX_MATCHED,
    MAX_PATTERN,
    Definition,
    Parameter,
    ParamType,
    check_value,
    check_values,
)
from reconciler.bundles.document import (
    BundleSourceError,
    BundleSpec,
    Patch,
    PatchTarget,
    RemoteFetcher,
    RemoteSource,
    RemoteTree,
    pinned,
)
from reconciler.bundles.patches import apply_patches, matches, merge_patch
from reconciler.bundles.substitution import SubstitutionError, fill
from reconciler.model import API_VERSION, BUNDLE_KIND

__all__ = [
    "API_VERSION",
    "BUNDLE_KIND",
    "DEFINITION_FILE",
    "MAX_MATCHED",
    "MAX_PATTERN",
    "BundleSourceError",
    "BundleSpec",
    "Definition",
    "ParamType",
    "Parameter",
    "Patch",
    "PatchTarget",
    "RemoteFetcher",
    "RemoteSource",
    "RemoteTree",
    "SubstitutionError",
    "apply_patches",
    "check_value",
    "check_values",
    "fill",
    "matches",
    "merge_patch",
    "pinned",
]

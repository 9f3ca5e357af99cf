"""How much one revision may hold (`Limits`), and the limits of the loader's own
helpers that must read a whole tree whatever it holds (`_NO_LIMITS`)."""

from __future__ import annotations

from dataclasses import dataclass

_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one revision may hold. Crossing a limit is an error that names it
    (`max_files` ...) and its value, at the file and line where it was crossed;
    the revision is rejected whole. Together they bound the memory and time of a
    load, and of everything after it, whatever the config tree holds."""

    max_file_bytes: int = 8 * _MiB
    """Each file of the tree: manifests, and the sources and templates they use."""
    max_tree_bytes: int = 256 * _MiB
    """All files of the tree together."""
    max_files: int = 100_000
    """Files in the tree (hidden ones are not counted: they are not read)."""
    max_nodes: int = 200_000
    """Nodes per document after alias expansion."""
    max_expanded_bytes: int = 16 * _MiB
    """Characters of text per document after alias expansion."""
    max_depth: int = 100
    """Levels of nested mappings and sequences in a document."""
    max_resources: int = 250_000
    """Resources in a revision."""
    max_spec_bytes: int = 256 * _MiB
    """All specs of a revision as stored (JSON), sources and templates filled in."""
    max_bundle_depth: int = 10
    """Bundles instantiated by bundles, counted from a manifest of the tree."""
    max_bundle_instances: int = 10_000
    """Bundle instances in a revision."""
    max_remote_bundles: int = 100
    """Distinct remote bundle sources (repo, ref, path) in a revision: each is a
    fetch over the network."""


_NO_LIMITS = Limits(
    max_file_bytes=1 << 62, max_tree_bytes=1 << 62, max_files=1 << 62, max_resources=1 << 62
)

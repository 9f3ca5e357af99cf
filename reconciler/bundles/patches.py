"""Patches of a bundle's documents (`apply_patches`): merge patches (RFC 7396)
and JSON Patches (RFC 6902), each applied to the documents its target's kind and
name globs match; a patch may not change a document's apiVersion, kind or name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import jsonpatch
import jsonpointer

from reconciler.bundles.document import Patch, PatchTarget


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: a mapping merges key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def matches(target: PatchTarget, kind: Any, name: Any) -> bool:
    return (target.kind is None or fnmatch.fnmatchcase(str(kind), target.kind)) and (
        target.name is None or fnmatch.fnmatchcase(str(name), target.name)
    )


def apply_patches(
    documents: list[Any],
    patches: list[Patch],
    identity: Callable[[Any], tuple[Any, Any]],
) -> list[tuple[tuple[str | int, ...], str]]:
    """Apply each patch, in order, to the documents its target matches (in place
    in `documents`); the problems, as (path under `spec.patches`, message).
    `identity` gives a document's (kind, name) as the bundle writes them."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, patch in enumerate(patches):
        hits = 0
        for d, document in enumerate(documents):
            if not isinstance(document, dict) or not matches(patch.target, *identity(document)):
                continue
            hits += 1
            before = identity(document)
            try:
                if isinstance(patch.patch, dict):
                    patched = merge_patch(document, patch.patch)
                else:
                    patched = jsonpatch.apply_patch(document, patch.patch, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                problems.append(((i, "patch"), f"{_doc(before)}: {exc}"))
                continue
            except (TypeError, KeyError, ValueError, IndexError, AttributeError) as exc:
                problems.append(((i, "patch"), f"{_doc(before)}: not a valid patch ({exc})"))
                continue
            if (
                not isinstance(patched, dict)
                or identity(patched) != before
                or patched.get("apiVersion") != document.get("apiVersion")
            ):
                problems.append(
                    (
                        (i, "patch"),
                        f"{_doc(before)}: a patch cannot change apiVersion, kind or name",
                    )
                )
                continue
            documents[d] = patched
        if not hits:
            problems.append(((i, "target"), "matches no document of the bundle"))
    return problems


def _doc(identity: tuple[Any, Any]) -> str:
    return f"{identity[0]}/{identity[1]}"

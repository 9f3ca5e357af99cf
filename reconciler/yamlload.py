"""libyaml parsing for the manifest loader: duplicate keys are errors, an alias
bomb or a recursive alias is refused before construction, and the line of any
field can be found again for error messages.

Kept apart from `manifests` so that a run served from the cache of validated
config trees never imports PyYAML.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

YAMLError = yaml.YAMLError
MarkedYAMLError = yaml.MarkedYAMLError


class DuplicateKey(yaml.MarkedYAMLError):
    pass


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_TAGS: dict[str, str] = {}
"""Tags of plain scalars already resolved: manifests repeat the same keys."""


class _Loader(yaml.CSafeLoader):
    """libyaml parsing and composition; tags of plain scalars memoized (the safe
    resolver has no path resolvers, so non-plain nodes take the default tags)."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if not implicit[0]:
                return _STR
            tag = _PLAIN_TAGS.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
                if len(_PLAIN_TAGS) < 4096:
                    _PLAIN_TAGS[value] = tag
            return tag
        return _MAP if kind is MappingNode else _SEQ


def _construct(loader: _Loader, node: Node) -> Any:
    """Build Python data from a composed node: plain dicts, lists and str directly,
    other tags through PyYAML's safe constructors; duplicate keys are errors."""
    cls = type(node)
    tag = node.tag
    if cls is ScalarNode:
        return node.value if tag == _STR else loader.construct_object(node, deep=True)
    if cls is SequenceNode and tag == _SEQ:
        return [_construct(loader, child) for child in node.value]
    if not isinstance(node, MappingNode) or tag != _MAP:
        return loader.construct_object(node, deep=True)
    mapping: dict[Any, Any] = {}
    own = node.value
    if any(key.tag == _MERGE for key, _ in own):
        own = [(k, v) for k, v in own if k.tag != _MERGE]
        loader.flatten_mapping(node)  # merged pairs first; the mapping's own keys win
        for key_node, value_node in node.value[: len(node.value) - len(own)]:
            mapping[_construct(loader, key_node)] = _construct(loader, value_node)
    lines: dict[Any, int] = {}
    for key_node, value_node in own:
        key = _construct(loader, key_node)
        try:
            first = lines.get(key)
        except TypeError:
            raise DuplicateKey(
                None, None, f"a mapping key must be a scalar, found {key!r}", key_node.start_mark
            ) from None
        if first is not None:
            raise DuplicateKey(
                None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark
            )
        lines[key] = key_node.start_mark.line + 1
        mapping[key] = _construct(loader, value_node)
    return mapping


def expanded_size(node: Node, limit: int) -> int | None:
    """Node count with every alias expanded, memoized per node; stops past `limit`.
    None when an alias refers to a node that contains it (a recursive structure)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in sizes:
            continue
        if isinstance(current, ScalarNode):
            sizes[key] = 1
            continue
        children: list[Node] = (
            [n for pair in current.value for n in pair]
            if isinstance(current, MappingNode)
            else list(current.value)
        )
        if children_done:
            open_nodes.discard(key)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > limit:
                return total
            sizes[key] = total
        elif key in open_nodes:
            return None
        else:
            open_nodes.add(key)
            stack.append((current, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def line_of(node: Node, path: tuple[str | int, ...]) -> int:
    """The line of the value at `path` in a document, as deep as it exists."""
    for part in path:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == str(part):
                    node = value
                    break
            else:
                break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


def documents(text: str, max_nodes: int) -> Iterator[tuple[Node, Any]]:
    """Each document of a stream as (node, data); raises MarkedYAMLError."""
    check_aliases = "&" in text  # no anchor, no alias: nothing to measure
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if check_aliases:
                size = expanded_size(node, max_nodes)
                if size is None or size > max_nodes:
                    problem = (
                        "an alias refers to a node that contains it (recursive structure)"
                        if size is None
                        else f"aliases expand to over {max_nodes} nodes"
                    )
                    raise yaml.MarkedYAMLError(None, None, problem, node.start_mark)
            yield node, _construct(loader, node)
    finally:
        loader.dispose()

"""libyaml parsing for the manifest loader: duplicate keys are errors, an alias
bomb (too many nodes or too much text once expanded) or a recursive alias is
refused before construction, nesting is bounded, and the line of any field can
be found again for error messages.

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


class _TooDeep(Exception):
    """Nesting past the limit, at `node` (turned into a MarkedYAMLError)."""

    def __init__(self, node: Node) -> None:
        self.node = node


def _construct(loader: _Loader, node: Node, room: int) -> Any:
    """Build Python data from a composed node: plain dicts, lists and str directly,
    other tags through PyYAML's safe constructors; duplicate keys are errors.
    `room` is how many more levels of nesting are allowed below this node."""
    cls = type(node)
    tag = node.tag
    if cls is ScalarNode:
        return node.value if tag == _STR else _tagged(loader, node)
    if room <= 0:
        raise _TooDeep(node)
    room -= 1
    if cls is SequenceNode and tag == _SEQ:
        return [_construct(loader, child, room) for child in node.value]
    if not isinstance(node, MappingNode) or tag != _MAP:
        return _tagged(loader, node)
    mapping: dict[Any, Any] = {}
    own = node.value
    if any(key.tag == _MERGE for key, _ in own):
        own = [(k, v) for k, v in own if k.tag != _MERGE]
        loader.flatten_mapping(node)  # merged pairs first; the mapping's own keys win
        for key_node, value_node in node.value[: len(node.value) - len(own)]:
            mapping[_construct(loader, key_node, room)] = _construct(loader, value_node, room)
    lines: dict[Any, int] = {}
    for key_node, value_node in own:
        key = _construct(loader, key_node, room)
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
        mapping[key] = _construct(loader, value_node, room)
    return mapping


def _tagged(loader: _Loader, node: Node) -> Any:
    """A node PyYAML's safe constructors build (a tag other than str, seq, map).
    A value its tag's constructor cannot convert (`!!int 0x_`, `!!bool maybe`,
    `!!timestamp 2001-13-45`) is a marked YAML error at the node, not a crash."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, KeyError, TypeError, OverflowError, IndexError, AttributeError):
        value = node.value if isinstance(node, ScalarNode) else "..."
        if len(value) > 40:
            value = value[:40] + "..."
        problem = f"{value!r} is not a valid {node.tag.removeprefix('tag:yaml.org,2002:')}"
        raise yaml.MarkedYAMLError(None, None, problem, node.start_mark) from None


def expanded_size(node: Node, max_nodes: int, max_bytes: int) -> tuple[int, int] | None:
    """(nodes, bytes) of a document with every alias expanded, memoized per node;
    bytes are the characters of its scalars, keys included. Stops as soon as one
    passes its limit. None when an alias refers to a node that contains it (a
    recursive structure)."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in sizes:
            continue
        if isinstance(current, ScalarNode):
            sizes[key] = (1, len(current.value))
            continue
        children: list[Node] = (
            [n for pair in current.value for n in pair]
            if isinstance(current, MappingNode)
            else list(current.value)
        )
        if children_done:
            open_nodes.discard(key)
            nodes, size = 1, 0
            for child in children:
                child_nodes, child_size = sizes[id(child)]
                nodes += child_nodes
                size += child_size
            if nodes > max_nodes or size > max_bytes:
                return nodes, size
            sizes[key] = (nodes, size)
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


def documents(
    text: str, *, max_nodes: int, max_bytes: int, max_depth: int
) -> Iterator[tuple[Node, Any]]:
    """Each document of a stream as (node, data); raises MarkedYAMLError.

    A document deeper than `max_depth` is refused; one with anchors is measured
    first and refused if its aliases expand past `max_nodes` nodes or `max_bytes`
    characters of scalars (without aliases it is no bigger than its file)."""
    check_aliases = "&" in text  # no anchor, no alias: nothing to measure
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if check_aliases:
                size = expanded_size(node, max_nodes, max_bytes)
                problem = None
                if size is None:
                    problem = "an alias refers to a node that contains it (recursive structure)"
                elif size[0] > max_nodes:
                    problem = f"aliases expand to over {max_nodes} nodes (max_nodes)"
                elif size[1] > max_bytes:
                    problem = (
                        f"aliases expand to over {max_bytes} bytes of text (max_expanded_bytes)"
                    )
                if problem is not None:
                    raise yaml.MarkedYAMLError(None, None, problem, node.start_mark)
            try:
                data = _construct(loader, node, max_depth)
            except _TooDeep as exc:
                problem = f"nested deeper than {max_depth} levels (max_depth)"
                raise yaml.MarkedYAMLError(None, None, problem, exc.node.start_mark) from None
            except RecursionError:  # a tag PyYAML builds itself (!!omap, !!set), deeply nested
                problem = f"nested deeper than {max_depth} levels (max_depth)"
                raise yaml.MarkedYAMLError(None, None, problem, node.start_mark) from None
            yield node, data
    finally:
        loader.dispose()


_UNCLOSED = {
    "while scanning a quoted scalar": "quoted scalar",
    "while parsing a flow sequence": "flow sequence ('[')",
    "while parsing a flow mapping": "flow mapping ('{')",
}
"""libyaml's contexts of a construct that runs on until it is closed: its error is
found where the reading stopped (often the end of the file), but the mistake is
where it started."""


def where(exc: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    """The 1-based line a YAML error is reported at, and its message.

    An unclosed quote or bracket is reported where it starts, the message saying
    both places: "unclosed quoted scalar started at line 3, found end of file at
    line 40". Other errors are reported where the problem was found."""
    context, problem = exc.context_mark, exc.problem_mark
    text = exc.problem or str(exc)
    what = _UNCLOSED.get(exc.context or "")
    if what and context is not None and problem is not None and context.line < problem.line:
        text = text.replace("unexpected end of stream", "end of file")
        started = context.line + 1
        ended = problem.line + 1
        return started, f"unclosed {what} started at line {started}, {text} at line {ended}"
    mark = problem or context
    if exc.context and not isinstance(exc, DuplicateKey):
        text = f"{text} ({exc.context})"
    return (None if mark is None else mark.line + 1), text

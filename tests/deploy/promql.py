"""Metric and label names used by PromQL expressions, for checking that dashboards
and alert rules only query what the daemon exports.

Not a PromQL parser: enough of a tokenizer to tell a metric name from a function,
an aggregation, a keyword, a label in a matcher or a grouping clause, a duration
or a Grafana variable. String literals and range brackets are dropped first, so
nothing inside them is mistaken for a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_TOKEN = re.compile(
    r"""
    (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<matchers>\{[^}]*\})
    | (?P<open>\()
    | (?P<close>\))
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")

GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING | {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)


@dataclass
class Names:
    """What one expression refers to."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    """(metric name, label names in its matchers), in order of appearance."""
    grouping: set[str] = field(default_factory=set)
    """Label names in by/without/on/ignoring/group_left/group_right clauses."""

    @property
    def metrics(self) -> set[str]:
        return {name for name, _ in self.selectors}


def names(expr: str) -> Names:
    """The metric and label names `expr` uses. Raises ValueError on a selector
    without a metric name (`{__name__="x"}`), which these checks cannot follow."""
    text = _STRING.sub('""', expr)
    text = _RANGE.sub(" ", text)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(text)]
    found = Names()
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "matchers":
            raise ValueError(f"selector without a metric name in {expr!r}: {value}")
        if kind != "name":
            i += 1
            continue
        if value in GROUPING and following[0] == "open":
            end = next(j for j in range(i + 2, len(tokens)) if tokens[j][0] == "close")
            found.grouping |= {v for k, v in tokens[i + 2 : end] if k == "name"}
            i = end + 1
        elif value in KEYWORDS or following[0] == "open":
            i += 1  # a keyword, a function call, or an aggregation with its argument next
        elif value in AGGREGATIONS and following[1] in ("by", "without"):
            i += 1  # `sum by (...) (...)`
        else:
            labels: frozenset[str] = frozenset()
            if following[0] == "matchers":
                labels = frozenset(_MATCHER.findall(following[1]))
                i += 1
            found.selectors.append((value, labels))
            i += 1
    return found


def template_labels(text: str) -> set[str]:
    """Label names a Grafana legend (`{{kind}}`) or an alert template
    (`{{ $labels.kind }}`) refers to."""
    legend = re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", text)
    alert = re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text)
    return set(legend) | set(alert)

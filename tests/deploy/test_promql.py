"""The PromQL name extraction the dashboard and alert checks rely on."""

from __future__ import annotations

import pytest

from tests.deploy import promql


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        ("up", {"up"}, set()),
        ('up{job="reconciler"} == 0', {"up"}, set()),
        ('absent(up{job="reconciler"})', {"up"}, set()),
        (
            "histogram_quantile(0.95, sum by (le, phase) (rate("
            'x_bucket{job="$job", instance=~"$instance"}[$__rate_interval])))',
            {"x_bucket"},
            {"le", "phase"},
        ),
        (
            "sum(rate(a_total[5m])) by (kind) / ignoring(result) group_left b",
            {"a_total", "b"},
            {"kind", "result"},
        ),
        (
            "time() - a or on (job, instance) time() - b > on(job) 3 * c",
            {"a", "b", "c"},
            {"job", "instance"},
        ),
        ('count_values("v", a) offset 1h30m', {"a"}, set()),
        ('sum without (name) (a{name="x{y}", kind!~"Sum|by"}) > bool 1e3', {"a"}, {"name"}),
        ("topk(5, a) unless b @ 1609746000", {"a", "b"}, set()),
        ('label_replace(a, "dst", "$1", "src", "(.*)")', {"a"}, set()),
        ("max_over_time(a[$__range:${__interval}]) > $threshold", {"a"}, set()),
    ],
)
def test_names(expr: str, metrics: set[str], grouping: set[str]) -> None:
    found = promql.names(expr)
    assert found.metrics == metrics
    assert found.grouping == grouping


def test_matcher_labels() -> None:
    found = promql.names('a{kind="File", name=~"x,y=z"} + on() b{ state != "Failed" }')
    assert found.selectors == [("a", frozenset({"kind", "name"})), ("b", frozenset({"state"}))]


def test_selector_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match="without a metric name"):
        promql.names('{__name__="a"}')


def test_template_labels() -> None:
    assert promql.template_labels("p95 {{phase}} {{ kind }}") == {"phase", "kind"}
    assert promql.template_labels("{{ $labels.kind }}/{{ $labels.name }} {{ $value }}") == {
        "kind",
        "name",
    }

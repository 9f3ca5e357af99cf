"""Metrics: the engine's telemetry counted against what the store recorded, the
per-resource series made from the present, the fast text writer checked against
prometheus-client's own and against `promtool check metrics`. Real filesystem
providers on a tmp directory, the real SQLite store."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.engine import Engine
from reconciler.fsm import Event, State
from reconciler.manifests import load
from reconciler.metrics import BUCKETS, FAMILIES, MAX_RESOURCE_SERIES, Metrics, Snapshot
from reconciler.model import DesiredState, ProviderSettings
from reconciler.providers.directory import DirectoryProvider
from reconciler.providers.files import FileProvider
from reconciler.providers.symlink import SymlinkProvider
from reconciler.registry import Registry
from reconciler.store import SqliteStore
from tests.system import ensure_debian


class Rig:
    """A root, a config tree, the real store, an engine reporting into Metrics."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.config = tmp_path / "config"
        self.config.mkdir()
        settings = ProviderSettings(roots=(str(self.root),))
        self.registry = Registry(
            [FileProvider(settings), DirectoryProvider(settings), SymlinkProvider(settings)]
        )
        self.store = SqliteStore(tmp_path / "state")
        self.metrics = Metrics(self.snapshot, version="test")
        self.engine = Engine(self.registry, self.store, telemetry=self.metrics)

    def snapshot(self) -> Snapshot:
        return Snapshot(resources={rid: r.state for rid, r in self.store.inventory().items()})

    def desired(self, *docs: dict[str, Any]) -> DesiredState:
        (self.config / "m.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return load(self.config, self.registry)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of a scrape as {(name, sorted labels): value}."""
        text = self.metrics.render(self.snapshot()).decode()
        return _samples(text)

    def value(self, family: str, /, **labels: str) -> float | None:
        return self.samples().get((family, tuple(sorted(labels.items()))))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def file_doc(name: str, path: Path, content: str = "hello\n", **policy: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "reconciler/v1",
        "kind": "File",
        "metadata": {"name": name},
        "spec": {"path": str(path), "content": content},
    }
    if policy:
        doc["policy"] = policy
    return doc


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    rig = Rig(tmp_path)
    yield rig
    rig.store.close()


async def test_transitions_counted_are_the_transitions_recorded(rig: Rig) -> None:
    desired = rig.desired(file_doc("a", rig.root / "a"), file_doc("b", rig.root / "b"))
    await rig.engine.converge(desired)
    recorded: dict[tuple[str, str, str], int] = {}
    for t in rig.store.history(limit=1000):
        key = (t.kind, "none" if t.from_state is None else t.from_state.value, t.to_state.value)
        recorded[key] = recorded.get(key, 0) + 1
    counted = {
        (dict(labels)["kind"], dict(labels)["from_state"], dict(labels)["to_state"]): value
        for (name, labels), value in rig.samples().items()
        if name == "reconciler_transitions_total"
    }
    assert counted == recorded
    assert counted[("File", "Applying", "Verifying")] == 2


async def test_clean_checks_are_counted_though_they_leave_no_history(rig: Rig) -> None:
    desired = rig.desired(file_doc("a", rig.root / "a"))
    await rig.engine.converge(desired)
    history = len(rig.store.history(limit=1000))
    await rig.engine.converge(desired, trigger=Event.RESYNC)
    assert len(rig.store.history(limit=1000)) == history  # decision 0002
    for source, target, n in (
        ("InSync", "Detecting", 1),  # the clean check only
        ("Detecting", "Planning", 2),  # the create, and the clean check
        ("Planning", "InSync", 1),  # the clean check (the create went through Verifying)
    ):
        key = {"kind": "File", "from_state": source, "to_state": target}
        assert rig.value("reconciler_transitions_total", **key) == n, (source, target)
    # the batched observation of the clean check is timed too
    assert (
        rig.value("reconciler_reconcile_duration_seconds_count", kind="File", phase="detect") == 2
    )


async def test_phases_applies_and_latency_buckets(rig: Rig) -> None:
    await rig.engine.converge(rig.desired(file_doc("a", rig.root / "a")))
    for phase in ("detect", "plan", "apply", "verify"):
        count = rig.value("reconciler_reconcile_duration_seconds_count", kind="File", phase=phase)
        assert count == 1, phase
    assert rig.value("reconciler_apply_total", kind="File", result="success") == 1
    bounds = {
        dict(labels)["le"]
        for (name, labels), _ in rig.samples().items()
        if name == "reconciler_reconcile_duration_seconds_bucket"
    }
    assert min(BUCKETS) == 0.001 and max(BUCKETS) == 60.0
    assert bounds == {*(prometheus_client.utils.floatToGoString(b) for b in BUCKETS), "+Inf"}


async def test_failed_apply_is_counted_as_an_error(rig: Rig) -> None:
    (rig.root / "not-a-dir").write_text("x")
    report = await rig.engine.converge(rig.desired(file_doc("a", rig.root / "not-a-dir" / "a")))
    assert report.results["File/a"].state is State.FAILED
    assert rig.value("reconciler_apply_total", kind="File", result="error") == 1
    assert rig.value("reconciler_resource_state", kind="File", name="a", state="Failed") == 1
    assert rig.value("reconciler_resources", kind="File", state="Failed") == 1


async def test_drift_under_warn_shows_then_clears(rig: Rig) -> None:
    path = rig.root / "a"
    desired = rig.desired(file_doc("a", path, drift="warn"))
    await rig.engine.converge(desired)
    assert rig.value("reconciler_resource_drifted", kind="File", name="a") == 0
    path.write_text("changed by hand\n")
    await rig.engine.converge(desired, trigger=Event.WATCH)
    assert rig.value("reconciler_resource_drifted", kind="File", name="a") == 1
    assert rig.value("reconciler_resource_state", kind="File", name="a", state="Drifted") == 1
    assert rig.value("reconciler_resource_state", kind="File", name="a", state="InSync") is None
    assert rig.value("reconciler_drift_detected_total", kind="File") == 1
    path.write_text("hello\n")
    await rig.engine.converge(desired, trigger=Event.WATCH)
    assert rig.value("reconciler_resource_drifted", kind="File", name="a") == 0
    assert rig.value("reconciler_drift_detected_total", kind="File") == 1


async def test_a_removed_resource_leaves_no_series(rig: Rig) -> None:
    await rig.engine.converge(
        rig.desired(file_doc("a", rig.root / "a"), file_doc("b", rig.root / "b"))
    )
    await rig.engine.converge(rig.desired(file_doc("a", rig.root / "a")))
    samples = rig.samples()
    assert not [key for key in samples if ("name", "b") in key[1]]
    assert rig.value("reconciler_prune_total", kind="File") == 1
    assert rig.value("reconciler_reconcile_duration_seconds_count", kind="File", phase="prune") == 1
    assert rig.value("reconciler_resources", kind="File", state="InSync") == 1
    assert not (rig.root / "b").exists()


async def test_the_fast_writer_says_what_prometheus_client_says(rig: Rig) -> None:
    path = rig.root / "a"
    desired = rig.desired(file_doc("a", path, drift="warn"), file_doc("b", rig.root / "b"))
    await rig.engine.converge(desired)
    path.write_text("drift\n")
    await rig.engine.converge(desired, trigger=Event.WATCH)
    snapshot = rig.snapshot()
    fast = _samples(rig.metrics.render(snapshot).decode())
    rig.metrics._current = snapshot  # what render sets for the collectors
    reference = _samples(generate_latest(rig.metrics.registry).decode())
    volatile = ("process_", "python_gc_")  # CPU time and GC counts move between the calls
    assert {k: v for k, v in fast.items() if not k[0].startswith(volatile)} == {
        k: v for k, v in reference.items() if not k[0].startswith(volatile)
    }


def test_every_family_of_the_exposition_is_listed_and_typed() -> None:
    metrics = Metrics(
        lambda: Snapshot(),
        version="test",
    )
    metrics.fetched(True)
    metrics.rejected()
    metrics.applied("File", True)
    metrics.drifted("File")
    metrics.pruned("File")
    metrics.phase("File", "detect", 0.01)
    metrics.transitions({("File", "none", "Pending"): 1})
    snapshot = Snapshot(
        resources={"File/a": State.IN_SYNC},
        revision="abc",
        last_fetch_success=1.0,
        interval=60.0,
        last_converged=2.0,
    )
    text = metrics.render(snapshot).decode()
    exported = {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for f in text_string_to_metric_families(text)
        if f.name.startswith("reconciler_")
    }
    assert exported == FAMILIES
    assert any(f.name.startswith("process_") for f in text_string_to_metric_families(text))
    assert 'reconciler_source_revision_info{revision="abc"} 1.0' in text


def test_each_daemon_has_its_own_registry() -> None:
    one = Metrics(Snapshot, version="1")
    two = Metrics(Snapshot, version="2")
    one.fetched(False)
    assert one.registry.get_sample_value("reconciler_source_fetch_total", {"result": "error"}) == 1
    assert two.registry.get_sample_value("reconciler_source_fetch_total", {"result": "error"}) == 0
    default = generate_latest(prometheus_client.REGISTRY).decode()
    assert "reconciler_" not in default


def test_label_values_from_manifests_are_escaped() -> None:
    odd = 'we"ird\\kind\nline'
    metrics = Metrics(Snapshot, version='v"1')
    snapshot = Snapshot(resources={f"{odd}/name.with-dots_1": State.DRIFTED})
    text = metrics.render(snapshot).decode()
    samples = _samples(text)
    key = ("reconciler_resource_drifted", (("kind", odd), ("name", "name.with-dots_1")))
    assert samples[key] == 1
    assert samples["reconciler_build_info", (("version", 'v"1'),)] == 1
    _promtool_check(text)


def test_a_changed_state_is_written_anew_and_a_removed_resource_is_forgotten() -> None:
    metrics = Metrics(Snapshot, version="t")
    first = _samples(metrics.render(Snapshot(resources={"File/a": State.IN_SYNC})).decode())
    assert first["reconciler_resource_drifted", (("kind", "File"), ("name", "a"))] == 0
    then = Snapshot(resources={"File/a": State.DRIFTED, "File/b": State.FAILED})
    second = _samples(metrics.render(then).decode())
    assert second["reconciler_resource_drifted", (("kind", "File"), ("name", "a"))] == 1
    state = ("reconciler_resource_state", (("kind", "File"), ("name", "a"), ("state", "InSync")))
    assert state not in second
    third = _samples(metrics.render(Snapshot(resources={"File/b": State.FAILED})).decode())
    assert not [key for key in third if ("name", "a") in key[1]]


def test_per_resource_series_are_bounded_and_counts_stay_complete() -> None:
    n = MAX_RESOURCE_SERIES // 2 + 100
    snapshot = Snapshot(resources={f"File/r{i}": State.IN_SYNC for i in range(n)})
    samples = _samples(Metrics(Snapshot, version="t").render(snapshot).decode())
    per_resource = [k for k in samples if k[0] == "reconciler_resource_state"]
    assert len(per_resource) == MAX_RESOURCE_SERIES // 2
    assert samples["reconciler_resources", (("kind", "File"), ("state", "InSync"))] == n


@pytest.mark.timeout(900)  # the first use may install Debian's prometheus package
async def test_exposition_passes_promtool(rig: Rig) -> None:
    await rig.engine.converge(
        rig.desired(file_doc("a", rig.root / "a"), file_doc("b", rig.root / "b"))
    )
    _promtool_check(rig.metrics.render(rig.snapshot()).decode())


def _promtool_check(text: str) -> None:
    promtool = ensure_debian("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.0011, 0.05, 60.0, 75.0])
def test_a_batch_of_equal_observations_counts_as_that_many_observations(seconds: float) -> None:
    batched, one_by_one = Metrics(Snapshot, version="t"), Metrics(Snapshot, version="t")
    batched.phase("File", "detect", seconds, 7)
    for _ in range(7):
        one_by_one.phase("File", "detect", seconds)
    family = "reconciler_reconcile_duration_seconds"
    mine, theirs = (
        {
            k: v
            for k, v in _samples(m.render(Snapshot()).decode()).items()
            if k[0].startswith(family)
        }
        for m in (batched, one_by_one)
    )
    assert mine == pytest.approx(theirs) and mine

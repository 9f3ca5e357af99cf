"""The `reconciler` command line end to end: the real process on real
directories, for each filesystem kind, then every subcommand and policy knob.

Each CLI process costs about 0.4 s, so scenarios chain their steps in one test
instead of repeating setup runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import __version__
from reconciler.store import SqliteStore
from tests.conftest import Sandbox, doc, docs
from tests.providers.conformance import mode_of, tree_snapshot

# one lifecycle per kind


@dataclass(frozen=True)
class Kind:
    kind: str
    spec: Callable[[Path], dict[str, Any]]
    check: Callable[[Path], None]
    drift: Callable[[Path], None]
    diff: tuple[str, ...]
    """Lines `plan` must show for the drift."""


def _check_file(root: Path) -> None:
    path = root / "app.conf"
    assert path.is_file() and not path.is_symlink()
    assert path.read_text() == "[server]\nport = 8080\nworkers = 4\n"
    assert mode_of(path) == 0o640


def _drift_file(root: Path) -> None:
    path = root / "app.conf"
    path.write_text("[server]\nport = 9090\nworkers = 4\n")
    os.chmod(path, 0o644)


def _check_dir(root: Path) -> None:
    path = root / "data"
    assert path.is_dir() and not path.is_symlink()
    assert mode_of(path) == 0o750


def _check_link(root: Path) -> None:
    assert os.readlink(root / "current") == "releases/2"


def _drift_link(root: Path) -> None:
    os.unlink(root / "current")
    os.symlink("releases/1", root / "current")


KINDS = [
    Kind(
        "File",
        lambda root: {
            "path": str(root / "app.conf"),
            "content": "[server]\nport = 8080\nworkers = 4\n",
            "mode": "0640",
        },
        _check_file,
        _drift_file,
        ("content: 2 lines changed", "-  port = 9090", "+  port = 8080", 'mode: "0644" -> "0640"'),
    ),
    Kind(
        "Directory",
        lambda root: {"path": str(root / "data"), "mode": "0750"},
        _check_dir,
        lambda root: os.chmod(root / "data", 0o777),
        ('mode: "0777" -> "0750"',),
    ),
    Kind(
        "Symlink",
        lambda root: {"path": str(root / "current"), "target": "releases/2"},
        _check_link,
        _drift_link,
        ('target: "releases/1" -> "releases/2"',),
    ),
]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_lifecycle_create_no_op_drift_heal(sandbox: Sandbox, kind: Kind) -> None:
    rid = f"{kind.kind}/thing"
    sandbox.write("app.yaml", doc(kind.kind, "thing", kind.spec(sandbox.root)))
    empty = tree_snapshot(sandbox.root)

    planned = sandbox.run("plan", check=2)
    assert re.search(rf"^\s+\+ {re.escape(rid)}\s", planned.stdout, re.M), planned.stdout
    assert "Plan: 1 to create, 0 to change, 0 to delete, 0 unchanged." in planned.stdout
    assert tree_snapshot(sandbox.root) == empty, "plan created something"
    assert not sandbox.state.exists(), "plan created the state directory"

    created = sandbox.run("apply", check=0)
    assert "1 created" in created.stdout and "Apply complete" in created.stdout
    kind.check(sandbox.root)
    converged = tree_snapshot(sandbox.root)

    again = sandbox.run("apply", check=0)
    assert "0 created, 0 updated, 0 healed" in again.stdout and "1 unchanged" in again.stdout
    assert tree_snapshot(sandbox.root) == converged, "a no-op apply touched the object"
    nothing = sandbox.run("plan", check=0)
    assert "No changes" in nothing.stdout

    kind.drift(sandbox.root)
    drifted = tree_snapshot(sandbox.root)
    shown = sandbox.run("plan", check=2)
    assert re.search(rf"^\s+~ {re.escape(rid)}\s.*drifted: will heal", shown.stdout, re.M)
    for line in kind.diff:
        assert line in shown.stdout, f"{line!r} not in plan:\n{shown.stdout}"
    assert "0 to create, 1 to change, 0 to delete" in shown.stdout
    assert tree_snapshot(sandbox.root) == drifted, "plan touched the drifted object"

    healed = sandbox.run("apply", check=0)
    assert "1 healed" in healed.stdout
    kind.check(sandbox.root)


def test_plan_leaves_an_existing_state_directory_untouched(sandbox: Sandbox) -> None:
    sandbox.write("a.yaml", doc("File", "a", {"path": str(sandbox.root / "a"), "content": "a\n"}))
    sandbox.run("apply", check=0)
    before = tree_snapshot(sandbox.state)

    sandbox.run("plan", check=0)

    assert tree_snapshot(sandbox.state) == before


# prune and release


def test_removed_manifests_are_pruned_and_adopted_objects_released(sandbox: Sandbox) -> None:
    root = sandbox.root
    (root / "same.txt").write_text("already right\n")
    (root / "diff.txt").write_text("hand written\n")
    sandbox.write("keep.yaml", doc("Directory", "keep", {"path": str(root / "keep")}))
    gone = sandbox.write(
        "gone.yaml",
        docs(
            doc("Directory", "gone-dir", {"path": str(root / "gone")}),
            doc("File", "gone-file", {"path": str(root / "gone/f.txt"), "content": "x\n"}),
            doc("Symlink", "gone-link", {"path": str(root / "link"), "target": "gone"}),
            doc(
                "File",
                "kept-file",
                {"path": str(root / "kept.txt"), "content": "kept\n"},
                {"prune": False},
            ),
        ),
    )
    adopted = sandbox.write(
        "adopted.yaml",
        docs(
            doc(
                "File",
                "adopted-same",
                {"path": str(root / "same.txt"), "content": "already right\n"},
            ),
            doc("File", "adopted-diff", {"path": str(root / "diff.txt"), "content": "managed\n"}),
        ),
    )
    first = sandbox.run("apply", check=0)
    assert "5 created, 1 updated" in first.stdout and "1 unchanged" in first.stdout
    gone.unlink()
    adopted.unlink()

    planned = sandbox.run("plan", check=2)
    for rid in ("Directory/gone-dir", "File/gone-file", "Symlink/gone-link"):
        assert re.search(rf"- {rid}\s.*created by reconciler: will delete", planned.stdout), rid
    for rid in ("File/kept-file", "File/adopted-same", "File/adopted-diff"):
        assert re.search(rf"- {rid}\s.*will release, object kept", planned.stdout), rid
    assert "3 to delete, 3 to release, 1 unchanged" in planned.stdout

    pruned = sandbox.run("apply", "--max-prune-share", "0.9", check=0)
    assert "3 deleted, 3 released" in pruned.stdout
    assert not (root / "gone").exists()
    assert not os.path.lexists(root / "link")
    assert (root / "kept.txt").read_text() == "kept\n"
    assert (root / "same.txt").read_text() == "already right\n"
    assert (root / "diff.txt").read_text() == "managed\n"
    assert (root / "keep").is_dir()

    after = sandbox.run("plan", check=0)
    assert "No changes" in after.stdout, "pruned resources must leave the inventory"


def test_prune_keeps_a_directory_with_unmanaged_entries(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write("keep.yaml", doc("File", "keep", {"path": str(root / "keep"), "content": ""}))
    sandbox.write("old.yaml", doc("Directory", "old", {"path": str(root / "old")}))
    sandbox.run("apply", check=0)
    (root / "old/notes.txt").write_text("mine\n")
    (sandbox.config / "old.yaml").unlink()

    refused = sandbox.run("apply", check=1)

    line = next(x for x in refused.stdout.splitlines() if "Directory/old" in x)
    assert line.startswith("failed") and "notes.txt" in line and "not empty" in line
    assert (root / "old/notes.txt").read_text() == "mine\n"
    planned = sandbox.run("plan", check=2)
    assert re.search(r"- Directory/old\s.*will delete", planned.stdout), "still in the inventory"


def test_many_resources_in_one_pass(sandbox: Sandbox) -> None:
    root = sandbox.root
    count = 200
    sandbox.write(
        "many.yaml",
        docs(
            doc("Directory", "many", {"path": str(root / "many")}),
            *(
                doc(
                    "File",
                    f"f{n:03}",
                    {"path": str(root / f"many/{n:03}.txt"), "content": f"{n}\n"},
                )
                for n in range(count)
            ),
        ),
    )
    created = sandbox.run("apply", check=0)
    assert f"{count + 1} created" in created.stdout
    assert all((root / f"many/{n:03}.txt").read_text() == f"{n}\n" for n in range(count))

    for n in (7, 100, 199):
        (root / f"many/{n:03}.txt").write_text("edited\n")
    planned = sandbox.run("plan", check=2)
    changed = re.findall(r"^\s+~ (File/f\d+)\s", planned.stdout, re.M)
    assert changed == ["File/f007", "File/f100", "File/f199"], planned.stdout
    healed = sandbox.run("apply", check=0)
    assert "3 healed" in healed.stdout and f"{count - 2} unchanged" in healed.stdout
    assert all((root / f"many/{n:03}.txt").read_text() == f"{n}\n" for n in range(count))


# JSON output


def test_plan_json_and_apply_json(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "d", {"path": str(root / "d"), "mode": "0755"}),
            doc("File", "f", {"path": str(root / "d/f.txt"), "content": "one\ntwo\n"}),
        ),
    )
    link = sandbox.write("link.yaml", doc("Symlink", "l", {"path": str(root / "l"), "target": "d"}))

    planned = json.loads(sandbox.run("plan", "--json", check=2).stdout)
    assert set(planned) == {"schemaVersion", "revision", "changes", "summary"}
    assert planned["summary"] == {"create": 3}
    by_id = {c["id"]: c for c in planned["changes"]}
    assert set(by_id) == {"Directory/d", "File/f", "Symlink/l"}
    assert by_id["File/f"]["action"] == "create"
    assert by_id["File/f"]["describe"] == str(root / "d/f.txt")
    assert {"field": "/content", "observed": None, "desired": "one\ntwo\n"} in by_id["File/f"][
        "changes"
    ]
    assert by_id["Symlink/l"]["changes"] == [{"field": "/target", "observed": None, "desired": "d"}]

    applied = json.loads(sandbox.run("apply", "--json", check=0).stdout)
    assert applied["ok"] is True
    assert applied["revision"] == planned["revision"]
    assert applied["counts"] == {
        "created": 3,
        "updated": 0,
        "healed": 0,
        "deleted": 0,
        "released": 0,
        "unchanged": 0,
        "drifted": 0,
        "suspended": 0,
        "failed": 0,
        "blocked": 0,
    }
    assert sorted((r["id"], r["state"], r["action"]) for r in applied["results"]) == [
        ("Directory/d", "InSync", "created"),
        ("File/f", "InSync", "created"),
        ("Symlink/l", "InSync", "created"),
    ]
    assert set(applied["timings"]) == {"load", "engine"}

    (root / "d/f.txt").write_text("one\n2\n")
    link.unlink()
    planned = json.loads(sandbox.run("plan", "--json", check=2).stdout)
    assert planned["summary"] == {"none": 1, "drift": 1, "delete": 1}
    by_id = {c["id"]: c for c in planned["changes"]}
    assert set(by_id) == {"File/f", "Symlink/l"}
    assert by_id["File/f"]["action"] == "drift"
    assert by_id["File/f"]["changes"] == [
        {"field": "/content", "observed": "one\n2\n", "desired": "one\ntwo\n"}
    ]
    assert by_id["Symlink/l"]["action"] == "delete"

    applied = json.loads(sandbox.run("apply", "--json", check=0).stdout)
    counts = {k: v for k, v in applied["counts"].items() if v}
    assert counts == {"healed": 1, "deleted": 1, "unchanged": 1}
    assert (root / "d/f.txt").read_text() == "one\ntwo\n"
    assert not os.path.lexists(root / "l")


# the other subcommands


def test_validate_ok_and_error(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "d", {"path": str(root / "d")}),
            doc("File", "f", {"path": str(root / "d/f"), "content": "x\n"}),
        ),
    )

    ok = sandbox.run("validate", check=0)
    assert re.search(r": valid \(revision [0-9a-f]+, 2 resources\)", ok.stdout), ok.stdout

    sandbox.write("broken.yaml", doc("File", "g", {"path": str(root / "g"), "mode": "0644"}))
    bad = sandbox.run("validate", check=1)
    assert "broken.yaml:" in bad.stderr
    assert "expected exactly one of content, source, template" in bad.stderr
    assert not (root / "d").exists() and not sandbox.state.exists()


def test_graph_shows_the_implicit_directory_to_file_edge(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "app", {"path": str(root / "srv/app")}),
            doc("File", "config", {"path": str(root / "srv/app/conf/config.ini"), "content": ""}),
            doc("Symlink", "current", {"path": str(root / "srv/current"), "target": "app"}),
        ),
    )

    mermaid = sandbox.run("graph", check=0).stdout
    assert mermaid.startswith("graph LR")
    declared = re.findall(r'^\s+(\w+)\["([^"]+)"\]$', mermaid, re.M)
    nodes = {label: node for node, label in declared}
    assert set(nodes) == {"Directory/app", "File/config", "Symlink/current"}
    edges = re.findall(r"^\s+(\w+) --> (\w+)$", mermaid, re.M)
    assert edges == [(nodes["Directory/app"], nodes["File/config"])]

    dot = sandbox.run("graph", "--format", "dot", check=0).stdout
    assert dot.startswith("digraph")
    assert '"Directory/app" -> "File/config";' in dot
    assert dot.count("->") == 1


def test_providers_lists_every_kind_and_its_fields(sandbox: Sandbox) -> None:
    listed = json.loads(sandbox.run("providers", "--json", check=0).stdout)
    by_kind = {row["kind"]: row for row in listed}
    assert set(by_kind) >= {"File", "Directory", "Symlink"}
    expected = {
        "File": {"path", "content", "source", "template", "vars", "mode", "owner", "group"},
        "Directory": {"path", "mode", "owner", "group"},
        "Symlink": {"path", "target"},
    }
    for kind, names in expected.items():
        fields = {f["name"]: f for f in by_kind[kind]["fields"]}
        assert set(fields) == names, kind
        assert fields["path"]["required"] is True
        assert by_kind[kind]["summary"]
    assert by_kind["Symlink"]["fields"][1]["required"] is True
    assert by_kind["File"]["module"] == "reconciler.providers.files"

    text = sandbox.run("providers", check=0).stdout
    for kind in ("File", "Directory", "Symlink"):
        assert re.search(rf"^{kind}\s", text, re.M), text
    assert re.search(r"^\s+target\s+str\s+\(required\)$", text, re.M), text


def test_providers_shows_readable_field_types(sandbox: Sandbox) -> None:
    text = sandbox.run("providers", check=0).stdout
    mode = re.search(r"^\s+mode\s+(.*)$", text, re.M)
    assert mode is not None, text
    # a type a reader can use, not a repr with memory addresses that changes every run
    assert "0x" not in text and "<function" not in text, mode.group(1)


def test_version(sandbox: Sandbox) -> None:
    assert sandbox.run("version", check=0).stdout == f"reconciler {__version__}\n"
    assert __version__ in sandbox.run("--version", check=0).stdout


# policy knobs


def test_drift_warn_reports_without_touching(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc(
                "Directory",
                "reports",
                {"path": str(root / "reports"), "mode": "0750"},
                {"drift": "warn"},
            ),
            doc("File", "motd", {"path": str(root / "motd"), "content": "hi\n"}, {"drift": "warn"}),
        ),
    )
    sandbox.run("apply", check=0)
    os.chmod(root / "reports", 0o777)
    (root / "motd").write_text("changed by hand\n")
    drifted = tree_snapshot(root)

    planned = sandbox.run("plan", check=0)  # apply would change nothing
    assert re.search(r"~ Directory/reports\s.*policy warn: reported, not healed", planned.stdout)
    assert 'mode: "0777" -> "0750"' in planned.stdout
    assert "2 drifted (warn only)" in planned.stdout

    applied = sandbox.run("apply", check=0)
    assert "drifted Directory/reports: policy warn, not healed" in applied.stdout
    assert "drifted File/motd: policy warn, not healed" in applied.stdout
    assert "0 healed" in applied.stdout and "2 drifted" in applied.stdout
    assert tree_snapshot(root) == drifted
    assert mode_of(root / "reports") == 0o777

    # switching the policy to heal (the spec unchanged) heals on the next apply
    text = (sandbox.config / "app.yaml").read_text()
    sandbox.write("app.yaml", text.replace("drift: warn", "drift: heal", 1))
    switched = sandbox.run("apply", check=0)
    assert "1 healed" in switched.stdout and "1 drifted" in switched.stdout
    assert mode_of(root / "reports") == 0o750
    assert (root / "motd").read_text() == "changed by hand\n"


def test_ignore_fields_excludes_a_field_from_drift(sandbox: Sandbox) -> None:
    path = sandbox.root / "app.conf"
    spec = {"path": str(path), "content": "a = 1\n", "mode": "0640"}
    sandbox.write("app.yaml", doc("File", "conf", spec, {"ignoreFields": ["/mode"]}))
    sandbox.run("apply", check=0)
    assert mode_of(path) == 0o640  # a create sets every field
    os.chmod(path, 0o600)

    planned = sandbox.run("plan", check=0)
    assert "No changes" in planned.stdout
    unchanged = sandbox.run("apply", check=0)
    assert "1 unchanged" in unchanged.stdout
    assert mode_of(path) == 0o600


def test_healing_one_field_leaves_an_ignored_field_alone(sandbox: Sandbox) -> None:
    path = sandbox.root / "app.conf"
    spec = {"path": str(path), "content": "a = 1\n", "mode": "0640"}
    sandbox.write("app.yaml", doc("File", "conf", spec, {"ignoreFields": ["/mode"]}))
    sandbox.run("apply", check=0)
    os.chmod(path, 0o600)
    path.write_text("a = 2\n")

    planned = sandbox.run("plan", check=2)
    assert "content:" in planned.stdout and "mode:" not in planned.stdout
    healed = sandbox.run("apply", check=0)

    assert "1 healed" in healed.stdout
    assert path.read_text() == "a = 1\n"
    # the plan said content only; the apply must not reset the ignored mode
    assert mode_of(path) == 0o600


def test_renaming_resources_keeps_their_objects(sandbox: Sandbox) -> None:
    # the old ids are pruned while the new ids adopt the same paths; whether a
    # prune lands before or after the adoption is a race, so rename many at once
    count = 20
    paths = [sandbox.root / f"app-{n}.conf" for n in range(count)]

    def revision(prefix: str) -> str:
        return docs(
            *(
                doc("File", f"{prefix}-{n}", {"path": str(p), "content": f"{n}\n"})
                for n, p in enumerate(paths)
            )
        )

    sandbox.write(
        "keep.yaml", doc("File", "keep", {"path": str(sandbox.root / "k"), "content": ""})
    )
    sandbox.write("app.yaml", revision("old"))
    sandbox.run("apply", "--max-prune-share", "1", check=0)

    sandbox.write("app.yaml", revision("new"))
    renamed = sandbox.run("apply", "--max-prune-share", "1", check=0)

    missing = [p.name for p in paths if not p.exists()]
    assert not missing, f"renamed resources lost their files {missing}:\n{renamed.stdout}"
    assert "No changes" in sandbox.run("plan", check=0).stdout


def test_suspend_pauses_and_resume_converges(sandbox: Sandbox) -> None:
    root = sandbox.root
    spec = {"path": str(root / "a.txt"), "content": "v1\n"}
    sandbox.write("a.yaml", doc("File", "a", spec))
    sandbox.run("apply", check=0)

    sandbox.write(
        "a.yaml",
        docs(
            doc("File", "a", {**spec, "content": "v2\n"}, {"suspend": True}),
            doc("File", "b", {"path": str(root / "b.txt"), "content": "b\n"}, {"suspend": True}),
        ),
    )
    (root / "a.txt").write_text("drifted\n")
    paused = sandbox.run("apply", check=0)
    assert "2 suspended" in paused.stdout and "0 created, 0 updated, 0 healed" in paused.stdout
    assert (root / "a.txt").read_text() == "drifted\n"
    assert not (root / "b.txt").exists()
    planned = sandbox.run("plan", check=0)
    assert "2 suspended" in planned.stdout

    sandbox.write(
        "a.yaml",
        docs(
            doc("File", "a", {**spec, "content": "v2\n"}),
            doc("File", "b", {"path": str(root / "b.txt"), "content": "b\n"}),
        ),
    )
    resumed = sandbox.run("apply", check=0)
    assert "1 created, 1 updated" in resumed.stdout
    assert (root / "a.txt").read_text() == "v2\n"
    assert (root / "b.txt").read_text() == "b\n"


def test_mass_prune_is_refused_unless_allowed(sandbox: Sandbox) -> None:
    root = sandbox.root
    names = ("a", "b", "c")
    for name in names:
        sandbox.write(
            f"{name}.yaml", doc("File", name, {"path": str(root / name), "content": "x\n"})
        )
    sandbox.run("apply", check=0)
    for name in names:
        (sandbox.config / f"{name}.yaml").unlink()

    everything = sandbox.run("apply", check=1)
    assert "would prune all 3 managed resources" in everything.stderr
    assert "--allow-mass-prune" in everything.stderr and "nothing applied" in everything.stderr
    assert all((root / name).exists() for name in names)

    sandbox.write("a.yaml", doc("File", "a", {"path": str(root / "a"), "content": "x\n"}))
    most = sandbox.run("apply", check=1)
    assert "would prune 2 of 3" in most.stderr
    assert all((root / name).exists() for name in names)

    allowed = sandbox.run("apply", "--allow-mass-prune", check=0)
    assert "2 deleted" in allowed.stdout and "1 unchanged" in allowed.stdout
    assert (root / "a").exists()
    assert not (root / "b").exists() and not (root / "c").exists()


def test_a_second_apply_on_a_locked_state_dir_fails_clearly(sandbox: Sandbox) -> None:
    path = sandbox.root / "a.txt"
    sandbox.write("a.yaml", doc("File", "a", {"path": str(path), "content": "x\n"}))
    holder = SqliteStore(sandbox.state)
    try:
        blocked = sandbox.run("apply", check=1)
    finally:
        holder.close()

    assert "in use by another reconciler" in blocked.stderr
    assert f"pid {os.getpid()}" in blocked.stderr
    assert str(sandbox.state) in blocked.stderr
    assert not path.exists()
    sandbox.run("apply", check=0)
    assert path.read_text() == "x\n"


def test_the_help_lists_the_installed_kinds() -> None:
    """`--help` names what is installed here, no more (issue 10)."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(result.stdout.split())
    installed = sorted({ep.name for ep in entry_points(group="reconciler.providers")})
    assert f"Installed kinds: {', '.join(installed)} " in text

"""`reconciler diff --from REV --to REV`: two revisions of a real git repository
compared without the system (no --root, no state directory): added, removed and
changed resources with their fields, secrets masked, exit codes 0/2/1, an invalid
revision named with its errors, a symlink out of the export not followed, and
docs/ci.md's diff step run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import doc, docs

pytestmark = pytest.mark.timeout(60)

CI_DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"
SECRET_OLD = "old-hunter2-secret"
SECRET_NEW = "new-hunter3-secret"
ENV = {
    **os.environ,
    "RECONCILER_SECRET_ENV": "RECONCILER_SECRET_*",
    "RECONCILER_SECRET_DB_OLD": SECRET_OLD,
    "RECONCILER_SECRET_DB_NEW": SECRET_NEW,
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD").strip()


def _diff(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "diff", *args],
        cwd=repo,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _secret_file(name: str, env: str) -> str:
    return doc("File", name, {"path": f"/srv/{name}", "content": {"valueFrom": {"env": env}}})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: configs/ with keep, gone and a secret-bearing file; then `pr`: keep
    changed (content, mode, policy), gone removed, new added, the secret switched."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    before = docs(
        doc("File", "keep", {"path": "/srv/keep.txt", "content": "one\n"}),
        doc("File", "gone", {"path": "/srv/gone.txt", "content": "x"}),
        _secret_file("db", "RECONCILER_SECRET_DB_OLD"),
    )
    _commit(repo, {"configs/app.yaml": before, "README": "not a manifest\n"}, "base")
    _git(repo, "tag", "v1")
    after = docs(
        doc(
            "File",
            "keep",
            {"path": "/srv/keep.txt", "content": "one\ntwo\n", "mode": "0600"},
            {"drift": "warn"},
        ),
        doc("Directory", "new", {"path": "/srv/new"}),
        _secret_file("db", "RECONCILER_SECRET_DB_NEW"),
    )
    _git(repo, "checkout", "-q", "-b", "pr")
    _commit(repo, {"configs/app.yaml": after}, "change")
    return repo


def test_diff_lists_added_removed_and_changed_fields_with_secrets_masked(repo: Path) -> None:
    result = _diff(repo, "--from", "main", "--to", "pr", "--path", "configs")
    assert result.returncode == 2, result.stderr
    out = result.stdout
    assert out.startswith("reconciler diff configs  main (")
    assert "  ~ File/keep" in out
    assert "      content: 1 line changed" in out
    assert "        +  two" in out
    assert '      mode: (none) -> "0600"' in out
    assert '      policy.drift: "heal" -> "warn"' in out
    assert "  + Directory/new" in out
    assert "  - File/gone" in out
    assert "  ~ File/db" in out
    assert "      content: (sensitive value changed)" in out
    assert out.endswith("Diff: 1 to add, 2 to change, 1 to remove, 0 unchanged.\n")
    for shown in (out, _diff(repo, "--from", "v1", "--to", "pr", "--path", "configs").stdout):
        assert SECRET_OLD not in shown and SECRET_NEW not in shown
        assert "sensitive:" not in shown  # not even the digests

    data = json.loads(
        _diff(repo, "--from", "v1", "--to", "HEAD", "--path", "configs", "--format", "json").stdout
    )
    assert data["schemaVersion"] == 1
    assert (
        data["from"]["rev"] == "v1"
        and data["to"]["commit"] == _git(repo, "rev-parse", "pr").strip()
    )
    assert data["summary"] == {"added": 1, "changed": 2, "removed": 1, "unchanged": 0}
    by_id = {r["id"]: r for r in data["resources"]}
    assert by_id["File/gone"]["action"] == "removed"
    assert by_id["Directory/new"]["action"] == "added"
    assert {"in": "policy", "field": "/drift", "before": "heal", "after": "warn"} in by_id[
        "File/keep"
    ]["changes"]
    assert by_id["File/db"]["changes"] == [{"in": "spec", "field": "/content", "sensitive": True}]
    assert SECRET_NEW not in json.dumps(data) and "sensitive:" not in json.dumps(data)

    markdown = _diff(
        repo, "--from", "main", "--to", "pr", "--path", "configs", "--format", "markdown"
    )
    assert markdown.returncode == 2
    assert markdown.stdout.startswith("### reconciler diff configs")
    assert "**Diff: 1 to add, 2 to change, 1 to remove, 0 unchanged.**" in markdown.stdout
    assert markdown.stdout.count("<details>") == 4
    assert SECRET_NEW not in markdown.stdout and "sensitive:" not in markdown.stdout


def test_the_same_desired_state_exits_0_and_the_reverse_swaps_added_and_removed(
    repo: Path,
) -> None:
    # a comment, a moved file, another order: the same desired state
    text = (repo / "configs/app.yaml").read_text()
    (repo / "configs/app.yaml").unlink()
    _commit(repo, {"configs/moved/app.yaml": "# moved\n" + text}, "move")
    same = _diff(repo, "--from", "HEAD~1", "--to", "HEAD", "--path", "configs")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "No changes." in same.stdout and "3 unchanged." in same.stdout
    back = _diff(repo, "--from", "pr", "--to", "main", "--path", "configs")
    assert back.returncode == 2
    assert "  + File/gone" in back.stdout and "  - Directory/new" in back.stdout


def test_an_invalid_or_unknown_revision_is_named_with_its_errors(repo: Path) -> None:
    bad = doc("File", "bad", {"path": "/srv/bad", "colour": "red"})
    sha = _commit(repo, {"configs/bad.yaml": bad}, "bad")
    result = _diff(repo, "--from", "main", "--to", "HEAD", "--path", "configs")
    assert result.returncode == 1
    assert result.stdout == ""
    first, *issues = result.stderr.splitlines()
    assert first == f"error: revision HEAD ({sha[:12]}) is invalid: 1 error:"
    assert len(issues) == 1 and re.match(r"  bad\.yaml:\d+: spec\.colour", issues[0]), issues

    unknown = _diff(repo, "--from", "no-such-branch", "--to", "HEAD")
    assert unknown.returncode == 1
    assert "revision 'no-such-branch' is not a commit of" in unknown.stderr
    option = _diff(repo, "--from=--output=/tmp/x", "--to", "HEAD")
    assert option.returncode == 1 and "not a valid revision name" in option.stderr
    elsewhere = _diff(repo.parent, "--from", "main", "--to", "pr", "--repo", str(repo.parent))
    assert elsewhere.returncode == 1 and "not inside a git repository" in elsewhere.stderr
    neither = _diff(repo, "--from", "main", "--to", "pr", "--path", "nothing/here")
    assert neither.returncode == 1 and "exists at neither revision" in neither.stderr


def test_a_path_added_by_the_change_and_a_symlink_out_of_the_export(
    repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(doc("File", "stolen", {"path": "/srv/stolen", "content": "x"}))
    (repo / "other").mkdir()
    (repo / "other/link.yaml").symlink_to(outside)
    _commit(repo, {"other/app.yaml": doc("Directory", "d", {"path": "/srv/d"})}, "other")
    result = _diff(repo, "--from", "main", "--to", "HEAD", "--path", "other")
    assert result.returncode == 2, result.stderr
    assert re.search(r"  main \(\w{12}\), path absent -> HEAD", result.stdout)
    assert "skipping other/link.yaml: its link target leaves the tree" in result.stderr
    assert "  + Directory/d" in result.stdout
    assert "stolen" not in result.stdout


def test_the_ci_docs_diff_step_runs_as_written(repo: Path) -> None:
    steps = re.findall(
        r"^\s*(?:- |run: )(git fetch .*reconciler diff .*)$", CI_DOC.read_text(), re.M
    )
    assert len(steps) == 2 and steps[0] == steps[1], steps  # GitHub and GitLab alike
    origin = repo.parent / "origin.git"
    _git(repo.parent, "clone", "-q", "--bare", str(repo), str(origin))
    _git(repo, "remote", "add", "origin", str(origin))
    env = {
        **ENV,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CONFIG": "configs/",
        "BASE": _git(repo, "rev-parse", "main").strip(),
    }
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", steps[0]],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    posted = (repo / "diff.md").read_text()
    assert "**Diff: 1 to add, 2 to change, 1 to remove, 0 unchanged.**" in posted


BUNDLE_DEF = """\
apiVersion: reconciler/v1
kind: BundleDefinition
parameters:
  port: {type: integer, default: 8080}
  name: {type: string}
"""
BUNDLE_FILE = """\
apiVersion: reconciler/v1
kind: File
metadata: {name: conf}
spec: {path: "/srv/${{ values.name }}.conf", content: "port ${{ values.port }}\\n"}
"""


def _instance(name: str, values: str) -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: Bundle\nmetadata: {{name: {name}}}\n"
        f"spec: {{source: ./b, namePrefix: {name}-, values: {values}}}\n"
    )


def test_diff_shows_the_bundle_values_that_change_underneath(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    base = {
        "c/b/bundle.yaml": BUNDLE_DEF,
        "c/b/conf.yaml": BUNDLE_FILE,
        "c/sites.yaml": _instance("a", "{name: a}") + "---\n" + _instance("old", "{name: o}"),
    }
    _commit(repo, base, "base")
    sites = _instance("a", "{name: a, port: 9090}") + "---\n" + _instance("new", "{name: n}")
    _commit(repo, {"c/sites.yaml": sites}, "change")
    text = _diff(repo, "--from", "HEAD~1", "--to", "HEAD", "--path", "c")
    assert text.returncode == 2, text.stderr
    lines = [line.rstrip() for line in text.stdout.splitlines()]
    assert "  ~ Bundle/a  b" in lines
    assert "      values.port: 8080 -> 9090" in lines, text.stdout
    assert "  + Bundle/new  b" in lines and "  - Bundle/old  b" in lines
    assert any(
        line.startswith("  ~ File/a-conf") and line.endswith("(from Bundle/a)") for line in lines
    ), text.stdout
    assert text.stdout.rstrip().endswith("Bundle instances: 1 added, 1 changed, 1 removed."), (
        text.stdout
    )
    data = json.loads(
        _diff(repo, "--from", "HEAD~1", "--to", "HEAD", "--path", "c", "--format", "json").stdout
    )
    (changed,) = [i for i in data["instances"] if i["action"] == "changed"]
    assert changed["id"] == "Bundle/a" and changed["changes"][0]["field"] == "/values/port"
    conf = next(r for r in data["resources"] if r["id"] == "File/a-conf")
    assert conf["instance"] == "Bundle/a"
    markdown = _diff(
        repo, "--from", "HEAD~1", "--to", "HEAD", "--path", "c", "--format", "markdown"
    )
    assert "<code>~ Bundle/a</code> change: bundle b" in markdown.stdout

"""Saved plans through the real CLI on real directories: `plan --out FILE` then
`apply FILE` applies exactly that plan, and refuses (exit 1, nothing applied,
naming what moved) after a hand edit of a managed file, a new revision, an edit
of the plan file itself, or against another state directory; the file never
holds a secret."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import Sandbox, doc, docs


def _apply_file(
    plan: Path, *args: str, check: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`reconciler apply FILE`, as a user types it: no config, root or state dir."""
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", str(plan), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check is not None:
        assert result.returncode == check, (result.stdout, result.stderr)
    return result


def _tree(sandbox: Sandbox, content: str = "one\n") -> None:
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "d", {"path": str(root / "d"), "mode": "0755"}),
            doc("File", "f", {"path": str(root / "d/f.txt"), "content": content}),
            doc("File", "g", {"path": str(root / "g.txt"), "content": "gee\n"}),
        ),
    )


def test_a_saved_plan_is_applied_and_then_is_stale(sandbox: Sandbox, tmp_path: Path) -> None:
    _tree(sandbox)
    plan = tmp_path / "tfplan"
    shown = sandbox.run("plan", "--out", str(plan), check=2)
    assert "+ File/f" in shown.stdout  # still the plan, in the chosen format
    assert f"reconciler apply {plan}" in shown.stderr
    assert stat.S_IMODE(plan.stat().st_mode) == 0o600
    saved = json.loads(plan.read_text())
    assert (saved["format"], saved["version"]) == ("reconciler-plan", 1)
    assert [(r["id"], r["action"]) for r in saved["resources"]] == [
        ("Directory/d", "create"),
        ("File/f", "create"),
        ("File/g", "create"),
    ]
    assert all(r["observed"].startswith("hmac-sha256:") for r in saved["resources"])

    applied = _apply_file(plan, check=0)
    assert "3 created" in applied.stdout
    assert (sandbox.root / "d/f.txt").read_text() == "one\n"

    # what the plan rested on (nothing there) is gone: applied once only
    again = _apply_file(plan, check=1)
    assert "Directory/d: observed state changed since the plan" in again.stderr
    assert "nothing applied" in again.stderr


def test_a_hand_edit_between_plan_and_apply_refuses_the_plan(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    _tree(sandbox)
    sandbox.run("apply", check=0)
    _tree(sandbox, content="two\n")
    plan = tmp_path / "tfplan"
    sandbox.run("plan", "--out", str(plan), check=2)
    (sandbox.root / "g.txt").write_text("edited by hand\n")  # unchanged in the plan

    refused = _apply_file(plan, check=1)
    assert refused.stderr.splitlines() == [
        f"error: the saved plan {plan} is refused, nothing applied (plan again):",
        "  File/g: observed state changed since the plan",
    ]
    assert (sandbox.root / "d/f.txt").read_text() == "one\n"  # the planned change too
    assert (sandbox.root / "g.txt").read_text() == "edited by hand\n"


def test_a_new_revision_refuses_the_plan(sandbox: Sandbox, tmp_path: Path) -> None:
    _tree(sandbox)
    plan = tmp_path / "tfplan"
    sandbox.run("plan", "--out", str(plan), check=2)
    planned = json.loads(plan.read_text())["revision"]
    _tree(sandbox, content="two\n")

    refused = _apply_file(plan, check=1)
    now = sandbox.run("validate", check=0).stdout.split("revision ")[1].split(",")[0]
    assert f"  revision changed: planned {planned}, now {now}" in refused.stderr.splitlines()
    assert "  File/f: desired spec changed since the plan" in refused.stderr.splitlines()
    assert not (sandbox.root / "d").exists()


def test_an_edited_plan_file_or_another_state_dir_is_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    _tree(sandbox)
    plan = tmp_path / "tfplan"
    sandbox.run("plan", "--out", str(plan), check=2)
    text = plan.read_text()

    edited = tmp_path / "edited"
    document = json.loads(text)
    document["resources"] = [r for r in document["resources"] if r["id"] != "File/g"]
    edited.write_text(json.dumps(document, indent=2))
    refused = _apply_file(edited, check=1)
    assert "was changed after it was written" in refused.stderr

    other = tmp_path / "other-state"
    refused = _apply_file(plan, "--state-dir", str(other), check=1)
    assert "planned against the state directory" in refused.stderr

    refused = _apply_file(plan, "--root", str(tmp_path), check=1)
    assert "was planned with other --root" in refused.stderr
    assert not (sandbox.root / "d").exists()

    future = tmp_path / "future"
    future.write_text(text.replace('"version": 1', '"version": 9', 1))
    assert "of version 9" in _apply_file(future, check=1).stderr


def test_the_plan_file_holds_no_secret(sandbox: Sandbox, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("s3cr3t-Token-Value\n")
    target = sandbox.root / "token.txt"
    target.write_text("0ld-Secret-Value\n")  # observed in clear by the preview
    spec = {"path": str(target), "content": {"valueFrom": {"file": str(secrets / "token")}}}
    sandbox.write("secret.yaml", doc("File", "token", spec))
    plan = tmp_path / "tfplan"
    for fmt in ("text", "json", "markdown"):
        sandbox.run("plan", "--format", fmt, "--out", str(plan), check=2)
        text = plan.read_text()
        for secret in ("s3cr3t-Token-Value", "0ld-Secret-Value"):
            assert secret.casefold() not in text.casefold()
            assert secret[::-1].casefold() not in text.casefold()
    _apply_file(plan, check=0)
    assert target.read_text() == "s3cr3t-Token-Value\n"  # the whole file, as read


def test_a_plan_without_changes_applies_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    _tree(sandbox)
    sandbox.run("apply", check=0)
    plan = tmp_path / "tfplan"
    sandbox.run("plan", "--out", str(plan), check=0)
    assert all(r["action"] == "none" for r in json.loads(plan.read_text())["resources"])
    applied = _apply_file(plan, check=0)
    assert "0 created, 0 updated" in applied.stdout


def test_a_plan_with_an_error_is_not_saved(sandbox: Sandbox, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sandbox.root / "escape").symlink_to(outside)
    spec = {"path": str(sandbox.root / "escape/x"), "content": "x\n"}
    sandbox.write("bad.yaml", doc("File", "x", spec))
    plan = tmp_path / "tfplan"
    result = sandbox.run("plan", "--out", str(plan), check=1)
    assert f"error: plan not saved to {plan}: File/x could not be planned" in result.stderr
    assert not plan.exists()


def test_the_ci_docs_saved_plan_commands_as_written(sandbox: Sandbox, tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "ci.md").read_text()
    section = text.split("## Saved plans", 1)[1]
    commands = section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [c.split()[1] for c in commands] == ["plan", "apply"]
    _tree(sandbox)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CONFIG": str(sandbox.config),
        "ROOT": str(sandbox.root),
        "STATE": str(sandbox.state),
    }
    for command in commands:
        result = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (command, result.stderr)
    assert "<details>" in (tmp_path / "plan.md").read_text()
    assert (sandbox.root / "d/f.txt").read_text() == "one\n"


def test_a_plan_file_in_the_config_tree_must_be_hidden(sandbox: Sandbox) -> None:
    _tree(sandbox)
    visible = sandbox.config / "tfplan"
    refused = sandbox.run("plan", "--out", str(visible), check=1)
    assert "inside the config tree" in refused.stderr and not visible.exists()
    hidden = sandbox.config / ".tfplan"  # a load skips hidden files: the revision holds
    sandbox.run("plan", "--out", str(hidden), check=2)
    _apply_file(hidden, check=0)

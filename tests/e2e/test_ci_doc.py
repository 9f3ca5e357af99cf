"""docs/ci.md's GitHub Actions workflow and GitLab CI job: both parse, both run
the same `reconciler` commands, and those commands, run as written by bash with
the examples' variables pointed at a real tree, post a Markdown plan on a change
and fail the job on an invalid tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Sandbox, doc, docs

CI_DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"


def _examples() -> tuple[dict[str, Any], dict[str, Any]]:
    blocks = re.findall(r"^```yaml\n(.*?)^```$", CI_DOC.read_text(), re.S | re.M)
    github, gitlab = (yaml.safe_load(block) for block in blocks)
    return github, gitlab


def _commands() -> list[str]:
    github, gitlab = _examples()
    steps = github["jobs"]["plan"]["steps"]
    from_github = [s["run"] for s in steps if s.get("run", "").startswith("reconciler ")]
    script = gitlab["reconciler-plan"]["script"]
    from_gitlab = [line for line in script if line.startswith("reconciler ")]
    assert from_github == from_gitlab, "the two examples must run the same commands"
    assert [c.split()[1] for c in from_github] == ["validate", "plan"]
    return from_github


def _run(command: str, sandbox: Sandbox, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CONFIG": str(sandbox.config),
        "ROOT": str(sandbox.root),
        "STATE": str(sandbox.state),
    }
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_ci_examples_commands_plan_a_change_and_fail_on_errors(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    github, _ = _examples()
    assert "pull-requests" in github["permissions"]
    commands = _commands()
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "d", {"path": str(root / "d"), "mode": "0755"}),
            doc("File", "f", {"path": str(root / "d/f.txt"), "content": "one\n"}),
        ),
    )
    for command in commands:  # plan exits 2 (changes): the job goes on
        result = _run(command, sandbox, tmp_path)
        assert result.returncode == 0, (command, result.stderr)
    posted = (tmp_path / "plan.md").read_text()
    assert posted.startswith("### reconciler plan ")
    assert "**Plan: 2 to create, 0 to change, 0 to delete, 0 unchanged.**" in posted
    assert posted.count("<details>") == 2

    sandbox.write("bad.yaml", doc("File", "g", {"path": str(root / "g"), "colour": "red"}))
    for command in commands:  # an invalid tree fails each step
        assert _run(command, sandbox, tmp_path).returncode == 1, command

"""Regressions found while building the core, each through the real CLI process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Sandbox

FILE = """
apiVersion: reconciler/v1
kind: File
metadata:
  name: {name}
spec:
  path: {path}
  {origin}
{policy}"""


def file_doc(name: str, path: Path, origin: str = "content: hello", policy: str = "") -> str:
    return FILE.format(name=name, path=path, origin=origin, policy=policy)


def test_a_root_that_does_not_exist_yet_is_created(sandbox: Sandbox, tmp_path: Path) -> None:
    root = tmp_path / "fresh" / "root"
    sandbox.write("a.yaml", file_doc("a", root / "srv/app/a.txt"))
    argv = [
        sys.executable,
        "-m",
        "reconciler",
        "apply",
        str(sandbox.config),
        "--root",
        str(root),
        "--state-dir",
        str(sandbox.state),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "srv/app/a.txt").read_text() == "hello"


def test_files_from_source_and_template_can_be_pruned(sandbox: Sandbox) -> None:
    sandbox.write("files/src.txt", "from source\n")
    sandbox.write("files/t.j2", "port = {{ port }}\n")
    sandbox.write("keep.yaml", file_doc("keep", sandbox.root / "keep.txt"))
    sandbox.write("s.yaml", file_doc("s", sandbox.root / "s.txt", "source: files/src.txt"))
    sandbox.write(
        "t.yaml", file_doc("t", sandbox.root / "t.txt", "template: files/t.j2\n  vars: {port: 1}")
    )
    sandbox.write("u.yaml", file_doc("u", sandbox.root / "u.txt"))
    sandbox.run("apply", check=0)
    (sandbox.config / "s.yaml").unlink()
    (sandbox.config / "t.yaml").unlink()
    (sandbox.config / "u.yaml").unlink()
    plan = sandbox.run("plan", check=2)
    assert f"{sandbox.root}/s.txt" in plan.stdout and "will delete" in plan.stdout
    assert "apply would refuse" in plan.stderr  # 3 of 4 is over the default share
    sandbox.run("apply", check=1)
    sandbox.run("apply", "--allow-mass-prune", check=0)
    assert not (sandbox.root / "s.txt").exists() and not (sandbox.root / "t.txt").exists()
    assert (sandbox.root / "keep.txt").exists()


def test_usage_errors_exit_1_not_plans_2(sandbox: Sandbox) -> None:
    result = sandbox.run("plan", "--no-such-option", check=1)
    assert "No such option" in result.stderr


def test_plan_and_apply_agree_on_a_deleted_object_under_warn(sandbox: Sandbox) -> None:
    sandbox.write("a.yaml", file_doc("a", sandbox.root / "a.txt", policy="policy: {drift: warn}"))
    sandbox.write("b.yaml", file_doc("b", sandbox.root / "b.txt"))
    sandbox.run("apply", check=0)
    (sandbox.root / "a.txt").unlink()
    plan = sandbox.run("plan", check=0)  # nothing apply would do
    assert "File/a" in plan.stdout and "policy warn" in plan.stdout
    assert "removed out of band" in plan.stdout
    sandbox.run("apply", check=0)
    assert not (sandbox.root / "a.txt").exists()

"""The backup and restore recipes of docs/operations.md, run for real: the online
backup commands, taken from the document, copy a state database while a writer
holds it open with commits still in its WAL; a restored copy keeps what
reconciler created (a removed resource is deleted), while a lost state turns
every object into an adopted one (a removed resource is released)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.store import SqliteStore
from reconciler.store.sqlite import DB_NAME
from tests.conftest import Sandbox, doc, docs
from tests.deploy.conftest import OPERATIONS
from tests.system import ensure_debian


def _recipe(marker: str) -> str:
    """The one line of the backup section's code that contains `marker`."""
    section = OPERATIONS.read_text().split("## Backup and restore", 1)[1].split("\n## ", 1)[0]
    (line,) = [line.strip() for line in section.splitlines() if marker in line]
    return line


def _configure(sandbox: Sandbox, *names: str) -> None:
    for old in sandbox.config.glob("*.yaml"):
        old.unlink()
    files = [
        doc(
            "File",
            name,
            {"path": str(sandbox.root / f"{name}.txt"), "content": "x\n"},
            {"prune": True},
        )
        for name in names
    ]
    sandbox.write("files.yaml", docs(*files))


def _actions(sandbox: Sandbox) -> dict[str, str]:
    plan = sandbox.run("plan", "--json", check=None)
    assert plan.returncode in (0, 2), plan.stderr
    return {change["id"]: change["action"] for change in json.loads(plan.stdout)["changes"]}


@pytest.mark.parametrize("marker", ['".backup', "src.backup(dst)"])
def test_online_backup_and_restore(sandbox: Sandbox, tmp_path: Path, marker: str) -> None:
    _configure(sandbox, "a", "b", "c")
    sandbox.run("apply", check=0)
    backup = tmp_path / "backup.db"
    recipe = _recipe(marker).removeprefix("docker exec reconciler ")
    recipe = recipe.replace("/var/lib/reconciler/backup.db", str(backup))
    recipe = recipe.replace("/backup/reconciler-state.db", str(backup))
    recipe = recipe.replace("/var/lib/reconciler", str(sandbox.state))
    if recipe.startswith("sqlite3 "):
        recipe = recipe.replace("sqlite3", ensure_debian("sqlite3", "sqlite3"), 1)

    writer = SqliteStore(sandbox.state)  # holds the lock and the WAL, as the daemon does
    try:
        writer.forget("File/c")  # a commit that only the WAL has yet
        writer.flush()
        wal = sandbox.state / f"{DB_NAME}-wal"
        assert wal.exists() and wal.stat().st_size > 0
        result = subprocess.run(recipe, shell=True, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        writer.close()

    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / DB_NAME).write_bytes(backup.read_bytes())
    reader = SqliteStore(restored, readonly=True)
    try:
        inventory = reader.inventory()
    finally:
        reader.close()
    assert set(inventory) == {"File/a", "File/b"}  # the WAL's forget is in the copy
    assert inventory["File/a"].created is True

    sandbox.state = restored
    _configure(sandbox, "b")  # File/a left the manifests: reconciler created it
    assert _actions(sandbox)["File/a"] == "delete"


def test_lost_state_adopts_everything(sandbox: Sandbox, tmp_path: Path) -> None:
    _configure(sandbox, "a", "b")
    sandbox.run("apply", check=0)
    sandbox.state = tmp_path / "new-state"  # the old one is lost
    sandbox.run("apply", check=0)
    _configure(sandbox, "b")
    assert _actions(sandbox)["File/a"] == "release"
    sandbox.run("apply", check=0)
    assert (sandbox.root / "a.txt").exists()  # the object is kept: removed by hand

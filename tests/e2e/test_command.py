"""`Command` end to end: the real `reconciler plan`/`apply` processes on a config
tree of commands, then a real daemon healing a guard flipped by hand.

Each command appends to a counter file, so what ran is read from the system.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from reconciler.model import Provider
from tests.conftest import Sandbox, doc, docs
from tests.e2e.daemon_harness import Daemons

pytestmark = pytest.mark.timeout(90)

SECRET = "cmd-e2e-5f0a9d2c61b8-not-a-real-secret"


@pytest.fixture(autouse=True)
def _commands_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command here runs with Command resources allowed, as an operator opts in."""
    monkeypatch.setenv("RECONCILER_ALLOW_COMMANDS", "1")


def test_commands_are_refused_unless_allowed(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECONCILER_ALLOW_COMMANDS")
    sandbox.write("c.yaml", docs(doc("Command", "x", {"argv": ["true"]})))
    result = sandbox.run("validate", check=1)
    assert "c.yaml:" in result.stderr and "Command resources are not allowed here" in result.stderr
    assert "--allow-commands" in result.stderr
    sandbox.run("validate", "--allow-commands", check=0)
    sandbox.run("apply", check=1)
    sandbox.run("apply", "--allow-commands", check=0)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def report(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_plan_apply_no_op_drift_change_and_failure_through_the_cli(sandbox: Sandbox) -> None:
    root, counter = sandbox.root, sandbox.root / "counter"
    env_ref = {"TOKEN": {"valueFrom": {"env": "CMD_E2E_TOKEN"}}}
    env = {"PATH": "/usr/bin:/bin", "CMD_E2E_TOKEN": SECRET, "RECONCILER_ALLOW_COMMANDS": "1"}
    env["RECONCILER_SECRET_ENV"] = "CMD_E2E_*"  # the operator allows this one

    def write(migrate_version: str, failing: bool = False) -> None:
        documents = [
            doc("File", "app-config", {"path": str(root / "app.conf"), "content": "port=1\n"}),
            doc(
                "Command",
                "migrate",
                {
                    "argv": ["sh", "-c", f'echo "migrate {migrate_version}" >> {counter}'],
                    "env": env_ref,
                },
            ),
            doc(
                "Command",
                "unpack",
                {
                    "shell": True,
                    "command": f"echo unpack >> {counter}; mkdir -p {root}/release; "
                    'echo "unpacked with $TOKEN"',
                    "creates": str(root / "release"),
                    "env": env_ref,
                },
                {"dependsOn": ["File/app-config"]},
            ),
            doc(
                "Command",
                "reload",
                {
                    "argv": ["sh", "-c", f"echo reload >> {counter}"],
                    "onlyIf": ["test", "-e", str(root / "app.conf")],
                    "refreshOn": ["File/app-config"],
                },
            ),
        ]
        if failing:
            documents.append(
                doc(
                    "Command",
                    "broken",
                    {
                        "argv": ["sh", "-c", 'echo "half done, token $TOKEN"; exit 3'],
                        "env": env_ref,
                    },
                )
            )
        sandbox.write("commands.yaml", docs(*documents))

    write("v1")
    plan = sandbox.run("plan", env=env, check=2)
    assert "+ Command/migrate" in plan.stdout and 'sh -c \'echo "migrate v1"' in plan.stdout
    assert "+ Command/unpack" in plan.stdout
    assert "Command/reload" not in plan.stdout, "onlyIf: app.conf is not there yet"
    assert lines(counter) == [], "plan runs no command, guards aside"

    first = report(sandbox.run("apply", "--json", env=env, check=0))
    # reload depends on app-config (refreshOn): by its turn, onlyIf says run
    assert first["counts"]["created"] == 4
    assert sorted(lines(counter)) == ["migrate v1", "reload", "unpack"]

    # a second pass runs nothing
    second = report(sandbox.run("apply", "--json", env=env, check=0))
    assert second["counts"]["unchanged"] == 4
    sandbox.run("plan", env=env, check=0)
    assert sorted(lines(counter)) == ["migrate v1", "reload", "unpack"]

    # a guard flipped by hand is drift, healed by running the command again
    (root / "release").rmdir()
    drift = sandbox.run("plan", env=env, check=2)
    assert "Command/unpack" in drift.stdout and "creates" in drift.stdout
    healed = report(sandbox.run("apply", "--json", env=env, check=0))
    assert healed["counts"]["healed"] == 1
    assert lines(counter).count("unpack") == 2

    # a changed spec runs again; a failing command reports its code and tail
    write("v2", failing=True)
    failed = sandbox.run("apply", env=env, check=1)
    assert lines(counter).count("migrate v2") == 1
    assert "Command/broken" in failed.stdout and "exited with code 3" in failed.stdout
    assert "half done, token (sensitive value)" in failed.stdout
    failed_json = report(sandbox.run("apply", "--json", env=env, check=1))
    [broken] = [r for r in failed_json["results"] if r["id"] == "Command/broken"]
    assert broken["state"] == "Failed" and "exited with code 3" in broken["error"]

    # the secret is nowhere: output, events, the store, the run records
    events = sandbox.run("events", "--state-dir", str(sandbox.state), check=0)
    assert "exit 0: unpacked with (sensitive value)" in events.stdout
    shown = plan.stdout + drift.stdout + failed.stdout + events.stdout + failed.stderr
    assert SECRET not in shown
    with sqlite3.connect(sandbox.state / "state.db") as db:
        dumped = "\n".join(db.iterdump())
    assert SECRET not in dumped
    for path in sandbox.state.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_invalid_command_specs_name_the_field(sandbox: Sandbox) -> None:
    sandbox.write(
        "bad.yaml",
        docs(
            doc("Command", "both", {"shell": True, "argv": ["ls"]}),
            doc("Command", "rel", {"argv": ["ls"], "cwd": "tmp"}),
        ),
    )
    result = sandbox.run("validate", check=1)
    text = result.stdout + result.stderr
    assert "bad.yaml" in text
    assert "argv" in text and "with shell: true, give command" in text
    assert "cwd" in text and "expected an absolute path" in text


def test_the_daemon_heals_a_flipped_guard(daemons: Daemons, tmp_path: Path, root: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    counter = root / "counter"
    (config / "cmd.yaml").write_text(
        doc(
            "Command",
            "init",
            {
                "argv": ["sh", "-c", f"echo ran >> {counter}; touch {root}/made"],
                "creates": str(root / "made"),
                "env": {"TOKEN": {"valueFrom": {"env": "CMD_E2E_TOKEN"}}},
            },
            {"resync": "1s"},
        )
    )
    daemon = daemons.start(
        config,
        root=root,
        env={"CMD_E2E_TOKEN": SECRET, "RECONCILER_ALLOW_COMMANDS": "1"},
        secrets=(SECRET,),
    )
    daemon.wait_state("Command/init", "InSync")
    assert lines(counter) == ["ran"]

    (root / "made").unlink()
    daemon.wait_until(lambda: lines(counter) == ["ran", "ran"], "the command ran again")
    daemon.wait_state("Command/init", "InSync")
    assert (root / "made").exists()
    daemon.assert_no_secrets()


@pytest.mark.skipif(
    not hasattr(Provider, "refreshes"),
    reason="the engine side of refreshOn (Provider.refreshes, settings.changes) is not in yet",
)
def test_refresh_on_runs_again_after_the_target_is_applied(sandbox: Sandbox) -> None:
    conf, counter = sandbox.root / "app.conf", sandbox.root / "counter"

    def write(content: str) -> None:
        sandbox.write(
            "app.yaml",
            docs(
                doc("File", "conf", {"path": str(conf), "content": content}),
                doc(
                    "Command",
                    "reload",
                    {"argv": ["sh", "-c", f"echo reload >> {counter}"], "refreshOn": ["File/conf"]},
                ),
            ),
        )

    write("a=1\n")
    sandbox.run("apply", check=0)
    assert lines(counter) == ["reload"]
    write("a=2\n")
    sandbox.run("apply", check=0)
    assert lines(counter) == ["reload", "reload"]
    sandbox.run("apply", check=0)
    assert lines(counter) == ["reload", "reload"], "nothing changed: no reload"

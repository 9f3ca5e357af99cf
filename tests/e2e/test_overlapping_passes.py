"""Passes over disjoint resources overlap (issue 11, decision 0126): a hand edit
is healed while a long apply of another resource is still running, and a
resource the running pass holds is not taken up by a second pass meanwhile.

A real daemon in local mode, a Command that sleeps, Files edited by hand.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import doc, docs
from tests.e2e.daemon_harness import Daemons, file_doc, holds

pytestmark = pytest.mark.timeout(60)

SLEEP = 6.0
"""Seconds the slow command runs: long against a heal (well under 1 s)."""


def test_a_hand_edit_is_healed_while_a_slow_command_runs(
    daemons: Daemons, tmp_path: Path, root: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    edited, held, made = root / "edited.conf", root / "held.conf", root / "made"
    (config / "files.yaml").write_text(
        docs(file_doc("edited", edited, "desired\n"), file_doc("held", held, "first\n"))
    )
    daemon = daemons.start(config, root=root, env={"RECONCILER_ALLOW_COMMANDS": "1"})
    daemon.wait_state("File/held", "InSync")
    daemon.settle()

    # a new revision: a slow command, and File/held changed to wait for it
    revised = time.time()
    (config / "files.yaml").write_text(
        docs(
            file_doc("edited", edited, "desired\n"),
            file_doc("held", held, "second\n", {"dependsOn": ["Command/slow"]}),
            doc(
                "Command",
                "slow",
                {"argv": ["sh", "-c", f"sleep {SLEEP}; touch {made}"], "creates": str(made)},
            ),
        )
    )
    daemon.wait_state("Command/slow", "Applying")

    started = time.monotonic()
    edited.write_text("edited by hand\n")
    held.write_text("held by hand\n")  # its pass holds it: no second pass takes it up
    daemon.wait_file(edited, "desired\n", timeout=5)
    took = time.monotonic() - started
    assert took < 2.0, f"the hand edit took {took:.2f} s to heal behind a slow command"
    assert not made.exists(), "the command finished first: the heal did not overlap it"
    assert daemon.resource("Command/slow")["state"] == "Applying"  # type: ignore[index]
    assert held.read_text() == "held by hand\n", "File/held was worked on before its dependency"
    transitions = [(e["from"], e["to"], e["event"]) for e in daemon.events(resource="File/edited")]
    assert ("Drifted", "Applying", "heal") in transitions

    # the command's pass completes, then applies what waited for it
    daemon.wait_state("Command/slow", "InSync", timeout=SLEEP + 10)
    daemon.wait_until(holds(held, "second\n"), "File/held applied after the command")
    daemon.wait_state("File/held", "InSync")
    done = max(e["at"] for e in daemon.events(resource="Command/slow"))
    events = daemon.events(resource="File/held")
    second = [e for e in events if e["at"] > revised]
    assert second and all(e["at"] >= done for e in second), (done, second)
    assert not [e for e in second if e["event"] in ("watch", "heal")], second
    daemon.stop()

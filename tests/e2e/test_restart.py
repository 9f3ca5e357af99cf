"""What must survive a restart of the real daemon: the last good revision (kept in
the state directory) stays enforced when the first revision after a start is
rejected or cannot be fetched; the last successful fetch time survives, so the
stale-source alert does not reset; a rotated secret file is picked up without a
new commit; and `policy.drift: ignore` is never checked (decisions 0066-0068).

Real daemon processes, real git repositories and servers on 127.0.0.1, real
directories; every wait polls a condition against a deadline.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from tests.e2e.daemon_harness import (
    Daemons,
    assert_stays,
    doc,
    docs,
    file_doc,
    read_text,
)
from tests.gitservers import GitDaemon, WorkClone


def push(work: WorkClone, message: str, files: Mapping[str, str | None]) -> str:
    sha = work.commit(message, files)
    work.push()
    return sha


def bad_manifest(path: Path) -> str:
    """A File with an unknown field: the whole revision is rejected."""
    return doc("File", "a", {"path": str(path), "content": "bad\n", "colour": "red"})


def metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


# 1. the last good revision after a restart


def test_a_restart_with_an_invalid_head_enforces_the_kept_last_good_commit(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    a, b = root / "a.conf", root / "b.conf"
    good = push(
        work,
        "good",
        {"a.yaml": file_doc("a", a, "a1\n"), "b.yaml": file_doc("b", b, "b1\n")},
    )
    daemon = daemons.start(git_server.url(), root=root)
    daemon.wait_revision(good)
    daemon.stop()

    # while it is down: an invalid commit is pushed, a managed file edited by hand,
    # and the git cache lost (the kept tree must not depend on it)
    bad = push(work, "unknown field", {"a.yaml": bad_manifest(a)})
    a.write_text("by hand\n")
    shutil.rmtree(daemon.state_dir / "git")

    again = daemons.start(git_server.url(), root=root, state_dir=daemon.state_dir)
    status = again.wait_revision(good)
    assert status["lastGoodRevision"] == good
    assert status["rejected"]["revision"] == bad
    assert status["recovery"]["revision"] == good and status["recovery"]["ok"] is True
    again.wait_file(a, "a1\n")  # enforced: the hand edit is healed
    assert read_text(b) == "b1\n"
    logs = again.logs()
    assert f"revision {bad} rejected" in logs
    assert f"enforcing the last good revision {good}" in logs

    # drift keeps being healed against it, and a fixed commit takes over
    again.settle()
    b.write_text("by hand\n")
    again.wait_file(b, "b1\n")
    fixed = push(work, "fixed", {"a.yaml": file_doc("a", a, "a2\n")})
    assert again.sync().status == 202
    status = again.wait_revision(fixed)
    again.wait_file(a, "a2\n")
    assert status["rejected"] is None
    again.stop()


def test_a_restart_with_an_invalid_local_directory_enforces_the_kept_tree(
    config: Path, root: Path, daemons: Daemons
) -> None:
    target = root / "app.conf"
    (config / "app.yaml").write_text(file_doc("app", target, "v1\n"))
    (config / "other.yaml").write_text(file_doc("other", root / "other.conf", "o1\n"))
    daemon = daemons.start(config, root=root)
    first = daemon.status()["revision"]["id"]
    assert first.startswith("dir-")
    daemon.stop()

    # a plain directory has no history: only the kept copy can bring v1 back
    (config / "app.yaml").write_text(bad_manifest(target))
    (config / "other.yaml").unlink()
    target.write_text("by hand\n")
    again = daemons.start(config, root=root, state_dir=daemon.state_dir)
    status = again.wait_revision(first)
    assert status["rejected"] is not None and status["rejected"]["revision"] != first
    assert status["recovery"]["ok"] is True
    again.wait_file(target, "v1\n")
    # the resource the broken tree dropped is not pruned: v1 still has it
    assert read_text(root / "other.conf") == "o1\n"
    assert {r["id"] for r in again.resources()} == {"File/app", "File/other"}
    again.stop()


def test_when_the_last_good_revision_is_lost_nothing_is_enforced_or_pruned(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    a = root / "a.conf"
    good = push(work, "good", {"a.yaml": file_doc("a", a, "a1\n")})
    daemon = daemons.start(git_server.url(), root=root)
    daemon.wait_revision(good)
    daemon.stop()

    bad = push(work, "nothing valid", {"a.yaml": bad_manifest(a)})
    shutil.rmtree(daemon.state_dir / "last-good")
    a.write_text("by hand\n")
    again = daemons.start(git_server.url(), root=root, state_dir=daemon.state_dir, ready=False)
    status = again.wait_until(
        lambda: (s := again.status())["recovery"] and s, "the recovery attempt to be reported"
    )
    assert status["recovery"]["revision"] == good and status["recovery"]["ok"] is False
    assert "not kept" in status["recovery"]["error"]
    assert status["rejected"]["revision"] == bad
    assert status["revision"] is None and status["lastGoodRevision"] is None
    assert again.request("GET", "/readyz").status == 503
    assert f"cannot enforce the last good revision {good}" in again.logs()
    assert_stays(
        lambda: read_text(a) == "by hand\n" and again.resource("File/a") is not None,
        "the managed file neither healed nor pruned",
        seconds=1.0,
        context=again.log_tail,
    )
    again.stop()


# 2. the last successful fetch


def test_the_last_successful_fetch_survives_a_restart_with_the_server_down(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    a = root / "a.conf"
    good = push(work, "good", {"a.yaml": file_doc("a", a, "a1\n")})
    daemon = daemons.start(git_server.url(), root=root)
    status = daemon.wait_revision(good)
    fetched = status["lastFetch"]["lastSuccess"]
    assert fetched is not None and fetched <= time.time()
    scraped = metric(
        daemon.request("GET", "/metrics").body.decode(),
        "reconciler_source_last_success_timestamp_seconds",
    )
    assert scraped == fetched
    daemon.stop()

    git_server.stop()
    a.write_text("by hand\n")
    again = daemons.start(git_server.url(), root=root, state_dir=daemon.state_dir)
    status = again.wait_revision(good)  # the fetch failed: the kept revision is enforced
    assert status["lastFetch"]["ok"] is False
    assert status["lastFetch"]["lastSuccess"] == fetched
    again.wait_file(a, "a1\n")
    scraped = metric(
        again.request("GET", "/metrics").body.decode(),
        "reconciler_source_last_success_timestamp_seconds",
    )
    assert scraped == fetched  # the stale-source alert keeps counting from there
    again.stop()


# 3. a rotated secret file


def test_a_rotated_secret_file_is_applied_without_a_commit_and_never_shown(
    git_server: GitDaemon, work: WorkClone, root: Path, tmp_path: Path, daemons: Daemons
) -> None:
    secret_file = tmp_path / "secrets" / "db-password"
    secret_file.parent.mkdir()
    old, new = "old-" + secrets.token_hex(8), "new-" + secrets.token_hex(8)
    secret_file.write_text(old)
    managed, plain = root / "db.pass", root / "plain.conf"
    reference = {"valueFrom": {"file": str(secret_file)}}
    good = push(
        work,
        "secret content",
        {
            "db.yaml": doc("File", "db", {"path": str(managed), "content": reference}),
            "plain.yaml": file_doc("plain", plain, "p1\n"),
        },
    )
    daemon = daemons.start(git_server.url(), root=root, interval="1s", secrets=[old, new])
    daemon.wait_revision(good)
    daemon.wait_file(managed, old)
    plain_events = daemon.events(resource="File/plain")

    secret_file.write_text(new)  # rotated in place, no commit
    daemon.wait_file(managed, new, timeout=10)
    assert daemon.status()["revision"]["id"] == good
    assert daemon.events(resource="File/plain") == plain_events  # only the user re-applied
    db_events = daemon.events(resource="File/db")
    assert any(e["event"] == "spec-changed" for e in db_events), db_events

    # a rotation by rename (as Kubernetes and systemd do it)
    newer = "newer-" + secrets.token_hex(8)
    daemon.secrets = (*daemon.secrets, newer)
    staged = secret_file.with_name(".staged")
    staged.write_text(newer)
    staged.replace(secret_file)
    daemon.wait_file(managed, newer, timeout=10)

    # a secret file that goes away: reported, the last loaded value stays
    secret_file.unlink()
    daemon.wait_until(lambda: "no longer loads" in daemon.logs(), "the failed reload logged")
    assert read_text(managed) == newer
    texts = [
        daemon.request("GET", path).body.decode()
        for path in ("/api/v1/status", "/api/v1/resources", "/api/v1/events", "/metrics")
    ]
    daemon.stop()
    daemon.assert_no_secrets(texts=texts)


# 4. policy.drift: ignore


def test_drift_ignore_is_never_checked_but_a_new_spec_is_applied(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    ignored, healed = root / "ignored.conf", root / "healed.conf"
    fast = {"resync": "1s"}
    sha1 = push(
        work,
        "first",
        {
            "app.yaml": docs(
                file_doc("ignored", ignored, "i1\n", {**fast, "drift": "ignore"}),
                file_doc("healed", healed, "h1\n", fast),
            )
        },
    )
    daemon = daemons.start(git_server.url(), root=root, interval="1s")
    daemon.wait_revision(sha1)
    daemon.settle()
    ignored_events = daemon.events(resource="File/ignored")

    ignored.write_text("by hand\n")
    healed.write_text("by hand\n")
    daemon.wait_file(healed, "h1\n")  # watched and resynced: healed
    assert_stays(
        lambda: (
            read_text(ignored) == "by hand\n"
            and (r := daemon.resource("File/ignored")) is not None
            and r["state"] == "InSync"
            and r["drift"] is None
        ),
        "the hand edit under drift: ignore, unreported",
        seconds=2.5,  # more than two resync periods and a watch event
        context=daemon.log_tail,
    )
    assert daemon.events(resource="File/ignored") == ignored_events
    assert "File/ignored drifted" not in daemon.logs()

    # a restart looks at every resource once, but not at this one
    daemon.stop()
    daemon = daemons.start(git_server.url(), root=root, interval="1s", state_dir=daemon.state_dir)
    daemon.wait_revision(sha1)
    daemon.settle()
    assert read_text(ignored) == "by hand\n"
    assert daemon.resource("File/ignored")["state"] == "InSync"  # type: ignore[index]
    assert daemon.events(resource="File/ignored") == ignored_events

    sha2 = push(
        work,
        "new content",
        {
            "app.yaml": docs(
                file_doc("ignored", ignored, "i2\n", {**fast, "drift": "ignore"}),
                file_doc("healed", healed, "h1\n", fast),
            )
        },
    )
    daemon.wait_revision(sha2)
    daemon.wait_file(ignored, "i2\n")
    daemon.stop()

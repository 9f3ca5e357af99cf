"""`reconciler run --verify-commits gpg|ssh` against commits and tags signed by
real gpg and ssh-keygen keys (tests.signing), on the real daemon process.

An unsigned or untrusted head is rejected whole, like an invalid commit: status,
/api/v1/status `rejected`, the revision-rejected counter and a log line say so,
and the last good revision stays enforced (its drift is still healed). Bad key
files stop the start with one `error:` line, before anything is fetched. The
one-shot commands know nothing of signatures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.daemon_harness import DaemonProcess, Daemons, file_doc, read_text, run_cli
from tests.gitservers import GitRepos, WorkClone, free_port
from tests.signing import Keys, Signer, commit, tag


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[Keys]:
    with Keys(tmp_path / "keys") as made:
        yield made


def push(work: WorkClone, message: str, files: Mapping[str, str], signer: Signer | None) -> str:
    sha = commit(work, message, files, signer=signer)
    work.push("main")
    return sha


def rejected_counter(daemon: DaemonProcess) -> float:
    text = daemon.request("GET", "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "reconciler_revision_rejected_total":
                return float(sample.value)
    raise AssertionError("no reconciler_revision_rejected_total in /metrics")


def wait_rejected(daemon: DaemonProcess, sha: str) -> dict[str, Any]:
    return daemon.wait_until(
        lambda: (s := daemon.status())["rejected"] and s["rejected"]["revision"] == sha and s,
        f"revision {sha[:12]} to be rejected",
    )


def test_a_signed_commit_is_applied_and_an_unsigned_one_after_it_is_rejected(
    repos: GitRepos, work: WorkClone, root: Path, daemons: Daemons, keys: Keys
) -> None:
    alice = keys.gpg("alice")
    target = root / "app.conf"
    good = push(work, "good", {"app.yaml": file_doc("app", target, "v1\n")}, alice)
    daemon = daemons.start(
        repos.root / "repo.git",
        root=root,
        args=["--verify-commits", "gpg", "--trusted-keys", str(alice.public)],
    )
    daemon.wait_revision(good)
    assert read_text(target) == "v1\n"
    assert rejected_counter(daemon) == 0

    unsigned = push(work, "unsigned", {"app.yaml": file_doc("app", target, "v2\n")}, None)
    assert daemon.sync().status == 202
    status = wait_rejected(daemon, unsigned)
    assert status["rejected"]["errors"] == [
        f"commit {unsigned} is not signed (--verify-commits gpg)"
    ]
    assert status["revision"]["id"] == good and status["lastGoodRevision"] == good
    assert status["lastFetch"]["ok"] is True
    assert read_text(target) == "v1\n"
    assert rejected_counter(daemon) == 1
    assert f"revision {unsigned} rejected, nothing of it applied" in daemon.logs()
    shown = run_cli("status", "--url", daemon.url)
    assert f"last error revision {unsigned} rejected: 1 error(s)" in shown.stdout, shown.stdout
    assert not (daemon.state_dir / "git" / "trees" / unsigned).exists()

    # the first revision is still the one enforced: a hand edit goes back to v1
    daemon.settle()
    target.write_text("edited by hand\n")
    daemon.wait_file(target, "v1\n")
    # polls of the same rejected head neither apply it nor count it again
    assert daemon.sync().status == 202
    daemon.wait_until(lambda: daemon.status()["lastFetch"]["ok"] is True, "another fetch")
    assert read_text(target) == "v1\n" and rejected_counter(daemon) == 1

    fixed = push(work, "signed again", {"app.yaml": file_doc("app", target, "v3\n")}, alice)
    assert daemon.sync().status == 202
    daemon.wait_revision(fixed)
    daemon.wait_file(target, "v3\n")
    assert daemon.status()["rejected"] is None
    daemon.assert_no_secrets()


def test_a_first_revision_signed_by_an_untrusted_key_applies_nothing(
    repos: GitRepos, work: WorkClone, root: Path, daemons: Daemons, keys: Keys, tmp_path: Path
) -> None:
    alice, mallory = keys.gpg("alice"), keys.gpg("mallory")
    trusted = tmp_path / "trusted.asc"
    trusted.write_bytes(alice.public.read_bytes())
    target = root / "app.conf"
    sha = push(work, "by mallory", {"app.yaml": file_doc("app", target, "evil\n")}, mallory)
    daemon = daemons.start(
        repos.root / "repo.git",
        root=root,
        ready=False,
        args=["--verify-commits", "gpg", "--trusted-keys", str(trusted)],
    )
    status = wait_rejected(daemon, sha)
    assert status["rejected"]["errors"] == [
        f"commit {sha} is signed by GPG key {mallory.fingerprint}, which is not among the "
        "trusted keys"
    ]
    assert status["rejected"]["cause"] == "signature"
    assert status["revision"] is None and not target.exists()
    assert daemon.request("GET", "/readyz").status == 503
    assert rejected_counter(daemon) == 1

    # the same commit, once its key is trusted (the file is read again): applied
    trusted.write_bytes(mallory.public.read_bytes())
    assert daemon.sync().status == 202
    daemon.wait_revision(sha)
    daemon.wait_file(target, "evil\n")
    assert daemon.status()["rejected"] is None


def test_ssh_signed_commits_against_an_allowed_signers_file(
    repos: GitRepos, work: WorkClone, root: Path, daemons: Daemons, keys: Keys, tmp_path: Path
) -> None:
    dave, eve = keys.ssh("dave"), keys.ssh("eve")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(dave.allowed_signers_line("dave@example.test"))
    target = root / "app.conf"
    good = push(work, "by dave", {"app.yaml": file_doc("app", target, "v1\n")}, dave)
    daemon = daemons.start(
        repos.root / "repo.git",
        root=root,
        args=["--verify-commits", "ssh", "--allowed-signers", str(allowed)],
    )
    daemon.wait_revision(good)
    by_eve = push(work, "by eve", {"app.yaml": file_doc("app", target, "v2\n")}, eve)
    assert daemon.sync().status == 202
    status = wait_rejected(daemon, by_eve)
    assert status["rejected"]["errors"] == [
        f"commit {by_eve} is signed by SSH key {eve.fingerprint}, which is not in the "
        f"allowed signers file {allowed}"
    ]
    assert read_text(target) == "v1\n" and status["revision"]["id"] == good


def test_a_tag_ref_follows_the_tags_signature(
    repos: GitRepos, work: WorkClone, root: Path, daemons: Daemons, keys: Keys
) -> None:
    alice = keys.gpg("alice")
    target = root / "app.conf"
    first = push(work, "release 1", {"app.yaml": file_doc("app", target, "r1\n")}, None)
    tag(work, "stable", signer=alice)
    daemon = daemons.start(
        repos.root / "repo.git",
        root=root,
        args=["--ref", "stable", "--verify-commits", "gpg", "--trusted-keys", str(alice.public)],
    )
    daemon.wait_revision(first)
    assert read_text(target) == "r1\n"

    second = push(work, "release 2", {"app.yaml": file_doc("app", target, "r2\n")}, alice)
    tag_id = tag(work, "stable", signer=None)  # moved, annotated but unsigned
    assert daemon.sync().status == 202
    status = wait_rejected(daemon, second)
    assert status["rejected"]["errors"] == [
        f"tag stable (object {tag_id}, commit {second}) is not signed (--verify-commits gpg)"
    ]
    assert read_text(target) == "r1\n"

    tag(work, "stable", signer=alice)
    assert daemon.sync().status == 202
    daemon.wait_revision(second)
    daemon.wait_file(target, "r2\n")


# ---------------------------------------------------------------------- start-up


class Refusal:
    """Runs `reconciler run` expecting it to refuse to start."""

    def __init__(self, repo: Path, root: Path, tmp: Path) -> None:
        self.repo, self.root, self.tmp = repo, root, tmp
        self.state = tmp / "state"

    def __call__(
        self, *extra: str, env: Mapping[str, str] | None = None, fresh_state: bool = True
    ) -> str:
        argv = [sys.executable, "-m", "reconciler", "run", "--repo", str(self.repo)]
        argv += ["--root", str(self.root), "--state-dir", str(self.state)]
        argv += ["--listen", f"127.0.0.1:{free_port()}", *extra]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            env={**full_env, **(env or {})},
            cwd=self.tmp,
        )
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr and "Usage:" not in result.stderr, result.stderr
        lines = result.stderr.splitlines()
        if not fresh_state:  # refused once the store is open: its log lines come first
            lines = [line for line in lines if not line.startswith("{")]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert list(self.root.iterdir()) == [], "something was applied before the refusal"
        if fresh_state:
            assert not self.state.exists(), "the state dir was made before the refusal"
        return lines[0]


@pytest.fixture
def refused(repos: GitRepos, work: WorkClone, root: Path, tmp_path: Path, keys: Keys) -> Refusal:
    alice = keys.gpg("alice")
    push(work, "signed", {"app.yaml": file_doc("app", root / "app.conf", "v1\n")}, alice)
    return Refusal(repos.root / "repo.git", root, tmp_path)


def test_missing_and_unfit_key_files_stop_the_start(
    refused: Refusal, keys: Keys, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.asc"
    assert refused("--verify-commits", "gpg", "--trusted-keys", str(missing)) == (
        f"error: --trusted-keys {missing}: No such file or directory"
    )
    assert refused("--verify-commits", "gpg", "--trusted-keys", str(tmp_path)) == (
        f"error: --trusted-keys {tmp_path}: Is a directory"
    )
    junk = tmp_path / "junk.asc"
    junk.write_text("not a key\n")
    assert refused("--verify-commits", "gpg", "--trusted-keys", str(junk)) == (
        f"error: --trusted-keys {junk}: no OpenPGP public key found in it "
        "(expected the output of gpg --export --armor)"
    )
    bob = keys.gpg("bob")
    secret = tmp_path / "secret.asc"
    export = ["--pinentry-mode", "loopback", "--passphrase", "", "--armor"]
    secret.write_text(bob.gpg(*export, "--export-secret-keys", bob.fingerprint))
    line = refused(
        "--verify-commits", "gpg", "--trusted-keys", str(bob.public), "--trusted-keys", str(secret)
    )
    assert line == (
        f"error: --trusted-keys {secret}: holds a secret key: give the public key only "
        "(gpg --export --armor KEYID)"
    )
    assert "PRIVATE KEY" not in line
    bad_signers = tmp_path / "allowed"
    bad_signers.write_text("dave@example.test ssh-ed25519\n")
    assert refused("--verify-commits", "ssh", "--allowed-signers", str(bad_signers)) == (
        f"error: --allowed-signers {bad_signers}: line 1: expected `principals [options] "
        "key-type base64-key`, found 'dave@example.test ssh-ed25519'"
    )


def test_key_files_from_the_environment_and_the_settings_file_are_checked(
    refused: Refusal, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.asc"
    env = {"RECONCILER_VERIFY_COMMITS": "gpg", "RECONCILER_TRUSTED_KEYS": str(missing)}
    assert (
        refused(env=env) == f"error: RECONCILER_TRUSTED_KEYS={missing}: No such file or directory"
    )
    settings = tmp_path / "run.yaml"
    settings.write_text(f"verify-commits: gpg\ntrusted-keys: [{missing}]\n")
    assert refused("--config", str(settings)) == (
        f"error: {settings}:2: trusted-keys: {missing}: No such file or directory"
    )


def test_settings_that_do_not_fit_together_stop_the_start(
    refused: Refusal, keys: Keys, config: Path
) -> None:
    alice = keys.gpg("carol")
    assert refused("--verify-commits", "gpg") == (
        "error: --verify-commits gpg needs at least one --trusted-keys FILE"
    )
    assert refused("--trusted-keys", str(alice.public)) == (
        "error: --trusted-keys and --allowed-signers take effect only with --verify-commits gpg|ssh"
    )
    # a plain directory (local mode) has no commits to verify
    refused.repo = config
    line = refused(
        "--verify-commits", "gpg", "--trusted-keys", str(alice.public), fresh_state=False
    )
    assert line == (
        f"error: --verify-commits needs a git repository: {config} is a plain directory "
        "(local mode), which has no commits to verify"
    )


def test_the_one_shot_commands_ignore_signatures(
    work: WorkClone, root: Path, tmp_path: Path
) -> None:
    target = root / "app.conf"
    push(work, "unsigned", {"app.yaml": file_doc("app", target, "v1\n")}, None)
    # settings of `run` in the environment change nothing for validate/plan/apply
    env = {
        "RECONCILER_VERIFY_COMMITS": "gpg",
        "RECONCILER_TRUSTED_KEYS": str(tmp_path / "missing.asc"),
        "RECONCILER_ROOT": str(root),
        "RECONCILER_STATE_DIR": str(tmp_path / "state"),
    }
    assert run_cli("validate", str(work.path), env=env).returncode == 0
    assert run_cli("plan", str(work.path), env=env).returncode == 2  # changes to make
    applied = run_cli("apply", str(work.path), env=env)
    assert applied.returncode == 0, applied.stderr
    assert read_text(target) == "v1\n"

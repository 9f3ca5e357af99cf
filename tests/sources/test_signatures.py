"""GitSource with commit signature verification, against commits and tags signed
by real gpg and ssh-keygen keys (tests.signing) in a real repository.

A trusted signature gives a Revision as before; anything else raises
UntrustedRevision naming the commit and why, and nothing of it is exported.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.sources.base import Revision, SourceError
from reconciler.sources.git import GitSource
from reconciler.sources.signatures import (
    SignaturePolicy,
    UntrustedRevision,
    VerifyMode,
    check_allowed_signers,
    check_trusted_keys,
    signature_policy,
)
from tests.gitservers import GitRepos, WorkClone
from tests.signing import Keys, Signer, commit, tag
from tests.sources.conftest import SourceFactory

APP = "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: app}\n"


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[Keys]:
    with Keys(tmp_path / "keys") as made:
        yield made


@pytest.fixture
def work(git_repos: GitRepos) -> WorkClone:
    git_repos.create()
    return git_repos.clone()


@pytest.fixture
def alice(keys: Keys) -> Signer:
    return keys.gpg("alice")


@pytest.fixture
def mallory(keys: Keys) -> Signer:
    return keys.gpg("mallory")


def gpg_source(
    make_source: SourceFactory, git_repos: GitRepos, *trusted: Signer, **kwargs: object
) -> GitSource:
    policy = SignaturePolicy(VerifyMode.GPG, trusted_keys=tuple(s.public for s in trusted))
    return make_source(git_repos.file_url(), signatures=policy, **kwargs)


def ssh_source(
    make_source: SourceFactory, git_repos: GitRepos, allowed: Path, **kwargs: object
) -> GitSource:
    policy = SignaturePolicy(VerifyMode.SSH, allowed_signers=allowed)
    return make_source(git_repos.file_url(), signatures=policy, **kwargs)


def push(work: WorkClone, message: str, signer: Signer | None, content: str = "v") -> str:
    sha = commit(work, message, {"app.yaml": APP + f"# {content} {message}\n"}, signer=signer)
    work.push("main")
    return sha


def fetch(source: GitSource) -> Revision:
    return asyncio.run(source.fetch())


def rejected(source: GitSource) -> UntrustedRevision:
    with pytest.raises(UntrustedRevision) as caught:
        fetch(source)
    return caught.value


def exports(source: GitSource) -> list[str]:
    trees = source.cache_dir / "trees"
    return (
        sorted(p.name for p in trees.iterdir() if not p.name.startswith("."))
        if trees.is_dir()
        else []
    )


# ---------------------------------------------------------------------- GPG


def test_a_commit_signed_by_a_trusted_gpg_key_is_fetched(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    sha = push(work, "signed", alice)
    revision = fetch(gpg_source(make_source, git_repos, alice))
    assert revision.id == sha and revision.summary == "signed"
    assert (revision.path / "app.yaml").read_text().endswith("# v signed\n")


def test_an_unsigned_commit_is_untrusted_and_never_exported(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    sha = push(work, "unsigned", None)
    source = gpg_source(make_source, git_repos, alice)
    error = rejected(source)
    assert error.revision.id == sha and error.revision.summary == "unsigned"
    assert error.reason == f"commit {sha} is not signed (--verify-commits gpg)"
    assert isinstance(error, SourceError)  # code that knows only SourceError fails closed
    assert not error.revision.path.exists() and exports(source) == []


def test_a_commit_signed_by_an_untrusted_gpg_key_names_that_key(
    make_source: SourceFactory,
    git_repos: GitRepos,
    work: WorkClone,
    alice: Signer,
    mallory: Signer,
) -> None:
    sha = push(work, "by mallory", mallory)
    source = gpg_source(make_source, git_repos, alice)
    error = rejected(source)
    assert error.revision.id == sha
    assert error.reason == (
        f"commit {sha} is signed by GPG key {mallory.fingerprint}, "
        "which is not among the trusted keys"
    )
    assert exports(source) == []


def test_any_of_several_trusted_key_files_is_enough(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer, keys: Keys
) -> None:
    bob = keys.gpg("bob")
    sha = push(work, "by bob", bob)
    assert fetch(gpg_source(make_source, git_repos, alice, bob)).id == sha


def test_an_ssh_signature_does_not_pass_gpg_verification(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer, keys: Keys
) -> None:
    sha = push(work, "ssh signed", keys.ssh("carol"))
    error = rejected(gpg_source(make_source, git_repos, alice))
    assert error.reason == (
        f"commit {sha} has an SSH signature; --verify-commits gpg accepts only GPG signatures"
    )


def test_a_commit_changed_after_signing_has_a_bad_signature(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    signed = push(work, "signed", alice)
    # the same signed commit object with another message: the signature no longer fits
    body = work.git("cat-file", "commit", signed)
    forged_body = body.replace("\n\nsigned", "\n\nforged") + "\n"
    forged = subprocess.run(
        ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
        cwd=work.path,
        input=forged_body,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert forged != signed
    work.git("update-ref", "refs/heads/main", forged)
    work.push("main", force=True)
    error = rejected(gpg_source(make_source, git_repos, alice))
    assert error.revision.id == forged
    assert error.reason.startswith(f"commit {forged} has a bad GPG signature"), error.reason
    assert alice.fingerprint[-16:] in error.reason


def test_a_revoked_key_is_not_trusted(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer, keys: Keys
) -> None:
    sha = push(work, "signed before the revocation", alice)
    source = gpg_source(make_source, git_repos, alice)
    assert fetch(source).id == sha
    keys.revoke(alice)  # the trusted-keys file now carries the revocation
    error = rejected(source)  # the keyring is built again from the changed file
    assert (
        error.reason == f"commit {sha} is signed by GPG key {alice.fingerprint}, which is revoked"
    )


def test_an_expired_key_is_not_trusted(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, keys: Keys
) -> None:
    # made and used ten days ago, valid for one day
    past = int(time.time()) - 10 * 86400
    old = keys.gpg("old", expire="1d", faked_time=past)
    sha = push(work, "signed while the key was valid", old)
    error = rejected(gpg_source(make_source, git_repos, old))
    assert error.reason == f"commit {sha} is signed by GPG key {old.fingerprint}, which has expired"


def test_the_users_keyring_and_git_config_are_never_consulted(
    make_source: SourceFactory,
    git_repos: GitRepos,
    work: WorkClone,
    alice: Signer,
    mallory: Signer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sha = push(work, "by mallory", mallory)
    # mallory's own keyring as the user's, and a global git config trusting her
    monkeypatch.setenv("GNUPGHOME", str(mallory.home))
    global_config = tmp_path / "gitconfig"
    global_config.write_text(
        '[gpg]\n\tprogram = /bin/true\n[gpg "ssh"]\n\tallowedSignersFile = /x\n'
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    source = gpg_source(make_source, git_repos, alice)
    assert rejected(source).revision.id == sha
    # the keyring is the daemon's own, under the cache, with alice's key alone
    homes = list(source.cache_dir.glob("gnupg-*"))
    assert len(homes) == 1 and homes[0].stat().st_mode & 0o777 == 0o700
    listed = subprocess.run(
        ["gpg", "--batch", "--homedir", str(homes[0]), "--with-colons", "--list-keys"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    primary = [line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:")]
    assert primary == [alice.fingerprint]
    assert not list(homes[0].glob("S.gpg-agent*")), "verification started a gpg-agent"


def test_a_changed_trusted_keys_file_rebuilds_the_keyring(
    make_source: SourceFactory,
    git_repos: GitRepos,
    work: WorkClone,
    alice: Signer,
    mallory: Signer,
    tmp_path: Path,
) -> None:
    trusted = tmp_path / "trusted.asc"
    trusted.write_bytes(alice.public.read_bytes())
    sha = push(work, "by alice", alice)
    policy = SignaturePolicy(VerifyMode.GPG, trusted_keys=(trusted,))
    source = make_source(git_repos.file_url(), signatures=policy)
    assert fetch(source).id == sha
    trusted.write_bytes(mallory.public.read_bytes())  # alice rotated out
    assert "not among the trusted keys" in rejected(source).reason
    assert len(list(source.cache_dir.glob("gnupg-*"))) == 1  # the old keyring is gone
    trusted.write_text("not a key\n")  # a broken file fails the fetch: nothing is trusted
    with pytest.raises(SourceError, match=r"trusted keys file .*: no OpenPGP public key") as caught:
        fetch(source)
    assert not isinstance(caught.value, UntrustedRevision)


def test_a_good_commit_then_an_unsigned_one(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    good = push(work, "good", alice)
    source = gpg_source(make_source, git_repos, alice)
    assert fetch(source).id == good
    unsigned = push(work, "unsigned on top", None)
    assert rejected(source).revision.id == unsigned
    assert exports(source) == [good]
    signed_again = push(work, "signed again", alice)
    assert fetch(source).id == signed_again


def test_a_commit_sha_ref_is_verified_too(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    good = push(work, "good", alice)
    unsigned = push(work, "unsigned", None)
    assert fetch(gpg_source(make_source, git_repos, alice, ref=good)).id == good
    assert rejected(gpg_source(make_source, git_repos, alice, ref=unsigned)).revision.id == unsigned


# ---------------------------------------------------------------------- tags


def test_a_tag_ref_is_trusted_by_the_annotated_tags_own_signature(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    sha = push(work, "unsigned commit", None)
    tag(work, "v1", signer=alice)
    assert fetch(gpg_source(make_source, git_repos, alice, ref="v1")).id == sha


def test_an_unsigned_annotated_tag_is_untrusted_even_on_a_signed_commit(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    sha = push(work, "signed commit", alice)
    object_id = tag(work, "v1", signer=None)
    error = rejected(gpg_source(make_source, git_repos, alice, ref="v1"))
    assert error.revision.id == sha
    assert error.reason == (
        f"tag v1 (object {object_id}, commit {sha}) is not signed (--verify-commits gpg)"
    )


def test_a_lightweight_tag_is_trusted_by_its_commit(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    signed = push(work, "signed", alice)
    tag(work, "light", signer=None, annotated=False)
    assert fetch(gpg_source(make_source, git_repos, alice, ref="light")).id == signed
    unsigned = push(work, "unsigned", None)
    tag(work, "light", signer=None, annotated=False)
    error = rejected(gpg_source(make_source, git_repos, alice, ref="light"))
    assert error.reason == f"commit {unsigned} is not signed (--verify-commits gpg)"


def test_a_signed_tag_pushed_under_another_name_is_untrusted(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, alice: Signer
) -> None:
    push(work, "old release", None)
    old = tag(work, "v1", signer=alice)
    # "v2" made to point at v1's signed tag object: an old release replayed
    work.git("push", "-q", "--force", "origin", f"{old}:refs/tags/v2")
    error = rejected(gpg_source(make_source, git_repos, alice, ref="v2"))
    assert "is a signed tag object named 'v1', not 'v2'" in error.reason


def test_a_tag_signed_by_an_untrusted_key(
    make_source: SourceFactory,
    git_repos: GitRepos,
    work: WorkClone,
    alice: Signer,
    mallory: Signer,
) -> None:
    push(work, "commit", alice)
    tag(work, "v1", signer=mallory)
    error = rejected(gpg_source(make_source, git_repos, alice, ref="v1"))
    assert f"is signed by GPG key {mallory.fingerprint}, which is not among" in error.reason


# ---------------------------------------------------------------------- SSH


def test_ssh_signatures_against_an_allowed_signers_file(
    make_source: SourceFactory,
    git_repos: GitRepos,
    work: WorkClone,
    keys: Keys,
    alice: Signer,
    tmp_path: Path,
) -> None:
    dave, eve = keys.ssh("dave"), keys.ssh("eve")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("# who may sign\n" + dave.allowed_signers_line("dave@example.test"))
    good = push(work, "by dave", dave)
    source = ssh_source(make_source, git_repos, allowed)
    assert fetch(source).id == good

    by_eve = push(work, "by eve", eve)
    error = rejected(source)
    assert error.revision.id == by_eve
    assert error.reason == (
        f"commit {by_eve} is signed by SSH key {eve.fingerprint}, which is not in the "
        f"allowed signers file {allowed}"
    )
    unsigned = push(work, "unsigned", None)
    assert rejected(source).reason == f"commit {unsigned} is not signed (--verify-commits ssh)"
    gpg_signed = push(work, "gpg signed", alice)
    assert rejected(source).reason == (
        f"commit {gpg_signed} has an GPG signature; --verify-commits ssh accepts only SSH "
        "signatures"
    )
    assert exports(source) == [good]


def test_an_ssh_key_outside_its_validity_window_is_not_trusted(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, keys: Keys, tmp_path: Path
) -> None:
    dave = keys.ssh("dave")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(dave.allowed_signers_line("dave@example.test", 'valid-before="20200101"'))
    sha = push(work, "by dave, after his key expired", dave)
    error = rejected(ssh_source(make_source, git_repos, allowed))
    assert error.revision.id == sha
    assert error.reason.startswith(f"commit {sha}"), error.reason


def test_a_signed_ssh_tag(
    make_source: SourceFactory, git_repos: GitRepos, work: WorkClone, keys: Keys, tmp_path: Path
) -> None:
    dave = keys.ssh("dave")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(dave.allowed_signers_line("dave@example.test"))
    sha = push(work, "unsigned commit", None)
    tag(work, "v1", signer=dave)
    assert fetch(ssh_source(make_source, git_repos, allowed, ref="v1")).id == sha
    tag(work, "v1", signer=keys.ssh("eve"))
    assert (
        "which is not in the allowed signers"
        in rejected(ssh_source(make_source, git_repos, allowed, ref="v1")).reason
    )


# ---------------------------------------------------------------------- settings


def test_trusted_key_files_are_checked(tmp_path: Path, alice: Signer) -> None:
    assert check_trusted_keys(alice.public) == [alice.fingerprint]
    junk = tmp_path / "junk.asc"
    junk.write_text("hello\n")
    with pytest.raises(ValueError, match="no OpenPGP public key found in it"):
        check_trusted_keys(junk)
    secret = tmp_path / "secret.asc"
    secret.write_text(
        alice.gpg(
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--armor",
            "--export-secret-keys",
            alice.fingerprint,
        )
    )
    with pytest.raises(ValueError, match="holds a secret key"):
        check_trusted_keys(secret)


def test_allowed_signers_files_are_checked(tmp_path: Path, keys: Keys) -> None:
    dave = keys.ssh("dave")
    path = tmp_path / "allowed"
    path.write_text(
        "# comment\n\n"
        + dave.allowed_signers_line("a@x,b@y", 'namespaces="git",valid-after="20200101"')
        + dave.allowed_signers_line("c@z")
    )
    assert check_allowed_signers(path) == 2
    path.write_text(dave.allowed_signers_line("c@z") + "c@z ssh-ed25519\n")
    with pytest.raises(ValueError, match=r"line 2: expected `principals \[options\] key-type"):
        check_allowed_signers(path)
    path.write_text("# nobody\n")
    with pytest.raises(ValueError, match="has no signer in it"):
        check_allowed_signers(path)


@pytest.mark.parametrize(
    ("mode", "trusted", "allowed", "message"),
    [
        ("gpg", (), None, "--verify-commits gpg needs at least one --trusted-keys FILE"),
        ("ssh", (), None, "--verify-commits ssh needs --allowed-signers FILE"),
        ("gpg", ("k.asc",), "a", "--allowed-signers is for --verify-commits ssh, not gpg"),
        ("ssh", ("k.asc",), "a", "--trusted-keys is for --verify-commits gpg, not ssh"),
        (None, ("k.asc",), None, "take effect only with --verify-commits gpg|ssh"),
        ("x509", (), None, "--verify-commits: expected gpg or ssh, found 'x509'"),
    ],
)
def test_settings_that_do_not_fit_together(
    mode: str | None, trusted: tuple[str, ...], allowed: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        signature_policy(mode, [Path(p) for p in trusted], Path(allowed) if allowed else None)

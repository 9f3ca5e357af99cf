"""GitBundles (remote bundles' fetcher) against real git servers on 127.0.0.1:
smart HTTP with token auth, git daemon, sshd with key auth (tests.gitservers).

Pushes go through file:// into the bare repositories the servers export.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.bundles import BundleSourceError, RemoteTree
from reconciler.sources.bundles import GitBundles
from reconciler.sources.git import GitSource
from reconciler.sources.signatures import SignaturePolicy, VerifyMode
from tests.gitservers import (
    HTTP_TOKEN,
    GitDaemon,
    GitRepos,
    SmartHTTPServer,
    SSHServer,
    WorkClone,
    stopped,
)
from tests.signing import Keys, tag

WEBAPP = "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: web}\n"
BUNDLE = "parameters: []\n"
FILES = {
    "bundles/webapp/bundle.yaml": BUNDLE,
    "bundles/webapp/web.yaml": WEBAPP,
    "bundles/db/bundle.yaml": BUNDLE,
    "README": "not a bundle\n",
}


@pytest.fixture
def work(git_repos: GitRepos) -> WorkClone:
    git_repos.create()
    clone = git_repos.clone()
    clone.commit("Bundles", FILES)
    clone.push("main")
    return clone


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(HTTP_TOKEN + "\n")
    return path


@pytest.fixture
def bundles(tmp_path: Path, git_http_server: SmartHTTPServer, token_file: Path) -> GitBundles:
    """A fetcher with the credentials of a main repository on the same HTTP server."""
    return GitBundles(
        tmp_path / "bundles",
        origin_url=git_http_server.url("main.git"),
        token_file=token_file,
        timeout=20.0,
    )


def files(tree: RemoteTree) -> dict[str, str]:
    return {
        str(p.relative_to(tree.root)): p.read_text()
        for p in sorted(tree.root.rglob("*"))
        if p.is_file()
    }


def failure(bundles: GitBundles, repo: str, ref: str, path: str) -> str:
    with pytest.raises(BundleSourceError) as caught:
        bundles.fetch(repo, ref, path)
    # raised `from None` where git failed: no hidden context carries a credential
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    return str(caught.value)


# ------------------------------------------------------------------ refs


def test_branch_tag_and_commit(
    bundles: GitBundles, git_http_server: SmartHTTPServer, work: WorkClone
) -> None:
    url = git_http_server.url()
    first = work.rev()
    work.tag("v1.2", message="release 1.2")  # annotated: peeled to its commit
    work.commit("Later", {"bundles/webapp/web.yaml": WEBAPP + "# later\n"})
    work.push("main")

    by_branch = bundles.fetch(url, "main", "bundles/webapp")
    by_tag = bundles.fetch(url, "v1.2", "bundles/webapp")
    by_sha = bundles.fetch(url, first, "bundles/webapp/")

    assert by_branch.commit == work.rev()
    assert files(by_branch) == {"bundle.yaml": BUNDLE, "web.yaml": WEBAPP + "# later\n"}
    assert by_tag.commit == first == by_sha.commit
    assert by_tag.root == by_sha.root  # one export per (commit, path)
    assert files(by_sha) == {"bundle.yaml": BUNDLE, "web.yaml": WEBAPP}
    assert all(r.authorization == f"Bearer {HTTP_TOKEN}" for r in git_http_server.requests)


def test_a_commit_once_exported_needs_no_server(
    bundles: GitBundles, git_http_server: SmartHTTPServer, work: WorkClone, tmp_path: Path
) -> None:
    url, sha = git_http_server.url(), work.rev()
    tree = bundles.fetch(url, sha, "bundles/webapp")
    with stopped(git_http_server):
        assert bundles.fetch(url, sha, "bundles/webapp") == tree
        # another process (a new fetcher on the same cache) too
        again = GitBundles(tmp_path / "bundles", timeout=2.0)
        assert again.fetch(url, sha, "bundles/webapp") == tree
        # another path of a commit held in the cache: exported without the network
        assert files(again.fetch(url, sha, "bundles/db")) == {"bundle.yaml": BUNDLE}
        # a branch needs the server
        message = failure(again, url, "main", "bundles/webapp")
        assert url in message and "'main'" in message


def test_a_moved_branch_is_followed_but_not_within_a_session(
    bundles: GitBundles, git_http_server: SmartHTTPServer, work: WorkClone
) -> None:
    url = git_http_server.url()
    session = bundles.session()
    before = session.fetch(url, "main", "bundles/webapp")
    asked = len(git_http_server.requests)
    # a second path of the same (repo, ref) in one session: no round trip
    assert session.fetch(url, "main", "bundles/db").commit == before.commit
    assert len(git_http_server.requests) == asked

    moved = work.commit("Move", {"bundles/webapp/web.yaml": WEBAPP + "# moved\n"})
    work.push("main")

    assert session.fetch(url, "main", "bundles/webapp") == before
    assert len(git_http_server.requests) == asked
    after = bundles.session().fetch(url, "main", "bundles/webapp")
    assert after.commit == moved != before.commit
    assert files(after)["web.yaml"].endswith("# moved\n")
    assert files(before)["web.yaml"] == WEBAPP, "an export is never modified"
    assert bundles.fetch(url, "main", "bundles/webapp") == after


def test_ssh_with_the_main_repositorys_key(
    git_ssh_server: SSHServer, work: WorkClone, tmp_path: Path, git_repos: GitRepos
) -> None:
    main = GitSource(
        git_ssh_server.url(),
        ref="main",
        path="",
        cache_dir=tmp_path / "git",
        ssh_key=git_ssh_server.client_key,
        known_hosts=git_ssh_server.known_hosts,
    )
    bundles = GitBundles.like(main, tmp_path / "bundles")
    tree = bundles.fetch(git_ssh_server.url(), "main", "bundles/db")
    assert tree.commit == work.rev()
    assert files(tree) == {"bundle.yaml": BUNDLE}
    assert tree.root.is_relative_to(tmp_path / "bundles")


# ------------------------------------------------------------------ credentials


def test_a_wrong_token_fails_without_showing_it(
    tmp_path: Path, git_http_server: SmartHTTPServer, work: WorkClone
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-token-8c1d2e")
    secret_url = git_http_server.url().replace("http://", "http://user:pw-5e7f9a@")
    for bundles in (
        GitBundles(tmp_path / "a", origin_url=git_http_server.url(), token_file=wrong),
        GitBundles(tmp_path / "b", origin_url=secret_url),
    ):
        message = failure(bundles, git_http_server.url(), "main", "bundles/webapp")
        assert message.startswith(
            f"cannot fetch bundles/webapp at 'main' of {git_http_server.url()}"
        )
        assert "wrong-token-8c1d2e" not in message and "pw-5e7f9a" not in message
        assert HTTP_TOKEN not in message


def test_the_token_goes_only_to_the_main_repositorys_origin(
    bundles: GitBundles, git_repos: GitRepos, work: WorkClone
) -> None:
    with SmartHTTPServer(git_repos.root) as other:  # anonymous, another port
        tree = bundles.fetch(other.url(), "main", "bundles/webapp")
        assert tree.commit == work.rev()
        assert other.requests and all(r.authorization is None for r in other.requests)


def test_credentials_and_protocols_in_a_manifest_are_refused(
    bundles: GitBundles, git_http_server: SmartHTTPServer, git_repos: GitRepos, work: WorkClone
) -> None:
    with_password = git_http_server.url().replace("http://", "http://me:hunter22@")
    message = failure(bundles, with_password, "main", "x")
    assert "carries credentials" in message and "hunter22" not in message
    assert "file protocol is not allowed" in failure(bundles, git_repos.file_url(), "main", "x")
    assert "file protocol" in failure(bundles, str(git_repos.root / "repo.git"), "main", "x")
    assert "ext protocol" in failure(bundles, "ext::sh -c id", "main", "x")


# ------------------------------------------------------------------ paths


def test_paths_that_escape_are_refused(
    bundles: GitBundles, git_http_server: SmartHTTPServer, work: WorkClone
) -> None:
    url = git_http_server.url()
    work.symlink("bundles/out", "../..")
    work.symlink("bundles/leaky/secret", "../../README")
    work.commit("Links", {"bundles/leaky/bundle.yaml": BUNDLE})
    work.push("main")
    sha = work.rev()

    for path in ("../x", "/etc", "bundles/../../x"):
        assert "must be relative and stay inside the repository" in failure(
            bundles, url, "main", path
        )
    message = failure(bundles, url, "main", "bundles/out/etc")
    assert f"path bundles/out/etc at {sha}: bundles/out is a symbolic link" in message
    message = failure(bundles, url, "main", "bundles/leaky")
    assert f"bundles/leaky/secret at {sha} is a symbolic link to '../../README'" in message
    assert not list((bundles.cache_dir).glob("*/trees/*/bundles/leaky")), "nothing exported"


def test_a_missing_path(
    bundles: GitBundles, git_http_server: SmartHTTPServer, work: WorkClone
) -> None:
    sha = work.rev()
    message = failure(bundles, git_http_server.url(), "main", "bundles/x")
    assert message == (
        f"cannot fetch bundles/x at 'main' of {git_http_server.url()}: "
        f"path bundles/x not found at {sha}"
    )
    assert "is a blob, not a directory" in failure(bundles, git_http_server.url(), sha, "README")


def test_an_unknown_ref_and_an_unreachable_server(
    bundles: GitBundles, git_http_server: SmartHTTPServer, work: WorkClone
) -> None:
    url = git_http_server.url()
    assert "ref 'nope' not found" in failure(bundles, url, "nope", "bundles/webapp")
    with stopped(git_http_server):
        message = failure(bundles, url, "main", "bundles/webapp")
    assert message.startswith(f"cannot fetch bundles/webapp at 'main' of {url}: ")
    assert HTTP_TOKEN not in message


# ------------------------------------------------------------------ limits


def test_limits_of_the_exported_tree(
    tmp_path: Path, git_daemon: GitDaemon, work: WorkClone
) -> None:
    work.commit("Big", {"bundles/big/data.txt": "x" * 5000, "bundles/big/bundle.yaml": BUNDLE})
    work.push("main")
    small = GitBundles(tmp_path / "b", max_bytes=4096, timeout=20.0)
    message = failure(small, git_daemon.url(), "main", "bundles/big")
    assert "bundle bundles/big at" in message and "over 4096 bytes (max_bytes)" in message
    assert small.fetch(git_daemon.url(), "main", "bundles/webapp").commit == work.rev()
    few = GitBundles(tmp_path / "b", max_files=2, timeout=20.0)
    assert "over 2 files (max_files)" in failure(few, git_daemon.url(), "main", "bundles")
    assert "over 2 files (max_files)" in failure(few, git_daemon.url(), "main", "")


def test_a_slow_server_times_out(tmp_path: Path, git_repos: GitRepos, work: WorkClone) -> None:
    with SmartHTTPServer(git_repos.root, delay=3.0) as slow:
        bundles = GitBundles(tmp_path / "b", timeout=0.5)
        message = failure(bundles, slow.url(), "main", "bundles/webapp")
    assert "timed out after 0.5 s" in message


# ------------------------------------------------------------------ signatures


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[Keys]:
    with Keys(tmp_path / "keys") as made:
        yield made


def test_bundles_follow_the_main_repositorys_signature_policy(
    tmp_path: Path, git_daemon: GitDaemon, work: WorkClone, keys: Keys
) -> None:
    alice = keys.ssh("alice")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(alice.allowed_signers_line("alice@example.test"))
    tag(work, "v1", signer=alice)  # a signed tag on an unsigned commit
    bundles = GitBundles(
        tmp_path / "b",
        signatures=SignaturePolicy(VerifyMode.SSH, allowed_signers=allowed),
        timeout=20.0,
    )
    url = git_daemon.url()

    message = failure(bundles, url, "main", "bundles/webapp")
    assert f"untrusted: commit {work.rev()} is not signed (--verify-commits ssh)" in message
    session = bundles.session()
    assert session.fetch(url, "v1", "bundles/webapp").commit == work.rev()
    # the tag's verdict covers the other paths of that tag in the session
    assert files(session.fetch(url, "v1", "bundles/db")) == {"bundle.yaml": BUNDLE}


# ------------------------------------------------------------------ the CLI's fetcher


def test_one_shot_commands_take_runs_credential_variables(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    git_http_server: SmartHTTPServer,
    token_file: Path,
    work: WorkClone,
) -> None:
    from reconciler.cli import _bundle_fetcher

    monkeypatch.setenv("RECONCILER_REPO", git_http_server.url("main.git"))
    monkeypatch.setenv("RECONCILER_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("RECONCILER_INSECURE_IGNORE_HOST_KEY", "true")
    fetcher = _bundle_fetcher(tmp_path / "state")
    assert fetcher.cache_dir == tmp_path / "state" / "bundles"
    assert fetcher.insecure_ignore_host_key and "file" not in fetcher.protocols
    tree = fetcher.session().fetch(git_http_server.url(), "main", "bundles/db")
    assert tree.commit == work.rev()

    monkeypatch.delenv("RECONCILER_REPO")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fetcher = _bundle_fetcher(None)
    assert fetcher.cache_dir == tmp_path / "xdg" / "reconciler" / "bundles"
    # no main repository to bind the token to: it is sent nowhere
    message = failure(fetcher, git_http_server.url(), "main", "bundles/db")
    assert "401" in message or "Authentication" in message, message

"""GitSource against real git servers on 127.0.0.1: file://, git daemon, smart HTTP
with token auth and sshd with key auth (tests.gitservers).

Pushes go through file:// into the same bare repository the servers export, so a
test's setup stays fast whatever transport the source under test uses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest

from reconciler.sources.base import Revision, SourceError
from reconciler.sources.git import GitSource
from tests.gitservers import (
    HTTP_TOKEN,
    GitDaemon,
    GitRepos,
    SmartHTTPServer,
    SSHServer,
    WorkClone,
    keygen,
    run_git,
    stopped,
)
from tests.sources.conftest import SourceFactory

APP = "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: app}\n"


def seed(git_repos: GitRepos, files: dict[str, str | None] | None = None) -> WorkClone:
    """A bare repo.git with one commit on main, and a clone to push more."""
    git_repos.create()
    work = git_repos.clone()
    work.commit("Initial config\n\nbody text", files or {"config/app.yaml": APP})
    work.push("main")
    return work


def read_tree(rev: Revision) -> dict[str, str]:
    """Relative path -> content of every regular file of the revision's tree."""
    return {
        str(p.relative_to(rev.path)): p.read_text()
        for p in sorted(rev.path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def token_file(tmp_path: Path, token: str = HTTP_TOKEN) -> Path:
    path = tmp_path / "token"
    path.write_text(f"  {token}\n")
    return path


# ----------------------------------------------------------------------- transports


async def test_file_url_first_revision(git_repos: GitRepos, make_source: SourceFactory) -> None:
    work = seed(git_repos)
    source = make_source(git_repos.file_url(), path="config")

    rev = await source.fetch()

    assert rev.id == work.rev()
    assert rev.summary == "Initial config"
    assert rev.path == source.cache_dir / "trees" / rev.id / "config"
    assert read_tree(rev) == {"app.yaml": APP}
    assert (source.cache_dir / "repo" / "shallow").exists(), "shallow clone by default"


async def test_git_daemon(
    git_repos: GitRepos, git_daemon: GitDaemon, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    source = make_source(git_daemon.url(), ref="main")

    rev = await source.fetch()

    assert rev.id == work.rev()
    assert read_tree(rev) == {"config/app.yaml": APP}
    assert source.url == git_daemon.url()


async def test_http_bearer_token(
    git_repos: GitRepos,
    git_http_server: SmartHTTPServer,
    make_source: SourceFactory,
    tmp_path: Path,
) -> None:
    work = seed(git_repos)
    source = make_source(git_http_server.url(), token_file=token_file(tmp_path))

    rev = await source.fetch()

    assert rev.id == work.rev()
    assert git_http_server.requests, "the server was asked"
    assert all(r.authorization == f"Bearer {HTTP_TOKEN}" for r in git_http_server.requests)


@pytest.mark.parametrize("token", [None, "wrong-token-value"])
async def test_http_missing_or_wrong_token(
    git_repos: GitRepos,
    git_http_server: SmartHTTPServer,
    make_source: SourceFactory,
    tmp_path: Path,
    token: str | None,
) -> None:
    seed(git_repos)
    tf = token_file(tmp_path, token) if token else None
    source = make_source(git_http_server.url(), token_file=tf)

    with pytest.raises(SourceError) as caught:
        await source.fetch()

    message = str(caught.value)
    assert "failed" in message and source.url in message
    assert HTTP_TOKEN not in message
    if token:
        assert token not in message
    # Raised `from None`; even the hidden context carries no credential.
    assert caught.value.__suppress_context__
    assert HTTP_TOKEN not in str(caught.value.__context__)


async def test_http_token_file_is_read_at_each_fetch(
    git_repos: GitRepos,
    git_http_server: SmartHTTPServer,
    make_source: SourceFactory,
    tmp_path: Path,
) -> None:
    seed(git_repos)
    tf = token_file(tmp_path)
    source = make_source(git_http_server.url(), token_file=tf)
    await source.fetch()

    git_http_server.token = "rotated-token-0042"
    with pytest.raises(SourceError):
        await source.fetch()
    tf.write_text("rotated-token-0042")
    await source.fetch()


async def test_http_credentials_in_url_travel_as_header(
    git_repos: GitRepos,
    git_http_server: SmartHTTPServer,
    make_source: SourceFactory,
) -> None:
    work = seed(git_repos)
    url = git_http_server.url().replace("http://", f"http://deploy:{HTTP_TOKEN}@")
    source = make_source(url)

    rev = await source.fetch()

    assert rev.id == work.rev()
    assert HTTP_TOKEN not in source.url and "***@" in source.url
    assert HTTP_TOKEN not in repr(source)
    assert all(
        r.authorization and r.authorization.startswith("Basic ") for r in git_http_server.requests
    )
    config = (source.cache_dir / "repo" / "config").read_text()
    assert HTTP_TOKEN not in config


async def test_token_only_in_git_environment_never_in_argv_or_logs(
    git_repos: GitRepos,
    git_http_server: SmartHTTPServer,
    make_source: SourceFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `git` wrapper first on PATH records every argv GitSource runs, and whether
    that process got the token in its environment."""
    seed(git_repos)
    real_git = shutil.which("git")
    assert real_git
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "git-calls.log"
    wrapper = bindir / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "ARGV %s\\n" "$*" >> {record}\n'
        f'if env | grep -q "^GIT_CONFIG_VALUE_[0-9]*=Authorization: Bearer {HTTP_TOKEN}$"; then\n'
        f'  printf "ENV-TOKEN %s\\n" "$1" >> {record}\n'
        "fi\n"
        f'exec {real_git} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    caplog.set_level(logging.DEBUG)
    source = make_source(git_http_server.url(), token_file=token_file(tmp_path), path="config")

    await source.fetch()
    git_http_server.token = "another-token"
    with pytest.raises(SourceError) as caught:
        await source.fetch()

    calls = record.read_text().splitlines()
    argvs = [line for line in calls if line.startswith("ARGV ")]
    with_token = [line.split()[1] for line in calls if line.startswith("ENV-TOKEN ")]
    assert argvs, "the wrapper saw git being run"
    assert not any(HTTP_TOKEN in line for line in argvs)
    assert set(with_token) == {"ls-remote", "-c"}, "only network commands get credentials"
    assert any("fetch" in line for line in argvs)
    assert HTTP_TOKEN not in str(caught.value)
    assert HTTP_TOKEN not in caplog.text


@pytest.mark.timeout(900)  # the first SSH test may install openssh-server
async def test_ssh_key_and_known_hosts(
    git_repos: GitRepos, git_ssh_server: SSHServer, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    source = make_source(
        git_ssh_server.url(),
        ssh_key=git_ssh_server.client_key,
        known_hosts=git_ssh_server.known_hosts,
        path="config",
    )

    rev = await source.fetch()

    assert rev.id == work.rev()
    assert read_tree(rev) == {"app.yaml": APP}


@pytest.mark.timeout(900)
async def test_ssh_unknown_host_key_rejected(
    git_repos: GitRepos,
    git_ssh_server: SSHServer,
    make_source: SourceFactory,
    tmp_path: Path,
) -> None:
    seed(git_repos)
    other = tmp_path / "other_host_key"
    keygen(other)
    wrong = tmp_path / "known_hosts_wrong"
    key_type, key = other.with_suffix(".pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{git_ssh_server.port} {key_type} {key}\n")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")

    for known_hosts in (wrong, empty, None):
        # None: the user's own known_hosts, which does not know this random port.
        source = make_source(
            git_ssh_server.url(), ssh_key=git_ssh_server.client_key, known_hosts=known_hosts
        )
        with pytest.raises(SourceError, match="Host key verification failed"):
            await source.fetch()

    insecure = make_source(
        git_ssh_server.url(),
        ssh_key=git_ssh_server.client_key,
        known_hosts=empty,
        insecure_ignore_host_key=True,
    )
    assert (await insecure.fetch()).id


@pytest.mark.timeout(900)
async def test_ssh_wrong_key_rejected(
    git_repos: GitRepos,
    git_ssh_server: SSHServer,
    make_source: SourceFactory,
    tmp_path: Path,
) -> None:
    seed(git_repos)
    stranger = tmp_path / "stranger_key"
    keygen(stranger)
    source = make_source(
        git_ssh_server.url(), ssh_key=stranger, known_hosts=git_ssh_server.known_hosts
    )
    with pytest.raises(SourceError, match="Permission denied"):
        await source.fetch()

    missing = make_source(git_ssh_server.url(), ssh_key=tmp_path / "nope")
    with pytest.raises(SourceError, match="does not exist"):
        await missing.fetch()


# ----------------------------------------------------------------------- revisions


async def test_new_push_new_revision_old_tree_untouched(
    git_repos: GitRepos, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    source = make_source(git_repos.file_url(), ref="main", path="config")
    first = await source.fetch()

    again = await source.fetch()
    assert again == first, "unchanged remote: same revision, same tree"

    work.commit("Change port", {"config/app.yaml": APP + "# v2\n", "config/new.yaml": "x: 1\n"})
    work.push()
    second = await source.fetch()

    assert second.id == work.rev() != first.id
    assert second.summary == "Change port"
    assert second.path != first.path
    assert read_tree(first) == {"app.yaml": APP}
    assert read_tree(second) == {"app.yaml": APP + "# v2\n", "new.yaml": "x: 1\n"}


async def test_branch_tag_and_commit_refs(git_repos: GitRepos, make_source: SourceFactory) -> None:
    work = seed(git_repos)
    first = work.rev()
    work.tag("v1", message="release 1")  # annotated
    work.tag("light")  # lightweight
    work.branch("staging")
    staging = work.commit("Staging only", {"config/app.yaml": "staging\n"})
    work.push("staging")
    work.branch("main", "main")
    tip = work.commit("Second on main", {"config/app.yaml": "main 2\n"})
    work.push("main")
    url = git_repos.file_url()

    assert (await make_source(url, ref="main").fetch()).id == tip
    assert (await make_source(url, ref="refs/heads/main").fetch()).id == tip
    assert (await make_source(url, ref="staging").fetch()).id == staging
    assert (await make_source(url, ref="v1").fetch()).id == first
    assert (await make_source(url, ref="light").fetch()).id == first
    pinned = await make_source(url, ref=first, path="config").fetch()
    assert pinned.id == first and read_tree(pinned) == {"app.yaml": APP}
    assert (await make_source(url, ref=first[:10]).fetch()).id == first
    assert (await make_source(url, ref=first.upper()).fetch()).id == first


async def test_commit_sha_on_protocol_v0_server_falls_back_to_full_fetch(
    git_repos: GitRepos, make_source: SourceFactory, tmp_path: Path
) -> None:
    work = seed(git_repos)
    old = work.rev()
    work.commit("Newer", {"config/app.yaml": "newer\n"})
    work.push()
    with SmartHTTPServer(git_repos.root, protocol_v2=False) as server:
        source = make_source(server.url(), ref=old)
        rev = await source.fetch()
        assert rev.id == old
        assert not (source.cache_dir / "repo" / "shallow").exists(), "fell back to a full fetch"
        requests = len(server.requests)
        assert (await source.fetch()).id == old
        assert len(server.requests) == requests, "a pinned commit needs no network once fetched"


async def test_unknown_ref(git_repos: GitRepos, make_source: SourceFactory) -> None:
    seed(git_repos)
    with pytest.raises(SourceError, match="'nope' not found"):
        await make_source(git_repos.file_url(), ref="nope").fetch()
    with pytest.raises(SourceError, match="not found"):
        await make_source(git_repos.file_url(), ref="deadbeef12").fetch()


async def test_default_remote_head(git_repos: GitRepos, make_source: SourceFactory) -> None:
    work = seed(git_repos)
    work.branch("production")
    prod = work.commit("Production", {"config/app.yaml": "prod\n"})
    work.push("production")
    run_git("symbolic-ref", "HEAD", "refs/heads/production", cwd=git_repos.root / "repo.git")
    rev = await make_source(git_repos.file_url(), ref=None, path="config").fetch()
    assert rev.id == prod and read_tree(rev) == {"app.yaml": "prod\n"}


async def test_empty_remote(git_repos: GitRepos, make_source: SourceFactory) -> None:
    git_repos.create()
    with pytest.raises(SourceError, match="no commit"):
        await make_source(git_repos.file_url()).fetch()


# ----------------------------------------------------------------------- paths


async def test_subpath_export_and_missing_subpath(
    git_repos: GitRepos, make_source: SourceFactory
) -> None:
    work = seed(
        git_repos,
        {"deploy/prod/a.yaml": "a\n", "deploy/prod/sub/b.yaml": "b\n", "README": "r\n"},
    )
    url = git_repos.file_url()

    rev = await make_source(url, path="./deploy/prod/").fetch()
    assert read_tree(rev) == {"a.yaml": "a\n", "sub/b.yaml": "b\n"}
    assert not (rev.path.parent.parent / "README").exists(), "only the subpath is exported"

    with pytest.raises(SourceError) as caught:
        await make_source(url, path="deploy/staging").fetch()
    assert "'deploy/staging'" in str(caught.value) and work.rev() in str(caught.value)

    with pytest.raises(SourceError, match="not a directory"):
        await make_source(url, path="README").fetch()

    for bad in ("../etc", "/etc", "a/../../b"):
        with pytest.raises(ValueError):
            make_source(url, path=bad)


async def test_path_disappearing_in_a_later_commit(
    git_repos: GitRepos, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    source = make_source(git_repos.file_url(), path="config")
    await source.fetch()
    work.commit("Move config", {"config/app.yaml": None, "conf/app.yaml": APP})
    work.push()
    with pytest.raises(SourceError, match=f"'config' does not exist at commit {work.rev()}"):
        await source.fetch()


@pytest.fixture(params=["data filter", "without extraction filters"])
def extraction(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a tree is extracted: through tarfile's `data` filter, and as on
    Pythons before 3.11.4 (Debian 12's 3.11.2), which have no filters."""
    if request.param == "without extraction filters":
        monkeypatch.delattr(tarfile, "data_filter")
    return str(request.param)


async def test_symlinks_cannot_escape_the_export(
    git_repos: GitRepos, make_source: SourceFactory, extraction: str
) -> None:
    git_repos.create()
    work = git_repos.clone()
    work.write({"config/app.yaml": APP})
    work.symlink("config/inside.yaml", "app.yaml")
    work.symlink("config/absolute", "/etc/passwd")
    work.symlink("config/upward", "../../../../../../etc")
    work.commit("Links")
    work.push()

    rev = await make_source(git_repos.file_url(), path="config").fetch()

    assert (rev.path / "inside.yaml").read_text() == APP
    for name in ("absolute", "upward"):
        assert not (rev.path / name).is_symlink() and not (rev.path / name).exists()
    # git archive writes group-writable modes (tar.umask 002); neither keeps them
    assert stat.S_IMODE((rev.path / "app.yaml").stat().st_mode) & 0o022 == 0
    assert (rev.path / "inside.yaml").is_symlink()


async def test_only_the_newest_trees_are_kept(
    git_repos: GitRepos, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    source = make_source(git_repos.file_url(), keep_trees=3)
    ids = []
    for i in range(5):
        work.commit(f"Change {i}", {"config/app.yaml": f"{i}\n"})
        work.push()
        ids.append((await source.fetch()).id)

    kept = {p.name for p in (source.cache_dir / "trees").iterdir() if not p.name.startswith(".")}
    assert kept == set(ids[-3:])


# ----------------------------------------------------------------------- history


async def test_force_push_is_followed(git_repos: GitRepos, make_source: SourceFactory) -> None:
    work = seed(git_repos)
    base = work.rev()
    source = make_source(git_repos.file_url(), ref="main")
    work.commit("Will be rewritten", {"config/app.yaml": "bad\n"})
    work.push()
    assert (await source.fetch()).id == work.rev()

    work.reset_hard(base)
    rewritten = work.commit("Rewritten", {"config/app.yaml": "good\n"})
    work.push(force=True)
    rev = await source.fetch()
    assert rev.id == rewritten
    assert read_tree(rev) == {"config/app.yaml": "good\n"}

    work.reset_hard(base)
    work.push(force=True)
    assert (await source.fetch()).id == base, "rolled back to an older commit"


async def test_deleted_branch_and_tag(git_repos: GitRepos, make_source: SourceFactory) -> None:
    work = seed(git_repos)
    work.branch("feature")
    work.commit("Feature", {"config/app.yaml": "f\n"})
    work.push("feature")
    work.tag("v9")
    branch_source = make_source(git_repos.file_url(), ref="feature")
    tag_source = make_source(git_repos.file_url(), ref="v9")
    await branch_source.fetch()
    await tag_source.fetch()

    work.delete_remote_branch("feature")
    work.delete_remote_tag("v9")

    with pytest.raises(SourceError, match="'feature' no longer exists"):
        await branch_source.fetch()
    with pytest.raises(SourceError, match="'v9' no longer exists"):
        await tag_source.fetch()


async def test_full_history_when_not_shallow(
    git_repos: GitRepos, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    work.commit("Second")
    work.push()
    source = make_source(git_repos.file_url(), shallow=False)
    await source.fetch()
    repo = source.cache_dir / "repo"
    assert not (repo / "shallow").exists()
    assert run_git("--git-dir", str(repo), "rev-list", "--count", "--all") == "2"


# ----------------------------------------------------------------------- failures


async def test_server_down_then_back(
    git_repos: GitRepos, git_daemon: GitDaemon, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    source = make_source(git_daemon.url(), ref="main")
    first = await source.fetch()

    with stopped(git_daemon):
        with pytest.raises(SourceError) as caught:
            await source.fetch()
        assert "resolve" in str(caught.value) and git_daemon.url() in str(caught.value)
        work.commit("While down", {"config/app.yaml": "later\n"})
        work.push()

    rev = await source.fetch()
    assert rev.id == work.rev() != first.id


def _garbage_head(repo: Path) -> None:
    (repo / "HEAD").write_text("garbage\n")


def _delete_objects(repo: Path) -> None:
    for entry in (repo / "objects").iterdir():
        if entry.name not in ("info", "pack"):
            shutil.rmtree(entry)
    for pack in (repo / "objects" / "pack").iterdir():
        pack.unlink()


def _not_a_repo(repo: Path) -> None:
    shutil.rmtree(repo)
    repo.write_text("not a repository\n")


def _empty_dir(repo: Path) -> None:
    shutil.rmtree(repo)
    repo.mkdir()


@pytest.mark.parametrize("corrupt", [_garbage_head, _delete_objects, _not_a_repo, _empty_dir])
@pytest.mark.parametrize("new_commit", [False, True])
async def test_corrupted_cache_is_recloned(
    git_repos: GitRepos,
    make_source: SourceFactory,
    corrupt: object,
    new_commit: bool,
) -> None:
    work = seed(git_repos)
    source = make_source(git_repos.file_url(), ref="main")
    await source.fetch()
    if new_commit:
        work.commit("After corruption", {"config/app.yaml": "after\n"})
        work.push()
    assert callable(corrupt)
    corrupt(source.cache_dir / "repo")

    rev = await source.fetch()

    assert rev.id == work.rev()
    assert read_tree(rev)["config/app.yaml"] == ("after\n" if new_commit else APP)
    assert (await source.fetch()).id == rev.id


async def test_fetch_runs_off_the_event_loop(
    git_repos: GitRepos, make_source: SourceFactory
) -> None:
    seed(git_repos)
    with SmartHTTPServer(git_repos.root, delay=0.3) as slow:
        source = make_source(slow.url())
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        task = asyncio.create_task(ticker(), name="ticker")
        start = time.monotonic()
        await source.fetch()
        elapsed = time.monotonic() - start
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert elapsed > 0.9, "the server was slow (several delayed requests)"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > elapsed / 0.02 / 3
    # A fetch blocking the loop would show as one gap as long as the fetch (> 0.9 s).
    assert max(gaps) < 0.5, "the loop kept running during the fetch"


async def test_concurrent_fetches_share_the_cache(
    git_repos: GitRepos, make_source: SourceFactory
) -> None:
    work = seed(git_repos)
    source = make_source(git_repos.file_url(), path="config")
    revs = await asyncio.gather(*(source.fetch() for _ in range(4)))
    assert {r.id for r in revs} == {work.rev()}
    assert len({r.path for r in revs}) == 1


def test_constructor_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        GitSource("--upload-pack=evil", ref=None, path="", cache_dir=tmp_path)
    with pytest.raises(ValueError):
        GitSource("https://h/r.git", ref="a..b", path="", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="use one"):
        GitSource("https://u:p@h/r.git", ref=None, path="", cache_dir=tmp_path, token_file=tmp_path)
    source = GitSource("https://u:secret@h/r.git", ref="HEAD", path=".", cache_dir=tmp_path)
    assert source.url == "https://***@h/r.git" and source.ref is None and source.path == ""


async def test_hanging_server_times_out(git_repos: GitRepos, make_source: SourceFactory) -> None:
    seed(git_repos)
    with SmartHTTPServer(git_repos.root, delay=3.0) as hanging:
        source = make_source(hanging.url(), timeout=1.0)
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"timed out after 1 s"):
            await source.fetch()
        assert time.monotonic() - start < 2.9

"""`reconciler run` refuses to start on a bad settings file or secret file: one
line on stderr naming the file (and the line, for a settings file), exit code 1,
and nothing fetched, created or applied first.

Each case runs the real process against a real git repository whose manifest
would create a file under the root: after a refused start the root is still
empty and the state directory does not exist (a fetch would have filled its git
cache). Reading a secret the user may not read (EACCES) is not tested: these
tests run as root, and the interpreter lives where user nobody cannot run it;
a directory, a missing path and a path through a file stand for "cannot read".
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.secrets import MAX_SECRET_FILE
from tests.e2e.daemon_harness import Daemons, file_doc
from tests.gitservers import GitRepos, free_port

TOKEN = "tok-3b9d0c7e5a21-not-a-real-secret"


@dataclass
class Setup:
    repo: Path
    root: Path
    state: Path
    secrets: Path
    tmp: Path

    def argv(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "reconciler",
            "run",
            "--repo",
            str(self.repo),
            "--root",
            str(self.root),
            "--state-dir",
            str(self.state),
            "--listen",
            f"127.0.0.1:{free_port()}",
            *extra,
        ]

    def refused(
        self, *extra: str, env: Mapping[str, str] | None = None, argv: list[str] | None = None
    ) -> str:
        """Run the daemon, expect a refusal; the one line it printed."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        full_env.update(env or {})
        result = subprocess.run(
            argv or self.argv(*extra),
            capture_output=True,
            text=True,
            timeout=30,
            env=full_env,
            cwd=self.tmp,
        )
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr and "Usage:" not in result.stderr, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: "), lines
        assert list(self.root.iterdir()) == [], "something was applied before the refusal"
        assert not self.state.exists(), "the state dir was made (or a fetch ran) before refusal"
        assert TOKEN not in result.stderr
        return lines[0]

    def settings(self, text: str, name: str = "settings.yaml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    repos = GitRepos(tmp_path / "srv")
    bare = repos.create()
    work = repos.clone()
    root = tmp_path / "root"
    root.mkdir()
    work.commit("app", {"app.yaml": file_doc("app", root / "app.conf", "v1\n")})
    work.push()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("token", "webhook", "api", "ssh-key", "known-hosts"):
        (secrets / name).write_text(TOKEN + "\n")
    return Setup(
        repo=bare,
        root=root,
        state=tmp_path / "state",
        secrets=secrets,
        tmp=tmp_path,
    )


# the settings file


def test_a_yaml_syntax_error_names_the_file_line_and_column(setup: Setup) -> None:
    path = setup.settings("interval: 30s\nroot: [/srv\nlisten: 127.0.0.1:9108\n")
    line = setup.refused("--config", str(path))
    assert line.startswith(f"error: {path}:3:7: invalid YAML: "), line
    assert "expected ',' or ']'" in line


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("interval: 30s\nintervall: 5m\n", 2, "unknown setting 'intervall'; known: "),
        ("interval: soon\n", 1, "interval: expected a duration such as 30s or 5m, found 'soon'"),
        ("log-level: info\nconcurrency: many\n", 2, "concurrency: 'many' is not a valid integer"),
        ("concurrency: 0\n", 1, "concurrency: 0 is not in the range 1<=x<=1024"),
        ("listen: 9108\n", 1, "listen: expected HOST:PORT such as 127.0.0.1:9108, found '9108'"),
        ("log-level: loud\n", 1, "log-level: 'loud' is not one of 'debug', 'info'"),
        ("ref: [main, dev]\n", 1, "ref: expected a single value, found a list"),
        (
            "allow-mass-prune: sometimes\n",
            1,
            "allow-mass-prune: 'sometimes' is not a valid",
        ),
        ("interval: 1m\n\ninterval: 2m\n", 3, "setting 'interval' given twice (first on line 1)"),
    ],
    ids=["unknown", "duration", "integer", "range", "listen", "choice", "list", "bool", "twice"],
)
def test_a_bad_setting_names_the_file_and_line(
    setup: Setup, text: str, where: int, message: str
) -> None:
    path = setup.settings(text)
    line = setup.refused("--config", str(path))
    assert line.startswith(f"error: {path}:{where}: {message}"), line


def test_an_unknown_setting_lists_the_known_ones_by_their_flag_names(setup: Setup) -> None:
    line = setup.refused("--config", str(setup.settings("roots: /srv\nfoo: 1\n")))
    known = line.split("known: ", 1)[1].split(", ")
    assert "root" in known and "path" in known and "webhook-secret-file" in known
    assert "roots" not in known and "subpath" not in known and "config" not in known


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- interval: 30s\n", ":1: expected a mapping of settings"),
        ("just words\n", ":1: expected a mapping of settings"),
        ("a: 1\n---\nb: 2\n", ":2:1: invalid YAML: "),
    ],
    ids=["list", "scalar", "two-documents"],
)
def test_a_settings_file_that_is_not_one_mapping(setup: Setup, text: str, message: str) -> None:
    path = setup.settings(text)
    line = setup.refused("--config", str(path))
    assert line.startswith(f"error: {path}{message}"), line


def test_a_missing_or_unreadable_settings_file(setup: Setup) -> None:
    missing = setup.tmp / "nowhere.yaml"
    assert setup.refused("--config", str(missing)) == (
        f"error: settings file {missing}: No such file or directory"
    )
    assert setup.refused("--config", str(setup.secrets)) == (
        f"error: settings file {setup.secrets}: Is a directory"
    )
    binary = setup.tmp / "binary.yaml"
    binary.write_bytes(b"interval: \xff\xfe\n")
    assert setup.refused(env={"RECONCILER_CONFIG": str(binary)}) == (
        f"error: settings file {binary}: not UTF-8 text"
    )


def test_a_settings_file_naming_a_missing_secret(setup: Setup) -> None:
    gone = setup.secrets / "gone"
    path = setup.settings(f"interval: 1m\napi-token-file: {gone}\n")
    assert setup.refused("--config", str(path)) == (
        f"error: {path}:2: api-token-file: {gone}: No such file or directory"
    )


# secret files


SECRET_OPTIONS = [
    ("--token-file", "RECONCILER_TOKEN_FILE"),
    ("--webhook-secret-file", "RECONCILER_WEBHOOK_SECRET_FILE"),
    ("--api-token-file", "RECONCILER_API_TOKEN_FILE"),
    ("--ssh-key", "RECONCILER_SSH_KEY"),
    ("--known-hosts", "RECONCILER_KNOWN_HOSTS"),
]


@pytest.mark.parametrize(("flag", "variable"), SECRET_OPTIONS, ids=[f for f, _ in SECRET_OPTIONS])
def test_a_missing_secret_file_stops_startup(setup: Setup, flag: str, variable: str) -> None:
    missing = setup.secrets / "missing"
    assert setup.refused(flag, str(missing)) == (
        f"error: {flag} {missing}: No such file or directory"
    )
    assert setup.refused(env={variable: str(missing)}) == (
        f"error: {variable}={missing}: No such file or directory"
    )


@pytest.mark.parametrize(("flag", "variable"), SECRET_OPTIONS, ids=[f for f, _ in SECRET_OPTIONS])
def test_an_unreadable_secret_path_stops_startup(setup: Setup, flag: str, variable: str) -> None:
    assert setup.refused(flag, str(setup.secrets)) == (
        f"error: {flag} {setup.secrets}: Is a directory"
    )
    through_a_file = setup.secrets / "token" / "x"
    assert setup.refused(flag, str(through_a_file)) == (
        f"error: {flag} {through_a_file}: Not a directory"
    )


@pytest.mark.parametrize("flag", ["--token-file", "--webhook-secret-file", "--api-token-file"])
def test_a_secret_that_is_not_text_stops_startup(setup: Setup, flag: str) -> None:
    binary = setup.secrets / "binary"
    binary.write_bytes(b"\xff\xfe\x00secret")
    assert setup.refused(flag, str(binary)) == f"error: {flag} {binary}: not UTF-8 text"


@pytest.mark.parametrize(
    ("flag", "what"),
    [("--webhook-secret-file", "webhook secret"), ("--api-token-file", "API token")],
)
def test_an_empty_secret_stops_startup(setup: Setup, flag: str, what: str) -> None:
    empty = setup.secrets / "empty"
    empty.write_text("\n")
    assert setup.refused(flag, str(empty)) == f"error: {what} file {empty} is empty"


# and with good files it starts


@pytest.mark.timeout(90)
def test_with_good_settings_and_secret_files_it_starts_and_converges(
    setup: Setup, tmp_path: Path
) -> None:
    path = setup.settings(
        f"interval: 1h\n"
        f"root: {setup.root}\n"
        f"state-dir: {setup.state}\n"
        f"webhook-secret-file: {setup.secrets / 'webhook'}\n"
        f"api_token_file: {setup.secrets / 'api'}\n"
        f"log-level: warning\n"
    )
    with Daemons(tmp_path / "daemons") as daemons:
        daemon = daemons.start(
            setup.repo,
            root=setup.root,
            api_token=False,
            webhook_secret=False,
            args=["--config", str(path)],
            secrets=[TOKEN],
        )
        daemon.wait_file(setup.root / "app.conf", "v1\n")
        assert daemon.sync(token=TOKEN).status == 202  # the token from the settings file
        daemon.stop()
        daemon.assert_no_secrets()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("flag", "what"),
    [("--webhook-secret-file", "webhook secret"), ("--api-token-file", "API token")],
)
def test_a_secret_file_that_is_a_fifo_or_too_large_stops_startup(
    setup: Setup, flag: str, what: str
) -> None:
    """Crosses the secret file's limit (MAX_SECRET_FILE, 1 MiB) and gives a FIFO,
    which a plain read would wait on forever: both refused at once."""
    fifo = setup.secrets / "fifo"
    os.mkfifo(fifo)
    assert setup.refused(flag, str(fifo)) == f"error: {what} file {fifo}: not a regular file"
    large = setup.secrets / "large"
    large.write_text("x" * (MAX_SECRET_FILE + 1))
    assert setup.refused(flag, str(large)) == (
        f"error: {what} file {large}: over {MAX_SECRET_FILE} bytes"
    )

"""The receivers file (`--notifications`): what it accepts, and the error (file,
line, field, never a secret) for each thing it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.daemon import SettingsError
from reconciler.daemon.receivers import MAX_FILE_BYTES, MAX_RECEIVERS, load_receivers
from reconciler.notify import Condition, Severity

SECRET = "hmac-secret-3f9a1c-not-a-real-secret"
SLACK_TOKEN = "tok3n5ecretabcdef0123456789"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "hmac").write_text(SECRET + "\n")
    (tmp_path / "chat-url").write_text(f"mmost://127.0.0.1:9/{SLACK_TOKEN}\n")
    return tmp_path


def write(where: Path, text: str) -> Path:
    path = where / "notifications.yaml"
    path.write_text(text)
    return path


def refused(path: Path) -> str:
    with pytest.raises(SettingsError) as caught:
        load_receivers(path)
    message = str(caught.value)
    assert SECRET not in message and SLACK_TOKEN not in message
    return message


def test_a_full_file_is_read_with_relative_secret_files(files: Path) -> None:
    path = write(
        files,
        """\
receivers:
  - name: ops
    type: webhook
    url: http://127.0.0.1:9109/hook
    secret_file: hmac
    events: [revision-rejected, resource-drifted]
    kinds: ["File"]
    names: ["etc/*"]
    min_severity: warning
    repeat: 30m
    rate: {burst: 3, per: 10s}
    timeout: 2s
  - name: chat
    type: apprise
    url_file: chat-url
queue_size: 50
attempts: 3
""",
    )
    read = load_receivers(path)
    ops, chat = read.receivers
    assert (read.queue_size, read.attempts) == (50, 3)
    assert ops.secret == SECRET.encode() and ops.url == "http://127.0.0.1:9109/hook"
    assert ops.events == {Condition.REJECTED, Condition.DRIFTED}
    assert (ops.kinds, ops.names, ops.min_severity) == (("File",), ("etc/*",), Severity.WARNING)
    assert (ops.repeat, ops.burst, ops.per, ops.timeout) == (1800, 3, 10, 2)
    assert chat.type == "apprise" and chat.url.endswith(SLACK_TOKEN) and chat.secret is None
    assert chat.events == frozenset()  # all
    assert set(read.files) == {path, files / "hmac", files / "chat-url"}
    assert SECRET not in repr(read) and SLACK_TOKEN not in repr(read)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("receivers: []\n", ":1: receivers: List should have at least 1 item"),
        ("- a\n", "expected one YAML mapping"),
        ("receivers:\n  - name: ops\n    type: pager\n", ":3: receivers[0].type: Input should be"),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: http://h/\n"
            "    secret_file: hmac\n    events: [resource-exploded]\n",
            ":6: receivers[0].events[0]: unknown event 'resource-exploded'; known: revision-",
        ),
        (
            "receivers:\n  - name: 'a b'\n    type: webhook\n",
            ":2: receivers[0].name: String should match pattern",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: http://h/\n"
            "    secret_file: hmac\n    repeat: soon\n",
            ":6: receivers[0].repeat:",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: http://h/\n"
            "    secret_file: hmac\n    colour: red\n",
            ":6: receivers[0].colour: Extra inputs are not permitted",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: http://h/\n",
            ":2: receivers[0].secret_file: a webhook is signed",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    secret_file: hmac\n",
            "receivers[0].url: give exactly one of url and url_file",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: ftp://h/x\n"
            "    secret_file: hmac\n",
            ":4: receivers[0].url: expected an http:// or https:// URL",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: https://u:pw@h/x\n"
            "    secret_file: hmac\n",
            ":4: receivers[0].url: a URL with a user, a password or a query string",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: https://h/x?token=abc\n"
            "    secret_file: hmac\n",
            "may hold credentials: give it in url_file",
        ),
        (
            "receivers:\n  - name: chat\n    type: apprise\n    url: slack://a/b/c\n",
            ":4: receivers[0].url: an apprise URL holds credentials: give it in url_file",
        ),
        (
            "receivers:\n  - name: ops\n    type: webhook\n    url: http://h/\n"
            "    secret_file: missing\n",
            ":5: receivers[0].secret_file: file ",
        ),
        (
            "receivers:\n  - {name: a, type: apprise, url_file: chat-url}\n"
            "  - {name: a, type: apprise, url_file: chat-url}\n",
            ":3: receivers[1].name: 'a' is used twice",
        ),
        ("receivers: [a,\n", ":2: invalid YAML"),
        ("receivers: []\nreceivers: []\n", "invalid YAML"),
        (
            "receivers:\n  - {name: a, type: apprise, url_file: chat-url}\nqueue_size: 0\n",
            ":3: queue_size: Input should be greater than or equal to 1",
        ),
    ],
)
def test_each_mistake_says_where_and_what(files: Path, text: str, expected: str) -> None:
    assert expected in refused(write(files, text))


def test_an_apprise_url_that_apprise_does_not_know_names_only_its_scheme(files: Path) -> None:
    (files / "bad-url").write_text(f"nosuchservice://{SLACK_TOKEN}@example/\n")
    message = refused(write(files, "receivers:\n  - {name: a, type: apprise, url_file: bad-url}\n"))
    assert "apprise does not accept this nosuchservice:// URL" in message


def test_an_empty_secret_file_and_a_fifo_are_refused_without_waiting(files: Path) -> None:
    (files / "empty").write_text("\n")
    message = refused(
        write(
            files,
            "receivers:\n  - {name: a, type: webhook, url: 'http://h/', secret_file: empty}\n",
        )
    )
    assert "is empty" in message
    os.mkfifo(files / "fifo")
    message = refused(
        write(
            files, "receivers:\n  - {name: a, type: webhook, url: 'http://h/', secret_file: fifo}\n"
        )
    )
    assert "not a regular file" in message


def test_limits_are_crossed_with_a_clear_error(files: Path) -> None:
    path = files / "notifications.yaml"
    path.write_text("receivers: []\n" + "#" * MAX_FILE_BYTES)
    assert f"over {MAX_FILE_BYTES} bytes" in refused(path)
    many = "".join(
        f"  - {{name: r{i}, type: apprise, url_file: chat-url}}\n" for i in range(MAX_RECEIVERS + 1)
    )
    assert f"List should have at most {MAX_RECEIVERS} items" in refused(
        write(files, "receivers:\n" + many)
    )
    globs = ", ".join(f"k{i}" for i in range(65))
    assert "receivers[0].kinds: List should have at most 64 items" in refused(
        write(
            files,
            f"receivers:\n  - {{name: a, type: apprise, url_file: chat-url, kinds: [{globs}]}}\n",
        )
    )
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcde", "bcdef", strict=True)
    )
    assert "aliases expand" in refused(write(files, bomb))

"""reconciler.logs: the JSON and readable formats, where revision and resource come
from, and what `configure` installs on the real root logger (restored after each
test). A real pseudo-terminal stands in for "on a terminal"."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any, TextIO

import pytest

from reconciler import logs

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?P<level>[A-Z]+) +(?P<logger>\S+): (?P<rest>.*)$"
)
SHA = "3f2a9c1d5e8b7a6f4c3d2e1f0a9b8c7d6e5f4a3b"


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[None]:
    """Put the root logger and the noisy loggers back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in logs.NOISY}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, old in noisy.items():
        logging.getLogger(name).setLevel(old)


def record(
    msg: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    *,
    level: int = logging.INFO,
    name: str = "reconciler.test",
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    rec = logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def as_json(rec: logging.LogRecord) -> dict[str, Any]:
    line = logs.JsonFormatter().format(rec)
    assert len(line.splitlines()) == 1, line
    data: dict[str, Any] = json.loads(line)
    return data


def configured(level: str = "info", **options: Any) -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level, stream=stream, **options)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# the JSON format


def test_json_line_has_the_core_fields_in_order() -> None:
    data = as_json(record())
    assert list(data) == ["ts", "level", "logger", "msg"]
    assert TS.match(data["ts"]), data["ts"]
    assert data["level"] == "info"
    assert data["logger"] == "reconciler.test"
    assert data["msg"] == "hello world"


def test_json_timestamp_is_utc_with_milliseconds() -> None:
    rec = record()
    rec.created, rec.msecs = 1_700_000_000.042, 42.0
    assert as_json(rec)["ts"] == "2023-11-14T22:13:20.042Z"


def test_revision_and_resource_from_extra() -> None:
    data = as_json(record(revision=SHA, resource="File/app"))
    assert data["revision"] == SHA
    assert data["resource"] == "File/app"
    assert list(data)[4:6] == ["revision", "resource"]


def test_a_real_logger_call_with_extra_carries_them() -> None:
    stream = configured()
    logging.getLogger("reconciler.daemon").info(
        "revision %s converged: %s", SHA, "2 created", extra={"revision": SHA}
    )
    (line,) = lines(stream)
    data = json.loads(line)
    assert data["msg"] == f"revision {SHA} converged: 2 created"
    assert data["revision"] == SHA
    assert "resource" not in data


def test_context_variables_fill_in_what_extra_does_not_give() -> None:
    token = logs.REVISION.set(SHA)
    try:
        data = as_json(record(resource="File/a"))
        assert data["revision"] == SHA and data["resource"] == "File/a"
        overridden = as_json(record(revision="other"))
        assert overridden["revision"] == "other"
    finally:
        logs.REVISION.reset(token)
    assert "revision" not in as_json(record())


def test_bound_sets_both_for_a_block_and_restores_them() -> None:
    with logs.bound(revision=SHA, resource="Directory/d"):
        inside = as_json(record())
        with logs.bound(resource="File/f"):
            nested = as_json(record())
        after_nested = as_json(record())
    outside = as_json(record())
    assert (inside["revision"], inside["resource"]) == (SHA, "Directory/d")
    assert (nested["revision"], nested["resource"]) == (SHA, "File/f")
    assert after_nested["resource"] == "Directory/d"
    assert "revision" not in outside and "resource" not in outside


async def test_a_context_variable_is_per_task() -> None:
    seen: dict[str, dict[str, Any]] = {}

    async def work(rid: str) -> None:
        with logs.bound(resource=rid):
            await asyncio.sleep(0)
            seen[rid] = as_json(record())

    async with asyncio.TaskGroup() as group:
        for rid in ("File/a", "File/b"):
            group.create_task(work(rid), name=rid)
    assert seen["File/a"]["resource"] == "File/a"
    assert seen["File/b"]["resource"] == "File/b"
    assert "resource" not in as_json(record())


def test_simple_extras_are_kept_and_others_dropped() -> None:
    data = as_json(
        record(
            attempt=3,
            seconds=0.25,
            ok=True,
            nothing=None,
            fields=["/mode", "/content"],
            where=("a", 1),
            obj=object(),
            nested={"a": 1},
            nan=float("nan"),
            inf_in_list=[1.0, float("inf")],
            _private="x",
        )
    )
    assert data["attempt"] == 3
    assert data["seconds"] == 0.25
    assert data["ok"] is True
    assert data["nothing"] is None
    assert data["fields"] == ["/mode", "/content"]
    assert data["where"] == ["a", 1]
    for dropped in ("obj", "nested", "nan", "inf_in_list", "_private"):
        assert dropped not in data


def test_extras_cannot_overwrite_core_fields() -> None:
    rec = record()
    for key, value in {"ts": "yesterday", "level": "fine", "logger": "x", "exc": "none"}.items():
        setattr(rec, key, value)
    data = as_json(rec)
    assert TS.match(data["ts"])
    assert data["level"] == "info"
    assert data["logger"] == "reconciler.test"
    assert "exc" not in data


def test_an_exception_becomes_one_field_on_the_same_line() -> None:
    stream = configured()
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("reconciler.test").exception("it failed", extra={"resource": "File/x"})
    (line,) = lines(stream)
    data = json.loads(line)
    assert data["level"] == "error"
    assert data["msg"] == "it failed"
    assert data["resource"] == "File/x"
    assert data["exc"].startswith("Traceback (most recent call last):")
    assert data["exc"].endswith("ValueError: boom\nsecond line")
    assert list(data)[-1] == "exc"


def test_stack_info_goes_into_exc() -> None:
    stream = configured()
    logging.getLogger("reconciler.test").warning("where am I", stack_info=True)
    data = json.loads(lines(stream)[0])
    assert "Stack (most recent call last)" in data["exc"]


@pytest.mark.parametrize(
    "message",
    [
        "two\nlines",
        "carriage\rreturn",
        "crlf\r\n",
        "tab\tand NUL\x00 and ESC\x1b[31m",
        "line separator\u2028and paragraph\u2029",
        "next line \x85 and file separator \x1c",
        "unicode: café, 日本語, emoji 🎉",
        "lone surrogate from a file name: \udcff",
        'quotes " and backslash \\',
    ],
)
def test_any_message_stays_one_json_line(message: str) -> None:
    stream = configured()
    logging.getLogger("reconciler.test").warning("%s", message, extra={"resource": message})
    text = stream.getvalue()
    assert text.endswith("\n") and len(text.splitlines()) == 1, repr(text)
    data = json.loads(text)
    assert data["msg"] == message
    assert data["resource"] == message
    text.encode("utf-8")  # writable to a UTF-8 stream: no raw surrogate left


def test_unicode_is_written_as_is_on_utf8_and_escaped_on_ascii() -> None:
    utf8 = configured()
    logging.getLogger("reconciler.test").info("café")
    assert '"msg":"café"' in utf8.getvalue()

    raw = io.BytesIO()
    ascii_stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    logs.configure("info", stream=ascii_stream)
    logging.getLogger("reconciler.test").info("café 🎉")
    line = raw.getvalue().decode("ascii")
    assert json.loads(line)["msg"] == "café 🎉"


# the readable format


def test_text_line_reads_time_level_logger_message_then_fields() -> None:
    line = logs.TextFormatter().format(
        record("Directory/%s created", ("app",), revision=SHA, resource="Directory/app")
    )
    match = TEXT_LINE.match(line)
    assert match, line
    assert match["level"] == "INFO"
    assert match["logger"] == "reconciler.test"
    assert match["rest"] == f"Directory/app created  revision={SHA[:12]} resource=Directory/app"


def test_text_line_shortens_only_git_commit_ids() -> None:
    sha256 = "a" * 64
    for revision, shown in ((SHA, SHA[:12]), (sha256, "a" * 12), ("dir-fe486e0d6195", None)):
        line = logs.TextFormatter().format(record(revision=revision))
        assert line.endswith(f"  revision={shown or revision}"), line


def test_text_line_quotes_values_that_need_it_and_shows_extras() -> None:
    line = logs.TextFormatter().format(
        record("m", (), resource="File/with space", attempt=2, reason="", fields=["/a"])
    )
    assert line.endswith('m  resource="File/with space" attempt=2 reason="" fields=["/a"]'), line


def test_text_line_without_fields_is_just_the_message() -> None:
    line = logs.TextFormatter().format(record(level=logging.WARNING))
    assert line.endswith(" WARNING reconciler.test: hello world"), line


def test_text_line_appends_the_traceback() -> None:
    try:
        raise RuntimeError("kaput")
    except RuntimeError as exc:
        rec = record("failed", (), level=logging.ERROR, exc_info=(type(exc), exc, None))
    text = logs.TextFormatter().format(rec)
    first, *rest = text.splitlines()
    assert first.endswith("ERROR   reconciler.test: failed")
    assert rest[-1] == "RuntimeError: kaput"


def test_text_colours_only_warnings_and_errors_and_only_when_asked() -> None:
    plain = logs.TextFormatter().format(record(level=logging.ERROR))
    coloured = logs.TextFormatter(colour=True).format(record(level=logging.ERROR))
    info = logs.TextFormatter(colour=True).format(record(level=logging.INFO))
    assert "\x1b[" not in plain and "\x1b[" not in info
    assert "\x1b[31mERROR  \x1b[0m" in coloured


# configure


class _Terminal:
    """A real pseudo-terminal as a text stream, and what was written to it."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.stream: TextIO = open(slave, "w", encoding="utf-8", buffering=1)  # noqa: SIM115

    def read(self) -> str:
        self.stream.flush()
        return os.read(self.master, 65536).decode()

    def close(self) -> None:
        self.stream.close()
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[_Terminal]:
    tty = _Terminal()
    yield tty
    tty.close()


def test_on_a_terminal_lines_are_readable(
    terminal: _Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    logs.configure("info", stream=terminal.stream)
    logging.getLogger("reconciler.test").info("hi", extra={"resource": "File/a"})
    out = terminal.read().replace("\r\n", "\n")
    match = TEXT_LINE.match(out.rstrip("\n"))
    assert match, out
    assert match["rest"] == "hi  resource=File/a"


def test_on_a_terminal_warnings_are_coloured_unless_no_color(
    terminal: _Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    logs.configure("info", stream=terminal.stream)
    logging.getLogger("reconciler.test").warning("careful")
    assert "\x1b[33mWARNING\x1b[0m" in terminal.read()


def test_json_can_be_forced_on_a_terminal_and_text_off_one(terminal: _Terminal) -> None:
    logs.configure("info", stream=terminal.stream, json=True)
    logging.getLogger("reconciler.test").info("forced")
    assert json.loads(terminal.read())["msg"] == "forced"

    stream = configured(json=False)
    logging.getLogger("reconciler.test").info("plain")
    (line,) = lines(stream)
    assert TEXT_LINE.match(line), line
    assert "\x1b[" not in line


def test_configure_twice_replaces_its_own_handler_and_keeps_others() -> None:
    root = logging.getLogger()
    other = io.StringIO()
    foreign = logging.StreamHandler(other)
    root.addHandler(foreign)
    try:
        first = configured()
        second = configured()
        logging.getLogger("reconciler.test").warning("once")
    finally:
        root.removeHandler(foreign)
    assert first.getvalue() == ""
    assert [json.loads(line)["msg"] for line in lines(second)] == ["once"]
    assert other.getvalue() == "once\n"
    ours = [h for h in root.handlers if type(h).__module__ == "reconciler.logs"]
    assert len(ours) == 1


def test_level_filters_records() -> None:
    stream = configured("warning")
    log = logging.getLogger("reconciler.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [json.loads(line)["level"] for line in lines(stream)] == ["warning", "error"]

    stream = configured("DEBUG")
    log.debug("d")
    assert [json.loads(line)["msg"] for line in lines(stream)] == ["d"]


def test_noisy_loggers_speak_only_at_debug() -> None:
    stream = configured("info")
    for name in logs.NOISY:
        logging.getLogger(name).info("per request")
        logging.getLogger(name).warning("worth saying")
    assert [json.loads(line)["msg"] for line in lines(stream)] == ["worth saying"] * 3

    stream = configured("debug")
    logging.getLogger("aiohttp.access").debug("GET /metrics 200")
    logging.getLogger("apscheduler.scheduler").debug("job ran")
    assert [json.loads(line)["logger"] for line in lines(stream)] == [
        "aiohttp.access",
        "apscheduler.scheduler",
    ]


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level: expected one of debug, info, warning, error"):
        logs.configure("verbose", stream=io.StringIO())

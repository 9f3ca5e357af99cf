"""reconciler.logs.printable, the one escaping function of every terminal and log
line: a table of inputs and the text shown, and the log formats built on it."""

from __future__ import annotations

import io
import json
import logging
import unicodedata

import pytest

from reconciler import logs
from reconciler.logs import printable

# (input, shown)
TABLE = [
    ("", ""),
    ("plain/path/app.conf", "plain/path/app.conf"),
    ("café 日本語 🎉 ünïcödé", "café 日本語 🎉 ünïcödé"),
    ("back\\slash and \"quotes\" and 'single'", "back\\slash and \"quotes\" and 'single'"),
    ("a\nb", "a\\nb"),
    ("a\rb", "a\\rb"),
    ("crlf\r\n", "crlf\\r\\n"),
    ("tab\there", "tab\\there"),
    ("NUL\x00", "NUL\\x00"),
    ("bell\x07 backspace\x08 vt\x0b ff\x0c", "bell\\x07 backspace\\x08 vt\\x0b ff\\x0c"),
    ("\x1b[2K\x1b[1A", "\\x1b[2K\\x1b[1A"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("\x1c\x1d\x1e\x1f", "\\x1c\\x1d\\x1e\\x1f"),
    ("DEL\x7f", "DEL\\x7f"),
    ("C1 CSI\x9b31m NEL\x85 \x80\x9f", "C1 CSI\\x9b31m NEL\\x85 \\x80\\x9f"),
    ("\u00a0nbsp stays", "\u00a0nbsp stays"),  # a visible (if blank) character
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
    (
        "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
        "\\u202a\\u202b\\u202c\\u202d\\u202e\\u2066\\u2067\\u2068\\u2069",
    ),
    ("marks \u200e\u200f\u061c", "marks \\u200e\\u200f\\u061c"),
    ("lone surrogate \udcff", "lone surrogate \\udcff"),
    (
        "\r\nPlan: 0 to create, 0 to change, 0 to delete, 0 unchanged.",
        "\\r\\nPlan: 0 to create, 0 to change, 0 to delete, 0 unchanged.",
    ),
]

BIDI = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x61C]]


@pytest.mark.parametrize(("text", "shown"), TABLE)
def test_printable_table(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_every_control_character_is_escaped_and_nothing_else_changes() -> None:
    for code in range(0x110000):
        char = chr(code)
        shown = printable(char)
        control = (
            code < 0x20
            or 0x7F <= code <= 0x9F
            or char in BIDI
            or char in "\u2028\u2029"
            or 0xD800 <= code <= 0xDFFF
        )
        if control:
            assert shown.startswith("\\") and len(shown) in (2, 4, 6), (hex(code), shown)
            assert shown.isascii() and shown.isprintable(), hex(code)
        else:
            assert shown == char, hex(code)


def test_printed_text_has_no_control_left_and_writes_as_utf8() -> None:
    every = "".join(chr(c) for c in range(0x00, 0xA0)) + "".join(BIDI) + "\u2028\u2029\udcff"
    shown = printable(every)
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in shown)
    assert not any(c in shown for c in BIDI)
    assert len(shown.splitlines()) == 1
    shown.encode("utf-8")


# the log formats


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("reconciler.test").makeRecord(
        "reconciler.test", logging.WARNING, __file__, 1, msg, args, None
    )
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


HOSTILE = "x\r\n2026-01-01 00:00:00.000 INFO    reconciler.daemon: forged\x1b[2K\x9b1A\u202eevil"


def test_text_log_escapes_every_argument_and_keeps_its_own_lines() -> None:
    rec = _record(
        "revision %s rejected:\n  %s\n  %s", "abc", HOSTILE, "b\x1b[31m", resource=HOSTILE
    )
    line = logs.TextFormatter().format(rec)
    lines = line.split("\n")
    assert len(lines) == 3, line  # the format string's own two line breaks, no more
    assert "\r" not in line and "\x1b" not in line and "\x9b" not in line
    assert "\u202e" not in line
    assert printable(HOSTILE) in lines[1]
    assert lines[2].startswith("  b\\x1b[31m")
    assert 'resource="x\\r\\n2026' in lines[2]  # the extra field, quoted and escaped


def test_text_log_escapes_mapping_arguments_and_objects() -> None:
    rec = _record("%(path)s failed: %(n)d", {"path": "a\x1bb", "n": 3})
    assert logs.TextFormatter().format(rec).endswith("a\\x1bb failed: 3")
    rec = _record("fetch failed: %s", OSError("bad\rref\x07"))
    assert logs.TextFormatter().format(rec).endswith("fetch failed: bad\\rref\\x07")


def test_text_log_of_a_mismatched_format_is_still_escaped() -> None:
    rec = _record("%d things", "not a number\x1b")
    with pytest.raises(TypeError):
        rec.getMessage()
    # logging's own getMessage fails the same way: the formatter must not hide that
    with pytest.raises(TypeError):
        logs.TextFormatter().format(rec)


def test_text_log_exception_message_is_escaped() -> None:
    try:
        raise ValueError("boom\x1b[2J\rdone")
    except ValueError:
        rec = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    text = logs.TextFormatter().format(rec)
    assert "\x1b" not in text and "\r" not in text
    assert "ValueError: boom\\x1b[2J\\rdone" in text


@pytest.mark.parametrize("ascii_only", [False, True])
def test_json_log_leaves_no_control_raw_and_round_trips(ascii_only: bool) -> None:
    every = "".join(chr(c) for c in range(0x00, 0xA0)) + "".join(BIDI) + "\u2028\u2029"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(ascii_only=ascii_only))
    rec = _record("%s", every, resource=every, path=every)
    handler.emit(rec)
    text = stream.getvalue()
    assert text.endswith("\n") and len(text.splitlines()) == 1
    assert not any(unicodedata.category(c) == "Cc" for c in text[:-1]), repr(text)
    assert not any(c in text for c in BIDI)
    data = json.loads(text)
    assert data["msg"] == every and data["resource"] == every and data["path"] == every

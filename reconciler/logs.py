"""Log output for the daemon: JSON lines for machines, readable lines for people.

`configure` sets up the root logger once per process (calling it again replaces
what it installed, nothing else). Off a terminal every record is one JSON object
on one line: `ts` (RFC 3339, UTC, milliseconds), `level`, `logger`, `msg`, then
`revision` and `resource` when they apply, `exc` with a traceback, and any other
simple value passed with `extra=`. On a terminal the same fields make a readable
line: time, level, logger, message, then `revision=... resource=...`.

The revision and resource of a record come from its `extra={"revision": ...,
"resource": ...}`, else from the context variables `REVISION` and `RESOURCE`
(`bound` sets them for a block). A context variable is per task: set in one
asyncio task it is not seen by tasks already running.

Whatever a value carries, a record cannot move the cursor, rewrite a line or
start a forged one: `printable` turns control characters (C0, DEL, C1), Unicode
line separators, bidi controls and lone surrogates into visible escapes
(`\x1b`, `\r`, `\u202e`). The text format escapes every argument of a record
this way (the format string's own line breaks stay); the JSON format escapes
the same characters inside its strings, losslessly. The command line prints
through `printable` too.

This module imports nothing of ours: any layer may log through it.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

REVISION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "reconciler_revision", default=None
)
"""The revision being enforced, for records that do not name one."""
RESOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "reconciler_resource", default=None
)
"""The resource being worked on (`Kind/name`), for records that do not name one."""

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "text")
NOISY = ("aiohttp.access", "watchfiles", "apscheduler")
"""Loggers that speak per request or per change: WARNING and above unless debugging."""

_CORE = ("ts", "level", "logger", "msg", "revision", "resource", "exc")
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
}
_SCALARS = (str, int, float, bool, type(None))
# What a terminal or a line-based reader must never get raw: C0 controls (ESC
# starts a sequence that can move the cursor and erase lines, CR returns to the
# line start), DEL, C1 controls (0x9b is a one-byte CSI on some terminals, 0x85
# breaks lines), the Unicode line and paragraph separators, the bidi embeddings,
# overrides, isolates and marks that reorder what is shown ("Trojan Source"), and
# lone surrogates (an undecodable file name; they cannot be written as UTF-8).
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# JSON escapes C0 itself but leaves the rest of _CONTROL raw.
_UNSAFE = re.compile(
    "[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT_REVISION = 12
_GIT_SHA = re.compile("[0-9a-f]{40}|[0-9a-f]{64}")
_COLOURS = {"WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}


def printable(text: str) -> str:
    """`text` with every control character of a terminal or a log line shown as a
    visible escape: `\\n`, `\\r`, `\\t`, `\\x1b` (up to 0xff), `\\u202e` (above):
    safe to print or log whatever it came from. Line breaks are escaped too: a
    caller that prints lines of its own escapes each line's values, then joins."""
    if _CONTROL.search(text) is None:  # the common case: nothing to copy
        return text
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


@contextlib.contextmanager
def bound(*, revision: str | None = None, resource: str | None = None) -> Iterator[None]:
    """Set `REVISION` and/or `RESOURCE` for the records logged inside the block."""
    tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]] = []
    if revision is not None:
        tokens.append((REVISION, REVISION.set(revision)))
    if resource is not None:
        tokens.append((RESOURCE, RESOURCE.set(resource)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record, in output order (`exc` left out)."""
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    revision = getattr(record, "revision", None) or REVISION.get()
    resource = getattr(record, "resource", None) or RESOURCE.get()
    if revision is not None:
        out["revision"] = str(revision)
    if resource is not None:
        out["resource"] = str(resource)
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRS or key in _CORE or key.startswith("_"):
            continue
        if _simple(value):
            out[key] = value
    return out


def _simple(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(isinstance(v, _SCALARS) and _simple(v) for v in value)
    return isinstance(value, _SCALARS)


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts) or None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, always on one line."""

    def __init__(self, *, ascii_only: bool = False) -> None:
        super().__init__()
        self.ascii_only = ascii_only

    def format(self, record: logging.LogRecord) -> str:
        out = fields(record)
        exc = _traceback(self, record)
        if exc is not None:
            out["exc"] = exc
        line = json.dumps(out, ensure_ascii=self.ascii_only, separators=(",", ":"))
        return _UNSAFE.sub(_json_escape, line)


class TextFormatter(logging.Formatter):
    """`2026-11-28 01:11:01.772 INFO    reconciler.daemon: message revision=... resource=...`
    in local time; git commit ids shortened to 12 characters; colour on request."""

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        out = fields(record)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = f"{record.levelname:<7}"
        if self.colour and record.levelname in _COLOURS:
            level = f"{_COLOURS[record.levelname]}{level}\x1b[0m"
        message = _text_message(record)
        line = f"{stamp}.{int(record.msecs):03d} {level} {printable(record.name)}: {message}"
        if "revision" in out and _GIT_SHA.fullmatch(out["revision"]):
            out["revision"] = out["revision"][:_SHORT_REVISION]
        extras = [f"{printable(k)}={_text_value(v)}" for k, v in out.items() if k not in _CORE[:4]]
        if extras:
            line += "  " + " ".join(extras)
        exc = _traceback(self, record)
        if exc is not None:
            # the traceback's own lines stay; what an exception message carries is escaped
            line += "\n" + "\n".join(printable(part) for part in exc.split("\n"))
        return line


def _text_message(record: logging.LogRecord) -> str:
    """The record's message with every argument escaped by `printable`: the
    format string is the program's own and keeps its line breaks (a rejected
    revision's errors, one per line), the values cannot add lines or sequences."""
    if not isinstance(record.msg, str):  # an object logged as the message is a value
        return printable(record.getMessage())
    template = record.msg
    ours = "\n".join(printable(part) for part in template.split("\n"))
    if not record.args:
        return ours
    args: dict[Any, Any] | tuple[Any, ...]
    if isinstance(record.args, Mapping):
        args = {key: _text_arg(value) for key, value in record.args.items()}
    else:
        args = tuple(_text_arg(value) for value in record.args)
    try:
        return ours % args
    except (TypeError, ValueError, KeyError):  # a %d given a string, or a bad format
        return printable(record.getMessage())


def _text_arg(value: Any) -> Any:
    if isinstance(value, int | float):  # bool is an int; numbers carry no controls
        return value
    return printable(str(value))


def _text_value(value: Any) -> str:
    if not isinstance(value, str):
        return _UNSAFE.sub(_json_escape, json.dumps(value, ensure_ascii=False))
    if not value or any(c.isspace() or c in "\"'=" for c in value) or printable(value) != value:
        return _UNSAFE.sub(_json_escape, json.dumps(value, ensure_ascii=False))
    return value


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class _Handler(logging.StreamHandler[TextIO]):
    """The handler `configure` installs; found again by its type to be replaced."""


def configure(level: str, *, json: bool | None = None, stream: TextIO | None = None) -> None:
    """Send every log record at `level` or above to `stream` (default stderr):
    JSON lines unless the stream is a terminal (`json` forces either way).
    Idempotent: replaces the handler an earlier call installed, keeps others."""
    name = level.lower()
    if name not in LEVELS:
        raise ValueError(f"log level: expected one of {', '.join(LEVELS)}, found {level!r}")
    stream = sys.stderr if stream is None else stream
    tty = _isatty(stream)
    as_json = not tty if json is None else json
    handler = _Handler(stream)
    if as_json:
        handler.setFormatter(JsonFormatter(ascii_only=not _utf8(stream)))
    else:
        colour = tty and "NO_COLOR" not in os.environ
        handler.setFormatter(TextFormatter(colour=colour))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        for repeats in [f for f in old.filters if isinstance(f, RepeatFilter)]:
            repeats.close()
        old.close()
    root.addHandler(handler)
    root.setLevel(name.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.NOTSET if name == "debug" else logging.WARNING)


def _utf8(stream: TextIO) -> bool:
    """Whether the stream takes any text (a StringIO has no encoding: it does)."""
    encoding = getattr(stream, "encoding", None)
    try:
        return encoding is None or codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# Repeated records from the HTTP side: one line per kind per interval.

REPEAT_INTERVAL = 60.0
"""Seconds during which further records of a kind are counted instead of written."""
REPEAT_LOGGERS = ("asyncio", "aiohttp", "reconciler.server")
"""Loggers whose records anyone who can reach the HTTP port can cause, at any rate."""

_RepeatKey = tuple[str, int, str, str]


class RepeatFilter(logging.Filter):
    """Lets the first record of a kind through, then counts the rest for
    `interval` seconds and writes one summary for them, "N similar messages
    suppressed", when the interval ends; a flood that goes on gets one summary
    per interval and nothing else.

    A kind is the logger, the level, the message template (before its
    arguments: the same complaint about another peer is the same kind) and the
    exception class. Only records of `loggers` (and their children) are
    counted: the engine's lines are about distinct resources and stay whole.
    The summaries are written by a timer thread, so one still arrives when the
    flood has stopped; `close` cancels it.
    """

    def __init__(
        self,
        interval: float = REPEAT_INTERVAL,
        loggers: tuple[str, ...] = REPEAT_LOGGERS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self._loggers = tuple(loggers)
        self._children = tuple(f"{name}." for name in loggers)
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> [window start, records suppressed, last suppressed message]
        self._windows: dict[_RepeatKey, list[Any]] = {}
        self._timer: threading.Timer | None = None
        self._closed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_repeat_summary", False):
            return True
        name = record.name
        if name not in self._loggers and not name.startswith(self._children):
            return True
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (name, record.levelno, str(record.msg), exc)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                if window is not None and window[1]:
                    return self._suppress(window, record)  # its summary is due: the timer writes it
                self._windows[key] = [now, 0, ""]
                return True
            return self._suppress(window, record)

    def _suppress(self, window: list[Any], record: logging.LogRecord) -> bool:
        window[1] += 1
        try:
            window[2] = record.getMessage()
        except Exception:  # a record with bad arguments: the handler reports that itself
            window[2] = str(record.msg)
        if self._timer is None and not self._closed:
            self._schedule(window[0] + self.interval - self._clock())
        return False

    def _schedule(self, delay: float) -> None:
        timer = threading.Timer(max(delay, 0.0), self.flush)
        timer.daemon = True
        timer.name = "log-repeat-summary"
        self._timer = timer
        timer.start()

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries whose interval has ended (`everything`: all of them)."""
        now = self._clock()
        due: list[tuple[_RepeatKey, int, str]] = []
        with self._lock:
            self._timer = None
            for key, window in list(self._windows.items()):
                if not everything and now - window[0] < self.interval:
                    continue
                if window[1]:
                    due.append((key, window[1], window[2]))
                    self._windows[key] = [now, 0, ""]  # the flood may go on: a new window
                else:
                    del self._windows[key]
            pending = [w[0] for w in self._windows.values() if w[1]]
            if pending and not self._closed:
                self._schedule(min(pending) + self.interval - now)
        for (name, level, _, _), count, last in due:
            summary = logging.LogRecord(
                name,
                level,
                __file__,
                0,
                "%d similar messages suppressed in the last %gs; the last: %s",
                (count, self.interval, last),
                None,
            )
            summary._repeat_summary = True
            summary.suppressed = count
            logging.getLogger(name).handle(summary)

    def close(self) -> None:
        """Stop the timer (its handler is being replaced); counts not yet written
        are dropped, since there is no handler left to write them to."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

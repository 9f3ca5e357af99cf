"""The notification receivers file (`--notifications FILE`): where the daemon's
notifications go, read and checked once at startup.

    receivers:
      - name: ops                      # [A-Za-z0-9_.-]{1,64}, unique; a metric label
        type: webhook                  # the generic signed JSON webhook
        url: https://hooks.example.com/reconciler
        secret_file: /run/secrets/notify-hmac
        events: [revision-rejected, resource-failed, resource-drifted]  # default: all
        kinds: ["Postgres*"]           # globs on a resource's kind (default: all)
        names: ["app-*"]               # globs on its name (default: all)
        min_severity: warning          # info | warning | error
        repeat: 4h                     # a persisting condition is told again after this
        rate: {burst: 10, per: 1m}     # at most 10 per minute, then one summary
        timeout: 10s
      - name: chat
        type: apprise                  # Slack, Teams, Matrix, e-mail... by apprise URL
        url_file: /run/secrets/slack-url
    queue_size: 1000                   # per receiver; when full the oldest is dropped
    attempts: 5                        # tries per notification, with backoff

A URL that carries credentials comes only from a file (`url_file`): an inline
`url` is refused when it has a user, a password or a query string, and an
apprise URL is always a file's (its tokens are part of the URL). Relative file
paths are relative to the receivers file. Secrets and URLs never appear in an
error, a log line or a payload: errors name the setting, not the value.

Every problem is a `SettingsError` saying the file, the line and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from reconciler.daemon.settings import SettingsError
from reconciler.model import parse_duration
from reconciler.notify import Condition, Receiver, Severity
from reconciler.secrets import FileUnread, read_small_file

MAX_FILE_BYTES = 64 * 1024
MAX_RECEIVERS = 32
MAX_GLOBS = 64
MAX_SECRET_BYTES = 8 * 1024
EVENTS = tuple(c.value for c in Condition if c is not Condition.SUPPRESSED)
"""What a receiver may ask for (the summary of a rate limit goes to whoever got limited)."""


@dataclass(frozen=True, slots=True)
class Notifications:
    """The receivers file, read: its receivers and the delivery settings."""

    receivers: tuple[Receiver, ...]
    queue_size: int = 1000
    attempts: int = 5
    files: tuple[Path, ...] = ()
    """The receivers file and the URL and secret files it names: reconciler's own,
    never readable as a repository's secret."""


def _duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("expected a positive duration")
    return seconds


class _Rate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    burst: int = Field(10, ge=1, le=10_000)
    per: float = 60.0

    _per = field_validator("per", mode="before")(_duration)


_Glob: Any = Field(default_factory=list, max_length=MAX_GLOBS)


def _known_event(event: str) -> str:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
    return event


_Event = Annotated[str, AfterValidator(_known_event)]


class _ReceiverSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    type: Literal["webhook", "apprise"]
    url: str | None = Field(None, max_length=2048)
    url_file: str | None = Field(None, min_length=1, max_length=4096)
    secret_file: str | None = Field(None, min_length=1, max_length=4096)
    events: list[_Event] = _Glob
    kinds: list[str] = _Glob
    names: list[str] = _Glob
    min_severity: Literal["info", "warning", "error"] = "info"
    repeat: float = 4 * 3600.0
    rate: _Rate = Field(default_factory=lambda: _Rate(burst=10, per=60.0))
    timeout: float = 10.0

    _durations = field_validator("repeat", "timeout", mode="before")(_duration)

    @field_validator("kinds", "names")
    @classmethod
    def _short_globs(cls, value: list[str]) -> list[str]:
        for glob in value:
            if not 0 < len(glob) <= 256:
                raise ValueError("each glob must be 1 to 256 characters")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    receivers: list[_ReceiverSpec] = Field(min_length=1, max_length=MAX_RECEIVERS)
    queue_size: int = Field(1000, ge=1, le=100_000)
    attempts: int = Field(5, ge=1, le=100)


def load_receivers(path: Path) -> Notifications:
    """The receivers of `path`, every secret file read; a SettingsError otherwise."""
    from reconciler import yamlload

    try:
        text = read_small_file(path, MAX_FILE_BYTES)
    except FileUnread as exc:
        raise SettingsError(f"receivers file {path}: {exc}") from None
    try:
        docs = list(
            yamlload.documents(text, max_nodes=10_000, max_bytes=MAX_FILE_BYTES, max_depth=8)
        )
    except yamlload.MarkedYAMLError as exc:
        line, message = yamlload.where(exc)
        raise SettingsError(f"{path}:{line or '?'}: invalid YAML: {message}") from None
    if len(docs) != 1 or not isinstance(docs[0][1], dict):
        raise SettingsError(
            f"{path}: expected one YAML mapping with a `receivers:` list (see docs/operations.md)"
        )
    node, data = docs[0]
    try:
        spec = _File.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        loc = tuple(problem["loc"])
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        line = yamlload.line_of(node, loc)
        message = problem["msg"].removeprefix("Value error, ")
        raise SettingsError(f"{path}:{line}: {field or 'file'}: {message}") from None
    names = [r.name for r in spec.receivers]
    for i, name in enumerate(names):
        if name in names[:i]:
            line = yamlload.line_of(node, ("receivers", i, "name"))
            raise SettingsError(f"{path}:{line}: receivers[{i}].name: {name!r} is used twice")
    receivers = tuple(
        _receiver(path, node, i, r, yamlload.line_of) for i, r in enumerate(spec.receivers)
    )
    files = [path] + [
        path.parent / f for r in spec.receivers for f in (r.url_file, r.secret_file) if f
    ]
    return Notifications(
        receivers, queue_size=spec.queue_size, attempts=spec.attempts, files=tuple(files)
    )


def _receiver(path: Path, node: Any, i: int, spec: _ReceiverSpec, line_of: Any) -> Receiver:
    def fail(field: str, message: str) -> SettingsError:
        line = line_of(node, ("receivers", i, field))
        return SettingsError(f"{path}:{line}: receivers[{i}].{field}: {message}")

    base = path.parent
    if (spec.url is None) == (spec.url_file is None):
        raise fail("url", "give exactly one of url and url_file")
    if spec.url is not None:
        if spec.type == "apprise":
            raise fail("url", "an apprise URL holds credentials: give it in url_file")
        if _has_credentials(spec.url):
            raise fail(
                "url",
                "a URL with a user, a password or a query string may hold credentials: "
                "give it in url_file",
            )
        url = spec.url
    else:
        assert spec.url_file is not None
        url = _read_secret(base / spec.url_file, fail, "url_file")
    if spec.type == "webhook":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            where = "url_file" if spec.url is None else "url"
            raise fail(where, "expected an http:// or https:// URL with a host")
        if spec.secret_file is None:
            raise fail("secret_file", "a webhook is signed: give the file of its HMAC secret")
        secret: bytes | None = _read_secret(base / spec.secret_file, fail, "secret_file").encode()
    else:
        if spec.secret_file is not None:
            raise fail("secret_file", "only a webhook is signed; an apprise URL has its own")
        secret = None
        _check_apprise(url, fail)
    return Receiver(
        name=spec.name,
        type=spec.type,
        url=url,
        secret=secret,
        events=frozenset(Condition(e) for e in spec.events),
        kinds=tuple(spec.kinds),
        names=tuple(spec.names),
        min_severity=Severity[spec.min_severity.upper()],
        repeat=spec.repeat,
        burst=spec.rate.burst,
        per=spec.rate.per,
        timeout=spec.timeout,
    )


def _has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password or parts.query or "@" in parts.netloc)


def _check_apprise(url: str, fail: Any) -> None:
    """apprise knows the URL's service, checked at startup; the error names only
    the scheme, never the URL (it holds the credentials)."""
    import apprise

    scheme = url.partition("://")[0] if "://" in url else ""
    if not re.fullmatch(r"[a-z][a-z0-9+.-]{0,31}", scheme):
        raise fail("url_file", "expected an apprise URL such as slack://... or mmost://...")
    if not apprise.Apprise().add(url):
        raise fail("url_file", f"apprise does not accept this {scheme}:// URL (see its docs)")


def _read_secret(path: Path, fail: Any, field: str) -> str:
    try:
        text = read_small_file(path, MAX_SECRET_BYTES).strip()
    except FileUnread as exc:
        raise fail(field, f"file {path}: {exc}") from None
    if not text:
        raise fail(field, f"file {path} is empty")
    return text

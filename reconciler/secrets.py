"""Secret values and references to them: the `Sensitive` type, reading a
reference (`valueFrom: {env: NAME}` or `{file: /path}`) under the operator's
allow-list (`SecretSources`), the spec field that takes only a reference
(`SecretRef`, and `PREPARED`, the validation context of a spec read back after
prepare), masking secrets out of messages, and the one bounded read of a small
file (`read_small_file`) behind secret references and reconciler's own secret
and settings files.

A manifest never holds a secret value, only a reference to one, resolved in
`Provider.prepare` through `PrepareContext.secret` (reconciler.model). What is
resolved is a `Sensitive` string: the text itself for the provider to use, masked
in reprs, and dumped (stored spec, spec hash) as a keyed digest. See
docs/decisions/0045. Imports only `reconciler.errors`; `reconciler.model`
re-exports the public names.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from pydantic import BeforeValidator, PlainSerializer, ValidationInfo

from reconciler.errors import SpecError

SENSITIVE = "(sensitive value)"
"""What plans, the API and errors show in place of a secret."""

MAX_SECRET_FILE = 1024 * 1024
"""Largest secret file read; anything bigger is a mistake (a wrong path)."""

UNREAD_SECRET = "unread-secret"
"""What stands for a secret a form-only load (`SecretSources.form_only`) did not
read: non-empty text any field that takes a secret accepts (docs/decisions/0103)."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROCESS_DIGEST_KEY = secrets.token_bytes(32)
"""Digest key of a load that has no key of its own (no state directory, or one it
may not write): digests then compare within this process only."""


class Sensitive(str):
    """A secret, or text made from one. It is the text (write it, send it); its
    repr is SENSITIVE; a spec field typed `SensitiveStr` dumps it as `marker`, a
    keyed digest (HMAC-SHA256) that changes when the text does. It is never
    pickled. Operations on it (slicing, formatting) give plain `str`."""

    marker: str

    def __new__(cls, value: str, marker: str) -> Sensitive:
        self = super().__new__(cls, value)
        self.marker = marker
        return self

    def __repr__(self) -> str:
        return repr(SENSITIVE)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a sensitive value is never pickled")

    def __copy__(self) -> Sensitive:
        return self

    def __deepcopy__(self, memo: Any) -> Sensitive:
        return self


def _dump_text(value: str) -> str:
    return value.marker if isinstance(value, Sensitive) else value


SensitiveStr = Annotated[str, PlainSerializer(_dump_text)]
"""A spec field that may hold a `Sensitive` value after `prepare`: model dumps (the
stored spec, the spec hash) show its marker instead of the text."""


def is_secret_ref(value: Any) -> bool:
    """Whether `value` is meant as a secret reference: a mapping with `valueFrom`."""
    return isinstance(value, Mapping) and "valueFrom" in value


PREPARED: Mapping[str, Any] = {"prepared": True}
"""Validation context of a spec read back after `Provider.prepare` (from the state
store): validators of what only a user writes (such as "exactly one of") skip it."""


def is_prepared(info: ValidationInfo) -> bool:
    context = info.context
    return isinstance(context, Mapping) and bool(context.get("prepared"))


def _secret_ref(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, Sensitive) or (is_prepared(info) and isinstance(value, str)):
        return value  # resolved by prepare, or its stored marker read back
    if is_secret_ref(value):
        return dict(value)
    raise ValueError(
        "expected a secret reference such as {valueFrom: {file: /run/secrets/x}} "
        "or {valueFrom: {env: NAME}}; secret values are never written inline"
    )


SecretRef = Annotated[SensitiveStr | dict[str, Any], BeforeValidator(_secret_ref)]
"""A spec field that only takes a secret reference (a password, a token). Resolve
it in `Provider.prepare` with `ctx.secret(value, path)` and put the `Sensitive`
result in its place (`spec.model_copy(update=...)`); dumps show its digest."""


def mask(text: str, values: Sequence[str]) -> str:
    """`text` with every occurrence of each of `values` (and of its repr, as an
    error message may quote it) replaced by SENSITIVE."""
    for value in sorted(values, key=len, reverse=True):
        for form in dict.fromkeys((value, repr(value)[1:-1])):
            if form:
                text = text.replace(form, SENSITIVE)
    return text


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact(text: str) -> str:
    """Strip user:password@ from every URL in `text`."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)


WITHHELD_MESSAGE = "(message withheld: it quoted part of a secret)"
"""An error message that held a value derived from a secret, in its place."""

SECRET_PIECE = 4
"""Characters of a secret that, found in a message in any case or reversed,
make it withheld."""


def quotes_a_secret(text: str, values: Sequence[str]) -> bool:
    """Whether `text` holds SECRET_PIECE or more consecutive characters of any of
    `values`, forwards or reversed, in any case (SENSITIVE itself aside)."""
    folded = text.replace(SENSITIVE, "").casefold()
    if len(folded) < SECRET_PIECE:
        return False
    pieces = {folded[i : i + SECRET_PIECE] for i in range(len(folded) - SECRET_PIECE + 1)}
    for value in values:
        for form in (value.casefold(), value[::-1].casefold()):
            for i in range(len(form) - SECRET_PIECE + 1):
                if form[i : i + SECRET_PIECE] in pieces:
                    return True
    return False


@dataclass(frozen=True, slots=True)
class SecretSources:
    """Where secret references may read: the operator's allow-list. A repository
    names the file or variable; without a list, a commit could read any file or
    variable of the process (the daemon's own keys included) into a managed
    object or send it to a server it names."""

    dirs: tuple[str, ...] = ()
    """Directories (absolute) whose files, symlinks resolved, may be read."""
    env: tuple[str, ...] = ()
    """Glob patterns (`DB_*`) of environment variables that may be read."""
    deny: tuple[str, ...] = ()
    """Files and directories never read, even inside `dirs`: reconciler's own
    credentials (its git token, webhook secret, API token, SSH key) and its state
    directory (the keys of its digests and cache)."""
    form_only: bool = False
    """Check each reference's form and read nothing: UNREAD_SECRET stands in for
    every secret (`validate` and `graph` without --root, docs/decisions/0103). The
    allow-list is not consulted either: it belongs to where the tree is applied."""

    def check_file(self, path: str, where: tuple[str | int, ...], real: str | None = None) -> None:
        """Raise SpecError unless `path` (and `real`, what it resolved to when
        opened) lies in an allowed directory."""
        if real is not None and real != path:
            self.check_file(path, where)
            path, shown = real, path
        else:
            shown = path
        real = os.path.realpath(path)
        for denied in self.deny:
            top = os.path.realpath(denied)
            if real == top or real.startswith(top.rstrip("/") + "/"):
                raise SpecError(
                    where, f"{shown} is one of reconciler's own credentials or state files"
                )
        for directory in self.dirs:
            top = os.path.realpath(directory)
            if real == top or real.startswith(top.rstrip("/") + "/"):
                return
        allowed = ", ".join(self.dirs) or "none"
        raise SpecError(
            where,
            f"{shown} is outside the secret directories the operator allows ({allowed}; "
            "see --secret-dir)",
        )

    def check_env(self, name: str, where: tuple[str | int, ...]) -> None:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.env):
            allowed = ", ".join(self.env) or "none"
            raise SpecError(
                where,
                f"environment variable {name} is not one the operator allows as a secret "
                f"({allowed}; see --secret-env)",
            )


def read_secret(
    value: Mapping[str, Any],
    where: tuple[str | int, ...],
    sources: SecretSources | None,
    *,
    whole_file: bool = False,
) -> str:
    """The text the reference `value` (a mapping with `valueFrom`) names, read
    under `sources` (None: anywhere); UNREAD_SECRET when `sources` is form-only.
    Raises SpecError naming the variable or file, never a value."""
    if len(value) != 1:
        others = ", ".join(str(k) for k in value if k != "valueFrom")
        raise SpecError(where, f"valueFrom must be alone in its mapping, found also {others}")
    source = value["valueFrom"]
    where = (*where, "valueFrom")
    if not isinstance(source, Mapping) or len(source) != 1 or not (set(source) <= {"env", "file"}):
        raise SpecError(where, "expected exactly one of env: NAME or file: /path")
    if sources is not None and sources.form_only:
        if "env" in source:
            _env_name(source["env"], (*where, "env"))
        else:
            _file_path(source["file"], (*where, "file"))
        text = UNREAD_SECRET
    elif "env" in source:
        text = _from_env(source["env"], (*where, "env"), sources)
    else:
        text = _from_file(source["file"], (*where, "file"), sources)
        if not whole_file:
            text = text.rstrip("\r\n")
    if text == "":
        raise SpecError(where, "the secret is empty")
    return text


def keyed(text: str, key: bytes) -> Sensitive:
    """`text`, made from a secret, as a Sensitive value whose marker is its digest
    under `key`."""
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]
    return Sensitive(text, f"sensitive:hmac-sha256:{mac}")


def _env_name(name: Any, where: tuple[str | int, ...]) -> str:
    """`name` if it is an environment variable's name; SpecError if not."""
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise SpecError(where, f"expected an environment variable name, found {name!r}")
    return name


def _file_path(path: Any, where: tuple[str | int, ...]) -> str:
    """`path` if it is an absolute, normalized path; SpecError if not. Normalized
    because a form-only check cannot resolve `..` against the file system."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise SpecError(where, f"expected an absolute path such as /run/secrets/db, found {path!r}")
    if "\0" in path or any(part in ("", ".", "..") for part in path.split("/")[1:]):
        raise SpecError(
            where,
            f"expected a normalized path to a file (no '.', '..', '//', trailing '/' or "
            f"NUL), found {path!r}",
        )
    return path


def _from_env(name: Any, where: tuple[str | int, ...], sources: SecretSources | None) -> str:
    name = _env_name(name, where)
    if sources is not None:
        sources.check_env(name, where)
    text = os.environ.get(name)
    if text is None:
        raise SpecError(where, f"environment variable {name} is not set")
    return text


def _from_file(path: Any, where: tuple[str | int, ...], sources: SecretSources | None) -> str:
    path = _file_path(path, where)
    check = None
    if sources is not None:
        sources.check_file(path, where)
        check = functools.partial(_check_opened, sources, path, where)
    try:
        return read_small_file(path, MAX_SECRET_FILE, check)
    except FileUnread as exc:
        raise SpecError(
            where, f"cannot read {path}: {exc}" if exc.os_error else f"{path} is {exc}"
        ) from None


def _check_opened(sources: SecretSources, path: str, where: tuple[str | int, ...], fd: int) -> None:
    """What was opened, after every link, is in an allowed directory too (no swap
    in between)."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise SpecError(where, f"cannot tell where {path} leads: {exc.strerror}") from None
    sources.check_file(path, where, real)


class FileUnread(Exception):
    """Why `read_small_file` returned no text. It names no path: the caller says
    which file and which setting. `os_error`: the system's reason (`strerror`, such
    as "No such file or directory"); otherwise what was found ("not a regular
    file", "over N bytes", "not UTF-8 text")."""

    def __init__(self, reason: str, *, os_error: bool = False) -> None:
        super().__init__(reason)
        self.os_error = os_error


def read_small_file(
    path: str | os.PathLike[str], limit: int, opened: Callable[[int], None] | None = None
) -> str:
    """The UTF-8 text of the regular file `path`, of `limit` bytes at most: a
    secret file, or a settings file of reconciler's own. Opened non-blocking and
    checked with fstat before anything is read, so a FIFO or a device at the path
    is refused, not waited on (a load or a start must not hang). `opened`, when
    given, is called with the descriptor first (to check where the path led).
    FileUnread otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileUnread(exc.strerror or str(exc), os_error=True) from None
    try:
        if opened is not None:
            opened(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileUnread("not a regular file")
        if st.st_size > limit:
            raise FileUnread(f"over {limit} bytes")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise FileUnread(exc.strerror or str(exc), os_error=True) from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileUnread("not UTF-8 text") from None

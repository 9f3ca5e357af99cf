"""The state directory's keys: 32 random bytes in a 0600 file, made once.

Light on purpose (os and secrets only): the no-op shortcut of `apply`
authenticates its record with a key of the state directory before anything
heavy is imported (decision 0131)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_KEY_BYTES = 32


def state_key(path: Path, *, write: bool) -> bytes | None:
    """The 32-byte key in `path`, made there (mode 0600) if there is none and
    `write`; None otherwise. Concurrent makers agree: a key is linked into place,
    never replaced."""
    try:
        key = path.read_bytes()
        if len(key) == _KEY_BYTES:
            return key
    except OSError:
        pass
    if not write:
        return None
    try:
        temp = _written_beside(path, secrets.token_bytes(_KEY_BYTES))
        try:
            os.link(temp, path)  # never replaces a key another process made
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
        key = path.read_bytes()
    except OSError:
        return None
    return key if len(key) == _KEY_BYTES else None


def place_key(path: Path, key: bytes) -> None:
    """Make `key` the key in `path` (mode 0600), replacing another: a key shared
    through the database (decision 0156) wins over the state directory's own."""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"a key is {_KEY_BYTES} bytes, got {len(key)}")
    try:
        if path.read_bytes() == key:
            return
    except OSError:
        pass
    os.replace(_written_beside(path, key), path)


def _written_beside(path: Path, key: bytes) -> Path:
    """A temporary file beside `path` (mode 0600) holding `key`, synced: what is
    then linked or renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return temp

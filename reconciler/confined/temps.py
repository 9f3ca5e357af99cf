"""Temporary names: recognisable (`.NAME.<16 hex>.reconciler.tmp`), within
NAME_MAX, and claimed while this process writes them so that no sweep (of
another batch, another thread) removes them (decision 53)."""

from __future__ import annotations

import os
import re
import secrets
import threading

TEMP_SUFFIX = ".reconciler.tmp"
"""The end of every temporary name this module makes (see `is_temp_name`)."""

_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX), re.DOTALL)
_NAME_MAX = 255
_TEMP_PREFIX_MAX = _NAME_MAX - len(".." + "0" * 16 + TEMP_SUFFIX)

# Temporary names being written by this process right now: a sweep (another
# batch, another thread) must not remove them. Process-wide on purpose: the
# File and Symlink providers have their own Roots and write into the same
# directories concurrently.
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


def is_temp_name(name: str) -> bool:
    """Whether a directory entry's name is one of this module's temporary names."""
    return _TEMP_NAME.fullmatch(name) is not None


def _temp_name(name: str) -> str:
    prefix = os.fsencode(name)[:_TEMP_PREFIX_MAX]
    return f".{os.fsdecode(prefix)}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _claim(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.add(temp)


def _release(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.discard(temp)

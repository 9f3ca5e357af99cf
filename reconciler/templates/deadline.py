"""Interruption by time: a render runs in a thread of its own and is stopped
past its deadline, by the sandbox's hooks or, for a loop that reaches none of
them, by an exception the interpreter raises in the thread."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_HOOKS_GRACE = 0.1
"""Seconds a render past its time gets to reach a hook of the sandbox (and stop)."""
_GRACE = 1.0
"""Seconds a render past its time gets to unwind after being interrupted."""


class _Interrupted(BaseException):
    """Raised asynchronously in a render thread past its deadline. A BaseException,
    so no `except Exception` inside Jinja swallows it."""


def _run_until(deadline: float, work: Callable[[], str]) -> str:
    """`work()` in a thread of its own, interrupted if it runs past `deadline`.

    The sandbox's hooks check the deadline at every call, attribute, operator
    and output chunk and stop the render themselves; a loop that reaches none
    of them (nested `for` over ranges with an empty body) is stopped by an
    exception the interpreter raises in the thread (PyThreadState_SetAsyncExc).
    It is raised only while `work` runs and caught in the thread; one that lands
    in a callback (a weakref's, where exceptions are ignored) is raised again.
    A thread stuck inside one C call past the grace period is left to finish on
    its own (a daemon thread), and the render is reported as too slow anyway."""
    outcome: list[tuple[bool, Any]] = []
    lock = threading.Lock()
    running = [False]

    def inner() -> None:
        with lock:
            running[0] = True
        try:
            outcome.append((True, work()))
        finally:
            with lock:
                running[0] = False
                _raise_in(threading.get_ident(), None)  # one that came too late

    def target() -> None:
        try:
            inner()
        except BaseException as exc:  # delivered to the caller below
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="template-render", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        thread.join(_HOOKS_GRACE)  # most renders stop at their next hook
    if thread.is_alive():
        _interrupt(thread, lock, running)
        if thread.is_alive() or not outcome:
            raise _Interrupted
    ok, value = outcome[-1]
    if ok:
        return str(value)
    raise value


def _interrupt(thread: threading.Thread, lock: threading.Lock, running: list[bool]) -> None:
    previous = sys.unraisablehook

    def ignore_interrupts(unraisable: Any) -> None:
        if unraisable.exc_type is not _Interrupted:
            previous(unraisable)

    sys.unraisablehook = ignore_interrupts
    try:
        give_up = time.monotonic() + _GRACE
        while thread.is_alive() and time.monotonic() < give_up:
            with lock:
                if running[0]:
                    _raise_in(thread.ident or 0, _Interrupted)
            thread.join(0.05)
    finally:
        if sys.unraisablehook is ignore_interrupts:
            sys.unraisablehook = previous


def _raise_in(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise `exc_type` in thread `ident` at its next bytecode boundary (None:
    drop one pending)."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exc)

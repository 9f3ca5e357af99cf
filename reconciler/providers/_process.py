"""Running one command for a provider: no shell unless asked, its own process
group, a deadline that kills the whole group, and output kept bounded.

`run` starts the process with `os.posix_spawn` when it can (no working
directory, no user switch: about half the cost of `subprocess.Popen`, which
matters when a drift check runs a thousand guard commands) and with `Popen`
otherwise. Either way it waits through a pidfd watched by the event loop and
reads the output pipe with a non-blocking reader: no thread per child, unlike
asyncio's default child watcher on Python 3.11.

The process leads a new session (`setsid`), so on a timeout or a cancellation
`os.killpg` reaches every process it started: SIGTERM, a short grace, then
SIGKILL for whatever is left. stdout and stderr share one pipe, read as it
comes; only the last `OUTPUT_LIMIT` bytes are kept, so a command that prints
gigabytes costs no memory. When the command exits, output still arriving (a
background child holding the pipe) is read for `DRAIN` seconds more; such a
child is then left running, since a command may start a service on purpose.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

OUTPUT_LIMIT = 64 * 1024
"""Bytes of output kept, the last ones (the tail is what explains a failure)."""
DRAIN = 0.5
"""Seconds output is still read after the command exited."""
KILL_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL of a timed-out process group."""
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class User:
    """Whom to run as (the daemon must be root): ids and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    """Exit status, or -N when killed by signal N."""
    output: bytes
    """The last OUTPUT_LIMIT bytes of stdout and stderr, interleaved."""
    size: int
    """Bytes of output in all, kept or not."""


class Timeout(Exception):
    """The deadline passed; the process group was killed."""


class NotStarted(Exception):
    """The program could not be started (not found, not executable, no cwd)."""


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    user: User | None = None,
    seconds: float,
    capture: bool = True,
) -> Result:
    """Run `argv` to completion within `seconds`. Raises Timeout (the
    group is killed) or NotStarted; on cancellation kills the group and re-raises.
    Without `capture` the output goes to /dev/null (a guard's exit status is
    all that counts) and the result's output is empty."""
    if not capture:
        return await _wait(_spawn(argv, env, cwd, user, None), seconds)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = _spawn(argv, env, cwd, user, write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        return await _wait(pid, seconds, read_fd)
    finally:
        os.close(read_fd)


async def _wait(pid: int, seconds: float, read_fd: int | None = None) -> Result:
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except BaseException:
        _kill_group(pid, signal.SIGKILL)
        _reap(pid)
        raise

    exited: asyncio.Future[None] = loop.create_future()
    eof: asyncio.Future[None] = loop.create_future()
    tail = bytearray()
    size = 0

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        if not exited.done():
            exited.set_result(None)

    def on_output() -> None:
        nonlocal size
        assert read_fd is not None
        try:
            chunk = os.read(read_fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            loop.remove_reader(read_fd)
            if not eof.done():
                eof.set_result(None)
            return
        size += len(chunk)
        tail.extend(chunk)
        if len(tail) > OUTPUT_LIMIT:
            del tail[: len(tail) - OUTPUT_LIMIT]

    loop.add_reader(pidfd, on_exit)
    if read_fd is not None:
        os.set_blocking(read_fd, False)
        loop.add_reader(read_fd, on_output)
    else:
        eof.set_result(None)
    reaped = False
    try:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.shield(exited)  # still awaited by _terminate
        except TimeoutError:
            await _terminate(pid, exited)
            raise Timeout() from None
        code = _exit_status(pid)
        reaped = True
        try:
            async with asyncio.timeout(DRAIN):
                await eof
        except TimeoutError:
            pass  # a background child still holds the pipe: stop listening
        return Result(code, bytes(tail), size)
    except asyncio.CancelledError:
        if not reaped:
            _kill_group(pid, signal.SIGKILL)
        raise
    finally:
        loop.remove_reader(pidfd)
        if read_fd is not None:
            loop.remove_reader(read_fd)
        os.close(pidfd)
        if not reaped:
            _reap(pid)


@lru_cache(maxsize=256)
def _which(program: str, path: str) -> str | None:
    """The program's path on PATH; cached, since a drift check of a thousand
    guards asks for the same few programs a thousand times."""
    return shutil.which(program, path=path)


def _spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    user: User | None,
    out: int | None,
) -> int:
    program = argv[0]
    if "/" not in program:
        path = env.get("PATH", os.defpath)
        found = _which(program, path)
        if found is None:
            _which.cache_clear()  # a miss is not kept: it may be installed later
            raise NotStarted(f"{program!r} not found on PATH {path}")
        program = found
    try:
        if cwd is None and user is None:
            outputs: list[tuple[int, ...] | tuple[int, int, str, int, int]] = (
                [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0), (os.POSIX_SPAWN_DUP2, 1, 2)]
                if out is None
                else [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)]
            )
            return os.posix_spawn(
                program,
                list(argv),
                env,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), *outputs],
                setsid=True,
            )
        proc = subprocess.Popen(
            [program, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if out is None else out,
            stderr=subprocess.DEVNULL if out is None else out,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else list(user.groups),
        )
        # waited through the pidfd and os.waitpid; stop Popen from reaping it too
        proc.returncode = 0
        return proc.pid
    except OSError as exc:
        where = f" in {cwd}" if cwd is not None else ""
        raise NotStarted(f"cannot start {program!r}{where}: {exc.strerror}") from None


async def _terminate(pid: int, exited: asyncio.Future[None]) -> None:
    """SIGTERM to the group; SIGKILL to whatever is left of it once the leader
    exited or the grace is over (a child that ignores SIGTERM, or outlived it)."""
    _kill_group(pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(KILL_GRACE):
            await asyncio.shield(exited)
    except TimeoutError:
        pass
    _kill_group(pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_status(pid: int) -> int:
    """The exit status of a child the pidfd reported as exited (no waiting)."""
    _, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status)


def _reap(pid: int) -> None:
    """Reap a killed leader: at once if it is gone, else from a thread (the loop
    never waits on a process)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if not done:
        _kill_group(pid, signal.SIGKILL)
        threading.Thread(target=_block, args=(pid,), name=f"reap {pid}", daemon=True).start()


def _block(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass

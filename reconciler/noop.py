"""The no-op shortcut of `reconciler apply` (decision 0131).

A no-op apply of an unchanged tree used to spend most of its time importing and
building what a change would need (pydantic, asyncio, the engine). So an apply
that changed nothing leaves a *record* in the state directory: the digest of its
config tree, its options, the code that ran, a mark of the store, its result, and
the *facts* of every object it found in sync (lstat type, mode, owner and group;
a regular file's size and keyed digest; a symlink's target), taken before the
pass that found them in sync. The next `apply` with the same tree, options,
code and store whose every object still shows the recorded facts has, by
construction, the recorded result: it prints it and ends without importing
anything heavy. Anything else, or any doubt (an option this module does not know,
an unreadable object, a locked state directory), takes the full path.

Facts are taken before the pass: an object changed after they were taken is
either seen by the pass (then it changes something and no record is written) or
differs from the facts next time. Only kinds that declare `Provider.quick_check`
(every field they observe is among the facts) are recorded; a revision holding
another kind, resolved secrets or a branch-following bundle is never recorded.
The record is authenticated with a key of the state directory, as the tree
cache is, and paths are read through the confined filesystem of the roots.

This module is imported by the console entry point before anything else: it
uses the standard library, `confined`, `statekey` and `manifests.tree` only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import stat
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import __version__, confined
from reconciler.statekey import state_key

RECORD = "noop.json"
"""The record, in STATE_DIR/cache/ next to the tree cache."""
KEY_FILE = "cache.key"
"""The key that authenticates it: the tree cache's (decision 57)."""
FORMAT = b"reconciler-noop-2"
MAX_RECORD_BYTES = 512 * 1024 * 1024
STREAM_ABOVE = 1 << 20
"""Regular files larger than this are digested in chunks rather than read whole."""
REPORT_ORDER = (
    "created",
    "updated",
    "healed",
    "deleted",
    "released",
    "unchanged",
    "drifted",
    "suspended",
    "failed",
    "blocked",
)
"""The counts of a report, in the order `apply` prints them (diff.REPORT_ORDER)."""

_FLAGS = {
    "--json",
    "--no-color",
    "--no-progress",
    "--progress",
    "--allow-mass-prune",
    "--allow-commands",
}
_VALUES = {
    "--root",
    "--secret-dir",
    "--secret-env",
    "--state-dir",
    "--concurrency",
    "--retries",
    "--max-prune-share",
}
_MULTIPLE = {"--root", "--secret-dir", "--secret-env"}
_DEFAULT_STATE_DIR = ".reconciler"


class Doubt(Exception):
    """Something the shortcut cannot vouch for: take the full path."""


@dataclass(frozen=True)
class Invocation:
    """An `apply` command line the shortcut understands, as `apply` reads it."""

    path: str
    roots: tuple[str, ...]
    state_dir: str
    as_json: bool
    no_color: bool
    progress: bool | None
    options: tuple[tuple[str, str], ...]
    """Every option as given (those that only shape the output included): the key."""


ELIGIBLE: Invocation | None = None
"""Set by `shortcut` when the command line is one it understands but the record
did not answer it: the full `apply` then writes a record if nothing changes."""


def parse(args: list[str], environ: Mapping[str, str]) -> Invocation | None:
    """The invocation of `reconciler apply ...`, or None for anything else: another
    command, an option not in the short list, a `RECONCILER_*` variable that could
    set one (click reads `RECONCILER_APPLY_<OPTION>`), a malformed value."""
    if not args or args[0] != "apply":
        return None
    if any(_setting(name) for name in environ):
        return None
    positional: list[str] = []
    options: list[tuple[str, str]] = []
    rest = iter(args[1:])
    for arg in rest:
        if arg in _FLAGS:
            options.append((arg, ""))
        elif arg in _VALUES:
            value = next(rest, None)
            if value is None:
                return None
            options.append((arg, value))
        elif arg.partition("=")[0] in _VALUES:
            name, _, value = arg.partition("=")
            options.append((name, value))
        elif arg.startswith("-") or arg == "":
            return None
        else:
            positional.append(arg)
    if len(positional) != 1 or not _valid(options):
        return None
    given = dict(options)
    state_dir = given.get("--state-dir", environ.get("RECONCILER_STATE_DIR", _DEFAULT_STATE_DIR))
    progress = None
    for name, _ in options:  # the last of --progress/--no-progress wins, as in click
        if name in ("--progress", "--no-progress"):
            progress = name == "--progress"
    return Invocation(
        path=positional[0],
        roots=tuple(_absolute(value) for name, value in options if name == "--root"),
        state_dir=state_dir,
        as_json="--json" in given,
        no_color="--no-color" in given,
        progress=progress,
        options=tuple(options),
    )


def _setting(name: str) -> bool:
    """Whether an environment variable may set an option (the values of
    RECONCILER_SECRET_* are secrets a manifest reads, never options)."""
    if name in ("RECONCILER_SECRET_DIRS", "RECONCILER_SECRET_ENV"):  # --secret-dir/-env
        return True
    return name.startswith("RECONCILER_") and not (
        name == "RECONCILER_STATE_DIR" or name.startswith("RECONCILER_SECRET_")
    )


def _valid(options: list[tuple[str, str]]) -> bool:
    counts: dict[str, int] = {}
    for name, value in options:
        counts[name] = counts.get(name, 0) + 1
        if name in ("--concurrency", "--retries") and not (value.isascii() and value.isdigit()):
            return False
        if name == "--max-prune-share":
            try:
                share = float(value)
            except ValueError:
                return False
            if not 0 <= share <= 1:
                return False
        if name in _VALUES and name not in ("--concurrency", "--retries") and not value:
            return False
    if int(dict(options).get("--concurrency", "16")) not in range(1, 1025):
        return False
    if int(dict(options).get("--retries", "0")) > 20:
        return False
    return all(n == 1 for name, n in counts.items() if name not in _MULTIPLE)


def _absolute(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


# the shortcut


def shortcut(args: list[str]) -> bool:
    """Answer `apply` from its record when it can: print the recorded result and
    return True. Otherwise return False (setting ELIGIBLE when the command line is
    one a record can be made for) and let the full command run."""
    global ELIGIBLE
    started = time.perf_counter()
    invocation = parse(args, os.environ)
    if invocation is None:
        return False
    bar = sys.stderr.isatty() if invocation.progress is None else invocation.progress
    if bar and not invocation.as_json:
        return False  # the full path draws a progress bar
    ELIGIBLE = invocation
    try:
        record = _check(invocation)
    except (Doubt, OSError, ValueError, confined.ConfinementError):
        return False
    seconds = time.perf_counter() - started
    sys.stdout.write(render(invocation, record, seconds))
    return True


def render(invocation: Invocation, record: Mapping[str, Any], load_seconds: float) -> str:
    """What `apply` prints for the recorded result (diff.render_report, report_json)."""
    counts = {name: int(record["counts"].get(name, 0)) for name in REPORT_ORDER}
    if invocation.as_json:
        report = {
            "revision": record["revision"],
            "ok": True,
            "counts": counts,
            "timings": {"load": load_seconds, "engine": 0.0},
            "results": [],
        }
        return json.dumps(report, indent=2) + "\n"
    colour = not invocation.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    return (
        summary(
            counts,
            ok=True,
            revision=record["revision"],
            load=load_seconds,
            engine=0.0,
            colour=colour,
        )
        + "\n"
    )


def summary(
    counts: Mapping[str, int], *, ok: bool, revision: str, load: float, engine: float, colour: bool
) -> str:
    """The last line of `apply`'s text report."""
    from reconciler.logs import printable

    def style(code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour else text

    listed = ", ".join(f"{counts.get(name, 0)} {name}" for name in REPORT_ORDER)
    status = style("32", "Apply complete") if ok else style("31;1", "Apply incomplete")
    return (
        f"{status}: {listed}. (revision {printable(revision)}, load {load:.2f} s, "
        f"engine {engine:.2f} s)"
    )


def _check(invocation: Invocation) -> dict[str, Any]:
    """The record, when it answers this invocation; raises Doubt otherwise."""
    state_dir = Path(invocation.state_dir)
    key = state_key(state_dir / "cache" / KEY_FILE, write=False)
    if key is None:
        raise Doubt("no key")
    path = state_dir / "cache" / RECORD
    with path.open("rb") as handle:
        raw = handle.read(MAX_RECORD_BYTES + 1)
    mac, _, body = raw.partition(b"\n")
    if len(raw) > MAX_RECORD_BYTES or not hmac.compare_digest(mac, _mac(key, body).encode()):
        raise Doubt("record not authentic")
    record: dict[str, Any] = json.loads(body)
    with _locked(state_dir):
        if record["key"] != inputs_key(key, invocation, _tree_digest(invocation.path)):
            raise Doubt("other inputs")
        if record["store"] != store_mark(state_dir):
            raise Doubt("the store changed")
        _same(key, invocation.roots, record["objects"])
    return record


# the record


def inputs_key(key: bytes, invocation: Invocation, tree: str) -> str:
    """What the result depends on besides the store and the objects: the tree, the
    options, the working directory they are relative to, the code (reconciler's
    files and the installed packages, by size and time), and the user and group
    databases (an owner is named, a uid is compared)."""
    parts: list[Any] = [
        __version__,
        sys.version,
        tree,
        _absolute(invocation.path),
        list(invocation.roots),
        _absolute(invocation.state_dir),
        [list(option) for option in invocation.options if option[0] not in _OUTPUT],
        _code(),
        [_stamp(Path(p)) for p in ("/etc/passwd", "/etc/group")],
    ]
    return _mac(key, json.dumps(parts).encode())


_OUTPUT = {"--json", "--no-color", "--progress", "--no-progress"}


def _code() -> list[Any]:
    package = Path(__file__).parent
    files = sorted(package.rglob("*.py"))
    stamps: list[Any] = [[str(f.relative_to(package)), *_stamp(f)] for f in files]
    # installing or removing a package (a provider) changes its directory's entries
    stamps += [
        [entry, *_stamp(Path(entry))] for entry in sys.path if entry and os.path.isdir(entry)
    ]
    return stamps


def _stamp(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _tree_digest(path: str) -> str:
    from reconciler.manifests.tree import tree_digest

    return tree_digest(Path(path))


def store_mark(state_dir: Path) -> list[Any]:
    """What changes whenever the store does: the schema, the sequences (every event
    and revision takes the next number), the inventory's size, the resources not
    at rest, the sources' facts. Read through a connection of its own."""
    import sqlite3

    db_path = state_dir / "state.db"
    if not db_path.is_file():
        raise Doubt("no store")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        row = db.execute(
            "SELECT (SELECT group_concat(name || '=' || seq) FROM sqlite_sequence),"
            " (SELECT count(*) FROM resources),"
            " (SELECT count(*) FROM status WHERE state != 'InSync' OR attempts != 0),"
            " (SELECT count(*) FROM sources), (SELECT total(last_success) FROM sources)"
        ).fetchone()
    except sqlite3.Error as exc:
        raise Doubt(f"store: {exc}") from exc
    finally:
        db.close()
    return [version, *row]


class _locked:
    """The state directory's lock, as the store takes it: a running reconciler
    holds it, and then the full path must run (and say so)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise Doubt("the state directory is in use") from None

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _same(key: bytes, roots: Iterable[str], objects: Mapping[str, str | None]) -> None:
    """Raise Doubt at the first object whose facts differ from the recorded ones."""
    with confined.Roots(tuple(roots)).batch() as fs:
        for path, recorded in objects.items():
            try:
                found = _facts(fs, key, path)
            except (OSError, confined.ConfinementError) as exc:
                raise Doubt(f"{path}: {exc}") from exc
            if found != recorded:
                raise Doubt(f"{path} changed")


def facts(key: bytes, roots: Iterable[str], paths: Iterable[str]) -> dict[str, str | None]:
    """The facts of the object at each path (None: absent), read through the
    confined filesystem of `roots`; raises Doubt when one cannot be read."""
    found: dict[str, str | None] = {}
    with confined.Roots(tuple(roots)).batch() as fs:
        for path in paths:
            try:
                found[path] = _facts(fs, key, path)
            except (OSError, confined.ConfinementError) as exc:
                raise Doubt(f"{path}: {exc}") from exc
    return found


def _facts(fs: confined.Batch, key: bytes, path: str) -> str | None:
    """One line: octal type and mode, uid, gid, then a file's size and keyed digest
    (128 bits) or a link's target."""
    st = fs.lstat(path)
    if st is None:
        return None
    found = f"{stat.S_IFMT(st.st_mode):o} {stat.S_IMODE(st.st_mode):o} {st.st_uid} {st.st_gid}"
    if stat.S_ISREG(st.st_mode):
        digest = hmac.new(key, b"content\0", hashlib.sha256)
        size = 0
        if st.st_size > STREAM_ABOVE:
            with fs.open_read(path) as handle:
                while chunk := handle.read(STREAM_ABOVE):
                    digest.update(chunk)
                    size += len(chunk)
        else:
            data = fs.read(path, st.st_size + 1)
            digest.update(data)
            size = len(data)
        return f"{found} {size} {digest.hexdigest()[:32]}"
    if stat.S_ISLNK(st.st_mode):
        return f"{found} {fs.readlink(path)}"
    return found


def _mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, FORMAT + b"\0" + body, hashlib.sha256).hexdigest()


@dataclass
class Recorder:
    """Made by the full `apply` before its pass: the facts as they were then; it
    writes the record after the pass if the pass changed nothing."""

    invocation: Invocation
    state_dir: Path
    key: bytes
    tree: str
    revision: str
    objects: dict[str, str | None]

    @classmethod
    def before(
        cls, digest: str, revision: str, paths: Iterable[str], state_dir: Path
    ) -> Recorder | None:
        """The recorder of this run, or None when no record can be made: the command
        line is not one the shortcut reads, an object cannot be read. `digest` is the
        tree's as the loader read it (`DesiredState.digest`): the record is of what
        was loaded, even if the tree changed since."""
        invocation = ELIGIBLE
        if invocation is None or _absolute(invocation.state_dir) != _absolute(str(state_dir)):
            return None
        key = state_key(state_dir / "cache" / KEY_FILE, write=True)
        if key is None:
            return None
        try:
            objects = facts(key, invocation.roots, paths)
        except (Doubt, OSError, ValueError, confined.ConfinementError):
            return None
        return cls(invocation, state_dir, key, digest, revision, objects)

    def write(self, counts: Mapping[str, int]) -> None:
        """Record the result of a pass that changed nothing; call it while the store
        is still open (its lock held). A failure to write costs only the next run."""
        try:
            record = {
                "key": inputs_key(self.key, self.invocation, self.tree),
                "revision": self.revision,
                "counts": dict(counts),
                "store": store_mark(self.state_dir),
                "objects": self.objects,
            }
            body = json.dumps(record, separators=(",", ":")).encode()
            path = self.state_dir / "cache" / RECORD
            temp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(_mac(self.key, body).encode() + b"\n" + body)
            os.replace(temp, path)
        except (Doubt, OSError):
            forget(self.state_dir)


def forget(state_dir: Path) -> None:
    """Remove the record: a run that changed something, or failed to record."""
    with contextlib.suppress(OSError):
        (state_dir / "cache" / RECORD).unlink()

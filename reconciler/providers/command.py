"""`Command`: a command that runs when it is needed, as Ansible's `command` with
`creates`/`removes`, Puppet's `exec` with `unless`/`onlyif`, or Terraform's
`local-exec`.

    kind: Command
    metadata: {name: migrate}
    spec:
      argv: [/srv/app/bin/migrate, --to, "42"]
      env: {DB_PASSWORD: {valueFrom: {file: /run/secrets/db}}}
      unless: [/srv/app/bin/migrate, --check, "42"]

When a command is needed (docs/decisions/0074):
- with guards, they decide, and all must agree: `creates` (a path: done once it
  exists), `removes` (done once it is gone), `unless` (done when it exits 0),
  `onlyIf` (needed only when it exits 0). They are evaluated at every drift
  check, so a guard that flips is drift, healed by running the command again;
- with no guard, once per spec: a record of the last successful run, keyed by a
  digest of the spec, is kept in the state directory (`command/`), or in the
  store when several daemons share one (`ProviderSettings.run_records`:
  PostgreSQL, so a new leader does not run it again; decision 0151), so a
  changed spec runs again and an unchanged one never does;
- `refreshOn` names resources whose every apply runs it again (a restart after
  its config file changed); its guards, if any, then only gate those runs.

Observing runs the guard commands (nothing else); applying runs the command. A
command cannot be un-run, so deleting one only forgets its record (0076).
Output is kept bounded, and what reaches the event note or an error is its tail
with every secret value masked; a non-zero exit is a PermanentError, except exit
75 (EX_TEMPFAIL), a TemporaryError, and so is a timeout (0075).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from reconciler.model import (
    NO_CHANGES,
    WITHHELD_MESSAGE,
    Action,
    Change,
    Observed,
    PermanentError,
    Plan,
    PrepareContext,
    Provider,
    ResourceId,
    ResourceIds,
    RunRecords,
    Sensitive,
    SensitiveStr,
    SpecError,
    TemporaryError,
    mask,
    parse_duration,
    quotes_a_secret,
)
from reconciler.providers import _process

SHELL = "/bin/sh"
GUARD_CONCURRENCY = 32
"""Guard commands run at once by one provider (a drift check of many commands)."""
APPLY_CONCURRENCY = 4
"""Commands run at once; those that must run in order say so with dependsOn."""
EX_TEMPFAIL = 75
"""sysexits.h: "try again later"; the one exit status that is a TemporaryError."""
NOTE_LINES, NOTE_CHARS = 5, 400
"""The output tail in the note of a successful run."""
ERROR_LINES, ERROR_CHARS = 20, 2000
"""The output tail in the error of a failed run."""
INHERITED_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "HOME",
    "RECONCILER_DAEMON_ID",
    "RECONCILER_EPOCH",
)
"""What a command gets from the daemon's environment, which may hold secrets of
its own: nothing else (`env` adds to it). The daemon's id and the epoch of the
lease it leads under are set by a leader (high availability, decision 0148)."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$|^\d+$")


def _duration(value: Any) -> float:
    return parse_duration(value)


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError(f"a NUL character cannot be passed to a process, found {value!r}")
    return value


def _absolute(value: Any) -> Any:
    if isinstance(value, str) and not value.startswith("/"):
        raise ValueError(f"expected an absolute path, found {value!r}")
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
Text = Annotated[str, BeforeValidator(_no_nul)]
AbsolutePath = Annotated[Text, BeforeValidator(_absolute)]
Argv = Annotated[tuple[Text, ...], Field(min_length=1)]


class CommandSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    argv: Argv | None = None
    """The program and its arguments, run without a shell."""
    shell: bool = False
    """Run `command` with /bin/sh -c instead of `argv`."""
    command: Text | None = Field(default=None, min_length=1)
    env: dict[str, SensitiveStr | dict[str, Any]] = {}
    """Added to PATH, LANG, LC_*, TZ and HOME; a value may be a secret reference."""
    cwd: AbsolutePath | None = None
    user: str | None = None
    """Run as this user (name or uid) with its groups; the daemon must be root."""
    timeout: Duration = 300.0
    creates: AbsolutePath | None = None
    removes: AbsolutePath | None = None
    unless: Argv | Text | None = None
    """A guard: an argv list, or a string run with /bin/sh -c."""
    only_if: Argv | Text | None = Field(default=None, alias="onlyIf")
    guard_timeout: Duration = Field(default=30.0, alias="guardTimeout")
    refresh_on: ResourceIds = Field(default=(), alias="refreshOn")

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, item in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"expected environment variable names, found {name!r}")
            if isinstance(item, str):
                _no_nul(item)
            elif "valueFrom" not in item:
                raise ValueError(
                    f"{name}: expected a string or a secret reference such as "
                    "{valueFrom: {env: NAME}}"
                )
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER.match(value):
            raise ValueError(f"expected a user name or a numeric uid, found {value!r}")
        return value

    @property
    def guarded(self) -> bool:
        return any(g is not None for g in (self.creates, self.removes, self.unless, self.only_if))

    def secrets(self) -> list[str]:
        return [v for v in self.env.values() if isinstance(v, Sensitive)]


class Changes(Protocol):
    """What the engine tells providers about other resources' applies
    (`ProviderSettings.changes`, when it has one)."""

    def token(self, rid: ResourceId) -> str | None: ...


class CommandProvider(Provider[CommandSpec]):
    kind = "Command"
    Spec = CommandSpec
    summary = "A command run when its guards, its spec or a refreshOn resource say so."

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._files = _Runs(self.settings.state_dir)
        shared = self.settings.run_records
        self._runs: RunRecords = self._files if shared is None else shared
        self._limits: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}

    def prepare(self, spec: CommandSpec, ctx: PrepareContext) -> CommandSpec:
        if not self.settings.allow_commands:
            raise SpecError(
                (),
                "Command resources are not allowed here: a command runs with reconciler's "
                "privileges, beyond the roots; start reconciler with --allow-commands "
                "(env RECONCILER_ALLOW_COMMANDS=1) to allow them",
            )
        if spec.shell:
            if spec.argv is not None:
                raise SpecError("argv", "with shell: true, give command: a string, not argv")
            if spec.command is None:
                raise SpecError("command", "with shell: true, command: is required")
        elif spec.command is not None:
            raise SpecError("command", "command: runs only with shell: true; or give argv: [...]")
        elif spec.argv is None:
            raise SpecError("argv", "expected argv: [program, args...] (or shell: true, command)")
        for name in ("unless", "onlyIf"):
            guard = getattr(spec, "only_if" if name == "onlyIf" else name)
            if isinstance(guard, str) and not guard.strip():
                raise SpecError(name, "expected a command, found an empty string")
        env: dict[str, Any] = {}
        for name, value in spec.env.items():
            env[name] = ctx.secret(value, ("env", name)) if isinstance(value, dict) else value
        return spec.model_copy(update={"env": env})

    def describe(self, spec: CommandSpec) -> str:
        text = _shown(_argv(spec.argv, spec.command))
        return text if len(text) <= 60 else text[:59] + "…"

    def references(self, spec: CommandSpec) -> Sequence[tuple[tuple[str | int, ...], ResourceId]]:
        own = tuple((("refreshOn", i), rid) for i, rid in enumerate(spec.refresh_on))
        return (*super().references(spec), *own)

    def refreshes(self, spec: CommandSpec) -> Sequence[ResourceId]:
        return spec.refresh_on

    # observe: the guards, the run record and the refreshOn tokens

    async def observe_many(self, specs: Sequence[CommandSpec]) -> list[Observed | None]:
        records = await asyncio.to_thread(self._runs.get_many, [_key(s) for s in specs])
        limit = self._limit(GUARD_CONCURRENCY)
        return list(
            await asyncio.gather(
                *(self._observe(s, r, limit) for s, r in zip(specs, records, strict=True))
            )
        )

    async def _observe(
        self, spec: CommandSpec, record: Mapping[str, Any] | None, limit: asyncio.Semaphore
    ) -> Observed:
        reasons: list[tuple[str, Any, Any]] = []
        if spec.refresh_on:
            changed = self._refreshed(spec, record)
            if record is not None and not changed:
                return _observed(False, record, [])
            reasons = changed or [("/ran", False, True)]
        elif not spec.guarded:
            if record is not None:
                return _observed(False, record, [])
            reasons = [("/ran", False, True)]
        if spec.creates is not None:
            if _exists(spec.creates):
                return _observed(False, record, [])
            reasons.append(("/creates", "absent", "present"))
        if spec.removes is not None:
            if not _exists(spec.removes):
                return _observed(False, record, [])
            reasons.append(("/removes", "present", "absent"))
        for field, guard, done_when_zero in (
            ("/unless", spec.unless, True),
            ("/onlyIf", spec.only_if, False),
        ):
            if guard is None:
                continue
            async with limit:
                code = await self._guard(spec, field, guard)
            if (code == 0) == done_when_zero:
                return _observed(False, record, [])
            reasons.append((field, f"exit {code}", "exit 0" if done_when_zero else "non-zero"))
        return _observed(True, record, reasons)

    def _refreshed(
        self, spec: CommandSpec, record: Mapping[str, Any] | None
    ) -> list[tuple[str, Any, Any]]:
        changes = self.settings.changes
        seen = record.get("refresh", {}) if record is not None else {}
        reasons = []
        for i, rid in enumerate(spec.refresh_on):
            token = changes.token(rid)
            if token is not None and token != seen.get(rid):
                reasons.append((f"/refreshOn/{i}", None, f"{rid} applied since the last run"))
        return reasons

    async def _guard(self, spec: CommandSpec, field: str, guard: tuple[str, ...] | str) -> int:
        argv = _argv(guard if isinstance(guard, tuple) else None, guard)
        result = await self._run(
            spec, argv, spec.guard_timeout, f"guard {field[1:]}", capture=False
        )
        return result.code

    def plan(self, spec: CommandSpec, observed: Observed | None) -> Plan:
        if observed is None:  # never observed (a plan of a removed spec): it would run
            return Plan(Action.CREATE, (Change("/ran", False, True),))
        if not observed["needed"]:
            return NO_CHANGES
        action = Action.UPDATE if observed["ran"] else Action.CREATE
        return Plan(action, tuple(Change(f, b, a) for f, b, a in observed["reasons"]))

    # apply: run the command, record the run

    async def apply(self, spec: CommandSpec, plan: Plan) -> str | None:
        async with self._limit(APPLY_CONCURRENCY):
            # a run that cannot be recorded would run again at every pass: check first
            # (a store's refusal, fenced or away, is found by the put: the engine's
            # fence has been checked right before this apply)
            if self._runs is self._files:
                await asyncio.to_thread(self._files.check)
            tokens = self._tokens(spec)
            result = await self._run(spec, _argv(spec.argv, spec.command), spec.timeout, "command")
            if result.code != 0:
                error = TemporaryError if result.code == EX_TEMPFAIL else PermanentError
                tail = _tail(result, spec.secrets(), ERROR_LINES, ERROR_CHARS)
                raise error(f"the command {_exit(result.code)}{_with_output(tail)}")
            record = {"ranAt": time.time(), "exit": 0, "refresh": tokens}
            try:
                await asyncio.to_thread(self._runs.put, _key(spec), record)
            except OSError as exc:
                raise PermanentError(
                    f"the command ran (exit 0) but its run cannot be recorded in "
                    f"{self._files.where}: {exc.strerror}"
                ) from None
            except PermanentError as exc:
                if self._runs is self._files:
                    raise
                # refused (a newer leader: fenced) or the store away: reported as
                # failed, not in sync; a leader after this one runs it again
                raise PermanentError(
                    f"the command ran (exit 0) but its run cannot be recorded: {exc}"
                ) from None
            tail = _tail(result, spec.secrets(), NOTE_LINES, NOTE_CHARS)
            return f"exit 0: {tail}" if tail else "exit 0 (no output)"

    def _tokens(self, spec: CommandSpec) -> dict[str, str]:
        changes = self.settings.changes
        return {rid: t for rid in spec.refresh_on if (t := changes.token(rid)) is not None}

    async def delete(self, spec: CommandSpec) -> None:
        """A command cannot be un-run: forget its run, so declaring it again runs it."""
        await asyncio.to_thread(self._runs.drop, _key(spec))

    async def _run(
        self, spec: CommandSpec, argv: list[str], seconds: float, what: str, *, capture: bool = True
    ) -> _process.Result:
        user = _user(spec.user)
        env = _environment(spec, user)
        try:
            return await _process.run(
                argv, env=env, cwd=spec.cwd, user=user, seconds=seconds, capture=capture
            )
        except _process.Timeout:
            raise TemporaryError(
                f"the {what} did not finish within its timeout of {seconds:g} s "
                "(its process group was killed)"
            ) from None
        except _process.NotStarted as exc:
            raise PermanentError(f"the {what} could not start: {exc}") from None

    def _limit(self, size: int) -> asyncio.Semaphore:
        """One semaphore per bound and event loop (a CLI run may start several loops)."""
        loop = asyncio.get_running_loop()
        held = self._limits.get(size)
        if held is None or held[0] is not loop:
            held = (loop, asyncio.Semaphore(size))
            self._limits[size] = held
        return held[1]


def _argv(argv: tuple[str, ...] | None, command: Any) -> list[str]:
    return list(argv) if argv is not None else [SHELL, "-c", str(command)]


def _shown(argv: list[str]) -> str:
    return shlex.join(argv) if argv[:2] != [SHELL, "-c"] else f"sh -c {shlex.quote(argv[2])}"


def _observed(
    needed: bool, record: Mapping[str, Any] | None, reasons: list[tuple[str, Any, Any]]
) -> Observed:
    return {"needed": needed, "ran": record is not None, "reasons": reasons}


def _exists(path: str) -> bool:
    """Whether anything is at `path`; a symlink counts itself (not followed)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return False
    except OSError as exc:
        raise TemporaryError(f"cannot look at {path}: {exc.strerror}") from None
    return True


def _user(name: str | None) -> _process.User | None:
    if name is None:
        return None
    if os.geteuid() != 0:
        raise PermanentError(
            f"user: {name} needs the daemon to run as root to switch users; "
            f"it runs as uid {os.geteuid()} (remove user:, or run the daemon as root)"
        )
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise PermanentError(f"user: no user {name!r} on this system") from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _process.User(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _environment(spec: CommandSpec, user: _process.User | None) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env.update({name: str(value) for name, value in spec.env.items()})
    return env


def _tail(result: _process.Result, secrets: list[str], lines: int, chars: int) -> str:
    """The last lines of the output with every secret masked; withheld whole if
    a piece of a secret is still in it."""
    text = result.output.decode("utf-8", errors="replace").rstrip()
    text = "\n".join(text.splitlines()[-lines:])
    if secrets:
        # mask before cutting, so a cut cannot leave the unmasked half of a secret
        text = mask(text, secrets)
        if quotes_a_secret(text, secrets):
            return WITHHELD_MESSAGE
    if len(text) > chars:
        text = "…" + text[-chars:]
    if result.size > len(result.output):
        text = f"({result.size} bytes of output, the last shown) {text}"
    return text


def _exit(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _with_output(tail: str) -> str:
    return f"; output:\n{tail}" if tail else " (no output)"


def _key(spec: CommandSpec) -> str:
    """The run record's name: a digest of the prepared spec (secret values dump
    as their keyed digests), so any change of the spec makes a new record."""
    dumped = spec.model_dump_json(by_alias=True)
    return hashlib.sha256(dumped.encode()).hexdigest()[:40]


class _Runs:
    """The last successful run of each spec: one small JSON file per spec under
    `<state dir>/command/`, written atomically (temporary file and rename)
    relative to the directory's descriptor, never through a symlink; in memory
    when there is no state directory."""

    def __init__(self, state_dir: str | None) -> None:
        self._dir = None if state_dir is None else os.path.join(state_dir, "command")
        self._memory: dict[str, dict[str, Any]] = {}

    @property
    def where(self) -> str:
        return self._dir or "memory"

    def check(self) -> None:
        """PermanentError unless runs can be recorded (the directory is there and
        is no symlink)."""
        if self._dir is not None:
            dir_fd = self._open_dir(create=True)
            if dir_fd is not None:
                os.close(dir_fd)

    def get_many(self, keys: Sequence[str]) -> list[Mapping[str, Any] | None]:
        if self._dir is None:
            return [self._memory.get(key) for key in keys]
        dir_fd = self._open_dir(create=False)
        if dir_fd is None:
            return [None for _ in keys]
        try:
            return [self._read(dir_fd, key) for key in keys]
        finally:
            os.close(dir_fd)

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        if self._dir is None:
            self._memory[key] = dict(record)
            return
        dir_fd = self._open_dir(create=True)
        assert dir_fd is not None
        tmp = f".{key}.{secrets.token_hex(8)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
            os.rename(tmp, f"{key}.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def drop(self, key: str) -> None:
        if self._dir is None:
            self._memory.pop(key, None)
            return
        dir_fd = self._open_dir(create=False)
        if dir_fd is None:
            return
        try:
            os.unlink(f"{key}.json", dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)

    def _open_dir(self, *, create: bool) -> int | None:
        assert self._dir is not None
        try:
            if create:
                os.makedirs(self._dir, mode=0o700, exist_ok=True)
            return os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PermanentError(
                f"cannot record command runs in {self._dir}: {exc.strerror} "
                "(it must be a directory, not a symlink)"
            ) from None

    @staticmethod
    def _read(dir_fd: int, key: str) -> dict[str, Any] | None:
        try:
            fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(65536)
        try:
            record = json.loads(data)
        except ValueError:
            return None  # a torn or foreign file: as if it never ran
        return record if isinstance(record, dict) else None


__all__ = ["CommandProvider", "CommandSpec"]

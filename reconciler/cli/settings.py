"""The settings of `reconciler run`, declared once: the table SETTINGS, from which
the command's options, their environment variables, the keys of the settings file
(`--config`) and the DaemonSettings the daemon starts with are all made. Here too
the checks every setting gets before anything starts (secret and signature files
readable, durations, the listen address) and the settings file's reader.

A setting `name` is the option `--name` (dashes for underscores), the variable
RECONCILER_NAME and the settings-file key `name` (or `name-with-dashes`), unless
its entry says otherwise (`--path` is the parameter `subpath`). The shared options
`run` takes as well (--root, --allow-commands, --secret-dir, --secret-env,
--state-dir) are declared in reconciler.cli.common, for every command.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from reconciler.cli.common import _OneLineError, _Providers

if TYPE_CHECKING:
    from reconciler.daemon import DaemonSettings

F = TypeVar("F", bound=Callable[..., Any])


def _settings_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Load a YAML settings file into the command's defaults: flags and
    RECONCILER_* variables still win over it. Every value is checked here, so an
    error names the file and the line instead of an option the user never typed."""
    if value is None:
        return None
    import yaml

    try:
        text = value.read_text(encoding="utf-8")
    except OSError as exc:
        raise _OneLineError(f"settings file {value}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _OneLineError(f"settings file {value}: not UTF-8 text") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = {} if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{value}:{mark.line + 1}:{mark.column + 1}" if mark else str(value)
        problem = exc.problem or exc.context or "syntax error"
        raise _OneLineError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise _OneLineError(f"{value}: invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        raise _OneLineError(
            f"{value}{line}: expected a mapping of settings (`interval: 30s` lines), "
            f"found {type(data).__name__}"
        )
    assert isinstance(ctx.command, click.Command)
    by_key: dict[str, click.Parameter] = {}
    for p in ctx.command.params:
        if p.name and p.name != "config":
            by_key[p.name.replace("_", "-")] = p
            for opt in getattr(p, "opts", ()):
                by_key[opt.lstrip("-")] = p
    flags = sorted({o.lstrip("-") for p in by_key.values() for o in getattr(p, "opts", ())})
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        key = str(key_node.value)
        if key in lines:
            raise _OneLineError(
                f"{value}:{key_node.start_mark.line + 1}: setting {key!r} given twice "
                f"(first on line {lines[key]})"
            )
        lines[key] = key_node.start_mark.line + 1
    defaults: dict[str, Any] = {}
    for key, item in data.items():
        where = f"{value}:{lines.get(str(key), '?')}"
        found = by_key.get(str(key).replace("_", "-"))
        if found is None or found.name is None:
            raise _OneLineError(f"{where}: unknown setting {key!r}; known: {', '.join(flags)}")
        if found.multiple and isinstance(item, str):
            item = [item]
        if isinstance(item, dict) or (isinstance(item, list) and not found.multiple):
            raise _OneLineError(
                f"{where}: {key}: expected a single value, found a {type(item).__name__}"
            )
        try:
            found.process_value(ctx, item)  # type and callback: the checks a flag gets
        except click.BadParameter as exc:
            raise _OneLineError(f"{where}: {key}: {exc.message}") from None
        except _OneLineError as exc:  # a secret file's problem, naming the file
            raise _OneLineError(f"{where}: {key}: {exc.message}") from None
        defaults[found.name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _secret_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A secret file must be readable at startup: better a clear error now than a
    daemon that starts and fails at its first fetch or webhook."""
    if value is None:
        return None
    problem = _unreadable(value, text=param.name != "ssh_key")
    if problem is None:
        return value
    raise _refused(ctx, param, problem, value)


def _refused(
    ctx: click.Context, param: click.Parameter, problem: str, value: Path | None = None
) -> _OneLineError:
    """`problem`, after the setting as it was given: the variable (`NAME=value`)
    or the option (`--name value`); from the settings file only the value, as
    _settings_file adds the file, the line and the key."""
    source = ctx.get_parameter_source(param.name) if param.name else None
    given = "" if value is None else str(value)
    if source is ParameterSource.ENVIRONMENT and isinstance(param.envvar, str):
        given = f"{param.envvar}={given}" if given else param.envvar
    elif source is not None:
        option = getattr(param, "opts", [param.name])[0]
        given = f"{option} {given}" if given else option
    return _OneLineError(f"{given}: {problem}" if given else problem)


def _unreadable(path: Path, *, text: bool) -> str | None:
    """Why `path` cannot be read as a (text) file, or None. Non-blocking, so a FIFO
    given by mistake does not hang startup."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
    if text:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data":  # a file over 64 KiB, cut mid-character
                return "not UTF-8 text"
    return None


def _receivers(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """--notifications: the receivers file and every secret file it names are read
    and checked before anything starts; the error names the file, line and field."""
    if value is None:
        return None
    from reconciler.daemon import SettingsError
    from reconciler.daemon.receivers import load_receivers

    try:
        load_receivers(value)
    except SettingsError as exc:  # it names the file, the line and the field
        raise _refused(ctx, param, str(exc)) from None
    return value


def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> float:
    from reconciler.model import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _shard_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from reconciler.manifests.envelope import NAME_PATTERN

    if value is not None and not re.match(NAME_PATTERN, value):
        raise click.BadParameter(
            f"expected a Shard's name (letters, digits, '-', '_' or '.'), found {value!r}"
        )
    return value


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT such as 127.0.0.1:9108, found {value!r}")
    return host.strip("[]"), int(port)


def _signature_files(
    ctx: click.Context, param: click.Parameter, value: Any
) -> tuple[Path, ...] | Path | None:
    """--trusted-keys and --allowed-signers: readable, and holding what they should
    (public GPG keys only; allowed-signers lines), checked before anything starts."""
    from reconciler.sources.signatures import check_allowed_signers, check_trusted_keys

    many = isinstance(value, (tuple, list))
    paths = tuple(Path(v) for v in value) if many else () if value is None else (Path(value),)
    for path in paths:
        problem = _unreadable(path, text=True)
        if problem is None:
            try:
                if param.name == "trusted_keys":
                    check_trusted_keys(path)
                else:
                    check_allowed_signers(path)
            except ValueError as exc:
                problem = str(exc)
            except OSError as exc:
                problem = exc.strerror or str(exc)
        if problem is not None:
            raise _refused(ctx, param, problem, path)
    return paths if many else (paths[0] if paths else None)


class Target(Enum):
    """Where a setting's value goes."""

    DAEMON = "DaemonSettings"  # the field of the same name (or `field`)
    HTTP = "HttpLimits"  # a field of DaemonSettings.http_limits
    COMMAND = "run"  # read by the command itself (logging)
    NOTIFY = "Notifications"  # DaemonSettings.notifications, the receivers file read


@dataclass(frozen=True)
class Setting:
    """One setting of `run`: everything its option, variable, settings-file key
    and DaemonSettings field are made from."""

    name: str
    """The parameter name; the option is --name-with-dashes unless `flag`."""
    help: str
    default: Any = None
    type: Any = None
    callback: Callable[[click.Context, click.Parameter, Any], Any] | None = None
    metavar: str | None = None
    multiple: bool = False
    is_flag: bool = False
    required: bool = False
    flag: str | None = None
    target: Target = Target.DAEMON
    field: str | None = None
    """The DaemonSettings or HttpLimits field, when not `name`."""
    credential: bool = False
    """A file of reconciler's own: never readable as a repository's secret."""

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "RECONCILER_" + self.option.removeprefix("--").replace("-", "_").upper()

    @property
    def attribute(self) -> str:
        return self.field or self.name

    def decorator(self) -> Callable[[F], F]:
        """The click option: flag, parameter name, variable, checks, help."""
        extra: dict[str, Any] = {}
        if self.default is not None:
            extra.update(default=self.default, show_default=True)
        for key in ("type", "callback", "metavar"):
            if getattr(self, key) is not None:
                extra[key] = getattr(self, key)
        for key in ("multiple", "is_flag", "required"):
            if getattr(self, key):
                extra[key] = True
        return click.option(self.option, self.name, envvar=self.env, help=self.help, **extra)


def options(settings: Iterable[Setting]) -> Callable[[F], F]:
    """The options of `settings`, listed by --help in the table's order."""

    def decorate(command: F) -> F:
        for setting in reversed(list(settings)):
            command = setting.decorator()(command)
        return command

    return decorate


_secret = click.Path(path_type=Path)
"""Checked by `_secret_file`, which says what is wrong in one line."""


def _secret_setting(name: str, help: str, *, credential: bool = True) -> Setting:
    return Setting(
        name, help, type=_secret, metavar="FILE", callback=_secret_file, credential=credential
    )


def _duration_setting(name: str, default: str, help: str, **more: Any) -> Setting:
    return Setting(name, help, default=default, callback=_duration, **more)


SOURCE = (
    Setting(
        "repo",
        "Git URL, path of a git repository, or a plain directory (local mode).",
        required=True,
    ),
    Setting("ref", "Branch, tag or commit to follow (default: the remote HEAD)."),
    Setting(
        "subpath",
        "Subdirectory of the repository holding the manifests.",
        default=".",
        flag="--path",
        field="path",
    ),
    _duration_setting("interval", "60s", "Poll period (30, 30s, 5m); jittered by 10%."),
)
"""What to follow: listed first by --help, before the shared options."""

DAEMON = (
    Setting(
        "listen",
        "HTTP listen address (API, webhooks, health).",
        default="127.0.0.1:9108",
        callback=_listen,
    ),
    Setting(
        "state_url",
        "PostgreSQL database of the state (postgresql://user@host:port/db); "
        "default: SQLite in --state-dir.",
        metavar="URL",
    ),
    _secret_setting(
        "state_password_file",
        "File holding the password of --state-url's user (else PGPASSWORD, PGPASSFILE).",
    ),
    _secret_setting("ssh_key", "SSH private key."),
    _secret_setting(
        "known_hosts", "known_hosts for strict SSH host key checking.", credential=False
    ),
    Setting(
        "insecure_ignore_host_key",
        "Turn SSH host key checking off (not for production).",
        is_flag=True,
    ),
    _secret_setting("token_file", "File holding an HTTPS token for the repository."),
    _secret_setting("webhook_secret_file", "File holding the webhook secret (enables /hooks/*)."),
    _secret_setting("api_token_file", "File holding the bearer token for POST /api/v1/sync."),
    Setting(
        "verify_commits",
        "Apply only commits (or tags) signed by a trusted key; others are rejected.",
        type=click.Choice(["gpg", "ssh"], case_sensitive=False),
    ),
    Setting(
        "trusted_keys",
        "Armored GPG public keys trusted by --verify-commits gpg (repeatable; "
        "env RECONCILER_TRUSTED_KEYS, several separated by spaces).",
        multiple=True,
        metavar="FILE",
        callback=_signature_files,
        credential=True,
    ),
    Setting(
        "allowed_signers",
        "SSH allowed-signers file of --verify-commits ssh.",
        metavar="FILE",
        callback=_signature_files,
        credential=True,
    ),
    Setting(
        "concurrency",
        "Side effects (observe batches, applies, deletes) running at once.",
        default=16,
        type=click.IntRange(1, 1024),
    ),
    Setting(
        "allow_mass_prune",
        "Allow a revision to prune all, or more than --max-prune-share, of the inventory.",
        is_flag=True,
    ),
    Setting(
        "max_prune_share",
        "Largest share of the inventory one revision may prune.",
        default=0.5,
        type=click.FloatRange(0, 1),
    ),
    _duration_setting("shutdown_timeout", "30s", "How long a stop waits for in-flight applies."),
    _duration_setting(
        "lease_duration",
        "10s",
        "With a PostgreSQL store: the leader's lease; renewed every third of it, a "
        "standby takes over once it expires.",
    ),
    Setting(
        "advertise_url",
        "The URL of this daemon's API that standbys forward syncs and webhooks to.",
        metavar="URL",
    ),
    Setting(
        "daemon_id",
        "This daemon's name in the leader election (default: host:pid:random).",
        metavar="ID",
    ),
    Setting(
        "shard",
        "Enforce only the resources this Shard of the repository claims "
        "(see docs/operations.md#sharding).",
        metavar="NAME",
        callback=_shard_name,
    ),
    Setting(
        "notifications",
        "Receivers file: where drift, failures and rejected revisions are notified "
        "(signed webhooks, apprise URLs); see docs/operations.md#notifications.",
        type=click.Path(path_type=Path),
        metavar="FILE",
        callback=_receivers,
        target=Target.NOTIFY,
    ),
    Setting(
        "http_max_connections",
        "Most HTTP connections open at once (never within 256 of the fd limit).",
        default=1024,
        type=click.IntRange(min=1),
        target=Target.HTTP,
        field="max_connections",
    ),
    _duration_setting(
        "http_header_timeout",
        "10s",
        "A new connection must send a complete request head within this.",
        target=Target.HTTP,
        field="header_timeout",
    ),
    _duration_setting(
        "http_idle_timeout",
        "15s",
        "How long a keep-alive connection may stay idle between requests.",
        target=Target.HTTP,
        field="idle_timeout",
    ),
    _duration_setting(
        "http_body_timeout",
        "10s",
        "A request body must arrive within this (else 408).",
        target=Target.HTTP,
        field="body_timeout",
    ),
    Setting(
        "hook_rate",
        "Webhook requests a second, all hooks together (past it: 429).",
        default=10.0,
        type=click.FloatRange(min=0, min_open=True),
        target=Target.HTTP,
    ),
    Setting(
        "hook_burst",
        "Webhook requests allowed at once above --hook-rate.",
        default=50,
        type=click.IntRange(min=1),
        target=Target.HTTP,
    ),
    Setting(
        "sync_rate",
        "POST /api/v1/sync requests a second (past it: 429).",
        default=1.0,
        type=click.FloatRange(min=0, min_open=True),
        target=Target.HTTP,
    ),
    Setting(
        "sync_burst",
        "Sync requests allowed at once above --sync-rate.",
        default=10,
        type=click.IntRange(min=1),
        target=Target.HTTP,
    ),
    Setting(
        "log_level",
        "debug adds per-request, watch and scheduler lines.",
        default="info",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        target=Target.COMMAND,
    ),
    Setting(
        "log_format",
        "Log lines on stderr: JSON, readable text, or auto (text on a terminal).",
        default="auto",
        type=click.Choice(["auto", "json", "text"], case_sensitive=False),
        target=Target.COMMAND,
    ),
)
"""How to run: listed by --help after the shared options."""

SETTINGS: Mapping[str, Setting] = {s.name: s for s in (*SOURCE, *DAEMON)}
"""Every setting of `run` but the shared options, by parameter name."""

config_option = click.option(
    "--config",
    type=click.Path(path_type=Path),
    metavar="FILE",
    callback=_settings_file,
    is_eager=True,
    expose_value=False,
    envvar="RECONCILER_CONFIG",
    help="YAML settings file (keys are option names); flags and env win.",
)


def daemon_settings(
    values: Mapping[str, Any], providers: _Providers, state_dir: Path
) -> DaemonSettings:
    """The daemon's settings from the values of run's parameters, by the table."""
    from reconciler.daemon import DaemonSettings
    from reconciler.httplimits import HttpLimits

    def landing(target: Target) -> dict[str, Any]:
        return {s.attribute: values[s.name] for s in SETTINGS.values() if s.target is target}

    own: list[Path | None] = [state_dir]
    for setting in SETTINGS.values():
        if setting.credential:
            value = values[setting.name]
            own.extend(value if isinstance(value, tuple) else [value])
    notifications = None
    if values["notifications"] is not None:
        from reconciler.daemon.receivers import load_receivers

        notifications = load_receivers(values["notifications"])
        own.extend(notifications.files)  # the receivers file, its URL and secret files
    return DaemonSettings(
        **landing(Target.DAEMON),
        notifications=notifications,
        roots=providers.resolved_roots,
        allow_commands=providers.allow_commands,
        secret_sources=providers.secrets(*own),
        state_dir=state_dir,
        http_limits=HttpLimits(**landing(Target.HTTP)),
    )

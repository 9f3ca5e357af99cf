"""What the commands of the command line share: the end of a one-shot process,
one-line errors, escaping, the registry, the loader with its error report, the
store, the event loop with its thread pool, and the options several commands take
(--root, --allow-commands, --secret-dir, --secret-env, --state-dir, --json,
--no-color). Nothing heavy is imported here: each command imports what it uses
when it runs.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from reconciler.bundles import RemoteFetcher, RemoteTree
    from reconciler.engine import Engine
    from reconciler.model import DesiredState, SecretSources
    from reconciler.registry import Registry
    from reconciler.sources.bundles import GitBundles
    from reconciler.store import SqliteStore

DEFAULT_STATE_DIR = ".reconciler"
T = TypeVar("T")


class Process:
    """The marker `main` puts in the root context's `obj`: the command runs as
    the process itself, which may end with os._exit."""


def _exit(code: int) -> NoReturn:
    """End a one-shot command once its output is out and its store closed, without
    tearing down every object of the run one by one (a tenth of a second or more).
    Only in the process `main` runs: a command invoked in another program's
    process (click's CliRunner, a test, a benchmark) raises SystemExit instead of
    ending that program (docs/decisions/0116)."""
    sys.stdout.flush()
    sys.stderr.flush()
    context = click.get_current_context(silent=True)
    if context is None or context.find_object(Process) is None:
        sys.exit(code)
    os._exit(code)


def _printable(text: str) -> str:
    """`text` with its control characters shown as escapes (`\\x1b`, `\\r`,
    `\\u202e`): every value printed in text comes from a repository, a daemon or a
    file name, and must not drive the terminal (reconciler.logs.printable)."""
    from reconciler.logs import printable

    return printable(text)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {_printable(message)}", err=True)
    sys.exit(1)


class _OneLineError(click.ClickException):
    """A bad value shown as one `error: ...` line, without click's usage lines: for
    settings and secret files, whose messages name the file, and the events filters."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {_printable(self.format_message())}", err=True)


def _colour(no_color: bool) -> bool:
    return not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()


def _resolved(roots: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(os.path.normpath(os.path.abspath(r)) for r in roots)


def _registry(
    roots: tuple[str, ...],
    state_dir: Path | None = None,
    *,
    allow_commands: bool = False,
    secrets: SecretSources | None = None,
) -> Registry:
    from reconciler.model import ProviderSettings
    from reconciler.registry import Registry

    kept = None if state_dir is None else os.path.abspath(state_dir)
    settings = ProviderSettings(
        roots=_resolved(roots),
        state_dir=kept,
        allow_commands=allow_commands,
        secret_sources=secrets if secrets is not None else _secret_sources((), ()),
    )
    return Registry.discover(settings)


def _load(
    path: Path,
    registry: Registry,
    state_dir: Path | None = None,
    *,
    write_cache: bool = False,
    applying: bool = False,
) -> DesiredState:
    """Load and validate; with a state dir, through the cache of validated trees
    in it (read-only unless `write_cache`). The error header says "nothing
    applied" only when `applying` (apply): elsewhere nothing was to be."""
    from reconciler.manifests import Cache, ManifestError, load

    cache = None
    if state_dir is not None:
        cache = Cache(state_dir / "cache", registry.fingerprint(), write=write_cache)
    gc.disable()  # a load allocates many objects and frees few: collections are wasted work
    try:
        return load(path, registry, cache=cache, remote=_RemoteOnDemand(state_dir))
    except ManifestError as exc:
        # one line per issue, each issue's values escaped (str(exc) has the same lines)
        noun = "error" if len(exc.issues) == 1 else "errors"
        issues = "".join(f"\n  {_printable(str(issue))}" for issue in exc.issues)
        outcome = ", nothing applied" if applying else ""
        click.echo(
            f"error: {_printable(str(path))} is invalid{outcome}: "
            f"{len(exc.issues)} {noun}:{issues}",
            err=True,
        )
        sys.exit(1)
    finally:
        gc.enable()
        gc.freeze()  # what the load made lives to the end of the run


class _RemoteOnDemand:
    """The remote bundles' fetcher of one load, made when a remote bundle is met:
    a tree without one never imports git."""

    def __init__(self, state_dir: Path | None) -> None:
        self.state_dir = state_dir
        self.session: RemoteFetcher | None = None

    def fetch(self, repo: str, ref: str, path: str) -> RemoteTree:
        if self.session is None:
            self.session = _bundle_fetcher(self.state_dir).session()
        return self.session.fetch(repo, ref, path)


def _bundle_fetcher(state_dir: Path | None) -> GitBundles:
    """The fetcher of remote bundles for a one-shot command. Credentials, signature
    policy and the origin that may receive the HTTP token come from the variables
    `run` reads (RECONCILER_REPO, _SSH_KEY, _KNOWN_HOSTS, _INSECURE_IGNORE_HOST_KEY,
    _TOKEN_FILE, _VERIFY_COMMITS, _TRUSTED_KEYS, _ALLOWED_SIGNERS), not from a
    settings file; without them git's own configuration and ssh agent apply. The
    cache is STATE_DIR/bundles, or the user's cache without a state directory."""
    from reconciler.cli.settings import SETTINGS
    from reconciler.sources.bundles import GitBundles
    from reconciler.sources.signatures import signature_policy

    def env(name: str) -> str | None:
        # the variable of run's setting `name`: one declaration (settings.SETTINGS)
        return os.environ.get(SETTINGS[name].env, "").strip() or None

    def env_path(name: str) -> Path | None:
        value = env(name)
        return None if value is None else Path(value)

    if state_dir is not None:
        cache = state_dir / "bundles"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache = cache / "reconciler" / "bundles"
    repo = env("repo")
    try:
        policy = signature_policy(
            env("verify_commits"),
            [Path(name) for name in (env("trusted_keys") or "").split()],
            env_path("allowed_signers"),
        )
        return GitBundles(
            cache,
            origin_url=repo if repo is not None and "://" in repo else None,
            ssh_key=env_path("ssh_key"),
            known_hosts=env_path("known_hosts"),
            insecure_ignore_host_key=(env("insecure_ignore_host_key") or "").lower()
            in ("1", "true", "yes", "on", "y", "t"),
            token_file=env_path("token_file"),
            signatures=policy,
            allow_file=repo is None or "://" not in repo or repo.startswith("file://"),
        )
    except ValueError as exc:
        _fail(str(exc))


@contextmanager
def _store(state_dir: Path, *, readonly: bool) -> Iterator[SqliteStore]:
    from reconciler.store import SqliteStore, StoreError

    try:
        store = SqliteStore(state_dir, readonly=readonly)
    except StoreError as exc:
        _fail(str(exc))
    try:
        yield store
    finally:
        store.close()


def _engine(registry: Registry, store: SqliteStore, **options: Any) -> Engine:
    from reconciler.engine import Engine

    return Engine(registry, store, **options)


def _run(work: Callable[[], Awaitable[T]], threads: int) -> T:
    """Run a coroutine with a thread pool as wide as the concurrency limit, since
    providers run their blocking I/O through asyncio.to_thread."""
    from concurrent.futures import ThreadPoolExecutor

    async def main() -> T:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reconciler-io")
        asyncio.get_running_loop().set_default_executor(pool)
        return await work()

    return asyncio.run(main())


path_argument = click.argument(
    "path", type=click.Path(path_type=Path, exists=True, file_okay=True, dir_okay=True)
)
root_option = click.option(
    "--root",
    "roots",
    multiple=True,
    metavar="DIR",
    envvar="RECONCILER_ROOT",
    help="Directory the filesystem providers may touch (repeatable; "
    "env RECONCILER_ROOT, several separated by spaces).",
)
commands_option = click.option(
    "--allow-commands",
    is_flag=True,
    envvar="RECONCILER_ALLOW_COMMANDS",
    help="Allow Command resources: they run programs with reconciler's privileges, "
    "beyond the roots (env RECONCILER_ALLOW_COMMANDS=1).",
)
DEFAULT_SECRET_DIRS = ("/run/secrets", "/run/credentials", "/var/run/secrets")
DEFAULT_SECRET_ENV = ("RECONCILER_SECRET_*",)


def secrets_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--secret-dir and --secret-env: where a repository's secret references may read."""
    command = click.option(
        "--secret-env",
        multiple=True,
        default=DEFAULT_SECRET_ENV,
        show_default=True,
        metavar="PATTERN",
        envvar="RECONCILER_SECRET_ENV",
        help="Environment variables secret references may read, as glob patterns "
        "(repeatable; env RECONCILER_SECRET_ENV, several separated by spaces).",
    )(command)
    return click.option(
        "--secret-dir",
        multiple=True,
        default=DEFAULT_SECRET_DIRS,
        show_default=True,
        metavar="DIR",
        envvar="RECONCILER_SECRET_DIRS",
        help="Directories whose files secret references may read, links resolved "
        "(repeatable; env RECONCILER_SECRET_DIRS, several separated by spaces).",
    )(command)


def _secret_sources(
    dirs: tuple[str, ...], env: tuple[str, ...], deny: tuple[Path | None, ...] = ()
) -> SecretSources:
    """The allow-list; `deny`: reconciler's own files (state directory,
    credentials), never readable as a repository's secret."""
    from reconciler.model import SecretSources

    return SecretSources(
        dirs=tuple(os.path.normpath(os.path.abspath(d)) for d in dirs or DEFAULT_SECRET_DIRS),
        env=env or DEFAULT_SECRET_ENV,
        deny=tuple(os.path.abspath(p) for p in deny if p is not None),
    )


@dataclass(frozen=True)
class _Providers:
    """--root, --allow-commands, --secret-dir and --secret-env: what the providers
    of a command may do, as one value."""

    roots: tuple[str, ...]
    allow_commands: bool
    secret_dir: tuple[str, ...]
    secret_env: tuple[str, ...]

    @property
    def resolved_roots(self) -> tuple[str, ...]:
        return _resolved(self.roots)

    def secrets(self, *own: Path | None) -> SecretSources:
        """The secret allow-list, `own` files (state directory, credentials) denied."""
        return _secret_sources(self.secret_dir, self.secret_env, own)

    def registry(self, state_dir: Path | None = None) -> Registry:
        return _registry(
            self.roots,
            state_dir,
            allow_commands=self.allow_commands,
            secrets=self.secrets(state_dir),
        )

    @property
    def form_only(self) -> bool:
        """Whether `validate` and `graph` check the tree alone: no --root given."""
        return not self.roots

    def checking(self) -> Registry:
        """The registry of `validate` and `graph`: `registry()` when --root is
        given; without it, one that checks what the tree says and nothing of where
        it would be applied, for a CI job that has neither the roots nor the
        secrets: every absolute path passes the root check (the root `/`, as diff
        loads), a Command loads (it runs nowhere here), and secret references are
        checked for form and never read (docs/decisions/0103). Such a load is
        never cached: validate and graph use no state directory, and a load that
        holds a placeholder secret is never stored (0045)."""
        if not self.form_only:
            return self.registry()
        from reconciler.model import SecretSources

        return _registry(("/",), allow_commands=True, secrets=SecretSources(form_only=True))


def provider_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The four provider options, handed to the command as `providers`."""

    @functools.wraps(command)
    def run_with(
        *args: Any,
        roots: tuple[str, ...],
        allow_commands: bool,
        secret_dir: tuple[str, ...],
        secret_env: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        providers = _Providers(roots, allow_commands, secret_dir, secret_env)
        return command(*args, providers=providers, **kwargs)

    return root_option(commands_option(secrets_options(run_with)))


state_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    envvar="RECONCILER_STATE_DIR",
    help="Where the SQLite state lives (env RECONCILER_STATE_DIR).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
color_option = click.option("--no-color", is_flag=True, help="No ANSI colours.")

"""The `reconciler` command line: validate, plan, apply, graph, providers, schema,
diff, version, run (the daemon), status and events.

RECONCILER_ROOT and RECONCILER_STATE_DIR set --root and --state-dir for every
command; any other option comes from RECONCILER_<COMMAND>_<OPTION> (for example
RECONCILER_APPLY_CONCURRENCY). Exit codes: 0 success (plan: no changes), 2 plan
has changes, 1 any error. Errors are one clear message each, never a traceback
(set RECONCILER_DEBUG=1 to see one).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from reconciler import __version__

if TYPE_CHECKING:
    from reconciler.bundles import RemoteFetcher, RemoteTree
    from reconciler.engine import Engine, Planned, Report, Result
    from reconciler.model import DesiredState, SecretSources
    from reconciler.registry import Registry
    from reconciler.savedplan import SavedPlan
    from reconciler.sources.bundles import GitBundles
    from reconciler.store import SqliteStore

DEFAULT_STATE_DIR = ".reconciler"
T = TypeVar("T")


def _exit(code: int) -> NoReturn:
    """End a one-shot command once its output is out and its store closed, without
    tearing down every object of the run one by one (a tenth of a second or more)."""
    sys.stdout.flush()
    sys.stderr.flush()
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
    from reconciler.sources.bundles import GitBundles
    from reconciler.sources.signatures import signature_policy

    def env(name: str) -> str | None:
        return os.environ.get(f"RECONCILER_{name}", "").strip() or None

    def env_path(name: str) -> Path | None:
        value = env(name)
        return None if value is None else Path(value)

    if state_dir is not None:
        cache = state_dir / "bundles"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache = cache / "reconciler" / "bundles"
    repo = env("REPO")
    try:
        policy = signature_policy(
            env("VERIFY_COMMITS"),
            [Path(name) for name in (env("TRUSTED_KEYS") or "").split()],
            env_path("ALLOWED_SIGNERS"),
        )
        return GitBundles(
            cache,
            origin_url=repo if repo is not None and "://" in repo else None,
            ssh_key=env_path("SSH_KEY"),
            known_hosts=env_path("KNOWN_HOSTS"),
            insecure_ignore_host_key=(env("INSECURE_IGNORE_HOST_KEY") or "").lower()
            in ("1", "true", "yes", "on", "y", "t"),
            token_file=env_path("TOKEN_FILE"),
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


class _Reconciler(click.Group):
    """The top-level group: its help ends with the kinds installed here."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from importlib.metadata import entry_points

        kinds = sorted({ep.name for ep in entry_points(group="reconciler.providers")})
        formatter.write_paragraph()
        formatter.write_text(
            f"Installed kinds: {', '.join(kinds) or 'none'} "
            "('reconciler providers' for their fields); and Bundle, which instantiates "
            "a directory of manifests with values (docs/bundles.md)."
        )


@click.group(
    cls=_Reconciler,
    context_settings={"auto_envvar_prefix": "RECONCILER", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "--version", prog_name="reconciler")
def cli() -> None:
    """GitOps reconciliation: the desired state of infrastructure, kept in git, enforced."""


@cli.command()
@path_argument
@provider_options
def validate(path: Path, providers: _Providers) -> None:
    """Check every manifest under PATH; print all errors. Without --root, the tree
    alone: paths are not confined to roots and secrets are not read (for CI)."""
    desired = _load(path, providers.checking())
    unchecked = "; without --root: paths not confined, secrets not read"
    click.echo(
        f"{_printable(str(path))}: valid (revision {_printable(desired.revision)}, "
        f"{len(desired.resources)} resources{unchecked if providers.form_only else ''})"
    )


@cli.command()
@path_argument
@provider_options
@state_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default=None,
    help="text (default), json (schemaVersion 2: `reconciler schema --plan`), or markdown "
    "for a pull-request comment.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json (kept for scripts).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Also save the plan to FILE (mode 0600) for `reconciler apply FILE`, which applies "
    "exactly it, or refuses if anything it rests on changed since.",
)
@color_option
def plan(
    path: Path,
    providers: _Providers,
    state_dir: Path,
    fmt: str | None,
    as_json: bool,
    out: Path | None,
    no_color: bool,
) -> None:
    """Show what apply would change; touches nothing (but --out FILE and the state
    directory's digest key it needs). Exit 0 none, 2 changes, 1 error."""
    from reconciler.diff import CHANGING, plan_json, render_plan, render_plan_markdown

    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} contradict each other")
    fmt = "json" if as_json else fmt or "text"

    registry = providers.registry(state_dir)
    key = None if out is None else _plan_key(state_dir, out, path)  # before the load
    desired = _load(path, registry, state_dir)
    with _store(state_dir, readonly=True) as store:
        engine = _engine(registry, store)
        planned = _run(lambda: engine.preview(desired), engine.concurrency)
        refusal = engine.prune_refusal(desired)
    if fmt == "json":
        click.echo(json.dumps(plan_json(planned, desired.revision), indent=2))
    elif fmt == "markdown":
        count = len(desired.resources)
        title = f"reconciler plan {path} ({count} resource{'' if count == 1 else 's'})"
        click.echo(render_plan_markdown(planned, title=title, revision=desired.revision), nl=False)
    else:
        header = (
            f"reconciler plan {path}  (revision {desired.revision}, "
            f"{len(desired.resources)} resources)"
        )
        click.echo(render_plan(planned, header=header, colour=_colour(no_color)), nl=False)
    if refusal is not None:
        click.echo(f"warning: apply would refuse: {_printable(str(refusal))}", err=True)
    if out is not None and key is not None:
        _save_plan(out, key, planned, desired, path, state_dir, providers)
    if any(p.action == "error" for p in planned):
        sys.exit(1)
    _exit(2 if any(p.action in CHANGING for p in planned) else 0)


def _plan_key(state_dir: Path, out: Path, path: Path) -> bytes:
    """The key of a saved plan's digests, made before the load so that the load
    digests secrets with it too; refused if the plan would land in the tree."""
    from reconciler import savedplan

    if savedplan.in_tree(out, path):
        _fail(
            f"{out} is inside the config tree {path}: saving the plan there would change "
            "the revision it records; write it outside the tree or as a hidden file "
            "(such as .tfplan)"
        )
    key = savedplan.digest_key(state_dir, write=True)
    if key is None:
        _fail(
            f"cannot read or make the digest key in {state_dir}/cache: a saved plan "
            "needs a state directory it may write"
        )
    return key


def _save_plan(
    out: Path,
    key: bytes,
    planned: list[Planned],
    desired: DesiredState,
    path: Path,
    state_dir: Path,
    providers: _Providers,
) -> None:
    """Write the plan to `out` (savedplan), unless a resource could not be planned."""
    from reconciler import savedplan

    errors = [p.id for p in planned if p.action == "error"]
    if errors:
        click.echo(
            f"error: plan not saved to {_printable(str(out))}: "
            f"{_printable(', '.join(errors))} could not be planned",
            err=True,
        )
        return
    sources = providers.secrets()
    options = savedplan.Options(
        providers.resolved_roots, providers.allow_commands, sources.dirs, tuple(sources.env)
    )
    saved = savedplan.build(
        planned, desired, config=path, state_dir=state_dir, options=options, key=key
    )
    try:
        savedplan.write(out, saved, key)
    except OSError as exc:
        _fail(f"cannot write the plan to {out}: {exc.strerror or exc}")
    click.echo(
        f"Saved the plan to {_printable(str(out))}; apply exactly it with: "
        f"reconciler apply {_printable(str(out))}",
        err=True,
    )


@cli.command()
@path_argument
@provider_options
@state_option
@click.option(
    "--concurrency",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Provider calls in flight at once.",
)
@click.option(
    "--retries",
    default=0,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Retries of a temporary failure within this run, with backoff.",
)
@click.option(
    "--allow-mass-prune",
    is_flag=True,
    help="Allow pruning all, or more than --max-prune-share, of the inventory.",
)
@click.option(
    "--max-prune-share",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Largest share of the inventory one revision may prune.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
)
@json_option
@color_option
def apply(
    path: Path,
    providers: _Providers,
    state_dir: Path,
    concurrency: int,
    retries: int,
    allow_mass_prune: bool,
    max_prune_share: float,
    progress: bool | None,
    as_json: bool,
    no_color: bool,
) -> None:
    """Converge the system to the manifests under PATH, once. PATH may instead be a
    plan saved by `plan --out`: then apply exactly that plan, with the config path,
    state directory and provider options it was planned with, or refuse (exit 1,
    nothing applied) if the revision or anything the plan rests on changed since."""
    from reconciler import savedplan
    from reconciler.diff import render_report, report_json
    from reconciler.engine import MassPruneRefused

    started = time.perf_counter()
    saved: tuple[savedplan.SavedPlan, bytes] | None = None
    if savedplan.is_saved_plan(path):
        plan_file = path
        saved, path, providers, state_dir = _saved_plan(path, providers, state_dir)
    registry = providers.registry(state_dir)
    desired = _load(path, registry, state_dir, write_cache=True, applying=True)
    load_seconds = time.perf_counter() - started
    show_progress = sys.stderr.isatty() if progress is None else progress
    with (
        _store(state_dir, readonly=False) as store,
        _progress(
            show_progress and not as_json, len(store.inventory()) + len(desired.resources)
        ) as on_settled,
    ):
        engine = _engine(
            registry,
            store,
            concurrency=concurrency,
            retries=retries,
            allow_mass_prune=allow_mass_prune,
            max_prune_share=max_prune_share,
            on_settled=on_settled,
        )
        try:
            if saved is None:
                report = _run(lambda: engine.converge(desired), concurrency)
            else:
                outcome = _run(lambda: _apply_saved(engine, *saved, desired), concurrency)
                if isinstance(outcome, list):  # one line each, each escaped
                    lines = "".join(f"\n  {_printable(line)}" for line in outcome)
                    click.echo(
                        f"error: the saved plan {_printable(str(plan_file))} is refused, "
                        f"nothing applied (plan again):{lines}",
                        err=True,
                    )
                    sys.exit(1)
                report = outcome
        except MassPruneRefused as exc:
            _fail(f"{exc}; nothing applied")
    if as_json:
        click.echo(json.dumps(report_json(report, load_seconds=load_seconds), indent=2))
    else:
        click.echo(
            render_report(report, load_seconds=load_seconds, colour=_colour(no_color)), nl=False
        )
    _exit(0 if report.ok else 1)


def _saved_plan(
    path: Path, providers: _Providers, state_dir: Path
) -> tuple[tuple[SavedPlan, bytes], Path, _Providers, Path]:
    """The saved plan in `path`, authenticated; the config path, provider options
    and state directory to apply it with. Options given on the command line must
    be the plan's (a saved plan is applied as it was planned); the state directory
    is the plan's unless given (command line or environment)."""
    from reconciler import savedplan

    ctx = click.get_current_context()
    try:
        unverified = savedplan.read(path)
        source = ctx.get_parameter_source("state_dir")
        if source in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            state_dir = unverified.state_dir
        key = savedplan.digest_key(state_dir, write=False)
        if key is None:
            raise savedplan.PlanFileError(
                f"{path} was planned against the state directory "
                f"{unverified.document.get('stateDir')}; {state_dir} has no digest key"
            )
        saved = unverified.verify(key)
    except savedplan.PlanFileError as exc:
        _fail(str(exc))
    options = saved.options
    sources = providers.secrets()
    given = {
        "--root": ("roots", providers.resolved_roots, options.roots),
        "--allow-commands": ("allow_commands", providers.allow_commands, options.allow_commands),
        "--secret-dir": ("secret_dir", sources.dirs, options.secret_dirs),
        "--secret-env": ("secret_env", tuple(sources.env), options.secret_env),
    }
    differ = [
        flag
        for flag, (name, now, planned) in given.items()
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE and now != planned
    ]
    if differ:
        _fail(
            f"{path} was planned with other {', '.join(differ)}: a saved plan is applied "
            "with the options it was planned with (plan again to change them)"
        )
    planned_with = _Providers(
        options.roots, options.allow_commands, options.secret_dirs, options.secret_env
    )
    return (saved, key), Path(saved.config), planned_with, state_dir


async def _apply_saved(
    engine: Engine, saved: SavedPlan, key: bytes, desired: DesiredState
) -> Report | list[str]:
    """Plan again and, if the plan is the saved one, converge the resources it
    changes (and those the inventory lacks or records with another spec); else
    the reasons it is refused. One event loop: no gap but the plan's own time."""
    from reconciler import savedplan

    planned = await engine.preview(desired)
    refused = savedplan.refusals(saved, planned, desired, key)
    if refused:
        return refused
    return await engine.converge(desired, only=saved.targets | engine.changed(desired))


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[Result], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("reconciling", total=total)
        yield lambda result: bar.advance(task)


@cli.command()
@path_argument
@provider_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "json"]),
    default="mermaid",
    show_default=True,
    help="Each bundle instance's resources are grouped: a subgraph (mermaid), a cluster "
    "(dot), or an instance field (json).",
)
def graph(path: Path, providers: _Providers, fmt: str) -> None:
    """Print the dependency graph (explicit and implicit edges), grouped by bundle
    instance."""
    from reconciler import graph as graphs

    desired = _load(path, providers.checking())
    render = {"mermaid": graphs.to_mermaid, "dot": graphs.to_dot, "json": graphs.to_json}[fmt]
    click.echo(render(desired.dependencies, groups=graphs.instance_groups(desired)), nl=False)


@cli.command()
@root_option
@json_option
def providers(roots: tuple[str, ...], as_json: bool) -> None:
    """List the installed providers and their spec fields."""
    registry = _registry(roots)
    rows: list[dict[str, Any]] = []
    for kind in registry:
        provider = registry[kind]
        row: dict[str, Any] = {
            "kind": kind,
            "module": type(provider).__module__,
            "summary": provider.summary,
        }
        variants = _spec_variants(provider.Spec)
        if variants:  # a spec that is one of several models, chosen by a tag (Connection)
            row["variants"] = {tag: _fields(model) for tag, model in variants.items()}
        else:
            row["fields"] = _fields(provider.Spec)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['kind']}  ({row['module']})")
        if row["summary"]:
            click.echo(f"  {row['summary']}")
        for tag, fields in row.get("variants", {"": row.get("fields", [])}).items():
            if tag:
                click.echo(f"  type: {tag}")
            for f in fields:
                required = "  (required)" if f["required"] else ""
                click.echo(f"    {f['name']:<10} {f['type']}{required}")


@cli.command()
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Only this kind (repeatable); default every installed kind.",
)
@click.option(
    "--plan",
    "plan_output",
    is_flag=True,
    help="Print the JSON Schema of `plan --format json` instead.",
)
def schema(kinds: tuple[str, ...], plan_output: bool) -> None:
    """Print a JSON Schema of manifest documents, from the installed providers, for
    editors (yaml-language-server) and CI linters."""
    from reconciler.schemas import manifest_schema, plan_schema

    if plan_output:
        if kinds:
            raise click.UsageError("--kind applies to manifests, not to --plan")
        click.echo(json.dumps(plan_schema(), indent=2))
        return
    registry = _registry(())
    try:
        document = manifest_schema(registry, kinds or None)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    click.echo(json.dumps(document, indent=2))


def _fields(model: type[Any]) -> list[dict[str, Any]]:
    return [
        {"name": f.alias or name, "type": _type_name(f.annotation), "required": f.is_required()}
        for name, f in model.model_fields.items()
    ]


def _spec_variants(model: type[Any]) -> dict[str, type[Any]]:
    """The members of a spec that is a RootModel over a tagged union, by tag."""
    import typing

    from pydantic import RootModel

    if not (isinstance(model, type) and issubclass(model, RootModel)):
        return {}
    root = model.model_fields["root"]
    tag = root.discriminator
    found: dict[str, type[Any]] = {}
    for member in typing.get_args(root.annotation):
        if isinstance(tag, str) and tag in getattr(member, "model_fields", {}):
            for value in typing.get_args(member.model_fields[tag].annotation):
                found[str(value)] = member
    return found


def _type_name(annotation: Any) -> str:
    """`str | None` rather than typing's repr with validators and addresses."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list[{_type_name(args[0])}]"
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


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
    source = ctx.get_parameter_source(param.name) if param.name else None
    if source is None:  # checked by _settings_file, which names the setting
        raise _OneLineError(f"{value}: {problem}")
    if source is ParameterSource.ENVIRONMENT and isinstance(param.envvar, str):
        raise _OneLineError(f"{param.envvar}={value}: {problem}")
    raise _OneLineError(f"{getattr(param, 'opts', [param.name])[0]} {value}: {problem}")


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


def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> float:
    from reconciler.model import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
        if problem is None:
            continue
        source = ctx.get_parameter_source(param.name) if param.name else None
        if source is None:  # from the settings file, which names the setting
            raise _OneLineError(f"{path}: {problem}")
        if source is ParameterSource.ENVIRONMENT and isinstance(param.envvar, str):
            raise _OneLineError(f"{param.envvar}={path}: {problem}")
        raise _OneLineError(f"{getattr(param, 'opts', [param.name])[0]} {path}: {problem}")
    return paths if many else (paths[0] if paths else None)


_secret = click.Path(path_type=Path)
"""Checked by `_secret_file`, which says what is wrong in one line."""


@cli.command()
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    metavar="FILE",
    callback=_settings_file,
    is_eager=True,
    expose_value=False,
    envvar="RECONCILER_CONFIG",
    help="YAML settings file (keys are option names); flags and env win.",
)
@click.option(
    "--repo",
    required=True,
    envvar="RECONCILER_REPO",
    help="Git URL, path of a git repository, or a plain directory (local mode).",
)
@click.option(
    "--ref",
    envvar="RECONCILER_REF",
    help="Branch, tag or commit to follow (default: the remote HEAD).",
)
@click.option(
    "--path",
    "subpath",
    default=".",
    show_default=True,
    envvar="RECONCILER_PATH",
    help="Subdirectory of the repository holding the manifests.",
)
@click.option(
    "--interval",
    default="60s",
    show_default=True,
    callback=_duration,
    envvar="RECONCILER_INTERVAL",
    help="Poll period (30, 30s, 5m); jittered by 10%.",
)
@provider_options
@state_option
@click.option(
    "--listen",
    default="127.0.0.1:9108",
    show_default=True,
    callback=_listen,
    envvar="RECONCILER_LISTEN",
    help="HTTP listen address (API, webhooks, health).",
)
@click.option(
    "--ssh-key",
    type=_secret,
    metavar="FILE",
    callback=_secret_file,
    envvar="RECONCILER_SSH_KEY",
    help="SSH private key.",
)
@click.option(
    "--known-hosts",
    type=_secret,
    metavar="FILE",
    callback=_secret_file,
    envvar="RECONCILER_KNOWN_HOSTS",
    help="known_hosts for strict SSH host key checking.",
)
@click.option(
    "--insecure-ignore-host-key",
    is_flag=True,
    envvar="RECONCILER_INSECURE_IGNORE_HOST_KEY",
    help="Turn SSH host key checking off (not for production).",
)
@click.option(
    "--token-file",
    type=_secret,
    metavar="FILE",
    callback=_secret_file,
    envvar="RECONCILER_TOKEN_FILE",
    help="File holding an HTTPS token for the repository.",
)
@click.option(
    "--webhook-secret-file",
    type=_secret,
    metavar="FILE",
    callback=_secret_file,
    envvar="RECONCILER_WEBHOOK_SECRET_FILE",
    help="File holding the webhook secret (enables /hooks/*).",
)
@click.option(
    "--api-token-file",
    type=_secret,
    metavar="FILE",
    callback=_secret_file,
    envvar="RECONCILER_API_TOKEN_FILE",
    help="File holding the bearer token for POST /api/v1/sync.",
)
@click.option(
    "--verify-commits",
    type=click.Choice(["gpg", "ssh"], case_sensitive=False),
    envvar="RECONCILER_VERIFY_COMMITS",
    help="Apply only commits (or tags) signed by a trusted key; others are rejected.",
)
@click.option(
    "--trusted-keys",
    multiple=True,
    metavar="FILE",
    callback=_signature_files,
    envvar="RECONCILER_TRUSTED_KEYS",
    help="Armored GPG public keys trusted by --verify-commits gpg (repeatable; "
    "env RECONCILER_TRUSTED_KEYS, several separated by spaces).",
)
@click.option(
    "--allowed-signers",
    metavar="FILE",
    callback=_signature_files,
    envvar="RECONCILER_ALLOWED_SIGNERS",
    help="SSH allowed-signers file of --verify-commits ssh.",
)
@click.option(
    "--concurrency",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    envvar="RECONCILER_CONCURRENCY",
    help="Side effects (observe batches, applies, deletes) running at once.",
)
@click.option(
    "--allow-mass-prune",
    is_flag=True,
    envvar="RECONCILER_ALLOW_MASS_PRUNE",
    help="Allow a revision to prune all, or more than --max-prune-share, of the inventory.",
)
@click.option(
    "--max-prune-share",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    envvar="RECONCILER_MAX_PRUNE_SHARE",
    help="Largest share of the inventory one revision may prune.",
)
@click.option(
    "--shutdown-timeout",
    default="30s",
    show_default=True,
    callback=_duration,
    envvar="RECONCILER_SHUTDOWN_TIMEOUT",
    help="How long a stop waits for in-flight applies.",
)
@click.option(
    "--http-max-connections",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="RECONCILER_HTTP_MAX_CONNECTIONS",
    help="Most HTTP connections open at once (never within 256 of the fd limit).",
)
@click.option(
    "--http-header-timeout",
    default="10s",
    show_default=True,
    callback=_duration,
    envvar="RECONCILER_HTTP_HEADER_TIMEOUT",
    help="A new connection must send a complete request head within this.",
)
@click.option(
    "--http-idle-timeout",
    default="15s",
    show_default=True,
    callback=_duration,
    envvar="RECONCILER_HTTP_IDLE_TIMEOUT",
    help="How long a keep-alive connection may stay idle between requests.",
)
@click.option(
    "--http-body-timeout",
    default="10s",
    show_default=True,
    callback=_duration,
    envvar="RECONCILER_HTTP_BODY_TIMEOUT",
    help="A request body must arrive within this (else 408).",
)
@click.option(
    "--hook-rate",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    envvar="RECONCILER_HOOK_RATE",
    help="Webhook requests a second, all hooks together (past it: 429).",
)
@click.option(
    "--hook-burst",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="RECONCILER_HOOK_BURST",
    help="Webhook requests allowed at once above --hook-rate.",
)
@click.option(
    "--sync-rate",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    envvar="RECONCILER_SYNC_RATE",
    help="POST /api/v1/sync requests a second (past it: 429).",
)
@click.option(
    "--sync-burst",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="RECONCILER_SYNC_BURST",
    help="Sync requests allowed at once above --sync-rate.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="RECONCILER_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="debug adds per-request, watch and scheduler lines.",
)
@click.option(
    "--log-format",
    default="auto",
    show_default=True,
    envvar="RECONCILER_LOG_FORMAT",
    type=click.Choice(["auto", "json", "text"], case_sensitive=False),
    help="Log lines on stderr: JSON, readable text, or auto (text on a terminal).",
)
def run(
    repo: str,
    ref: str | None,
    subpath: str,
    interval: float,
    providers: _Providers,
    state_dir: Path,
    listen: tuple[str, int],
    ssh_key: Path | None,
    known_hosts: Path | None,
    insecure_ignore_host_key: bool,
    token_file: Path | None,
    webhook_secret_file: Path | None,
    api_token_file: Path | None,
    verify_commits: str | None,
    trusted_keys: tuple[Path, ...],
    allowed_signers: Path | None,
    concurrency: int,
    allow_mass_prune: bool,
    max_prune_share: float,
    shutdown_timeout: float,
    http_max_connections: int,
    http_header_timeout: float,
    http_idle_timeout: float,
    http_body_timeout: float,
    hook_rate: float,
    hook_burst: int,
    sync_rate: float,
    sync_burst: int,
    log_level: str,
    log_format: str,
) -> None:
    """Run the daemon: follow REPO, converge every revision, heal drift."""
    from reconciler import logs
    from reconciler.daemon import Daemon, DaemonSettings, SettingsError
    from reconciler.httplimits import HttpLimits
    from reconciler.store import StoreError

    logs.configure(log_level, json={"auto": None, "json": True, "text": False}[log_format.lower()])
    if verify_commits or trusted_keys or allowed_signers:
        from reconciler.sources.signatures import signature_policy

        try:
            signature_policy(verify_commits, trusted_keys, allowed_signers)
        except ValueError as exc:
            _fail(str(exc))
    settings = DaemonSettings(
        repo=repo,
        ref=ref,
        path=subpath,
        interval=interval,
        roots=providers.resolved_roots,
        allow_commands=providers.allow_commands,
        secret_sources=providers.secrets(
            state_dir,
            token_file,
            webhook_secret_file,
            api_token_file,
            ssh_key,
            *trusted_keys,
            allowed_signers,
        ),
        state_dir=state_dir,
        listen=listen,
        ssh_key=ssh_key,
        known_hosts=known_hosts,
        insecure_ignore_host_key=insecure_ignore_host_key,
        token_file=token_file,
        webhook_secret_file=webhook_secret_file,
        api_token_file=api_token_file,
        verify_commits=verify_commits.lower() if verify_commits else None,
        trusted_keys=trusted_keys,
        allowed_signers=allowed_signers,
        concurrency=concurrency,
        allow_mass_prune=allow_mass_prune,
        max_prune_share=max_prune_share,
        shutdown_timeout=shutdown_timeout,
        http_limits=HttpLimits(
            max_connections=http_max_connections,
            header_timeout=http_header_timeout,
            idle_timeout=http_idle_timeout,
            body_timeout=http_body_timeout,
            hook_rate=hook_rate,
            hook_burst=hook_burst,
            sync_rate=sync_rate,
            sync_burst=sync_burst,
        ),
    )

    async def daemon() -> None:
        await Daemon(settings).run()
        # stopped cleanly, store closed: exit now, from inside the loop, rather than
        # let asyncio.run wait for a worker thread still running a hung git fetch
        _exit(0)

    try:
        _run(daemon, concurrency)
    except (SettingsError, StoreError, OSError) as exc:
        _fail(str(exc))


@cli.command()
@click.option(
    "--url",
    default="http://127.0.0.1:9108",
    show_default=True,
    envvar="RECONCILER_URL",
    help="Address of a running daemon.",
)
@json_option
def status(url: str, as_json: bool) -> None:
    """Show the status of a running daemon."""
    import urllib.error
    import urllib.request

    def get(path: str) -> Any:
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=10) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError) as exc:
            _fail(f"cannot reach the daemon at {url}: {getattr(exc, 'reason', exc)}")

    info, resources = get("/api/v1/status"), get("/api/v1/resources")["resources"]
    if as_json:
        click.echo(json.dumps({"status": info, "resources": resources}, indent=2))
        return
    # every value from the daemon is shown escaped: commit summaries, paths and
    # errors come from the repository
    show = _printable
    revision = info.get("revision") or {}
    source = info["source"]
    click.echo(
        f"source     {show(str(source['url']))}  (ref {show(str(source.get('ref') or 'HEAD'))})"
    )
    click.echo(
        f"revision   {show(str(revision.get('id', '-')))}  {show(str(revision.get('summary', '')))}"
    )
    if info.get("lastError"):
        click.echo(f"last error {show(str(info['lastError']))}")
    counts = ", ".join(f"{n} {show(str(state))}" for state, n in sorted(info["resources"].items()))
    click.echo(f"resources  {counts or 'none'}")
    instances = info.get("instances") or []
    if instances:
        click.echo(f"instances  {_instances_line(instances)}")
    click.echo("")
    # resources of a bundle instance are grouped under it, after those written flat
    bundled = any(r.get("instance") for r in resources)
    if bundled:
        resources = sorted(resources, key=lambda r: (r.get("instance") or "", r["id"]))
    rows = [
        (show(str(r["id"])), show(str(r["state"])), show(str(r.get("lastError") or "")))
        for r in resources
    ]
    width = max((len(rid) for rid, _, _ in rows), default=10)
    placed = [show(str(r.get("instance") or "-")) for r in resources]
    inst_width = max((len(i) for i in ["INSTANCE", *placed]), default=8)
    column = f"{'INSTANCE':<{inst_width}}  " if bundled else ""
    click.echo(f"{column}{'RESOURCE':<{width}}  {'STATE':<10}  LAST ERROR")
    for r, (rid, state, error), inst in zip(resources, rows, placed, strict=True):
        column = f"{inst:<{inst_width}}  " if bundled else ""
        click.echo(f"{column}{rid:<{width}}  {state:<10}  {error}".rstrip())
        # which fields drifted (the values are in the API and --json: they may be long)
        drifted = [
            show(str(d.get("field"))) for d in r.get("drift") or [] if r["state"] == "Drifted"
        ]
        if drifted:
            indent = width + (inst_width + 2 if bundled else 0)
            click.echo(f"{'':<{indent}}  drifted fields: {', '.join(drifted)}")


def _instances_line(instances: list[dict[str, Any]], shown: int = 4) -> str:
    """The bundle instances of the enforced revision, on one line: how many, the
    first few with their source, and how many more (all of them are in --json)."""
    parts = []
    for inst in instances[:shown]:
        source = _printable(str(inst.get("source") or ""))
        commit = str(inst.get("commit") or "")[:12]
        at = f"@{_printable(commit)}" if commit else ""
        parts.append(f"{_printable(str(inst['id']))} ({source}{at}, {inst.get('resources', 0)})")
    more = f", +{len(instances) - shown} more" if len(instances) > shown else ""
    return f"{len(instances)}: {', '.join(parts)}{more}"


@cli.command()
@state_option
@click.option(
    "--url",
    metavar="URL",
    help="Read from a running daemon's /api/v1/events (http://127.0.0.1:9108) "
    "instead of the state directory.",
)
@click.option("--resource", metavar="KIND/NAME", help="Only this resource's events.")
@click.option("--kind", metavar="KIND", help="Only events of resources of this kind.")
@click.option(
    "--instance",
    metavar="Bundle/NAME",
    help="Only events of resources this bundle instance made (also after it was removed).",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Only events after WHEN: a duration back from now (10m, 2h, 1d), "
    "an RFC 3339 time (2026-11-28T09:00:00Z), or unix seconds.",
)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    metavar="N",
    type=click.IntRange(min=1),
    help="The newest N events (the daemon's API allows up to 1000).",
)
@json_option
@click.pass_context
def events(
    ctx: click.Context,
    state_dir: Path,
    url: str | None,
    resource: str | None,
    kind: str | None,
    instance: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the history of state transitions, oldest first, with their reasons.

    Reads the state directory (read-only: fine while the daemon runs) or, with
    --url, a running daemon.
    """
    if url and ctx.get_parameter_source("state_dir") is ParameterSource.COMMANDLINE:
        _fail("give --state-dir or --url, not both: events come from one of them")
    if resource is not None:
        resource_kind, _, name = resource.partition("/")
        if not resource_kind or not name:
            _fail(f"--resource: expected Kind/name such as File/app-config, found {resource!r}")
    if kind is not None and (not kind or "/" in kind):
        _fail(f"--kind: expected a kind such as File, found {kind!r}")
    if instance is not None:
        instance_kind, _, name = instance.partition("/")
        if not instance_kind or not name:
            _fail(f"--instance: expected Bundle/name such as Bundle/team-a-web, found {instance!r}")
    after = None if since is None else _since(since)
    filters = {"resource": resource, "kind": kind, "instance": instance}
    if url:
        found = _events_from_daemon(url, since=after, limit=limit, **filters)
    else:
        found = _events_from_store(state_dir, since=after, limit=limit, **filters)
    if as_json:
        click.echo(json.dumps({"events": found}, indent=2))
    elif not found:
        click.echo("no events")
    else:
        click.echo(_events_table(found), nl=False)


_SINCE_EXPECTED = (
    "expected a duration back from now (10m, 2h, 1d), an RFC 3339 time "
    "(2026-11-28T09:00:00Z) or unix seconds"
)


def _since(value: str) -> float:
    """Unix seconds from `--since`: a bare number is unix seconds (as the API's
    `since`), a number with a unit a duration back from now, else an RFC 3339 or
    ISO 8601 time (local time when it has no offset)."""
    import math
    from datetime import datetime

    from reconciler.model import parse_duration

    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            _fail(f"--since: {_SINCE_EXPECTED}, found {value!r}")
        return seconds
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.upper()).timestamp()
    except (ValueError, OverflowError, OSError):
        _fail(f"--since: {_SINCE_EXPECTED}, found {value!r}")


def _events_from_store(
    state_dir: Path,
    *,
    resource: str | None,
    kind: str | None,
    instance: str | None,
    since: float | None,
    limit: int,
) -> list[dict[str, Any]]:
    from reconciler.store.sqlite import DB_NAME

    where = state_dir.absolute()
    hint = "give the --state-dir reconciler ran with, or --url of a running daemon"
    if not state_dir.is_dir():
        _fail(f"state directory {where} does not exist: {hint}")
    if not (state_dir / DB_NAME).is_file():
        _fail(f"state directory {where} holds no {DB_NAME}: {hint}")
    with _store(state_dir, readonly=True) as store:
        history = store.history(resource, limit, kind=kind, since=since, instance=instance)
    return [t.to_json() for t in history]


def _events_from_daemon(
    url: str,
    *,
    resource: str | None,
    kind: str | None,
    instance: str | None,
    since: float | None,
    limit: int,
) -> list[dict[str, Any]]:
    import urllib.error
    import urllib.parse
    import urllib.request

    query: dict[str, str] = {"limit": str(limit)}
    if resource is not None:
        query["resource"] = resource
    if kind is not None:
        query["kind"] = kind
    if instance is not None:
        query["instance"] = instance
    if since is not None:
        query["since"] = repr(since)
    address = f"{url.rstrip('/')}/api/v1/events?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            events: list[dict[str, Any]] = json.load(response)["events"]
            return events
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                message = json.load(exc)["error"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code} {exc.reason}"
        _fail(f"the daemon at {url} refused the query: {message}")
    except (urllib.error.URLError, OSError) as exc:
        _fail(f"cannot reach the daemon at {url}: {getattr(exc, 'reason', exc)}")
    except (ValueError, KeyError, TypeError):
        _fail(f"{url} did not answer like a reconciler daemon (no events list in its reply)")


def _events_table(events: list[dict[str, Any]]) -> str:
    # an INSTANCE column only when some event's resource came from a bundle
    bundled = any(e.get("instance") for e in events)
    rows = [
        ("TIME", "RESOURCE", *(("INSTANCE",) if bundled else ()), "TRANSITION", "EVENT", "REASON")
    ]
    for e in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        millis = int(e["at"] * 1000) % 1000
        reason = " ".join((e.get("reason") or "").split())  # one line per event
        instance = (_printable(str(e.get("instance") or "-")),) if bundled else ()
        rows.append(
            (
                f"{stamp}.{millis:03d}",
                _printable(str(e["id"])),
                *instance,
                _printable(f"{e['from'] or '-'} -> {e['to']}"),
                _printable(str(e["event"])),
                _printable(reason),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, [*widths, 0], strict=True)).rstrip()
        + "\n"
        for row in rows
    )


@cli.command("diff")
@click.option("--from", "old", required=True, metavar="REV", help="The revision before.")
@click.option("--to", "new", required=True, metavar="REV", help="The revision after.")
@click.option(
    "--repo",
    type=click.Path(path_type=Path, file_okay=False),
    default=".",
    show_default=True,
    help="The git repository (or a directory inside it).",
)
@click.option(
    "--path",
    "subpath",
    default="",
    metavar="SUBDIR",
    help="The config tree's directory inside the repository (default: its top).",
)
@secrets_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="text, json, or markdown for a pull-request comment.",
)
@color_option
def diff_command(
    old: str,
    new: str,
    repo: Path,
    subpath: str,
    secret_dir: tuple[str, ...],
    secret_env: tuple[str, ...],
    fmt: str,
    no_color: bool,
) -> None:
    """Compare the desired state at two revisions of a git repository, without the
    system: resources added, removed and changed, field by field. REV is anything
    git understands (branch, tag, sha, HEAD~1). Exit 0 same, 2 different, 1 error."""
    from reconciler import revdiff

    # Nothing is observed or applied: any path is accepted (root /) and a Command
    # may be declared; secret references resolve as for validate (docs/cli.md#diff).
    secrets = _secret_sources(secret_dir, secret_env)
    registry = _registry(("/",), allow_commands=True, secrets=secrets)
    try:
        found = revdiff.compare_revisions(
            revdiff.open_repo(repo), old, new, subpath, registry, _RemoteOnDemand(None)
        )
    except revdiff.RevisionError as exc:
        issues = "".join(f"\n  {_printable(issue)}" for issue in exc.issues)
        click.echo(f"error: {_printable(str(exc))}{':' if issues else ''}{issues}", err=True)
        sys.exit(1)
    if fmt == "json":
        click.echo(revdiff.render_json(found), nl=False)
    elif fmt == "markdown":
        click.echo(revdiff.render_markdown(found), nl=False)
    else:
        click.echo(revdiff.render_text(found, colour=_colour(no_color)), nl=False)
    _exit(0 if found.same else 2)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"reconciler {__version__}")


def main() -> None:
    """Entry point: exit 1 on every error, usage errors included (2 is plan's
    "changes"), and a one-line message instead of a traceback."""
    try:
        cli.main(prog_name="reconciler", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(1)
    except (KeyboardInterrupt, click.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        if os.environ.get("RECONCILER_DEBUG", "") not in ("", "0"):
            raise
        from reconciler.registry import RegistryError

        if isinstance(exc, RegistryError):
            _fail(str(exc))
        _fail(f"internal error: {type(exc).__name__}: {exc} (RECONCILER_DEBUG=1 for details)")

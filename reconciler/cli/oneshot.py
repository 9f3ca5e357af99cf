"""The one-shot commands on a config tree: validate, plan (and saving a plan),
apply (a tree or a saved plan), graph, diff (two revisions of a repository) and
version. Each imports the loader, the engine and the renderers when it runs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from reconciler import __version__, noop
from reconciler.cli.common import (
    _colour,
    _engine,
    _exit,
    _fail,
    _load,
    _printable,
    _Providers,
    _registry,
    _RemoteOnDemand,
    _run,
    _secret_sources,
    _store,
    color_option,
    json_option,
    path_argument,
    provider_options,
    secrets_options,
    state_option,
)

if TYPE_CHECKING:
    from reconciler.engine import Engine, Planned, Report, Result
    from reconciler.model import DesiredState
    from reconciler.registry import Registry
    from reconciler.savedplan import SavedPlan
    from reconciler.store import SqliteStore


@click.command()
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


@click.command()
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
    from reconciler.engine import PlanAction

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
    if any(p.action == PlanAction.ERROR for p in planned):
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
    from reconciler.engine import PlanAction

    errors = [p.id for p in planned if p.action == PlanAction.ERROR]
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


@click.command()
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
@click.option(
    "--full-check",
    is_flag=True,
    help="Observe every object through the engine even when the record of the last "
    "no-op answers (docs/cli.md, decision 0131).",
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
    full_check: bool,
    as_json: bool,
    no_color: bool,
) -> None:
    """Converge the system to the manifests under PATH, once. PATH may instead be a
    plan saved by `plan --out`: then apply exactly that plan, with the config path,
    state directory and provider options it was planned with, or refuse (exit 1,
    nothing applied) if the revision or anything the plan rests on changed since."""
    from reconciler import savedplan
    from reconciler.diff import REPORT_ORDER, render_report, report_json
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
        recorder = _recorder(desired, registry, store, state_dir) if saved is None else None
        try:
            if saved is None:
                report = _run(lambda: engine.converge(desired), concurrency)
                if recorder is not None and _changed_nothing(report, desired):
                    recorder.write({a: report.count(a) for a in REPORT_ORDER})
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


def _recorder(
    desired: DesiredState, registry: Registry, store: SqliteStore, state_dir: Path
) -> noop.Recorder | None:
    """The no-op record's facts, taken before the pass, when this run may leave one
    (decision 0131): its command line is one the shortcut reads, the revision rests
    on its files alone, every kind is one whose facts say all it observes, and
    the pass can only find things in sync or not (nothing to create or prune)."""
    if noop.ELIGIBLE is None or not desired.cacheable:
        return None
    if store.inventory().keys() != desired.resources.keys():
        return None
    paths = []
    for resource in desired.resources.values():
        provider = registry[resource.kind]
        path = provider.path(resource.spec) if provider.quick_check else None
        if path is None:
            return None
        paths.append(path)
    if not desired.digest:
        return None
    return noop.Recorder.before(desired.digest, desired.revision, paths, state_dir)


def _changed_nothing(report: Report, desired: DesiredState) -> bool:
    from reconciler.engine import Outcome

    return (
        report.ok
        and len(report.results) == len(desired.resources)
        and all(r.action == Outcome.UNCHANGED for r in report.results.values())
    )


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


@click.command()
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


@click.command("diff")
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


@click.command()
def version() -> None:
    """Print the version."""
    click.echo(f"reconciler {__version__}")

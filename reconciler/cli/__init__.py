"""The `reconciler` command line: validate, plan, apply, graph, providers, schema,
diff, version, run (the daemon), status and events.

RECONCILER_ROOT and RECONCILER_STATE_DIR set --root and --state-dir for every
command; any other option comes from RECONCILER_<COMMAND>_<OPTION> (for example
RECONCILER_APPLY_CONCURRENCY). Exit codes: 0 success (plan: no changes), 2 plan
has changes, 1 any error. Errors are one clear message each, never a traceback
(set RECONCILER_DEBUG=1 to see one).

The commands live by role: oneshot (validate, plan, apply, graph, diff, version),
kinds (providers, schema), run_command with settings (the daemon and its settings
table), client (status, events); common holds what they share. This module makes
the group and `main`, the console entry point.
"""

from __future__ import annotations

import os
import sys

import click

from reconciler import __version__
from reconciler.cli.client import events, status
from reconciler.cli.common import Process, _fail
from reconciler.cli.common import _bundle_fetcher as _bundle_fetcher  # tests reach for it
from reconciler.cli.common import _exit as _exit  # tests replace it
from reconciler.cli.kinds import providers, schema
from reconciler.cli.oneshot import apply, diff_command, graph, plan, validate, version
from reconciler.cli.run_command import run

__all__ = [
    "apply",
    "cli",
    "diff_command",
    "events",
    "graph",
    "main",
    "plan",
    "providers",
    "run",
    "schema",
    "status",
    "validate",
    "version",
]


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


for _command in (
    *(validate, plan, apply, graph, diff_command, version),
    *(providers, schema),
    run,
    *(status, events),
):
    cli.add_command(_command)


def main() -> None:
    """Entry point: exit 1 on every error, usage errors included (2 is plan's
    "changes"), and a one-line message instead of a traceback."""
    try:
        cli.main(prog_name="reconciler", standalone_mode=False, obj=Process())
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

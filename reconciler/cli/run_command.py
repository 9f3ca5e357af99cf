"""`reconciler run`: the daemon in the foreground. Its options are made from the
settings table (reconciler.cli.settings) and the options every command shares;
this module only starts the daemon with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import _exit, _fail, _Providers, _run, provider_options, state_option
from reconciler.cli.settings import DAEMON, SOURCE, config_option, daemon_settings, options


@click.command()
@config_option
@options(SOURCE)
@provider_options
@state_option
@options(DAEMON)
def run(providers: _Providers, state_dir: Path, **values: Any) -> None:
    """Run the daemon: follow REPO, converge every revision, heal drift."""
    from reconciler import logs
    from reconciler.daemon import Daemon, SettingsError
    from reconciler.store import StoreError

    as_json = {"auto": None, "json": True, "text": False}[values["log_format"].lower()]
    logs.configure(values["log_level"], json=as_json)
    verify_commits = values["verify_commits"]
    if verify_commits or values["trusted_keys"] or values["allowed_signers"]:
        from reconciler.sources.signatures import signature_policy

        try:
            signature_policy(verify_commits, values["trusted_keys"], values["allowed_signers"])
        except ValueError as exc:
            _fail(str(exc))
    try:  # the receivers file is read again here: it may have changed since its check
        settings = daemon_settings(values, providers, state_dir)
    except SettingsError as exc:
        _fail(str(exc))

    async def daemon() -> None:
        await Daemon(settings).run()
        # stopped cleanly, store closed: exit now, from inside the loop, rather than
        # let asyncio.run wait for a worker thread still running a hung git fetch
        _exit(0)

    try:
        _run(daemon, settings.concurrency)
    except (SettingsError, StoreError, OSError) as exc:
        _fail(str(exc))

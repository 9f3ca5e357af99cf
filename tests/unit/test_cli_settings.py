"""The settings table of `reconciler run` (reconciler.cli.settings) is the one
declaration of the daemon's settings: its defaults are DaemonSettings' and
HttpLimits', it covers every field, the documentation lists every setting with
its variable and default, and the values land in the settings the daemon gets.
Also: a one-shot command invoked in-process ends with SystemExit, not os._exit."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from reconciler.cli import cli, run
from reconciler.cli.common import _Providers
from reconciler.cli.settings import DAEMON, SETTINGS, SOURCE, Target, daemon_settings
from reconciler.daemon import DaemonSettings
from reconciler.httplimits import HttpLimits

DOCS = Path(__file__).resolve().parents[2] / "docs"
# set by the options every command shares, or made from several settings
SHARED = {"roots", "allow_commands", "secret_sources", "state_dir", "http_limits"}

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_reconciler_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RECONCILER_"):
            monkeypatch.delenv(name)


def _parsed(*args: str) -> dict[str, Any]:
    """run's parameters after click's parsing and checks, nothing started."""
    with run.make_context("run", ["--repo", "/nowhere", *args]) as ctx:
        return dict(ctx.params)


def _field_defaults(model: type[Any]) -> dict[str, Any]:
    return {
        f.name: f.default for f in dataclasses.fields(model) if f.default is not dataclasses.MISSING
    }


def test_the_table_covers_every_field_of_the_daemon_settings() -> None:
    # NOTIFY: the receivers file lands read (DaemonSettings.notifications)
    daemon = {s.attribute for s in SETTINGS.values() if s.target in (Target.DAEMON, Target.NOTIFY)}
    http = {s.attribute for s in SETTINGS.values() if s.target is Target.HTTP}
    assert daemon | SHARED == {f.name for f in dataclasses.fields(DaemonSettings)}
    assert http == {f.name for f in dataclasses.fields(HttpLimits)}
    assert list(SETTINGS) == [s.name for s in (*SOURCE, *DAEMON)]  # no name twice


def test_defaults_parsed_as_a_flag_are_the_daemon_settings_defaults() -> None:
    parsed = _parsed()
    expected = {
        Target.DAEMON: _field_defaults(DaemonSettings),
        Target.HTTP: _field_defaults(HttpLimits),
        Target.NOTIFY: _field_defaults(DaemonSettings),
    }
    for setting in SETTINGS.values():
        if setting.target is Target.COMMAND or setting.required:
            continue
        want = expected[setting.target][setting.attribute]
        assert parsed[setting.name] == want, setting.name


def test_flag_variable_and_parameter_come_from_the_name() -> None:
    options = {p.name: p for p in run.params if isinstance(p, click.Option)}
    for setting in SETTINGS.values():
        option = options[setting.name]
        assert option.opts == [setting.option]
        assert option.envvar == setting.env
    # the ones whose spelling differs, and what scripts and deployments use
    assert SETTINGS["subpath"].option == "--path" and SETTINGS["subpath"].env == "RECONCILER_PATH"
    assert SETTINGS["http_max_connections"].env == "RECONCILER_HTTP_MAX_CONNECTIONS"


def test_values_land_in_the_daemon_settings(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    parsed = _parsed(
        *("--path", "sub", "--interval", "5m", "--listen", "[::1]:0", "--token-file", str(token)),
        *("--hook-burst", "7", "--http-idle-timeout", "2s", "--verify-commits", "SSH"),
        "--allow-mass-prune",
    )
    providers = _Providers((str(tmp_path),), False, (str(tmp_path),), ())
    settings = daemon_settings(parsed, providers, tmp_path / "state")
    assert (settings.path, settings.interval, settings.listen) == ("sub", 300.0, ("::1", 0))
    assert settings.token_file == token and settings.allow_mass_prune
    assert settings.verify_commits == "ssh"
    assert settings.http_limits == HttpLimits(hook_burst=7, idle_timeout=2.0)
    assert settings.roots == (str(tmp_path),)
    # reconciler's own files are never a repository's secret, even in a secret dir
    assert settings.secret_sources is not None
    assert {str(token), str(tmp_path / "state")} <= set(settings.secret_sources.deny)


def _settings_rows(markdown: str) -> list[str]:
    section = re.search(r"^## Settings\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert section
    return [line for line in section.group(1).splitlines() if line.startswith("| `--")]


def test_daemon_md_lists_every_setting_with_its_variable_and_default() -> None:
    rows = _settings_rows((DOCS / "daemon.md").read_text())
    options = [p for p in run.params if isinstance(p, click.Option)]
    documented = {re.match(r"\| `(--[a-z-]+)", row).group(1) for row in rows}  # type: ignore[union-attr]
    assert documented == {option.opts[0] for option in options}
    for option in options:
        (row,) = [r for r in rows if re.match(rf"\| `{option.opts[0]}[ `]", r)]
        assert f"`{option.envvar}`" in row, row
        default = option.default
        if option.required:
            assert "| required |" in row
        elif isinstance(default, str | int | float) and not isinstance(default, bool):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"`{shown}`" in row, row


def test_cli_md_shows_every_option_of_run() -> None:
    text = (DOCS / "cli.md").read_text()
    synopsis = re.search(r"^## run\n\n```text\n(.*?)```", text, re.M | re.S)
    assert synopsis
    for option in run.params:
        if isinstance(option, click.Option):
            assert f"[{option.opts[0]}" in synopsis.group(1) or option.required, option.opts[0]


def test_a_one_shot_command_run_in_process_raises_system_exit(tmp_path: Path) -> None:
    """plan ends its process with os._exit; run inside this one (CliRunner), it
    must raise SystemExit with the same code and leave the test running."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "a.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: a}\n"
        f"spec: {{path: {tmp_path}/root/a.txt, content: x}}\n"
    )
    (tmp_path / "root").mkdir()
    args = ["plan", str(tmp_path / "config"), "--root", str(tmp_path / "root")]
    result = CliRunner().invoke(cli, [*args, "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2, result.output
    assert "+ File/a" in result.output


def test_the_receivers_file_lands_read_and_its_files_are_reconcilers_own(tmp_path: Path) -> None:
    secret = tmp_path / "hmac"
    secret.write_text("s3cret-value\n")
    receivers = tmp_path / "notifications.yaml"
    receivers.write_text(
        "receivers:\n  - {name: ops, type: webhook, url: 'http://h/', secret_file: hmac}\n"
    )
    parsed = _parsed("--notifications", str(receivers))
    assert parsed["notifications"] == receivers
    providers = _Providers((str(tmp_path),), False, (str(tmp_path),), ())
    settings = daemon_settings(parsed, providers, tmp_path / "state")
    assert settings.notifications is not None
    assert [r.name for r in settings.notifications.receivers] == ["ops"]
    assert settings.secret_sources is not None
    assert {str(receivers), str(secret)} <= set(settings.secret_sources.deny)

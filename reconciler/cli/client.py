"""The commands that read a running daemon or its state directory: `status` (the
daemon's HTTP API) and `events` (the store's history, or the daemon's
/api/v1/events). One small HTTP client, _Daemon, makes every request."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from reconciler.cli.common import _fail, _printable, _store, json_option, state_option


class _Daemon:
    """The HTTP client of the client commands: GET a JSON answer from a daemon's
    API, every failure one `error:` line (unreachable, refused, not a daemon)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, key: str | None = None, query: dict[str, str] | None = None) -> Any:
        """The JSON answer to GET `path`?`query`; with `key`, that member of it."""
        import urllib.error
        import urllib.parse
        import urllib.request

        address = self.url.rstrip("/") + path
        if query:
            address += "?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(address, timeout=10) as response:
                answer = json.load(response)
                return answer if key is None else answer[key]
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    message = json.load(exc)["error"]
                except (ValueError, KeyError, TypeError):
                    message = f"HTTP {exc.code} {exc.reason}"
            _fail(f"the daemon at {self.url} refused the query: {message}")
        except (urllib.error.URLError, OSError) as exc:
            _fail(f"cannot reach the daemon at {self.url}: {getattr(exc, 'reason', exc)}")
        except (ValueError, KeyError, TypeError):
            what = f"no {key} list in its reply" if key else "no JSON in its reply"
            _fail(f"{self.url} did not answer like a reconciler daemon ({what})")


@click.command()
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
    daemon = _Daemon(url)
    info, resources = daemon.get("/api/v1/status"), daemon.get("/api/v1/resources", "resources")
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


@click.command()
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
    query: dict[str, str] = {"limit": str(limit)}
    if resource is not None:
        query["resource"] = resource
    if kind is not None:
        query["kind"] = kind
    if instance is not None:
        query["instance"] = instance
    if since is not None:
        query["since"] = repr(since)
    events: list[dict[str, Any]] = _Daemon(url).get("/api/v1/events", "events", query)
    return events


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

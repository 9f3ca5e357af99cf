"""Rendering of previews (what `plan` shows) and reports (what `apply` did), as
Terraform-style text with optional ANSI colours, as JSON data (the plan's shape is
the versioned JSON Schema reconciler/schemas/plan-v2.json), or as Markdown for a
pull-request comment (`render_plan_markdown`). A resource made by a bundle
instance carries its id (`Planned.instance`) in every form: `(from Bundle/x)` in
text and Markdown, `instance` in JSON.

Every value in the text (ids, descriptions, paths, link targets, contents, errors,
notes) goes through `logs.printable`: a control character in a manifest cannot
move the cursor, erase a line or start a forged `Plan:` line. The only escape
sequences in the text are the colours added here; the only line breaks are ours.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from reconciler import noop
from reconciler.engine import CHANGING as CHANGING
from reconciler.engine import Outcome, PlanAction, Planned, Report
from reconciler.logs import printable
from reconciler.model import Action, Change

MAX_DIFF_LINES = 20

_SYMBOL = {
    PlanAction.CREATE: ("+", "32"),
    PlanAction.UPDATE: ("~", "33"),
    PlanAction.DRIFT: ("~", "33"),
    PlanAction.DRIFT_WARN: ("~", "35"),
    PlanAction.DELETE: ("-", "31"),
    PlanAction.RELEASE: ("-", "36"),
    PlanAction.ERROR: ("!", "31;1"),
}
_NOTE = {
    PlanAction.DRIFT: "(drifted: will heal)",
    PlanAction.DRIFT_WARN: "(drifted; policy warn: reported, not healed)",
    PlanAction.DELETE: "(created by reconciler: will delete)",
    PlanAction.RELEASE: "(adopted or prune: false: will release, object kept)",
}


class Style:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    # JSON escapes C0 controls itself; printable escapes what it leaves raw (DEL, C1, bidi)
    return printable(json.dumps(value, ensure_ascii=False))


def _text_lines(text: str) -> list[str]:
    """Lines split at LF only: a CR, form feed or separator inside a line stays
    in it, to be shown escaped (str.splitlines would split there and hide it)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def change_lines(change: Change, style: Style) -> list[str]:
    name = printable(change.field.lstrip("/").replace("/", "."))
    if change.sensitive:  # the values are masked in the plan itself (Change.masked)
        return [f"{name}: (sensitive value{'' if change.before is None else ' changed'})"]
    before, after = change.before, change.after
    if isinstance(before, str) and isinstance(after, str) and ("\n" in before or "\n" in after):
        diff = [
            line
            for line in difflib.unified_diff(
                _text_lines(before), _text_lines(after), n=0, lineterm=""
            )
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        lines = [f"{name}: {len(diff)} line{'' if len(diff) == 1 else 's'} changed"]
        for line in diff[:MAX_DIFF_LINES]:
            code = "31" if line.startswith("-") else "32"
            lines.append(style(code, f"  {line[0]}  {printable(line[1:])}"))
        if len(diff) > MAX_DIFF_LINES:
            lines.append(f"  ... {len(diff) - MAX_DIFF_LINES} more")
        return lines
    if change.field == "/content" and before is None:
        return []
    return [f"{name}: {_value(before)} -> {_value(after)}"]


def summary_counts(planned: Sequence[Planned]) -> Counter[str]:
    return Counter(p.action for p in planned)


def summary_line(planned: Sequence[Planned]) -> str:
    """`Plan: 1 to create, ... 11 unchanged.`, with what cannot be applied in brackets."""
    counts = summary_counts(planned)
    parts = [
        f"{counts[PlanAction.CREATE]} to create",
        f"{counts[PlanAction.UPDATE] + counts[PlanAction.DRIFT]} to change",
        f"{counts[PlanAction.DELETE]} to delete",
    ]
    if counts[PlanAction.RELEASE]:
        parts.append(f"{counts[PlanAction.RELEASE]} to release")
    parts.append(f"{counts[PlanAction.NONE]} unchanged")
    extra = []
    if counts[PlanAction.DRIFT_WARN]:
        extra.append(f"{counts[PlanAction.DRIFT_WARN]} drifted (warn only)")
    if counts[PlanAction.SUSPENDED]:
        extra.append(f"{counts[PlanAction.SUSPENDED]} suspended")
    if counts[PlanAction.ERROR]:
        extra.append(f"{counts[PlanAction.ERROR]} could not be observed")
    tail = f" ({', '.join(extra)})" if extra else ""
    return f"Plan: {', '.join(parts)}.{tail}"


def _origin(item: Planned) -> str:
    """`(from Bundle/x)` for a resource a bundle instance made; empty otherwise."""
    return f"(from {printable(item.instance)})" if item.instance else ""


def render_plan(planned: Sequence[Planned], *, header: str, colour: bool) -> str:
    style = Style(colour)
    shown = [p for p in planned if p.action in _SYMBOL]
    width = max((len(printable(p.id)) for p in shown), default=0)
    out = [printable(header), ""]
    for item in shown:
        symbol, code = _SYMBOL[item.action]
        note = printable(item.note or _NOTE.get(item.action, ""))
        line = f"  {style(code, symbol)} {printable(item.id):<{width}}  {printable(item.describe)}"
        if item.instance:
            line += f"   {_origin(item)}"
        if note:
            line += f"   {note}"
        out.append(line.rstrip())
        if item.action == PlanAction.ERROR:
            out.append(f"      {style('31', printable(item.error or ''))}")
        elif item.plan is not None and item.plan.action is Action.CREATE:
            if item.action != PlanAction.CREATE:
                out.append("      missing: removed out of band")
        elif item.plan is not None:
            for change in item.plan.changes:
                out.extend(f"      {text}" for text in change_lines(change, style))
    if not shown:
        out.append("  No changes. The system matches the desired state.")
    out += ["", summary_line(planned)]
    return "\n".join(out) + "\n"


def change_json(change: Change, old: str = "before", new: str = "after") -> dict[str, Any]:
    """A change as JSON, its two values named `old` and `new`: a plan compares the
    system with the tree (`observed`/`desired`), `diff` two revisions
    (`before`/`after`). A secret change carries `sensitive: true` and no value."""
    if change.sensitive:
        return {"field": change.field, "sensitive": True}
    return {"field": change.field, old: change.before, new: change.after}


PLAN_SCHEMA_VERSION = 2
"""The `schemaVersion` of `plan --format json`; its schema is schemas/plan-v2.json.
A field added keeps the version; a field removed, renamed or retyped bumps it
(version 2 renamed a change's `before`/`after` to `observed`/`desired`: 0105)."""


def plan_json(planned: Sequence[Planned], revision: str) -> dict[str, Any]:
    """The plan as data (schemas/plan-v2.json): each resource apply would act on,
    with `instance` only when a bundle instance made it, as `error` only when set."""
    return {
        "schemaVersion": PLAN_SCHEMA_VERSION,
        "revision": revision,
        "changes": [
            {
                "id": p.id,
                "action": p.action,
                "describe": p.describe,
                **({"instance": p.instance} if p.instance else {}),
                "changes": [change_json(c, "observed", "desired") for c in p.plan.changes]
                if p.plan
                else [],
                **({"error": p.error} if p.error else {}),
            }
            for p in planned
            if p.action != PlanAction.NONE
        ],
        "summary": dict(summary_counts(planned)),
    }


MARKDOWN_LIMIT = 60_000
"""Characters of Markdown at most: GitHub refuses a comment over 65,536."""
_MD_HEADING = {
    PlanAction.CREATE: "create",
    PlanAction.UPDATE: "change",
    PlanAction.DRIFT: "heal drift",
    PlanAction.DRIFT_WARN: "drifted (warn only)",
    PlanAction.DELETE: "delete",
    PlanAction.RELEASE: "release",
    PlanAction.ERROR: "could not be observed",
}
_INLINE_SPECIAL = re.compile(r"[\\`*_\[\]<>&|~#!]")


def inline(text: str) -> str:
    """`text` (from a repository) safe inside HTML and Markdown inline text: control
    characters escaped, then every character Markdown or HTML gives a meaning as a
    numeric reference, so a resource named `</summary><img ...>` or `**x**` is shown,
    not obeyed."""
    return _INLINE_SPECIAL.sub(lambda m: f"&#{ord(m.group())};", printable(text))


def _fenced(lines: list[str], language: str = "diff") -> list[str]:
    """A fenced code block holding `lines` verbatim: its fence is longer than any
    run of backticks inside, so no line can close it (CommonMark), and inside it
    `<`, `*` and the rest are literal text."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", *lines, fence]


def markdown_change(change: Change) -> list[str]:
    name = printable(change.field.lstrip("/").replace("/", "."))
    if change.sensitive:  # masked in the plan itself (Change.masked): no value to show
        return [f"~ {name}: (sensitive value{'' if change.before is None else ' changed'})"]
    before, after = change.before, change.after
    texts = isinstance(after, str) and (before is None or isinstance(before, str))
    if texts and ("\n" in (before or "") or "\n" in after):
        old = _text_lines(before) if isinstance(before, str) else []
        diff = [
            line
            for line in difflib.unified_diff(old, _text_lines(after), n=0, lineterm="")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        lines = [f"# {name}: {len(diff)} line{'' if len(diff) == 1 else 's'} changed"]
        lines += [f"{line[0]}{printable(line[1:])}" for line in diff[:MAX_DIFF_LINES]]
        if len(diff) > MAX_DIFF_LINES:
            lines.append(f"# ... {len(diff) - MAX_DIFF_LINES} more")
        return lines
    if before is None:
        return [f"+ {name}: {_value(after)}"]
    return [f"- {name}: {_value(before)}", f"+ {name}: {_value(after)}"]


def _markdown_body(item: Planned) -> list[str]:
    if item.action == PlanAction.ERROR:
        return [f"! {printable(item.error or '')}"]
    if item.plan is None:
        return []
    if item.plan.action is Action.CREATE and item.action != PlanAction.CREATE:
        return ["# missing: removed out of band"]
    return [line for change in item.plan.changes for line in markdown_change(change)]


def render_plan_markdown(planned: Sequence[Planned], *, title: str, revision: str) -> str:
    """The plan as a pull-request comment: a heading with the revision, the summary
    counts, and one collapsible `<details>` per resource that would change, its
    diff in a fenced block. Secrets are masked as in every rendering (Change.masked);
    every value from the repository is escaped (`inline`, `_fenced`). Past
    MARKDOWN_LIMIT characters the remaining resources are counted, not shown."""
    shown = [p for p in planned if p.action in _SYMBOL]
    out = [
        f"### {inline(title)}",
        "",
        f"Revision <code>{inline(revision)}</code>: **{inline(summary_line(planned))}**",
        "",
    ]
    if not shown:
        out.append("No changes. The system matches the desired state.")
    items = []
    for item in shown:
        symbol, _ = _SYMBOL[item.action]
        note = item.note or _NOTE.get(item.action, "")
        summary = f"<code>{symbol} {inline(item.id)}</code> {_MD_HEADING[item.action]}"
        if item.describe:
            summary += f": {inline(item.describe)}"
        if item.instance:
            summary += f" (from <code>{inline(item.instance)}</code>)"
        if note:
            summary += f" <em>{inline(note)}</em>"
        items.append((summary, _markdown_body(item)))
    return markdown_details(out, items, "resources not shown (see the job log)")


def markdown_details(out: list[str], items: Sequence[tuple[str, list[str]]], omitted: str) -> str:
    """`out` (a heading) and one collapsible `<details>` per item: its summary (HTML,
    escaped by the caller) and its body lines in a fenced block. Past
    MARKDOWN_LIMIT characters the remaining items are counted (`... N more
    {omitted}.`), not shown."""
    size = sum(len(line) + 1 for line in out)
    for index, (summary, body) in enumerate(items):
        block = ["<details>", f"<summary>{summary}</summary>", ""]
        block += [*_fenced(body), ""] if body else []
        block += ["</details>", ""]
        length = sum(len(line) + 1 for line in block)
        if size + length > MARKDOWN_LIMIT:
            out.append(f"... {len(items) - index} more {omitted}.")
            break
        out += block
        size += length
    return "\n".join(out).rstrip("\n") + "\n"


REPORT_ORDER = tuple(Outcome(name) for name in noop.REPORT_ORDER)


def render_report(report: Report, *, load_seconds: float, colour: bool) -> str:
    style = Style(colour)
    out = []
    for result in report.results.values():
        rid, error = printable(result.id), printable(str(result.error))
        if result.action == Outcome.FAILED:
            out.append(f"{style('31;1', 'failed ')} {rid}: {error}")
        elif result.action == Outcome.BLOCKED:
            out.append(f"{style('33', 'blocked')} {rid}: {error}")
        elif result.action == Outcome.DRIFTED:
            out.append(f"{style('35', 'drifted')} {rid}: policy warn, not healed")
    counts = {str(a): report.count(a) for a in REPORT_ORDER}
    out.append(
        noop.summary(
            counts,
            ok=report.ok,
            revision=report.revision,
            load=load_seconds,
            engine=report.seconds,
            colour=colour,
        )
    )
    return "\n".join(out) + "\n"


def report_json(report: Report, *, load_seconds: float) -> dict[str, Any]:
    return {
        "revision": report.revision,
        "ok": report.ok,
        "counts": {a: report.count(a) for a in REPORT_ORDER},
        "timings": {"load": load_seconds, "engine": report.seconds},
        "results": [
            {
                "id": r.id,
                "state": r.state.value,
                "action": r.action,
                **({"error": r.error} if r.error else {}),
            }
            for r in report.results.values()
            if r.action != Outcome.UNCHANGED
        ],
    }

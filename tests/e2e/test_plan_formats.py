"""`plan --format text|json|markdown` end to end, and the Markdown renderer on
hostile input.

The JSON of real plans (create, drift, a sensitive change, delete) is validated
against the schema shipped in the package; the Markdown is parsed as CommonMark
would read its fences and HTML, so a repository's value can neither close a
fence nor open a tag, and a secret never appears.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path

import jsonschema
import pytest

from reconciler.diff import (
    MARKDOWN_LIMIT,
    PLAN_SCHEMA_VERSION,
    plan_json,
    render_plan,
    render_plan_markdown,
)
from reconciler.engine import Planned
from reconciler.model import Action, Change, Plan
from reconciler.schemas import PLAN_SCHEMA_VERSIONS, plan_schema
from tests.conftest import Sandbox, doc, docs

CHECKOUT = Path(__file__).resolve().parents[2]
SECRET = "canary-" + secrets.token_hex(8)
HOSTILE = "```\n</details><script>alert(1)</script>\n~~~\n<img src=x onerror=alert(1)>\n"
_TAGS = {"<details>", "</details>", "<code>", "</code>", "<em>", "</em>"}
_OPEN_FENCE = re.compile(r"^(`{3,})([A-Za-z]*)$")


def _validate_plan(data: dict[str, object], version: int = PLAN_SCHEMA_VERSION) -> None:
    schema = plan_schema(version)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(data)


def _outside_fences(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The lines outside fenced code blocks, and each block's lines, as CommonMark
    reads them: a block ends only at a line of at least as many backticks."""
    outside: list[str] = []
    blocks: list[list[str]] = []
    fence: str | None = None
    for line in markdown.split("\n"):
        if fence is None:
            match = _OPEN_FENCE.match(line)
            if match:
                fence = match.group(1)
                blocks.append([])
            else:
                outside.append(line)
        elif re.fullmatch(f"`{{{len(fence)},}}", line.strip()):
            fence = None
        else:
            blocks[-1].append(line)
    assert fence is None, "a fenced block is left open"
    return outside, blocks


def _assert_safe(markdown: str) -> list[list[str]]:
    outside, blocks = _outside_fences(markdown)
    for line in outside:
        for tag in re.findall(r"<[^>]*>", line):
            assert tag in _TAGS or tag.startswith("<summary>") or tag == "</summary>", line
        assert "`" not in line, line  # no code span opened by a value
    return blocks


def test_plan_formats_end_to_end(sandbox: Sandbox) -> None:
    root = sandbox.root
    env = {**os.environ, "APP_TOKEN": SECRET}
    hostile_path = root / "a`<b>*x*.txt"
    tree = [
        doc("Directory", "d", {"path": str(root / "d"), "mode": "0755"}),
        doc("File", "f", {"path": str(root / "d/f.txt"), "content": "one\ntwo\n"}),
        doc("File", "hostile", {"path": str(hostile_path), "content": HOSTILE}),
        doc(
            "File",
            "token",
            {"path": str(root / "token"), "content": {"valueFrom": {"env": "APP_TOKEN"}}},
        ),
    ]
    sandbox.write("app.yaml", docs(*tree))
    link = sandbox.write("link.yaml", doc("Symlink", "l", {"path": str(root / "l"), "target": "d"}))

    # json: the --json alias prints the same document as --format json
    as_json = sandbox.run("plan", "--format", "json", check=2, env=env).stdout
    assert sandbox.run("plan", "--json", check=2, env=env).stdout == as_json
    planned = json.loads(as_json)
    _validate_plan(planned)
    assert planned["schemaVersion"] == 2
    assert planned["summary"] == {"create": 5}
    changes = {c["id"]: c["changes"] for c in planned["changes"]}
    assert {"field": "/target", "observed": None, "desired": "d"} in changes["Symlink/l"]
    assert all("instance" not in c for c in planned["changes"])  # none made by a bundle
    assert SECRET not in as_json
    token = {c["id"]: c for c in planned["changes"]}["File/token"]
    assert token["changes"] == [{"field": "/content", "sensitive": True}]

    # markdown: header with the revision, the counts, one <details> per resource
    markdown = sandbox.run("plan", "--format", "markdown", check=2, env=env).stdout
    assert SECRET not in markdown
    assert markdown.startswith("### reconciler plan ")
    assert f"Revision <code>{planned['revision']}</code>" in markdown
    assert "**Plan: 5 to create, 0 to change, 0 to delete, 0 unchanged.**" in markdown
    blocks = _assert_safe(markdown)
    outside = _outside_fences(markdown)[0]
    assert outside.count("<details>") == outside.count("</details>") == 5
    assert "a&#96;&#60;b&#62;&#42;x&#42;.txt" in markdown  # the path, shown not obeyed
    hostile = next(b for b in blocks if "+</details><script>alert(1)</script>" in b)
    assert hostile[1] == "+```"  # the content's own fence is a line inside the block
    assert ["~ content: (sensitive value)"] in blocks

    # text stays the default
    text = sandbox.run("plan", check=2, env=env).stdout
    assert text.startswith("reconciler plan ") and "Plan: 5 to create" in text

    sandbox.run("apply", check=0, env=env)
    (root / "d/f.txt").write_text("one\n2\n")
    link.unlink()
    changed = {**env, "APP_TOKEN": SECRET + "-rotated"}
    planned = json.loads(sandbox.run("plan", "--format", "json", check=2, env=changed).stdout)
    _validate_plan(planned)
    assert planned["summary"] == {"none": 2, "drift": 1, "update": 1, "delete": 1}
    drifted = {c["id"]: c for c in planned["changes"]}["File/f"]
    assert drifted["action"] == "drift"
    assert drifted["changes"] == [
        {"field": "/content", "observed": "one\n2\n", "desired": "one\ntwo\n"}
    ]
    markdown = sandbox.run("plan", "--format", "markdown", check=2, env=changed).stdout
    assert SECRET not in markdown
    blocks = _assert_safe(markdown)
    assert ["~ content: (sensitive value changed)"] in blocks
    assert ["# content: 2 lines changed", "-2", "+two"] in blocks
    assert "<code>- Symlink/l</code> delete" in markdown
    assert "**Plan: 0 to create, 2 to change, 1 to delete, 2 unchanged.**" in markdown

    # no changes: exit 0 and a plain sentence
    sandbox.run("apply", check=0, env=changed)
    quiet = sandbox.run("plan", "--format", "markdown", check=0, env=changed).stdout
    assert "No changes. The system matches the desired state." in quiet
    _validate_plan(json.loads(sandbox.run("plan", "--format", "json", check=0, env=changed).stdout))

    clash = sandbox.run("plan", "--json", "--format", "markdown", check=1, env=env)
    assert "--json and --format markdown contradict each other" in clash.stderr


def test_plan_schema_rejects_what_it_does_not_describe() -> None:
    change = {"field": "/mode", "observed": "0777", "desired": "0750"}
    resource = {"id": "File/a", "action": "update", "describe": "/a", "changes": [change]}
    good: dict[str, object] = {
        "schemaVersion": 2,
        "revision": "abc",
        "changes": [resource, {**resource, "id": "File/b", "instance": "Bundle/team-a-web"}],
        "summary": {"update": 2},
    }
    _validate_plan(good)
    leaky = {"field": "/password", "sensitive": True, "desired": "x"}
    old_names = {"field": "/mode", "before": "0777", "after": "0750"}
    for bad in (
        {**good, "schemaVersion": 1},
        {**good, "summary": {"explode": 1}},
        {**good, "changes": [{**resource, "action": "nuke"}]},
        {**good, "changes": [{**resource, "changes": [leaky]}]},
        {**good, "changes": [{**resource, "changes": [old_names]}]},
        {**good, "changes": [{**resource, "instance": ""}]},
        {**good, "changes": [{**resource, "instance": "team-a-web"}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _validate_plan(bad)


def test_the_schema_of_what_plan_prints_is_the_last_shipped_and_v1_stays() -> None:
    assert PLAN_SCHEMA_VERSIONS[-1] == PLAN_SCHEMA_VERSION == 2
    # version 1 stays shipped, unchanged, for consumers pinned to it
    v1 = {
        "schemaVersion": 1,
        "revision": "abc",
        "changes": [
            {
                "id": "File/a",
                "action": "update",
                "describe": "/a",
                "changes": [{"field": "/mode", "before": "0777", "after": "0750"}],
            }
        ],
        "summary": {"update": 1},
    }
    _validate_plan(v1, version=1)
    assert plan_schema() == plan_schema(2)
    with pytest.raises(ValueError, match="no plan schema version 3; known: 1, 2"):
        plan_schema(3)


def _bundled(rid: str, action: str, instance: str, plan: Plan | None = None) -> Planned:
    return Planned(rid, rid.split("/")[0], action, f"/srv/{rid}", plan, instance=instance)


def test_the_bundle_instance_is_shown_in_every_format() -> None:
    mode = Change("/mode", "0777", "0750")
    planned = [
        _bundled("File/team-a-index", "create", "Bundle/team-a-web", Plan(Action.CREATE, ())),
        _bundled(
            "Directory/team-b-www", "drift-warn", "Bundle/team-b-web", Plan(Action.UPDATE, (mode,))
        ),
        _bundled("File/motd", "update", "", Plan(Action.UPDATE, (mode,))),
        _bundled("File/quiet", "none", "Bundle/team-a-web"),
    ]
    text = render_plan(planned, header="reconciler plan t", colour=False)
    lines = text.splitlines()
    assert "  + File/team-a-index     /srv/File/team-a-index   (from Bundle/team-a-web)" in lines
    assert (
        "  ~ Directory/team-b-www  /srv/Directory/team-b-www   (from Bundle/team-b-web)"
        "   (drifted; policy warn: reported, not healed)"
    ) in lines
    assert "  ~ File/motd             /srv/File/motd" in lines  # no bundle, no suffix
    assert "quiet" not in text

    data = plan_json(planned, "r1")
    _validate_plan(data)
    by_id = {c["id"]: c for c in data["changes"]}
    assert by_id["File/team-a-index"]["instance"] == "Bundle/team-a-web"
    assert by_id["Directory/team-b-www"]["instance"] == "Bundle/team-b-web"
    assert by_id["Directory/team-b-www"]["changes"] == [
        {"field": "/mode", "observed": "0777", "desired": "0750"}
    ]
    assert "instance" not in by_id["File/motd"]

    markdown = render_plan_markdown(planned, title="plan", revision="r1")
    _assert_safe(markdown)
    assert (
        "<summary><code>+ File/team-a-index</code> create: /srv/File/team-a-index"
        " (from <code>Bundle/team-a-web</code>)</summary>"
    ) in markdown
    assert "<summary><code>~ File/motd</code> change: /srv/File/motd</summary>" in markdown


def test_a_hostile_instance_id_is_escaped() -> None:
    hostile = _bundled("File/x", "create", "Bundle/</code><script>\x1b[2J", Plan(Action.CREATE, ()))
    text = render_plan([hostile], header="h", colour=False)
    assert "(from Bundle/</code><script>\\x1b[2J)" in text and "\x1b" not in text
    markdown = render_plan_markdown([hostile], title="plan", revision="r")
    _assert_safe(markdown)
    assert "<script>" not in markdown


def _planned(rid: str, content: str) -> Planned:
    change = Change("/content", "old\n", content)
    return Planned(rid, "File", "update", "/x", Plan(Action.UPDATE, (change,)))


def test_markdown_escapes_values_and_stays_under_the_comment_limit() -> None:
    hostile = _planned("File/x", "````\n" + HOSTILE + "\x1b[2J\n")
    markdown = render_plan_markdown(
        [hostile], title="plan <b>`x`</b>", revision="r`</code><script>"
    )
    blocks = _assert_safe(markdown)
    assert "\x1b" not in markdown and "\\x1b[2J" in markdown
    assert blocks[0][0] == "# content: 7 lines changed" and blocks[0][2] == "+````"
    assert "`````diff" in markdown  # a fence longer than the content's longest run

    many = [_planned(f"File/f{i}", "x\n" * 30) for i in range(2_000)]
    markdown = render_plan_markdown(many, title="plan", revision="r")
    assert len(markdown) <= MARKDOWN_LIMIT
    assert re.search(r"\.\.\. \d+ more resources not shown", markdown)
    _assert_safe(markdown)


def test_the_demo_bundles_show_their_instance_in_a_real_plan(sandbox: Sandbox) -> None:
    """configs/demo instantiates bundles/site twice (Bundle/docs, Bundle/blog): the
    engine fills Planned.instance and every format shows it."""
    shutil.copytree(CHECKOUT / "configs/demo", sandbox.config, dirs_exist_ok=True)
    for path in sandbox.config.rglob("*"):
        if path.is_file() and "/tmp/reconciler-demo" in (text := path.read_text("utf-8")):
            path.write_text(text.replace("/tmp/reconciler-demo", str(sandbox.root)), "utf-8")
    args = ("plan", "--allow-commands")
    planned = json.loads(sandbox.run(*args, "--format", "json", check=2).stdout)
    _validate_plan(planned)
    instances = {c["id"]: c.get("instance", "") for c in planned["changes"]}
    assert instances["File/docs-index"] == "Bundle/docs"
    assert instances["File/blog-index"] == "Bundle/blog"
    assert instances["File/app-config"] == ""  # written out in the tree: no key
    text = sandbox.run(*args, check=2).stdout
    line = next(x for x in text.splitlines() if "File/docs-index" in x)
    assert line.endswith("(from Bundle/docs)"), line
    markdown = sandbox.run(*args, "--format", "markdown", check=2).stdout
    assert "(from <code>Bundle/blog</code>)" in markdown

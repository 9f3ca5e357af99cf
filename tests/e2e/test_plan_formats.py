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

import jsonschema
import pytest

from reconciler.diff import MARKDOWN_LIMIT, render_plan_markdown
from reconciler.engine import Planned
from reconciler.model import Action, Change, Plan
from reconciler.schemas import plan_schema
from tests.conftest import Sandbox, doc, docs

SECRET = "canary-" + secrets.token_hex(8)
HOSTILE = "```\n</details><script>alert(1)</script>\n~~~\n<img src=x onerror=alert(1)>\n"
_TAGS = {"<details>", "</details>", "<code>", "</code>", "<em>", "</em>"}
_OPEN_FENCE = re.compile(r"^(`{3,})([A-Za-z]*)$")


def _validate_plan(data: dict[str, object]) -> None:
    schema = plan_schema(1)
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
    assert planned["schemaVersion"] == 1
    assert planned["summary"] == {"create": 5}
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
    good = {
        "schemaVersion": 1,
        "revision": "abc",
        "changes": [
            {"id": "File/a", "action": "update", "describe": "/a", "changes": []},
        ],
        "summary": {"update": 1},
    }
    _validate_plan(good)
    leaky = {"field": "/password", "sensitive": True, "after": "x"}
    for bad in (
        {**good, "schemaVersion": 2},
        {**good, "summary": {"explode": 1}},
        {**good, "changes": [{**good["changes"][0], "action": "nuke"}]},  # type: ignore[dict-item]
        {**good, "changes": [{**good["changes"][0], "changes": [leaky]}]},  # type: ignore[dict-item]
    ):
        with pytest.raises(jsonschema.ValidationError):
            _validate_plan(bad)


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

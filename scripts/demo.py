"""`make demo`: apply the demo config tree into its sandbox, and say in words what
was found there before and what is left after.

Run after the README's walkthrough (where `make run` followed the demo repository
and someone edited managed objects by hand), a bare `plan` prints `~ Directory/reports
... mode: "0777" -> "0750"` and leaves the newcomer to guess why apply did not heal
it. This script runs the same commands a person would (echoing each one), reads the
plans as JSON (schemaVersion 2: `observed`/`desired`) and explains each difference:
drift healed, drift only reported under `drift: warn` and how to heal it, and a spec
that differs because the daemon applied the repository's commits while `make demo`
applies this checkout's copy.

Usage: python scripts/demo.py CONFIG --root DIR --state-dir DIR [--repo DIR]
Exit 0 when the demo ran (drift left as found included), 1 when a command failed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLAN_SCHEMA_VERSION = 2
_WIDTH = 88


def _reconciler() -> str:
    """The reconciler of the interpreter running this script (the venv's), as a
    path a person can type from the current directory."""
    path = Path(sys.executable).parent / "reconciler"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Demo:
    def __init__(self, config: str, root: str, state_dir: str, repo: str | None) -> None:
        self.config = config
        self.repo = repo
        self.args = [config, "--root", root, "--state-dir", state_dir, "--allow-commands"]

    def run(self, command: str, *extra: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [_reconciler(), command, *self.args, *extra]
        if show:
            print(f"$ {shlex.join(argv)}", flush=True)
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if show:
            sys.stdout.write(result.stdout)
        if result.returncode not in (0, 2) or (command == "apply" and result.returncode):
            sys.stdout.write(result.stderr)
            raise SystemExit(f"demo: `reconciler {command}` failed (exit {result.returncode})")
        sys.stderr.write(result.stderr)  # warnings (a refused prune) stay visible
        sys.stdout.flush()
        return result

    def plan(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("plan", "--format", "json", show=False).stdout)
        if data.get("schemaVersion") != PLAN_SCHEMA_VERSION:
            raise SystemExit(
                f"demo: expected plan schemaVersion 2, found {data.get('schemaVersion')}"
            )
        return data


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _fields(changes: Sequence[dict[str, Any]], config: str) -> list[str]:
    """Each differing field in words: where the system and the tree disagree."""
    out = []
    for change in changes:
        name = change["field"].lstrip("/").replace("/", ".") or "the object"
        if change.get("sensitive"):
            out.append(f"{name} (a secret, never shown) differs")
            continue
        observed, desired = change["observed"], change["desired"]
        if isinstance(observed, str) and isinstance(desired, str) and "\n" in observed + desired:
            old, new = observed.splitlines(), desired.splitlines()
            gone = [line for line in difflib.ndiff(old, new) if line.startswith("- ")]
            added = [line for line in difflib.ndiff(old, new) if line.startswith("+ ")]
            detail = [f"{_value(line[2:])} on the system" for line in gone[:2]]
            detail += [f"{_value(line[2:])} in {config}" for line in added[:2]]
            out.append(f"{name} differs: {', '.join(detail) or 'whitespace'}")
        elif observed is None:
            out.append(f"{name} is absent on the system, {_value(desired)} in {config}")
        else:
            out.append(f"{name} is {_value(observed)} on the system, {_value(desired)} in {config}")
    return out


def explain(plan: dict[str, Any], config: str, repo: str | None) -> list[str]:
    """One paragraph per resource the plan would act on."""
    paragraphs = []
    for item in plan["changes"]:
        rid, action, what = item["id"], item["action"], item["describe"]
        fields = "; ".join(_fields(item["changes"], config))
        found = f" ({fields})" if fields else " (it is gone)"
        origin = f" It comes from {item['instance']}." if item.get("instance") else ""
        if action == "create":
            text = f"{rid} ({what}) does not exist yet: apply creates it."
        elif action == "drift":
            text = (
                f"{rid} was changed outside reconciler{found}. Its policy heals drift, so "
                "apply puts it back as the tree says."
            )
        elif action == "drift-warn":
            text = (
                f"{rid} was changed outside reconciler{found}. Its policy is `drift: warn`: "
                "reconciler reports it (state Drifted in `reconciler status`, the metric "
                "reconciler_resource_drifted) and leaves it as found, since whoever changed "
                f"it may have had a reason. To heal it, undo the change by hand, or set "
                f"`policy: {{drift: heal}}` in its manifest under {config} and apply again."
            )
        elif action == "update":
            text = (
                f"{rid}: {config} declares it differently from what was last applied to "
                f"{what}{found}; apply makes it match {config}."
            )
            if repo and Path(repo, ".git").is_dir():
                text += (
                    f" If `make run` ran since, that is expected: the daemon applied the demo "
                    f"repository {repo} with your commits, `make demo` applies this "
                    f"checkout's {config}; `make run` puts the repository's version back."
                )
        elif action == "delete":
            text = (
                f"{rid} is no longer declared in {config}; reconciler created it, so apply "
                "deletes it."
            )
        elif action == "release":
            text = (
                f"{rid} is no longer declared in {config}; reconciler did not create it (or "
                "prune is off), so apply forgets it and leaves the object in place."
            )
        elif action == "error":
            text = f"{rid} could not be observed: {item.get('error', '')}"
        else:
            text = f"{rid}: {action}."
        paragraphs.append(text + origin)
    return paragraphs


def _print(paragraphs: Sequence[str]) -> None:
    for text in paragraphs:
        # paths stay whole, so they can be copied
        lines = textwrap.wrap(
            text,
            _WIDTH,
            initial_indent="  - ",
            subsequent_indent="    ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--root", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--repo", help="the demo repository `make run` follows, if any")
    options = parser.parse_args(argv)
    demo = Demo(options.config, options.root, options.state_dir, options.repo)

    before = demo.plan()
    counts = before["summary"]
    only_creates = all(item["action"] == "create" for item in before["changes"])
    if not before["changes"]:
        print(f"{options.root} already matches {options.config}.")
    elif only_creates and "none" not in counts:
        print(f"Nothing of {options.config} exists under {options.root} yet: apply creates it.")
    else:
        print(f"Before applying {options.config}, the system differs from it here:")
        _print(explain(before, options.config, options.repo))
    print()
    demo.run("apply")
    print()
    demo.run("plan")
    after = demo.plan()
    left = [item for item in after["changes"] if item["action"] == "drift-warn"]
    others = [item for item in after["changes"] if item["action"] != "drift-warn"]
    print()
    explained = {item["id"] for item in before["changes"]}
    if left:
        ids = ", ".join(item["id"] for item in left)
        print(f"Left as found (policy drift: warn): {ids}.")
        _print(
            explain(
                {"changes": [i for i in left if i["id"] not in explained]}, options.config, None
            )
        )
    if others:
        print("Still to do (apply again to see why):")
        _print(explain({"changes": others}, options.config, None))
    if not after["changes"]:
        print(f"Nothing left to do: the system under {options.root} matches {options.config}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

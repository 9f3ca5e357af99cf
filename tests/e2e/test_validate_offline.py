"""`validate` and `graph` without `--root`, as a CI job runs them (issue 10, "Plan
in CI"; docs/decisions/0103): the tree alone is checked, so paths outside every
root, missing secret files and unset variables pass, and secret references are
checked for form only, with file:line:field errors. With `--root` the checks are
today's (roots enforced, secrets read), and plan and apply still read secrets.
The secret allow-list is narrowed here, so nothing could be read by accident."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.manifests import Cache, ParseMemo, load
from reconciler.model import UNREAD_SECRET, ProviderSettings, SecretSources
from reconciler.registry import Registry
from tests.conftest import Sandbox

pytestmark = pytest.mark.timeout(60)

HEADER = re.compile(r"^error: \S+ is invalid: \d+ errors?:$", re.M)


def _env(secrets: Path | None = None) -> dict[str, str]:
    """The environment of a CI job without the secrets: the allow-list names a
    directory that holds none and variables no reference uses, unless `secrets`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_SECRET_DIRS"] = str(secrets) if secrets else "/nonexistent-secret-dir"
    env["RECONCILER_SECRET_ENV"] = "RECONCILER_SECRET_*"
    return env


def _cli(
    *args: str, cwd: Path, env: dict[str, str], check: int
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=env,
    )
    assert result.returncode == check, (
        f"exit {result.returncode}, expected {check}\n{result.stdout}\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _write(config: Path, name: str, text: str) -> None:
    (config / name).write_text(textwrap.dedent(text).lstrip())


TREE = """
apiVersion: reconciler/v1
kind: Directory
metadata: {name: app}
spec: {path: /srv/nowhere-ci/app}
---
apiVersion: reconciler/v1
kind: File
metadata: {name: key}
spec:
  path: /srv/nowhere-ci/app/tls.key
  content: {valueFrom: {file: $SECRETS/tls.key}}
---
apiVersion: reconciler/v1
kind: File
metadata: {name: fifo}
spec:
  path: /srv/nowhere-ci/app/fifo
  content: {valueFrom: {file: $SECRETS/fifo}}
---
apiVersion: reconciler/v1
kind: File
metadata: {name: ini}
spec:
  path: /srv/nowhere-ci/app/app.ini
  template: app.ini.j2
  vars: {password: {valueFrom: {env: RECONCILER_SECRET_CI_UNSET}}}
---
apiVersion: reconciler/v1
kind: Command
metadata: {name: reload}
spec:
  argv: [/bin/true]
  env: {TOKEN: {valueFrom: {env: NOT_ALLOWED_AND_UNSET}}}
policy: {dependsOn: [File/ini]}
"""


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """A tree outside every root whose secrets are missing, or a FIFO that a
    read would block on or refuse: it checks out only if nothing is read."""
    config, secrets = tmp_path / "config", tmp_path / "secrets"
    config.mkdir()
    secrets.mkdir()
    os.mkfifo(secrets / "fifo")
    _write(config, "app.yaml", TREE.replace("$SECRETS", str(secrets)))
    _write(config, "app.ini.j2", "password={{ password }}\n")
    return config, secrets


def test_validate_and_graph_without_root_check_the_tree_alone(tmp_path: Path) -> None:
    config, _ = _tree(tmp_path)

    ok = _cli("validate", str(config), cwd=tmp_path, env=_env(), check=0)
    assert re.fullmatch(
        r"\S+: valid \(revision [0-9a-f]+, 5 resources; "
        r"without --root: paths not confined, secrets not read\)\n",
        ok.stdout,
    ), ok.stdout

    graph = _cli("graph", str(config), cwd=tmp_path, env=_env(), check=0)
    assert 'n0["Command/reload"]' in graph.stdout
    assert "Directory/app" in graph.stdout and "File/ini" in graph.stdout
    assert graph.stdout.count("-->") == 4  # dependsOn, and each File under the Directory
    assert not (tmp_path / ".reconciler").exists()  # no state, no cache


def test_a_malformed_reference_fails_without_root_at_file_line_field(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    _write(
        config,
        "bad.yaml",
        """
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: a}
        spec:
          path: /srv/nowhere-ci/a
          content: {valueFrom: {env: "1 bad"}}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: b}
        spec:
          path: /srv/nowhere-ci/b
          content: {valueFrom: {file: relative/x}}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: c}
        spec:
          path: /srv/nowhere-ci/c
          content: {valueFrom: {env: A, file: /run/secrets/a}}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: d}
        spec:
          path: /srv/nowhere-ci/d
          content: {valueFrom: {file: /run/secrets/../../etc/shadow}}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: e}
        spec:
          path: /srv/nowhere-ci/e
          content: {valueFrom: {env: A}, extra: 1}
        """,
    )

    bad = _cli("validate", str(config), cwd=tmp_path, env=_env(), check=1)

    lines = bad.stderr.splitlines()
    assert HEADER.match(lines[0]) and "5 errors" in lines[0], bad.stderr
    assert "nothing applied" not in bad.stderr
    assert lines[1:] == [
        "  bad.yaml:6: spec.content.valueFrom.env: expected an environment variable name, "
        "found '1 bad'",
        "  bad.yaml:13: spec.content.valueFrom.file: expected an absolute path such as "
        "/run/secrets/db, found 'relative/x'",
        "  bad.yaml:20: spec.content.valueFrom: expected exactly one of env: NAME or file: /path",
        "  bad.yaml:27: spec.content.valueFrom.file: expected a normalized path to a file "
        "(no '.', '..', '//', trailing '/' or NUL), found '/run/secrets/../../etc/shadow'",
        "  bad.yaml:34: spec.content: valueFrom must be alone in its mapping, found also extra",
    ]
    # graph loads the same way, and fails the same way
    graph = _cli("graph", str(config), cwd=tmp_path, env=_env(), check=1)
    assert graph.stderr == bad.stderr


def test_with_root_validate_enforces_roots_and_reads_secrets(tmp_path: Path) -> None:
    config, secrets = _tree(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    env = _env(secrets)

    outside = _cli("validate", str(config), "--root", str(root), cwd=tmp_path, env=env, check=1)
    assert "is outside the allowed roots" in outside.stderr
    assert "Command resources are not allowed here" in outside.stderr
    assert "nothing applied" not in outside.stderr

    # inside the root, with the Command gone: only the secrets are left to fail
    text = (config / "app.yaml").read_text().replace("/srv/nowhere-ci", str(root))
    (config / "app.yaml").write_text(text.split("---\napiVersion: reconciler/v1\nkind: Command")[0])
    missing = _cli("validate", str(config), "--root", str(root), cwd=tmp_path, env=env, check=1)
    assert missing.stderr.splitlines()[1:] == [
        f"  app.yaml:11: spec.content.valueFrom.file: cannot read {secrets}/tls.key: "
        "No such file or directory",
        f"  app.yaml:18: spec.content.valueFrom.file: {secrets}/fifo is not a regular file",
        "  app.yaml:26: spec.vars.password.valueFrom.env: environment variable "
        "RECONCILER_SECRET_CI_UNSET is not set",
    ], missing.stderr

    (secrets / "tls.key").write_text("key\n")
    (secrets / "fifo").unlink()
    (secrets / "fifo").write_text("x\n")
    env["RECONCILER_SECRET_CI_UNSET"] = "pw"
    ok = _cli("validate", str(config), "--root", str(root), cwd=tmp_path, env=env, check=0)
    assert re.fullmatch(r"\S+: valid \(revision [0-9a-f]+, 4 resources\)\n", ok.stdout)
    graph = _cli("graph", str(config), "--root", str(root), cwd=tmp_path, env=env, check=0)
    assert "File/key" in graph.stdout


def test_plan_and_apply_still_read_secrets(sandbox: Sandbox) -> None:
    secrets = sandbox.root.parent / "secrets"
    secrets.mkdir()
    _write(
        sandbox.config,
        "app.yaml",
        f"""
        apiVersion: reconciler/v1
        kind: File
        metadata: {{name: key}}
        spec:
          path: {sandbox.root}/key
          content: {{valueFrom: {{file: {secrets}/key}}}}
        """,
    )
    env = _env(secrets)

    assert sandbox.run("validate", check=1, env=env).stderr.count("cannot read") == 1
    plan = sandbox.run("plan", check=1, env=env)
    assert HEADER.match(plan.stderr.splitlines()[0]), plan.stderr
    assert f"app.yaml:6: spec.content.valueFrom.file: cannot read {secrets}/key" in plan.stderr
    apply = sandbox.run("apply", check=1, env=env)
    assert " is invalid, nothing applied: 1 error:" in apply.stderr.splitlines()[0]
    assert not (sandbox.root / "key").exists()


def test_a_form_only_load_is_never_cached(tmp_path: Path) -> None:
    """A load whose secrets are placeholders must never stand for the real tree:
    neither the cache of validated trees nor the parse memo keeps it."""
    config, _ = _tree(tmp_path)
    registry = Registry.discover(
        ProviderSettings(
            roots=("/",), allow_commands=True, secret_sources=SecretSources(form_only=True)
        )
    )
    cache = Cache(tmp_path / "state" / "cache", registry.fingerprint())
    memo = ParseMemo()

    state = load(config, registry, cache=cache, memo=memo)

    assert str.__str__(state.resources["File/key"].spec.content) == UNREAD_SECRET  # type: ignore[attr-defined]
    assert not list(cache.directory.glob("*.entry"))
    assert not memo.files

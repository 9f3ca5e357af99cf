"""Shared fixtures: a sandbox root, a config tree, and the real CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest_plugins = ["tests.postgres"]  # one PostgreSQL server per session, for every test that asks

# The CLI processes tests start inherit these: secrets in temporary files and
# variables of any name may be read (tests/e2e/test_secret_sources.py tests the
# default allow-list with them removed).
os.environ.setdefault("RECONCILER_SECRET_DIRS", "/")
os.environ.setdefault("RECONCILER_SECRET_ENV", "*")


@dataclass
class Sandbox:
    """A managed root, a config tree and a state dir, all under one tmp dir."""

    root: Path
    config: Path
    state: Path

    def write(self, name: str, text: str) -> Path:
        """Write a manifest (or any config file) into the config tree."""
        path = self.config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def run(
        self,
        *args: str,
        check: int | None = None,
        env: dict[str, str] | None = None,
        **kwargs: object,
    ) -> subprocess.CompletedProcess[str]:
        """Run `reconciler <command> <config> --root <root> --state-dir <state> ...`."""
        command, *rest = args
        argv = [sys.executable, "-m", "reconciler", command]
        if command in ("apply", "plan"):
            argv += [str(self.config), "--root", str(self.root), "--state-dir", str(self.state)]
        elif command in ("validate", "graph"):
            argv += [str(self.config), "--root", str(self.root)]
        argv += rest
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, **kwargs)  # type: ignore[call-overload]
        if check is not None:
            assert result.returncode == check, (
                f"exit {result.returncode}, expected {check}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    return Sandbox(root=root, config=config, state=tmp_path / "state")


def doc(kind: str, name: str, spec: dict[str, Any], policy: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {
        "apiVersion": "reconciler/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }
    if policy is not None:
        data["policy"] = policy
    return yaml.safe_dump(data, sort_keys=False)


def docs(*documents: str) -> str:
    return "---\n".join(documents)

"""Generated config trees through the loader and the command line.

Every tree (tests/fuzz/manifests.py: structured manifests and byte-level
mutations of valid ones) either loads or is refused with a ManifestError whose
every issue names a file; `validate` and `plan` (in-process through click's
CliRunner, and a share as real processes) end with exit 0, 1 (one `error:`
message naming the tree) or, for plan, 2, never a traceback or an internal
error. Each example has a deadline (no hang) and the loader's peak RSS is
bounded.

In the `ci` profile: 500 trees through the loader, 350 through `validate`, 150
through `plan` in-process and 20 through `plan` as a process (1,020 in all).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given

from reconciler import cli
from reconciler.manifests import ManifestError, load
from reconciler.model import ProviderSettings
from reconciler.registry import Registry
from tests.fuzz.manifests import trees, write_tree
from tests.fuzz.profiles import SCALE, examples

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300 * SCALE, method="thread")]

MAX_RSS_GROWTH = 1024 * 1024 * 1024
"""How far the process's peak RSS may rise above where it was before the first
tree, over all of them (the largest input is a few kilobytes; what it expands
to is what must be bounded). The peak never comes down, so one tree that
allocates more fails its own example. The loader's own bound is its limits:
up to `max_spec_bytes` (256 MiB) of specs per revision, held as YAML nodes,
Python data, spec models and JSON at once (some 3 to 4 times that); the `full`
profile's 5,000 trees reached 614 MiB (decision 93). An unbounded load (an
alias bomb expanded) takes many gigabytes and still fails."""
_ROOT = "/tmp/reconciler-fuzz-root"
"""The --root of every generated tree (paths are drawn under it). It never
exists: nothing here writes, and plan only observes."""


@dataclass
class Workspace:
    config: Path
    state: Path
    registry: Registry


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    base = tmp_path_factory.mktemp("fuzz")
    registry = Registry.discover(ProviderSettings(roots=(_ROOT,)))
    yield Workspace(config=base / "config", state=base / "state", registry=registry)


def check_refusal(exc: ManifestError) -> None:
    assert exc.issues, "a ManifestError with no issue"
    for issue in exc.issues:
        assert issue.file, f"an issue that names no file: {issue}"
        assert issue.message, f"an issue with no message: {issue}"
    assert str(exc)


def test_loader(workspace: Workspace) -> None:
    baseline = _max_rss()

    @examples(500, deadline=10)
    @given(files=trees(_ROOT))
    def load_tree(files: dict[str, bytes]) -> None:
        write_tree(workspace.config, files)
        try:
            desired = load(workspace.config, workspace.registry)
        except ManifestError as exc:
            check_refusal(exc)
        else:
            assert all(res.id.count("/") == 1 for res in desired.resources.values())
        grown = _max_rss() - baseline
        assert grown < MAX_RSS_GROWTH, f"the load of {sorted(files)} took the RSS {grown} B up"

    load_tree()


def _max_rss() -> int:
    """The process's peak resident set so far, in bytes (Linux counts kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cli_result_is_clean(
    args: list[str], workspace: Workspace, exit_codes: tuple[int, ...]
) -> None:
    result = CliRunner().invoke(cli.cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args[0]} raised {result.exception!r}") from result.exception
    assert result.exit_code in exit_codes, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    if result.exit_code == 1:
        assert result.stderr.startswith("error: "), result.stderr
        assert str(workspace.config) in result.stderr, result.stderr  # names the tree


def test_validate_in_process(workspace: Workspace) -> None:
    @examples(350, deadline=10)
    @given(files=trees(_ROOT))
    def validate(files: dict[str, bytes]) -> None:
        write_tree(workspace.config, files)
        _cli_result_is_clean(
            ["validate", str(workspace.config), "--root", _ROOT], workspace, (0, 1)
        )

    validate()


def test_plan_in_process(workspace: Workspace) -> None:
    @examples(150, deadline=10)
    @given(files=trees(_ROOT))
    def plan(files: dict[str, bytes]) -> None:
        write_tree(workspace.config, files)
        args = ["plan", str(workspace.config), "--root", _ROOT, "--state-dir", str(workspace.state)]
        _cli_result_is_clean(args, workspace, (0, 1, 2))

    with pytest.MonkeyPatch.context() as patch:
        # plan ends with os._exit (a one-shot process skips its teardown): here,
        # in the test's own process, the same exit code as a SystemExit instead
        patch.setattr(cli, "_exit", lambda code: sys.exit(code))
        plan()


def test_plan_as_a_process(workspace: Workspace) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}

    @examples(20, deadline=30)
    @given(files=trees(_ROOT))
    def plan(files: dict[str, bytes]) -> None:
        write_tree(workspace.config, files)
        argv = [sys.executable, "-m", "reconciler", "plan", str(workspace.config)]
        argv += ["--root", _ROOT, "--state-dir", str(workspace.state)]
        result = subprocess.run(argv, capture_output=True, timeout=30, env=env)
        stderr = result.stderr.decode("utf-8", "replace")
        assert result.returncode in (0, 1, 2), (result.returncode, stderr)
        assert b"Traceback" not in result.stdout + result.stderr, stderr
        assert "internal error" not in stderr, stderr
        if result.returncode == 1:
            assert stderr.startswith("error: ") and str(workspace.config) in stderr, stderr

    plan()

"""The example provider package (examples/ini-provider), installed as a user
installs a provider (`pip install -e examples/ini-provider`, done by `make
install`): its kind is discovered through its entry point, it passes the
conformance kit in its own pytest run (its own configuration, no asyncio
plugin), and the real CLI applies and plans it."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.conftest import Sandbox, doc, docs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ini-provider"


@pytest.fixture(autouse=True)
def _installed() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="reconciler.providers")}
    assert found.get("IniValue") == "reconciler_ini:IniValueProvider", (
        "the example package is not installed: pip install -e examples/ini-provider "
        "(make install does it)"
    )


def test_the_example_kind_is_listed_by_reconciler_providers(sandbox: Sandbox) -> None:
    listed = json.loads(sandbox.run("providers", "--json", check=0).stdout)
    [row] = [row for row in listed if row["kind"] == "IniValue"]

    assert row["module"] == "reconciler_ini"
    assert [f["name"] for f in row["fields"]] == ["path", "section", "key", "value"]
    assert row["summary"]


@pytest.mark.timeout(120)
def test_the_example_package_passes_the_kit_in_its_own_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=110,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    passed = {
        line.split("::")[-1] for line in result.stdout.splitlines() if line.startswith("PASSED")
    }
    for scenario in (
        "test_create_from_nothing[IniValue]",
        "test_drift_is_detected_and_healed[IniValue-removed]",
        "test_batched_in_order[IniValue]",
        "test_invalid_spec_is_rejected[IniValue-outside-root]",
        "test_prune_with_the_stored_spec[IniValue]",
        "test_watch_reports_a_change[IniValue]",
    ):
        assert scenario in passed, result.stdout


def test_the_example_applies_and_plans_through_the_cli(sandbox: Sandbox) -> None:
    path = sandbox.root / "etc" / "app.ini"

    def value(name: str, section: str, text: str) -> str:
        spec = {"path": str(path), "section": section, "key": name, "value": text}
        return doc("IniValue", name, spec)

    sandbox.write(
        "app.yaml",
        docs(
            value("port", "server", "8080"),
            value("host", "server", "::1"),
            value("level", "log", "info"),
        ),
    )

    sandbox.run("apply", check=0)

    assert path.read_text() == "[server]\nport = 8080\nhost = ::1\n\n[log]\nlevel = info\n\n"
    assert "No changes." in sandbox.run("plan", check=0).stdout
    path.write_text(path.read_text().replace("8080", "9090"))
    drifted = sandbox.run("plan", check=2).stdout
    assert "IniValue/port" in drifted and 'value: "9090" -> "8080"' in drifted, drifted
    assert "1 to change" in drifted, drifted

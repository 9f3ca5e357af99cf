"""Crashes the fuzz tests found, each as the smallest input that shows it, marked
`xfail(strict=True)` until fixed (then the mark comes off and the test stays).

An explicit YAML tag with a value its constructor cannot convert (`!!int 0x_`,
`!!float abc`, `!!bool maybe`, `!!timestamp 2001-13-45`) raises ValueError or
KeyError out of PyYAML's SafeConstructor; the loader lets it through, so
`validate`, `plan`, `apply` and the daemon's load end in "internal error"
instead of a `file:line` ManifestError.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.manifests import ManifestError, load
from reconciler.model import ProviderSettings
from reconciler.registry import Registry

pytestmark = pytest.mark.fuzz

BAD_TAGS = ["!!int 0x_", "!!int 0b", "!!float abc", "!!bool maybe", "!!timestamp 2001-13-45"]
MANIFEST = (
    "apiVersion: reconciler/v1\nkind: File\nmetadata: {{name: a}}\n"
    "spec: {{path: {root}/a, content: x, mode: {value}}}\n"
)


@pytest.mark.xfail(
    strict=True, reason="loader: a malformed explicit !!int/!!float/!!bool/!!timestamp escapes"
)
@pytest.mark.parametrize("value", BAD_TAGS)
def test_a_malformed_tagged_scalar_is_a_manifest_error(tmp_path: Path, value: str) -> None:
    root = tmp_path / "root"
    config = tmp_path / "config"
    config.mkdir()
    (config / "m.yaml").write_text(MANIFEST.format(root=root, value=value))
    registry = Registry.discover(ProviderSettings(roots=(str(root),)))
    with pytest.raises(ManifestError) as caught:
        load(config, registry)
    assert caught.value.issues[0].file == "m.yaml"
    assert caught.value.issues[0].line == 4


@pytest.mark.xfail(strict=True, reason="loader: a malformed explicit !!int escapes as ValueError")
def test_validate_reports_a_malformed_tagged_scalar_as_a_file_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = tmp_path / "config"
    config.mkdir()
    (config / "m.yaml").write_text(MANIFEST.format(root=root, value="!!int 0x_"))
    argv = [sys.executable, "-m", "reconciler", "validate", str(config), "--root", str(root)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "internal error" not in result.stderr, result.stderr
    assert "m.yaml:4" in result.stderr, result.stderr

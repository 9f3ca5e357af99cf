"""The registry imports a provider when its kind is first used: a tree of files
never loads the HTTP or PostgreSQL client libraries, and a broken third-party
entry point fails only the trees that use its kind, naming it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from reconciler.model import ProviderSettings
from reconciler.registry import Registry, RegistryError

ONLY_FILES = """
import sys
from pathlib import Path
from reconciler.manifests import load
from reconciler.model import ProviderSettings
from reconciler.registry import Registry
root, config = Path(sys.argv[1]), Path(sys.argv[2])
registry = Registry.discover(ProviderSettings(roots=(str(root),)))
registry.fingerprint()
desired = load(config, registry)
assert sorted(registry) == sorted(set(registry))  # every kind is known by name
print(sorted(p.kind for p in registry.loaded()))
print(sorted(m for m in ("httpx", "psycopg", "reconciler.providers.http") if m in sys.modules))
"""


def test_a_tree_of_files_imports_no_client_library(tmp_path: Path) -> None:
    root, config = tmp_path / "root", tmp_path / "config"
    root.mkdir()
    config.mkdir()
    (config / "a.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: a}\n"
        f"spec: {{path: {root}/a, content: x}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", ONLY_FILES, str(root), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded, clients = result.stdout.splitlines()
    assert loaded == "['File']"
    assert clients == "[]"


def test_a_broken_entry_point_fails_only_its_kind() -> None:
    broken = EntryPoint("Broken", "reconciler_no_such_module:Provider", "reconciler.providers")
    good = EntryPoint("File", "reconciler.providers.files:FileProvider", "reconciler.providers")
    registry = Registry(settings=ProviderSettings(), entries=[broken, good])
    assert sorted(registry) == ["Broken", "File"] and "Broken" in registry
    assert registry["File"].kind == "File"
    with pytest.raises(RegistryError, match=r"'Broken' \(reconciler_no_such_module:Provider\)"):
        registry["Broken"]
    registry.fingerprint()  # names it without importing it


def test_an_entry_point_of_another_kind_is_refused() -> None:
    liar = EntryPoint("Folder", "reconciler.providers.files:FileProvider", "reconciler.providers")
    registry = Registry(settings=ProviderSettings(), entries=[liar])
    with pytest.raises(RegistryError, match="declares kind 'File'"):
        registry["Folder"]

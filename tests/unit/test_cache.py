"""The cache of validated trees holds data, never code: a pickle planted where an
entry belongs is never loaded; an entry that was changed, truncated, made under
another key or renamed to another tree's key is ignored with one warning and the
tree is parsed; a good entry gives back exactly what the parse gave."""

from __future__ import annotations

import logging
import marshal
import os
import pickle
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.cache import FORMAT
from reconciler.manifests import Cache, load
from reconciler.model import API_VERSION, DesiredState, ProviderSettings
from reconciler.registry import Registry


@dataclass
class Tree:
    config: Path
    root: Path
    state: Path
    registry: Registry

    def cache(self, *, write: bool = True) -> Cache:
        return Cache(self.state / "cache", self.registry.fingerprint(), write=write)

    def load(self, *, write: bool = True) -> DesiredState:
        return load(self.config, self.registry, cache=self.cache(write=write))

    def entries(self) -> list[Path]:
        return sorted((self.state / "cache").glob("*.entry"))

    def entry(self) -> Path:
        [entry] = self.entries()
        return entry


MANIFEST = f"""\
apiVersion: {API_VERSION}
kind: File
metadata: {{name: app, labels: {{team: web}}}}
spec:
  path: $ROOT/app.conf
  template: app.j2
  vars: {{port: 8080, hosts: [a, b], when: '2024-05-01', ratio: 0.5, enabled: true}}
policy: {{drift: warn, dependsOn: [Directory/etc]}}
---
apiVersion: {API_VERSION}
kind: Directory
metadata: {{name: etc}}
spec: {{path: $ROOT/etc, mode: "0750"}}
---
apiVersion: {API_VERSION}
kind: Symlink
metadata: {{name: link}}
spec: {{path: $ROOT/link, target: /elsewhere}}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    (config / "app.yaml").write_text(MANIFEST.replace("$ROOT", str(root)))
    (config / "app.j2").write_text("port {{ port }} {{ hosts | join(',') }}\n")
    registry = Registry.discover(ProviderSettings(roots=(str(root),)))
    return Tree(config, root, tmp_path / "state", registry)


class Evil:
    """What a pickle can do when it is loaded: run any command."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.sentinel}",))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_entry_gives_back_exactly_what_the_parse_gave(tree: Tree) -> None:
    parsed = tree.load()
    cached = tree.load()
    assert cached == parsed
    assert cached is not parsed and cached.resources is not parsed.resources
    for rid, res in parsed.resources.items():
        again = cached.resources[rid]
        assert again.spec.model_dump_json() == res.spec.model_dump_json()
        assert again.spec.model_fields_set == res.spec.model_fields_set
        assert (again.spec_hash, again.policy, again.location) == (
            res.spec_hash,
            res.policy,
            res.location,
        )
    assert cached.dependencies == parsed.dependencies


def test_an_entry_is_plain_data_and_its_key_is_private(tree: Tree) -> None:
    tree.load()
    head, _, body = tree.entry().read_bytes().partition(b"\n")
    assert head.startswith(FORMAT + b" ") and len(head.split(b" ")[1]) == 64
    data = marshal.loads(body)  # values only: str, int, float, bool, None, lists, dicts
    assert sorted(data) == ["dependencies", "exact", "instances", "resources"]
    assert any("app.conf" in str(row) for row in data["resources"])
    key = tree.state / "cache" / "cache.key"
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(tree.entry().stat().st_mode) == 0o600


def _body(tree: Tree) -> dict[str, Any]:
    body: dict[str, Any] = marshal.loads(tree.entry().read_bytes().partition(b"\n")[2])
    return body


def test_exact_values_are_rebuilt_and_others_validated_again(tree: Tree) -> None:
    parsed = tree.load()
    assert _body(tree)["exact"] is True
    assert tree.load() == parsed
    (tree.config / "app.yaml").write_text(
        MANIFEST.replace("$ROOT", str(tree.root)).replace("'2024-05-01'", "2024-05-01")
    )
    parsed = tree.load()  # vars hold a date: the entry keeps the validated dumps
    assert _body(tree)["exact"] is False
    cached = tree.load()
    assert cached != parsed  # the date comes back as its JSON text...
    assert cached.resources["File/app"].spec.vars["when"] == "2024-05-01"  # type: ignore[attr-defined]
    assert {r: x.spec_hash for r, x in cached.resources.items()} == {
        r: x.spec_hash for r, x in parsed.resources.items()
    }  # ...which is what was hashed and what the store keeps


def test_a_planted_pickle_is_never_loaded(
    tree: Tree, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parsed = tree.load()
    entry = tree.entry()
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(Evil(sentinel))
    assert not sentinel.exists()
    entry.write_bytes(payload)  # where the entry is
    old = entry.with_suffix(".pickle")
    old.write_bytes(payload)  # where the first format kept it
    caplog.clear()
    assert tree.load(write=False) == parsed
    assert not sentinel.exists()
    [warning] = warnings_of(caplog)
    assert str(entry) in warning and "old format (pickle)" in warning

    entry.unlink()
    caplog.clear()
    assert tree.load() == parsed  # writes a new entry and removes the old one
    [warning] = warnings_of(caplog)
    assert str(old) in warning and "old format (pickle)" in warning
    assert not old.exists() and not sentinel.exists()
    caplog.clear()
    assert tree.load() == parsed
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(
    "damage",
    ["flipped byte in the body", "flipped byte in the code", "truncated", "no newline", "empty"],
)
def test_a_changed_or_truncated_entry_is_ignored_with_one_warning(
    tree: Tree, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    parsed = tree.load()
    entry = tree.entry()
    data = bytearray(entry.read_bytes())
    head = data.index(b"\n")
    if damage == "flipped byte in the body":
        at = data.index(b"app.conf")
        data[at] ^= 0x01
    elif damage == "flipped byte in the code":
        data[head - 1] = ord("0") if data[head - 1] != ord("0") else ord("1")
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "no newline":
        data = data[:head]
    else:
        data = bytearray()
    entry.write_bytes(bytes(data))
    caplog.clear()
    assert tree.load(write=False) == parsed
    [warning] = warnings_of(caplog)
    assert str(entry) in warning and "ignored" in warning


def test_an_entry_made_under_another_key_is_ignored(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    parsed = tree.load()
    key = tree.state / "cache" / "cache.key"
    key.unlink()
    key.write_bytes(os.urandom(32))  # a foreign state directory's key
    caplog.clear()
    assert tree.load(write=False) == parsed
    [warning] = warnings_of(caplog)
    assert "does not authenticate" in warning


def test_an_entry_without_a_key_to_check_it_is_ignored(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    parsed = tree.load()
    (tree.state / "cache" / "cache.key").unlink()
    caplog.clear()
    assert tree.load(write=False) == parsed  # a read-only load makes no key
    [warning] = warnings_of(caplog)
    assert "no key to check it with (cache.key)" in warning
    assert not (tree.state / "cache" / "cache.key").exists()


def test_an_authentic_entry_of_another_tree_is_not_taken_for_this_one(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    first = tree.load()
    first_entry = tree.entry().read_bytes()
    (tree.config / "more.yaml").write_text(
        f"apiVersion: {API_VERSION}\nkind: Directory\nmetadata: {{name: more}}\n"
        f"spec: {{path: {tree.root}/more}}\n"
    )
    second = tree.load()
    assert "Directory/more" in second.resources and "Directory/more" not in first.resources
    tree.entry().write_bytes(first_entry)  # the other tree's entry, under this tree's name
    caplog.clear()
    assert tree.load(write=False) == second
    [warning] = warnings_of(caplog)
    assert "does not authenticate" in warning


def test_a_plan_without_a_state_directory_makes_nothing(tree: Tree) -> None:
    tree.load(write=False)
    assert not (tree.state / "cache").exists()


def test_a_hit_parses_nothing(tree: Tree) -> None:
    parsed = tree.load()
    code = (
        "import sys; from pathlib import Path\n"
        "from reconciler.manifests import Cache, load\n"
        "from reconciler.model import ProviderSettings\n"
        "from reconciler.registry import Registry\n"
        "registry = Registry.discover(ProviderSettings(roots=(sys.argv[2],)))\n"
        "cache = Cache(Path(sys.argv[3]), registry.fingerprint(), write=False)\n"
        "state = load(Path(sys.argv[1]), registry, cache=cache)\n"
        "print(sorted(state.resources), 'yaml' in sys.modules)\n"
    )
    argv = [sys.executable, "-c", code, str(tree.config), str(tree.root), str(tree.state / "cache")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == f"{sorted(parsed.resources)} False", result.stderr

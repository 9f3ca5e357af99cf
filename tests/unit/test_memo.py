"""The in-memory parse memo and the on-disk cache of validated trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.manifests import Cache, ManifestError, ParseMemo, load
from reconciler.model import ProviderSettings
from reconciler.registry import Registry

DOC = """apiVersion: reconciler/v1
kind: File
metadata:
  name: {name}
spec:
  path: {root}/{name}.txt
  content: {content}
"""


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Registry]:
    root, config = tmp_path / "root", tmp_path / "config"
    root.mkdir()
    config.mkdir()
    for name in ("a", "b", "c"):
        (config / f"{name}.yaml").write_text(DOC.format(name=name, root=root, content="one"))
    return root, config, Registry.discover(ProviderSettings(roots=(str(root),)))


def test_a_changed_file_is_parsed_again_the_others_come_from_the_memo(
    tree: tuple[Path, Path, Registry],
) -> None:
    root, config, registry = tree
    memo = ParseMemo()
    first = load(config, registry, memo=memo)
    (config / "b.yaml").write_text(DOC.format(name="b", root=root, content="two"))
    second = load(config, registry, memo=memo)
    assert second.resources["File/a"] is first.resources["File/a"]
    assert second.resources["File/b"] is not first.resources["File/b"]
    assert second.resources["File/b"].spec.content == "two"  # type: ignore[attr-defined]
    assert second.revision != first.revision


def test_errors_involving_memoized_files_still_name_lines(
    tree: tuple[Path, Path, Registry],
) -> None:
    root, config, registry = tree
    memo = ParseMemo()
    load(config, registry, memo=memo)
    (config / "d.yaml").write_text(DOC.format(name="a", root=root, content="dup"))
    with pytest.raises(ManifestError) as caught:
        load(config, registry, memo=memo)
    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.field) == ("d.yaml", 4, "metadata.name")
    assert "duplicate resource id File/a (first defined at a.yaml:1)" in issue.message


def test_cache_hit_returns_the_same_state_and_a_change_misses(
    tree: tuple[Path, Path, Registry], tmp_path: Path
) -> None:
    root, config, registry = tree
    cache = Cache(tmp_path / "cache", registry.fingerprint())
    first = load(config, registry, cache=cache)
    assert len(list((tmp_path / "cache").glob("*.entry"))) == 1
    again = load(config, registry, cache=cache)
    assert again == first
    (config / "c.yaml").write_text(DOC.format(name="c", root=root, content="three"))
    third = load(config, registry, cache=cache)
    assert third.resources["File/c"].spec.content == "three"  # type: ignore[attr-defined]
    assert len(list((tmp_path / "cache").glob("*.entry"))) == 1  # only the newest kept


def test_a_damaged_cache_entry_is_only_a_miss(
    tree: tuple[Path, Path, Registry], tmp_path: Path
) -> None:
    _, config, registry = tree
    cache = Cache(tmp_path / "cache", registry.fingerprint())
    first = load(config, registry, cache=cache)
    for entry in (tmp_path / "cache").glob("*.entry"):
        entry.write_bytes(b"not an entry")
    assert load(config, registry, cache=cache) == first


def test_other_settings_do_not_share_a_cache_entry(
    tree: tuple[Path, Path, Registry], tmp_path: Path
) -> None:
    root, config, registry = tree
    load(config, registry, cache=Cache(tmp_path / "cache", registry.fingerprint()))
    narrower = Registry.discover(ProviderSettings(roots=(str(root / "sub"),)))
    with pytest.raises(ManifestError):  # paths now outside the roots: validated again
        load(config, narrower, cache=Cache(tmp_path / "cache", narrower.fingerprint()))

"""The packaged conformance kit (`reconciler.testing`) on every built-in
provider of `conformance.CASES`, then the safety cases specific to the
filesystem providers.

Everything runs on real temporary directories through the provider API
(observe_many / plan / apply_many / delete), the way the engine calls it, with
specs loaded by the real loader.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.confined import ConfinementError
from reconciler.model import Action, PermanentError
from reconciler.testing import (
    Case,
    Harness,
    ProviderConformance,
    SpecData,
    fields,
    plugin,
    tree_snapshot,
)
from tests.httpserver import ApiServer
from tests.providers.conformance import (
    CASES,
    COMMAND,
    DIRECTORY,
    FILE,
    FILESYSTEM_CASES,
    SYMLINK,
    mode_of,
    params,
)


class TestBuiltinProviders(ProviderConformance):
    """The packaged kit's scenarios on every built-in provider."""

    cases = CASES


# the kit's own rules for opting out


class _Metafunc:
    """What the plugin reads of pytest's Metafunc, and what it parametrizes."""

    def __init__(self, cls: type, test: str, *fixtures: str) -> None:
        self.cls = cls
        self.function = getattr(cls, test)
        self.fixturenames = ["conformance_case", *fixtures]
        self.params: list[Any] = []

    def parametrize(self, names: Any, params: list[Any]) -> None:
        self.params = params


def _skips(param: Any) -> list[str]:
    return [m.kwargs["reason"] for m in param.marks if m.name == "skip"]


def test_a_skipped_scenario_is_reported_with_its_reason() -> None:
    class TestKinds(ProviderConformance):
        cases = (COMMAND, FILE)

    skipped = _Metafunc(TestKinds, "test_delete")
    plugin.pytest_generate_tests(skipped)  # type: ignore[arg-type]
    run = _Metafunc(TestKinds, "test_update")
    plugin.pytest_generate_tests(run)  # type: ignore[arg-type]
    drift = _Metafunc(TestKinds, "test_drift_is_detected_and_healed", "conformance_drift")
    plugin.pytest_generate_tests(drift)  # type: ignore[arg-type]

    assert [_skips(p) for p in skipped.params] == [
        [f"Command: {COMMAND.skip['test_delete']}"],
        [],
    ]
    assert all(_skips(p) == [] for p in run.params + drift.params)


def test_a_skip_of_no_scenario_is_an_error() -> None:
    class TestTypo(ProviderConformance):
        cases = (replace(FILE, skip={"test_delet": "a typo"}),)

    with pytest.raises(TypeError, match="skips test_delet, which is no test of the class"):
        plugin.pytest_generate_tests(_Metafunc(TestTypo, "test_update"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "over",
    [
        {"skip": {"test_delete": " "}},
        {"skip": {"delete": "not a test name"}},
        {"update_action": Action.NONE},
    ],
    ids=["no-reason", "not-a-test-name", "update-action-none"],
)
def test_an_opt_out_must_be_well_formed(over: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="File: "):
        replace(FILE, **over)


def test_a_case_gives_provider_settings(tmp_path: Path) -> None:
    harness = Harness(COMMAND, tmp_path)

    assert harness.settings.allow_commands
    assert harness.settings.roots == (str(harness.root),)
    assert harness.settings.state_dir == str(harness.state)
    (tmp_path / "file").mkdir()
    assert not Harness(FILE, tmp_path / "file").settings.allow_commands


@pytest.fixture
def kit_api_server() -> Iterator[ApiServer]:
    """The REST server the HttpObject case talks to (`h.target`)."""
    with ApiServer() as api:
        yield api


# filesystem safety: File


def _occupy(path: str, occupant: str) -> None:
    """Put something unmanaged where a provider wants its object."""
    if occupant == "file":
        Path(path).write_text("not managed\n")
    else:
        os.mkdir(path)
        Path(path, "inside.txt").write_text("not managed\n")


def _poke(path: str, offset: int) -> None:
    with open(path, "r+") as handle:
        handle.seek(offset)
        handle.write("X")


def _read(path: str) -> str:
    return Path(path).read_text()


def _stat_key(path: Path) -> tuple[Any, ...]:
    st = os.lstat(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@pytest.mark.parametrize("where", ["inside-root", "outside-root"])
async def test_file_never_writes_through_a_symlink(tmp_path: Path, where: str) -> None:
    harness = Harness(FILE, tmp_path)
    home = harness.root if where == "inside-root" else tmp_path / "outside"
    home.mkdir(exist_ok=True)
    victim = home / "victim.txt"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    before = _stat_key(victim)
    data, spec = harness.spec()
    os.symlink(victim, data["path"])

    plan = await harness.plan(spec)
    assert fields(plan) == {"/type"}
    await harness.converge(spec)

    assert victim.read_text() == "precious\n"
    assert _stat_key(victim) == before
    assert stat.S_ISREG(os.lstat(data["path"]).st_mode)
    await harness.check(data)


async def test_file_refuses_to_replace_a_directory(tmp_path: Path) -> None:
    harness = Harness(FILE, tmp_path)
    data, spec = harness.spec()
    _occupy(data["path"], "directory")
    before = await harness.snapshot()

    plan = await harness.plan(spec)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match="is a directory"):
        await harness.provider.apply(spec, plan)
    with pytest.raises(PermanentError, match="directory"):
        await harness.provider.delete(spec)

    assert await harness.snapshot() == before


async def test_file_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    harness = Harness(FILE, tmp_path)
    data, spec = harness.spec()
    name = Path(data["path"]).name
    await harness.converge(spec)
    assert os.listdir(harness.root) == [name]
    new_data = {**data, "content": "second version\n"}
    await harness.converge(harness.parse(new_data))
    assert os.listdir(harness.root) == [name]
    before = _stat_key(Path(data["path"]))

    # fails after the temporary file is written: no temp left, the old file intact
    broken = harness.parse({**new_data, "content": "third\n", "owner": "no-such-user-here"})
    plan = await harness.plan(broken)
    with pytest.raises(PermanentError, match="no-such-user-here"):
        await harness.provider.apply(broken, plan)

    assert os.listdir(harness.root) == [name]
    assert _stat_key(Path(data["path"])) == before
    await harness.check(new_data)


async def test_file_without_mode_keeps_the_existing_mode(tmp_path: Path) -> None:
    harness = Harness(FILE, tmp_path)
    path = harness.root / "kept.conf"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    spec = harness.parse({"path": str(path), "content": "new\n"})

    plan = await harness.converge(spec)

    assert fields(plan) == {"/content"}
    assert path.read_text() == "new\n"
    assert mode_of(path) == 0o600


async def test_file_large_content_drift_is_detected_and_healed(tmp_path: Path) -> None:
    harness = Harness(FILE, tmp_path)
    content = "0123456789abcdef\n" * 100_000  # 1.7 MB: over the size shown in diffs
    data = {"path": str(harness.root / "big.txt"), "content": content}
    spec = harness.parse(data)
    await harness.converge(spec)
    _poke(data["path"], 1_000_000)

    plan = await harness.plan(spec)

    assert fields(plan) == {"/content"}
    await harness.converge(spec)
    assert _read(data["path"]) == content


def test_file_source_and_template_are_resolved_when_prepared(tmp_path: Path) -> None:
    harness = Harness(FILE, tmp_path)
    config = harness.config
    (config / "files").mkdir()
    (config / "files" / "motd").write_text("hello\n")
    (config / "app.ini.j2").write_text("port = {{ port }}\n")
    path = str(harness.root / "f")

    from_source = harness.parse({"path": path, "source": "files/motd"})
    rendered = harness.parse({"path": path, "template": "app.ini.j2", "vars": {"port": 8080}})

    assert from_source.content == "hello\n"  # type: ignore[attr-defined]
    assert rendered.content == "port = 8080\n"  # type: ignore[attr-defined]
    [issue] = harness.reject({"path": path, "template": "app.ini.j2", "vars": {"other": 1}})
    assert issue.field == "spec.template"
    assert "port" in issue.message


# filesystem safety: Directory


async def test_directory_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    harness = Harness(DIRECTORY, tmp_path)
    data, spec = harness.spec()
    _occupy(data["path"], "file")
    before = await harness.snapshot()

    plan = await harness.plan(spec)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match="refusing to replace"):
        await harness.provider.apply(spec, plan)
    with pytest.raises(PermanentError, match="no longer a directory"):
        await harness.provider.delete(spec)

    assert await harness.snapshot() == before


async def test_directory_delete_refuses_unmanaged_entries(tmp_path: Path) -> None:
    harness = Harness(DIRECTORY, tmp_path)
    data, spec = harness.spec()
    await harness.converge(spec)
    path = Path(data["path"])
    (path / "notes.txt").write_text("mine\n")
    (path / "cache").mkdir()
    os.symlink("nowhere", path / "latest")
    before = await harness.snapshot()

    with pytest.raises(PermanentError, match="not empty") as info:
        await harness.provider.delete(spec)

    for entry in ("notes.txt", "cache", "latest"):
        assert entry in str(info.value)
    assert str(path) in str(info.value)
    assert await harness.snapshot() == before


async def test_directory_replaces_a_symlink_but_not_its_target(tmp_path: Path) -> None:
    harness = Harness(DIRECTORY, tmp_path)
    target = tmp_path / "outside"
    target.mkdir()
    (target / "data").write_text("precious\n")
    os.chmod(target, 0o700)
    before = tree_snapshot(target)
    data, spec = harness.spec()
    os.symlink(target, data["path"])

    plan = await harness.converge(spec)

    assert fields(plan) == {"/type"}
    assert tree_snapshot(target) == before
    await harness.check(data)
    assert os.listdir(data["path"]) == []


# filesystem safety: Symlink


@pytest.mark.parametrize("occupant", ["file", "directory"])
async def test_symlink_refuses_to_replace_a_file_or_directory(
    tmp_path: Path, occupant: str
) -> None:
    harness = Harness(SYMLINK, tmp_path)
    data, spec = harness.spec()
    _occupy(data["path"], occupant)
    before = await harness.snapshot()

    plan = await harness.plan(spec)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match=f"is a {occupant}"):
        await harness.provider.apply(spec, plan)
    with pytest.raises(PermanentError, match="no longer a symlink"):
        await harness.provider.delete(spec)

    assert await harness.snapshot() == before


async def test_symlink_replacement_leaves_no_temp_links(tmp_path: Path) -> None:
    harness = Harness(SYMLINK, tmp_path)
    data, spec = harness.spec()
    await harness.converge(spec)
    await harness.converge(harness.parse(SYMLINK.changed(data)))

    assert os.listdir(harness.root) == [Path(data["path"]).name]


# filesystem safety: all three


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    value: int = request.param
    old = os.umask(value)
    try:
        yield value
    finally:
        os.umask(old)


MODES = [
    (FILE, "0644"),
    (FILE, "0600"),
    (FILE, "0755"),
    (FILE, "0444"),
    (FILE, None),  # a new file without a mode is 0644
    (DIRECTORY, "0755"),
    (DIRECTORY, "0775"),
    (DIRECTORY, "0700"),
    (DIRECTORY, "1777"),
    (DIRECTORY, "2750"),
    (DIRECTORY, None),  # a new directory without a mode is 0755
]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o777], indirect=True, ids=oct)
@pytest.mark.parametrize(
    ("case", "mode"), [pytest.param(c, m, id=f"{c.kind}-{m}") for c, m in MODES]
)
async def test_modes_are_exact_whatever_the_umask(
    tmp_path: Path, umask: int, case: Case, mode: str | None
) -> None:
    harness = Harness(case, tmp_path)
    data: SpecData = {**case.spec(harness, 0), "mode": mode}
    expected = int(mode, 8) if mode else (0o644 if case is FILE else 0o755)

    await harness.converge(harness.parse(data))
    assert mode_of(data["path"]) == expected

    os.chmod(data["path"], 0o751)
    if mode is not None:
        await harness.converge(harness.parse(data))
        assert mode_of(data["path"]) == expected


_NOGROUP = grp.getgrgid(65534).gr_name
_NOBODY = pwd.getpwuid(65534).pw_name
_DAEMON = pwd.getpwnam("daemon")

PRINCIPALS = [
    ("root", "root", 0, 0),
    ("0", "0", 0, 0),
    (0, 0, 0, 0),
    (_NOBODY, _NOGROUP, 65534, 65534),
    ("65534", "65534", 65534, 65534),
    (65534, 65534, 65534, 65534),
    ("daemon", grp.getgrgid(_DAEMON.pw_gid).gr_name, _DAEMON.pw_uid, _DAEMON.pw_gid),
    ("nobody", "root", 65534, 0),
]


@pytest.mark.parametrize(("owner", "group", "uid", "gid"), PRINCIPALS)
@pytest.mark.parametrize("case", params([FILE, DIRECTORY]))
async def test_owner_and_group_by_name_and_numeric_id(
    tmp_path: Path, case: Case, owner: str | int, group: str | int, uid: int, gid: int
) -> None:
    harness = Harness(case, tmp_path)
    data: SpecData = {**case.spec(harness, 0), "owner": owner, "group": group}

    await harness.converge(harness.parse(data))

    st = os.lstat(data["path"])
    assert (st.st_uid, st.st_gid) == (uid, gid)
    # the same principals written the other way round plan nothing
    by_id = harness.parse({**data, "owner": str(uid), "group": str(gid)})
    by_name = harness.parse(
        {**data, "owner": pwd.getpwuid(uid).pw_name, "group": grp.getgrgid(gid).gr_name}
    )
    assert (await harness.plan(by_id)).empty
    assert (await harness.plan(by_name)).empty


async def test_owner_change_alone_is_healed_without_rewriting(tmp_path: Path) -> None:
    harness = Harness(FILE, tmp_path)
    data, spec = harness.spec()
    await harness.converge(spec)
    os.chown(data["path"], 65534, 65534)
    inode = os.lstat(data["path"]).st_ino

    plan = await harness.converge(spec)

    assert fields(plan) == {"/owner", "/group"}
    await harness.check(data)
    assert os.lstat(data["path"]).st_ino == inode, "a metadata fix should not replace the file"


@pytest.mark.parametrize("depth", ["direct", "nested"])
@pytest.mark.parametrize("case", params(FILESYSTEM_CASES))
async def test_a_symlinked_parent_cannot_carry_a_write_outside_the_root(
    tmp_path: Path, case: Case, depth: str
) -> None:
    harness = Harness(case, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "existing").write_text("untouched\n")
    os.symlink(outside, harness.root / "escape")
    relative = "thing" if depth == "direct" else "sub/deeper/thing"
    data = {**case.spec(harness, 0), "path": str(harness.root / "escape" / relative)}
    spec = harness.parse(data)  # lexically inside the root: only the filesystem can tell
    before = tree_snapshot(outside)
    refused = f"goes through the symlink {harness.root / 'escape'}"

    with pytest.raises(ConfinementError, match=refused):
        await harness.provider.observe(spec)  # nothing read through the link either
    # applied anyway (a plan made before the link was planted): refused as well
    create = harness.provider.plan(spec, None)
    with pytest.raises(ConfinementError, match=refused):
        await harness.provider.apply(spec, create)
    with pytest.raises(ConfinementError, match=refused):
        await harness.provider.delete(spec)

    assert tree_snapshot(outside) == before


@pytest.mark.parametrize("case", params(FILESYSTEM_CASES))
async def test_a_special_file_is_observed_without_blocking_and_never_replaced(
    tmp_path: Path, case: Case
) -> None:
    harness = Harness(case, tmp_path)
    data, spec = harness.spec()
    os.mkfifo(data["path"])  # opening a FIFO for reading would hang the observer
    before = await harness.snapshot()

    plan = await asyncio.wait_for(harness.plan(spec), timeout=10)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match="refusing"):
        await harness.provider.apply(spec, plan)

    assert await harness.snapshot() == before
    assert stat.S_ISFIFO(os.lstat(data["path"]).st_mode)

"""The conformance scenarios, run on every provider of `conformance.CASES`, then
the safety cases specific to the filesystem providers.

Everything runs on real temporary directories through the provider API
(observe_many / plan / apply / delete), the way the engine calls it.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.confined import ConfinementError
from reconciler.model import Action, PermanentError, SpecError
from tests.providers.conformance import (
    CASES,
    DIRECTORY,
    FILE,
    FILESYSTEM_CASES,
    SYMLINK,
    Case,
    Drift,
    Harness,
    Invalid,
    SpecData,
    fields,
    mode_of,
    params,
    tree_snapshot,
)


@pytest.fixture(params=params(CASES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    case: Case = request.param
    return Harness(case, tmp_path)


# the scenarios every provider passes


async def test_create(harness: Harness) -> None:
    data, spec = harness.spec()
    assert not harness.case.exists(data)
    assert await harness.provider.observe(spec) is None

    plan = harness.provider.plan(spec, None)
    assert plan.action is Action.CREATE
    assert plan.changes, "a create plan lists what it will set"
    await harness.provider.apply(spec, plan)

    harness.case.check(data)
    observed = await harness.provider.observe(spec)
    assert observed is not None
    assert harness.provider.plan(spec, observed).empty


async def test_second_run_is_idempotent(harness: Harness) -> None:
    data, spec = harness.spec()
    first = await harness.converge(spec)
    assert first.action is Action.CREATE
    before = harness.snapshot()

    second = await harness.plan(spec)

    assert second.empty
    assert second.action is Action.NONE and second.changes == ()
    assert harness.snapshot() == before
    harness.case.check(data)


DRIFTS = [
    pytest.param(case, drift, id=f"{case.kind}-{drift.name}", marks=case.marks)
    for case in CASES
    for drift in case.drifts
]


@pytest.mark.parametrize(("case", "drift"), DRIFTS)
async def test_out_of_band_drift_is_detected_and_healed(
    case: Case, drift: Drift, tmp_path: Path
) -> None:
    harness = Harness(case, tmp_path)
    data, spec = harness.spec()
    await harness.converge(spec)

    drift.make(data)
    plan = await harness.plan(spec)

    assert not plan.empty, f"{drift.name} drift not detected"
    assert drift.field in fields(plan), f"plan {plan} does not name {drift.field}"
    healed = await harness.converge(spec)
    assert not healed.empty
    case.check(data)


async def test_spec_change_converges(harness: Harness) -> None:
    data, spec = harness.spec()
    await harness.converge(spec)
    new_data = harness.case.changed(data)
    new_spec = harness.parse(new_data)

    plan = await harness.plan(new_spec)

    assert plan.action is Action.UPDATE
    assert fields(plan) == harness.case.changed_fields
    await harness.converge(new_spec)
    harness.case.check(new_data)
    assert not (await harness.plan(spec)).empty, "the old spec no longer matches"


async def test_delete_removes_and_a_second_delete_is_fine(harness: Harness) -> None:
    data, spec = harness.spec()
    await harness.converge(spec)
    other_data, other_spec = harness.spec(1)
    await harness.converge(other_spec)

    await harness.provider.delete(spec)

    assert not harness.case.exists(data)
    assert await harness.provider.observe(spec) is None
    assert (await harness.plan(spec)).action is Action.CREATE
    await harness.provider.delete(spec)  # absent: not an error
    harness.case.check(other_data)  # deleting one object leaves the others alone


async def test_delete_of_an_object_never_created_is_fine(harness: Harness) -> None:
    _, spec = harness.spec()
    before = harness.snapshot()

    await harness.provider.delete(spec)

    assert harness.snapshot() == before


async def test_plan_and_observe_have_no_side_effects(harness: Harness) -> None:
    case = harness.case
    absent = harness.spec(0)[1]
    in_sync = harness.spec(1)[1]
    drifted_data, drifted = harness.spec(2)
    changed_data, original = harness.spec(3)
    for spec in (in_sync, drifted, original):
        await harness.converge(spec)
    case.drifts[0].make(drifted_data)
    changed = harness.parse(case.changed(changed_data))
    specs = [absent, in_sync, drifted, changed]
    before = harness.snapshot()

    observed = await harness.provider.observe_many(specs)
    plans = [harness.provider.plan(s, o) for s, o in zip(specs, observed, strict=True)]
    for spec in specs:
        harness.provider.plan(spec, await harness.provider.observe(spec))

    assert harness.snapshot() == before
    assert [p.action for p in plans] == [Action.CREATE, Action.NONE, Action.UPDATE, Action.UPDATE]
    again = [harness.provider.plan(s, o) for s, o in zip(specs, observed, strict=True)]
    assert again == plans, "plan is a function of spec and observation"


INVALID = [
    pytest.param(case, invalid, id=f"{case.kind}-{invalid.name}", marks=case.marks)
    for case in CASES
    for invalid in case.invalid
]


@pytest.mark.parametrize(("case", "invalid"), INVALID)
def test_invalid_spec_is_rejected(case: Case, invalid: Invalid, tmp_path: Path) -> None:
    harness = Harness(case, tmp_path)
    data = invalid.data(harness.root)

    with pytest.raises((ValidationError, SpecError)):
        harness.parse(data)


async def test_observe_many_answers_in_order(harness: Harness) -> None:
    count = 30
    pairs = [harness.spec(n) for n in range(count)]
    specs = [spec for _, spec in pairs]
    for n, spec in enumerate(specs):
        if n % 3:
            await harness.converge(spec)

    observed = await harness.provider.observe_many(specs)

    assert len(observed) == count
    assert [o is None for o in observed] == [n % 3 == 0 for n in range(count)]
    for spec, seen in zip(specs, observed, strict=True):
        assert seen == await harness.provider.observe(spec)
        if seen is not None:
            assert harness.provider.plan(spec, seen).empty
    # the objects are distinguishable, so an answer out of order would show
    assert not harness.provider.plan(specs[1], observed[2]).empty
    backwards = await harness.provider.observe_many(specs[::-1])
    assert backwards == observed[::-1]
    assert await harness.provider.observe_many([]) == []


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
    FILE.check(data)


async def test_file_refuses_to_replace_a_directory(tmp_path: Path) -> None:
    harness = Harness(FILE, tmp_path)
    data, spec = harness.spec()
    _occupy(data["path"], "directory")
    before = harness.snapshot()

    plan = await harness.plan(spec)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match="is a directory"):
        await harness.provider.apply(spec, plan)
    with pytest.raises(PermanentError, match="directory"):
        await harness.provider.delete(spec)

    assert harness.snapshot() == before


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
    FILE.check(new_data)


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
    config = harness.ctx.config_root
    (config / "files").mkdir()
    (config / "files" / "motd").write_text("hello\n")
    (config / "app.ini.j2").write_text("port = {{ port }}\n")
    path = str(harness.root / "f")

    from_source = harness.parse({"path": path, "source": "files/motd"})
    rendered = harness.parse({"path": path, "template": "app.ini.j2", "vars": {"port": 8080}})

    assert from_source.content == "hello\n"  # type: ignore[attr-defined]
    assert rendered.content == "port = 8080\n"  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match="port") as info:
        harness.parse({"path": path, "template": "app.ini.j2", "vars": {"other": 1}})
    assert info.value.field == "template"


# filesystem safety: Directory


async def test_directory_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    harness = Harness(DIRECTORY, tmp_path)
    data, spec = harness.spec()
    _occupy(data["path"], "file")
    before = harness.snapshot()

    plan = await harness.plan(spec)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match="refusing to replace"):
        await harness.provider.apply(spec, plan)
    with pytest.raises(PermanentError, match="no longer a directory"):
        await harness.provider.delete(spec)

    assert harness.snapshot() == before


async def test_directory_delete_refuses_unmanaged_entries(tmp_path: Path) -> None:
    harness = Harness(DIRECTORY, tmp_path)
    data, spec = harness.spec()
    await harness.converge(spec)
    path = Path(data["path"])
    (path / "notes.txt").write_text("mine\n")
    (path / "cache").mkdir()
    os.symlink("nowhere", path / "latest")
    before = harness.snapshot()

    with pytest.raises(PermanentError, match="not empty") as info:
        await harness.provider.delete(spec)

    for entry in ("notes.txt", "cache", "latest"):
        assert entry in str(info.value)
    assert str(path) in str(info.value)
    assert harness.snapshot() == before


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
    DIRECTORY.check(data)
    assert os.listdir(data["path"]) == []


# filesystem safety: Symlink


@pytest.mark.parametrize("occupant", ["file", "directory"])
async def test_symlink_refuses_to_replace_a_file_or_directory(
    tmp_path: Path, occupant: str
) -> None:
    harness = Harness(SYMLINK, tmp_path)
    data, spec = harness.spec()
    _occupy(data["path"], occupant)
    before = harness.snapshot()

    plan = await harness.plan(spec)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match=f"is a {occupant}"):
        await harness.provider.apply(spec, plan)
    with pytest.raises(PermanentError, match="no longer a symlink"):
        await harness.provider.delete(spec)

    assert harness.snapshot() == before


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
    data: SpecData = {**case.spec(harness.root, 0), "mode": mode}
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
    data: SpecData = {**case.spec(harness.root, 0), "owner": owner, "group": group}

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
    FILE.check(data)
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
    data = {**case.spec(harness.root, 0), "path": str(harness.root / "escape" / relative)}
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
    before = harness.snapshot()

    plan = await asyncio.wait_for(harness.plan(spec), timeout=10)
    assert fields(plan) == {"/type"}
    with pytest.raises(PermanentError, match="refusing"):
        await harness.provider.apply(spec, plan)

    assert harness.snapshot() == before
    assert stat.S_ISFIFO(os.lstat(data["path"]).st_mode)

"""The provider conformance kit: the cases that plug providers into the shared
scenarios of test_conformance.py.

A provider joins the suite by adding one `Case` to `CASES`. A case says how to
build the provider, how to make valid specs (and a changed variant of one), how
to change the real object out of band (each `Drift` names the field a plan must
then report), how to check the real object against a spec, how to snapshot the
real system (to prove that observe and plan have no side effects) and which specs
must be rejected. The scenarios run on a real target — here temporary
directories; a PostgreSQL role or an HTTP object case would point its callables
at a real server — and nothing of the provider is mocked.

Spec factories must make distinguishable objects: `spec(root, n)` for different
`n` are different objects whose observations differ, so the kit can tell whether
`observe_many` answers in order.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from reconciler.model import Plan, PrepareContext, Provider, ProviderSettings
from reconciler.providers.directory import DirectoryProvider
from reconciler.providers.files import FileProvider
from reconciler.providers.symlink import SymlinkProvider

SpecData = dict[str, Any]
Snapshot = dict[str, tuple[Any, ...]]


# the real system, observed independently of the providers


def uid_of(owner: str | int) -> int:
    text = str(owner)
    return int(text) if text.isdigit() else pwd.getpwnam(text).pw_uid


def gid_of(group: str | int) -> int:
    text = str(group)
    return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid


def mode_of(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def tree_snapshot(root: Path) -> Snapshot:
    """Every entry under `root` (itself included, symlinks not followed): type,
    mode, owner, size, mtime, ctime and content (file bytes, link target)."""
    snapshot: Snapshot = {}

    def visit(path: str) -> None:
        st = os.lstat(path)
        payload: Any = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                payload = handle.read()
        elif stat.S_ISLNK(st.st_mode):
            payload = os.readlink(path)
        snapshot[os.path.relpath(path, root)] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            payload,
        )
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name))

    visit(str(root))
    return snapshot


# the shape of a case


@dataclass(frozen=True)
class Drift:
    """One out-of-band change of a real object and the field a plan must name."""

    name: str
    field: str
    make: Callable[[SpecData], None]


@dataclass(frozen=True)
class Invalid:
    """A spec the provider must reject, in Spec.model_validate or prepare."""

    name: str
    data: Callable[[Path], SpecData]


@dataclass(frozen=True)
class Case:
    kind: str
    provider: Callable[[ProviderSettings], Provider[Any]]
    spec: Callable[[Path, int], SpecData]
    """The n-th valid spec of an object under the sandbox root."""
    changed: Callable[[SpecData], SpecData]
    """A different valid spec for the same object (an update)."""
    changed_fields: frozenset[str]
    """The fields an update from `spec` to `changed` must name."""
    check: Callable[[SpecData], None]
    """Assert that the real object matches the spec."""
    exists: Callable[[SpecData], bool]
    drifts: tuple[Drift, ...]
    invalid: tuple[Invalid, ...]
    snapshot: Callable[[Path], Snapshot] = tree_snapshot
    """The state of the real system, compared to prove a call had no side effects."""
    marks: tuple[pytest.MarkDecorator, ...] = ()
    """For example a skipif for a case whose server is not available."""

    def __str__(self) -> str:
        return self.kind


class Harness:
    """One case bound to a fresh sandbox root: the provider and its calls as the
    engine makes them."""

    def __init__(self, case: Case, tmp: Path) -> None:
        self.case = case
        self.root = tmp / "root"
        self.root.mkdir()
        config = tmp / "config"
        config.mkdir()
        self.provider = case.provider(ProviderSettings(roots=(str(self.root),)))
        self.ctx = PrepareContext(manifest=config / "manifest.yaml", config_root=config)

    def parse(self, data: SpecData) -> BaseModel:
        """What the loader does to a spec: validate, then prepare."""
        spec = self.provider.Spec.model_validate(data)
        prepared: BaseModel = self.provider.prepare(spec, self.ctx)
        return prepared

    def spec(self, n: int = 0) -> tuple[SpecData, BaseModel]:
        data = self.case.spec(self.root, n)
        return data, self.parse(data)

    def snapshot(self) -> Snapshot:
        return self.case.snapshot(self.root)

    async def plan(self, spec: BaseModel) -> Plan:
        return self.provider.plan(spec, await self.provider.observe(spec))

    async def converge(self, spec: BaseModel) -> Plan:
        """Observe, plan, apply when needed, then verify that the plan is empty;
        returns the plan that was applied."""
        plan = await self.plan(spec)
        if not plan.empty:
            await self.provider.apply(spec, plan)
        after = await self.plan(spec)
        assert after.empty, f"{self.case.kind} did not converge; still planned: {after}"
        return plan


def fields(plan: Plan) -> set[str]:
    return {change.field for change in plan.changes}


# filesystem cases


def _check_meta(st: os.stat_result, data: SpecData) -> None:
    if data.get("mode") is not None:
        assert f"{stat.S_IMODE(st.st_mode):04o}" == data["mode"]
    if data.get("owner") is not None:
        assert st.st_uid == uid_of(data["owner"])
    if data.get("group") is not None:
        assert st.st_gid == gid_of(data["group"])


def _lexists(data: SpecData) -> bool:
    return os.path.lexists(data["path"])


def _common_invalid(extra: SpecData) -> tuple[Invalid, ...]:
    """Path rules every filesystem provider enforces."""
    return (
        Invalid("missing-path", lambda root: {**extra}),
        Invalid("relative-path", lambda root: {"path": "relative/thing", **extra}),
        Invalid("outside-root", lambda root: {"path": str(root.parent / "outside"), **extra}),
        Invalid("dotdot-escape", lambda root: {"path": f"{root}/../outside", **extra}),
        Invalid("dot-segment", lambda root: {"path": f"{root}/./thing", **extra}),
        Invalid("double-slash", lambda root: {"path": f"{root}//thing", **extra}),
        Invalid("filesystem-root", lambda root: {"path": "/", **extra}),
        Invalid("unknown-field", lambda root: {"path": f"{root}/thing", "colour": "red", **extra}),
        Invalid("nul-in-path", lambda root: {"path": f"{root}/a\0b", **extra}),
        # PATH_MAX (4096 bytes with the NUL) and NAME_MAX (255 bytes, UTF-8): the
        # system would refuse them at apply time
        Invalid("path-too-long", lambda root: {"path": f"{root}/" + "d/" * 2048 + "x", **extra}),
        Invalid("name-too-long", lambda root: {"path": f"{root}/" + "é" * 128, **extra}),
    )


def _file_spec(root: Path, n: int) -> SpecData:
    return {
        "path": str(root / f"file-{n}.txt"),
        "content": f"[server]\nport = {8000 + n}\nname = file {n}\n",
        "mode": "0640",
        "owner": "daemon",
        "group": "daemon",
    }


def _file_check(data: SpecData) -> None:
    st = os.lstat(data["path"])
    assert stat.S_ISREG(st.st_mode), f"{data['path']} is not a regular file"
    assert Path(data["path"]).read_text() == data["content"]
    _check_meta(st, data)


def _file_retarget(data: SpecData) -> None:
    """Replace the file with a symlink to another file of the same directory."""
    other = Path(data["path"]).with_name("elsewhere.txt")
    other.write_text("not managed\n")
    os.unlink(data["path"])
    os.symlink(other.name, data["path"])


def _write(data: SpecData, content: bytes) -> None:
    Path(data["path"]).write_bytes(content)


def _append(data: SpecData) -> None:
    with open(data["path"], "a") as handle:
        handle.write("edited by hand\n")


FILE = Case(
    kind="File",
    provider=FileProvider,
    spec=_file_spec,
    changed=lambda data: {**data, "content": data["content"] + "workers = 8\n", "mode": "0600"},
    changed_fields=frozenset({"/content", "/mode"}),
    check=_file_check,
    exists=_lexists,
    drifts=(
        Drift("content", "/content", _append),
        Drift("truncated", "/content", lambda d: _write(d, b"")),
        Drift("binary", "/content", lambda d: _write(d, b"\x00\xff\xfe\n")),
        Drift("mode", "/mode", lambda d: os.chmod(d["path"], 0o666)),
        Drift("owner", "/owner", lambda d: os.chown(d["path"], 0, -1)),
        Drift("group", "/group", lambda d: os.chown(d["path"], -1, 0)),
        Drift("deleted", "/content", lambda d: os.unlink(d["path"])),
        Drift("replaced-by-symlink", "/type", _file_retarget),
    ),
    invalid=(
        *_common_invalid({"content": "x\n"}),
        Invalid("no-content", lambda root: {"path": f"{root}/f.txt"}),
        Invalid(
            "two-origins",
            lambda root: {"path": f"{root}/f.txt", "content": "x", "template": "t.j2"},
        ),
        Invalid(
            "vars-without-template",
            lambda root: {"path": f"{root}/f.txt", "content": "x", "vars": {"a": 1}},
        ),
        Invalid(
            "mode-not-octal", lambda root: {"path": f"{root}/f.txt", "content": "x", "mode": "0999"}
        ),
        Invalid(
            "mode-as-number", lambda root: {"path": f"{root}/f.txt", "content": "x", "mode": 416}
        ),
        Invalid(
            "mode-too-long", lambda root: {"path": f"{root}/f.txt", "content": "x", "mode": "00644"}
        ),
        Invalid(
            "mode-with-spaces",
            lambda root: {"path": f"{root}/f.txt", "content": "x", "mode": " 0644"},
        ),
        Invalid(
            "owner-empty", lambda root: {"path": f"{root}/f.txt", "content": "x", "owner": " "}
        ),
        Invalid(
            "owner-bool", lambda root: {"path": f"{root}/f.txt", "content": "x", "owner": True}
        ),
        Invalid("source-missing", lambda root: {"path": f"{root}/f.txt", "source": "nope.txt"}),
        Invalid(
            "source-escapes-config",
            lambda root: {"path": f"{root}/f.txt", "source": "../" * 32 + "etc/passwd"},
        ),
        Invalid("source-absolute", lambda root: {"path": f"{root}/f.txt", "source": "/etc/passwd"}),
        # a regular file's path cannot end in a slash: accepting one turns it into a directory
        Invalid("trailing-slash", lambda root: {"path": f"{root}/f.txt/", "content": "x"}),
    ),
)


_DIR_MODES = ("0750", "0755", "0700", "0711")


def _dir_spec(root: Path, n: int) -> SpecData:
    return {
        "path": str(root / f"dir-{n}"),
        "mode": _DIR_MODES[n % len(_DIR_MODES)],
        "owner": "daemon",
        "group": "daemon",
    }


def _dir_check(data: SpecData) -> None:
    st = os.lstat(data["path"])
    assert stat.S_ISDIR(st.st_mode), f"{data['path']} is not a directory"
    _check_meta(st, data)


def _dir_to_symlink(data: SpecData) -> None:
    other = Path(data["path"]).with_name("elsewhere")
    other.mkdir()
    os.rmdir(data["path"])
    os.symlink(other.name, data["path"])


DIRECTORY = Case(
    kind="Directory",
    provider=DirectoryProvider,
    spec=_dir_spec,
    changed=lambda data: {**data, "mode": "0770", "group": "root"},
    changed_fields=frozenset({"/mode", "/group"}),
    check=_dir_check,
    exists=_lexists,
    drifts=(
        Drift("mode", "/mode", lambda d: os.chmod(d["path"], 0o777)),
        Drift("owner", "/owner", lambda d: os.chown(d["path"], 0, -1)),
        Drift("group", "/group", lambda d: os.chown(d["path"], -1, 0)),
        Drift("deleted", "/type", lambda d: os.rmdir(d["path"])),
        Drift("replaced-by-symlink", "/type", _dir_to_symlink),
    ),
    invalid=(
        *_common_invalid({}),
        Invalid("mode-not-octal", lambda root: {"path": f"{root}/d", "mode": "rwxr-xr-x"}),
        Invalid("mode-as-number", lambda root: {"path": f"{root}/d", "mode": 493}),
        Invalid("mode-with-newline", lambda root: {"path": f"{root}/d", "mode": "0755\n"}),
        Invalid("owner-list", lambda root: {"path": f"{root}/d", "owner": ["root"]}),
        Invalid("content-field", lambda root: {"path": f"{root}/d", "content": "x"}),
    ),
)


def _link_spec(root: Path, n: int) -> SpecData:
    return {"path": str(root / f"link-{n}"), "target": f"releases/{n}"}


def _link_check(data: SpecData) -> None:
    path = data["path"]
    assert os.path.islink(path), f"{path} is not a symlink"
    assert os.readlink(path) == data["target"]


def _retarget(data: SpecData) -> None:
    os.unlink(data["path"])
    os.symlink("/somewhere/else", data["path"])


SYMLINK = Case(
    kind="Symlink",
    provider=SymlinkProvider,
    spec=_link_spec,
    changed=lambda data: {**data, "target": data["target"] + "-next"},
    changed_fields=frozenset({"/target"}),
    check=_link_check,
    exists=_lexists,
    drifts=(
        Drift("target", "/target", _retarget),
        Drift("deleted", "/target", lambda d: os.unlink(d["path"])),
    ),
    invalid=(
        *_common_invalid({"target": "somewhere"}),
        Invalid("missing-target", lambda root: {"path": f"{root}/l"}),
        Invalid("empty-target", lambda root: {"path": f"{root}/l", "target": ""}),
        Invalid("nul-in-target", lambda root: {"path": f"{root}/l", "target": "a\0b"}),
        Invalid("target-too-long", lambda root: {"path": f"{root}/l", "target": "t/" * 2048}),
        Invalid("mode-field", lambda root: {"path": f"{root}/l", "target": "x", "mode": "0777"}),
        # a symlink's path cannot end in a slash: accepting one turns it into a directory
        Invalid("trailing-slash", lambda root: {"path": f"{root}/l/", "target": "x"}),
    ),
)


FILESYSTEM_CASES: tuple[Case, ...] = (FILE, DIRECTORY, SYMLINK)
"""The cases the filesystem safety tests also run on."""

CASES: tuple[Case, ...] = (*FILESYSTEM_CASES,)
"""Every provider the shared scenarios run on: add a provider's case here."""


def params(cases: Sequence[Case]) -> list[Any]:
    """Cases as pytest parameters, with their ids and marks."""
    return [pytest.param(case, id=case.kind, marks=case.marks) for case in cases]

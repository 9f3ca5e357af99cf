"""The built-in providers' conformance cases, for the packaged kit
(`reconciler.testing`): test_conformance.py runs the shared scenarios on `CASES`,
then the safety cases specific to the filesystem providers on `FILESYSTEM_CASES`.

A built-in provider joins the suite by adding one `reconciler.testing.Case` to
`CASES` (see docs/writing-providers.md for what each field means). A case whose
target is a server names the fixture that starts it (`fixture="postgres"`) and
reads it as `h.target` in its callables; `marks` can skip it where the server
cannot run. Nothing of the provider is mocked.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql as pg_sql

from reconciler.providers import _postgres
from reconciler.providers.connection import ConnectionProvider
from reconciler.providers.directory import DirectoryProvider
from reconciler.providers.files import FileProvider
from reconciler.providers.http import HttpObjectProvider
from reconciler.providers.postgres_role import PostgresRoleProvider
from reconciler.providers.symlink import SymlinkProvider
from reconciler.testing import Case, Drift, Harness, Invalid, SpecData, tree_snapshot

__all__ = [
    "CASES",
    "DIRECTORY",
    "FILE",
    "FILESYSTEM_CASES",
    "HTTP_OBJECT",
    "POSTGRES_ROLE",
    "SYMLINK",
    "params",
    "tree_snapshot",
]

# the real system, observed independently of the providers


def uid_of(owner: str | int) -> int:
    text = str(owner)
    return int(text) if text.isdigit() else pwd.getpwnam(text).pw_uid


def gid_of(group: str | int) -> int:
    text = str(group)
    return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid


def mode_of(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# filesystem cases


def _check_meta(st: os.stat_result, data: SpecData) -> None:
    if data.get("mode") is not None:
        assert f"{stat.S_IMODE(st.st_mode):04o}" == data["mode"]
    if data.get("owner") is not None:
        assert st.st_uid == uid_of(data["owner"])
    if data.get("group") is not None:
        assert st.st_gid == gid_of(data["group"])


def _lexists(h: Harness, data: SpecData) -> bool:
    return os.path.lexists(data["path"])


PATH = "spec.path"


def _common_invalid(extra: SpecData) -> tuple[Invalid, ...]:
    """Path rules every filesystem provider enforces."""
    return (
        Invalid("missing-path", lambda h: {**extra}, PATH),
        Invalid("relative-path", lambda h: {"path": "relative/thing", **extra}, PATH),
        Invalid("outside-root", lambda h: {"path": str(h.root.parent / "out"), **extra}, PATH),
        Invalid("dotdot-escape", lambda h: {"path": f"{h.root}/../outside", **extra}, PATH),
        Invalid("dot-segment", lambda h: {"path": f"{h.root}/./thing", **extra}, PATH),
        Invalid("double-slash", lambda h: {"path": f"{h.root}//thing", **extra}, PATH),
        Invalid("filesystem-root", lambda h: {"path": "/", **extra}, PATH),
        Invalid(
            "unknown-field",
            lambda h: {"path": f"{h.root}/thing", "colour": "red", **extra},
            "spec.colour",
        ),
        Invalid("nul-in-path", lambda h: {"path": f"{h.root}/a\0b", **extra}, PATH),
        # PATH_MAX (4096 bytes with the NUL) and NAME_MAX (255 bytes, UTF-8): the
        # system would refuse them at apply time
        Invalid(
            "path-too-long", lambda h: {"path": f"{h.root}/" + "d/" * 2048 + "x", **extra}, PATH
        ),
        Invalid("name-too-long", lambda h: {"path": f"{h.root}/" + "é" * 128, **extra}, PATH),
    )


def _file_spec(h: Harness, n: int) -> SpecData:
    return {
        "path": str(h.root / f"file-{n}.txt"),
        "content": f"[server]\nport = {8000 + n}\nname = file {n}\n",
        "mode": "0640",
        "owner": "daemon",
        "group": "daemon",
    }


def _file_check(h: Harness, data: SpecData) -> None:
    st = os.lstat(data["path"])
    assert stat.S_ISREG(st.st_mode), f"{data['path']} is not a regular file"
    assert Path(data["path"]).read_text() == data["content"]
    _check_meta(st, data)


def _file_retarget(h: Harness, data: SpecData) -> None:
    """Replace the file with a symlink to another file of the same directory."""
    other = Path(data["path"]).with_name("elsewhere.txt")
    other.write_text("not managed\n")
    os.unlink(data["path"])
    os.symlink(other.name, data["path"])


def _write(data: SpecData, content: bytes) -> None:
    Path(data["path"]).write_bytes(content)


def _append(h: Harness, data: SpecData) -> None:
    with open(data["path"], "a") as handle:
        handle.write("edited by hand\n")


FILE = Case(
    provider=FileProvider,
    spec=_file_spec,
    changed=lambda data: {**data, "content": data["content"] + "workers = 8\n", "mode": "0600"},
    changed_fields=frozenset({"/content", "/mode"}),
    check=_file_check,
    exists=_lexists,
    secret=lambda h, ref: {"path": str(h.root / "secret.conf"), "content": ref, "mode": "0600"},
    drifts=(
        Drift("content", "/content", _append),
        Drift("truncated", "/content", lambda h, d: _write(d, b"")),
        Drift("binary", "/content", lambda h, d: _write(d, b"\x00\xff\xfe\n")),
        Drift("mode", "/mode", lambda h, d: os.chmod(d["path"], 0o666)),
        Drift("owner", "/owner", lambda h, d: os.chown(d["path"], 0, -1)),
        Drift("group", "/group", lambda h, d: os.chown(d["path"], -1, 0)),
        Drift("deleted", "/content", lambda h, d: os.unlink(d["path"])),
        Drift("replaced-by-symlink", "/type", _file_retarget),
    ),
    invalid=(
        *_common_invalid({"content": "x\n"}),
        Invalid("no-content", lambda h: {"path": f"{h.root}/f.txt"}),
        Invalid(
            "two-origins",
            lambda h: {"path": f"{h.root}/f.txt", "content": "x", "template": "t.j2"},
        ),
        Invalid(
            "vars-without-template",
            lambda h: {"path": f"{h.root}/f.txt", "content": "x", "vars": {"a": 1}},
        ),
        Invalid(
            "mode-not-octal", lambda h: {"path": f"{h.root}/f.txt", "content": "x", "mode": "0999"}
        ),
        Invalid(
            "mode-as-number", lambda h: {"path": f"{h.root}/f.txt", "content": "x", "mode": 416}
        ),
        Invalid(
            "mode-too-long", lambda h: {"path": f"{h.root}/f.txt", "content": "x", "mode": "00644"}
        ),
        Invalid(
            "mode-with-spaces",
            lambda h: {"path": f"{h.root}/f.txt", "content": "x", "mode": " 0644"},
        ),
        Invalid("owner-empty", lambda h: {"path": f"{h.root}/f.txt", "content": "x", "owner": " "}),
        Invalid("owner-bool", lambda h: {"path": f"{h.root}/f.txt", "content": "x", "owner": True}),
        Invalid("source-missing", lambda h: {"path": f"{h.root}/f.txt", "source": "nope.txt"}),
        Invalid(
            "source-escapes-config",
            lambda h: {"path": f"{h.root}/f.txt", "source": "../" * 32 + "etc/passwd"},
        ),
        Invalid("source-absolute", lambda h: {"path": f"{h.root}/f.txt", "source": "/etc/passwd"}),
        # a regular file's path cannot end in a slash: accepting one turns it into a directory
        Invalid("trailing-slash", lambda h: {"path": f"{h.root}/f.txt/", "content": "x"}),
    ),
)


_DIR_MODES = ("0750", "0755", "0700", "0711")


def _dir_spec(h: Harness, n: int) -> SpecData:
    return {
        "path": str(h.root / f"dir-{n}"),
        "mode": _DIR_MODES[n % len(_DIR_MODES)],
        "owner": "daemon",
        "group": "daemon",
    }


def _dir_check(h: Harness, data: SpecData) -> None:
    st = os.lstat(data["path"])
    assert stat.S_ISDIR(st.st_mode), f"{data['path']} is not a directory"
    _check_meta(st, data)


def _dir_to_symlink(h: Harness, data: SpecData) -> None:
    other = Path(data["path"]).with_name("elsewhere")
    other.mkdir()
    os.rmdir(data["path"])
    os.symlink(other.name, data["path"])


DIRECTORY = Case(
    provider=DirectoryProvider,
    spec=_dir_spec,
    changed=lambda data: {**data, "mode": "0770", "group": "root"},
    changed_fields=frozenset({"/mode", "/group"}),
    check=_dir_check,
    exists=_lexists,
    drifts=(
        Drift("mode", "/mode", lambda h, d: os.chmod(d["path"], 0o777)),
        Drift("owner", "/owner", lambda h, d: os.chown(d["path"], 0, -1)),
        Drift("group", "/group", lambda h, d: os.chown(d["path"], -1, 0)),
        Drift("deleted", "/type", lambda h, d: os.rmdir(d["path"])),
        Drift("replaced-by-symlink", "/type", _dir_to_symlink),
    ),
    invalid=(
        *_common_invalid({}),
        Invalid("mode-not-octal", lambda h: {"path": f"{h.root}/d", "mode": "rwxr-xr-x"}),
        Invalid("mode-as-number", lambda h: {"path": f"{h.root}/d", "mode": 493}),
        Invalid("mode-with-newline", lambda h: {"path": f"{h.root}/d", "mode": "0755\n"}),
        Invalid("owner-list", lambda h: {"path": f"{h.root}/d", "owner": ["root"]}),
        Invalid("content-field", lambda h: {"path": f"{h.root}/d", "content": "x"}),
    ),
)


def _link_spec(h: Harness, n: int) -> SpecData:
    return {"path": str(h.root / f"link-{n}"), "target": f"releases/{n}"}


def _link_check(h: Harness, data: SpecData) -> None:
    path = data["path"]
    assert os.path.islink(path), f"{path} is not a symlink"
    assert os.readlink(path) == data["target"]


def _retarget(h: Harness, data: SpecData) -> None:
    os.unlink(data["path"])
    os.symlink("/somewhere/else", data["path"])


SYMLINK = Case(
    provider=SymlinkProvider,
    spec=_link_spec,
    changed=lambda data: {**data, "target": data["target"] + "-next"},
    changed_fields=frozenset({"/target"}),
    check=_link_check,
    exists=_lexists,
    drifts=(
        Drift("target", "/target", _retarget),
        Drift("deleted", "/target", lambda h, d: os.unlink(d["path"])),
    ),
    invalid=(
        *_common_invalid({"target": "somewhere"}),
        Invalid("missing-target", lambda h: {"path": f"{h.root}/l"}),
        Invalid("empty-target", lambda h: {"path": f"{h.root}/l", "target": ""}),
        Invalid("nul-in-target", lambda h: {"path": f"{h.root}/l", "target": "a\0b"}),
        Invalid("target-too-long", lambda h: {"path": f"{h.root}/l", "target": "t/" * 2048}),
        Invalid("mode-field", lambda h: {"path": f"{h.root}/l", "target": "x", "mode": "0777"}),
        # a symlink's path cannot end in a slash: accepting one turns it into a directory
        Invalid("trailing-slash", lambda h: {"path": f"{h.root}/l/", "target": "x"}),
    ),
)


# HttpObject, on the real REST server of tests/httpserver.py (a thread of the test
# process, fixture `kit_api_server` of test_conformance.py), through a Connection


def _http_url(h: Harness, n: int) -> str:
    return f"/kit/{h.token}/thing-{n}"


def _http_request(h: Harness, method: str, url: str, body: Any = None) -> None:
    """A change made behind the provider's back, with another client."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(h.target.base_url + url, data, headers, method=method)
    with urllib.request.urlopen(request, timeout=5) as answer:
        answer.read()


def _http_patch(h: Harness, data: SpecData, fields: dict[str, Any]) -> None:
    _http_request(h, "PATCH", data["url"], fields)


def _http_check(h: Harness, data: SpecData) -> None:
    found = h.target.objects[data["url"]]
    assert {k: found.get(k) for k in data["body"]} == data["body"], found


HTTP_OBJECT = Case(
    provider=HttpObjectProvider,
    fixture="kit_api_server",
    documents=lambda h: [
        {
            "apiVersion": "reconciler/v1",
            "kind": "Connection",
            "metadata": {"name": "api"},
            "spec": {"type": "http", "baseUrl": h.target.base_url},
        }
    ],
    companions=(ConnectionProvider,),
    spec=lambda h, n: {
        "connection": "api",
        "url": _http_url(h, n),
        "body": {"name": f"thing-{n}", "size": n, "tags": ["kit", str(n)]},
    },
    changed=lambda data: {**data, "body": {**data["body"], "size": 100}},
    changed_fields=frozenset({"/body/size"}),
    check=_http_check,
    exists=lambda h, data: data["url"] in h.target.objects,
    drifts=(
        Drift(
            "field", "/body/size", lambda h, d: _http_request(h, "PATCH", d["url"], {"size": -1})
        ),
        Drift(
            "array", "/body/tags", lambda h, d: _http_request(h, "PATCH", d["url"], {"tags": []})
        ),
        Drift("deleted", "/body/size", lambda h, d: _http_request(h, "DELETE", d["url"])),
    ),
    invalid=(
        Invalid("no-connection", lambda h: {"url": "/x", "body": {}}, "spec.connection"),
        Invalid(
            "undeclared-connection",
            lambda h: {"connection": "nope", "url": "/x", "body": {}},
            "spec.connection",
        ),
        Invalid("unknown-field", lambda h: {"connection": "api", "url": "/x", "body": {}, "x": 1}),
    ),
    snapshot=lambda h: json.dumps(h.target.objects, sort_keys=True, default=str),
    secret=lambda h, ref: {
        "connection": "api",
        "url": _http_url(h, 99),
        "body": {"name": "with-a-secret", "password": ref},
    },
)


# PostgresRole, on the throwaway server of tests/postgres.py (fixture
# `postgres_server`), through a Connection whose password is a secret file


def _pg_documents(h: Harness) -> list[dict[str, Any]]:
    secret = h.tmp / "pg-password"
    secret.write_text(h.target.password)
    spec = h.target.connection(password={"valueFrom": {"file": str(secret)}})
    return [
        {"apiVersion": "reconciler/v1", "kind": "Connection", "metadata": {"name": "db"}}
        | {"spec": spec}
    ]


def _pg_name(h: Harness, n: int) -> str:
    return f"kit_{h.token}_{n}"


def _pg_role(h: Harness, data: SpecData) -> tuple[Any, ...] | None:
    query = "SELECT rolcanlogin, rolcreatedb, rolconnlimit FROM pg_roles WHERE rolname = %s"
    rows = h.target.sql(query, (data["name"],))
    return rows[0] if rows else None


def _pg_check(h: Harness, data: SpecData) -> None:
    assert _pg_role(h, data) == (data["login"], data["createdb"], data["connectionLimit"])


def _pg_alter(what: str) -> Callable[[Harness, SpecData], None]:
    def alter(h: Harness, data: SpecData) -> None:
        h.target.sql(pg_sql.SQL(what).format(pg_sql.Identifier(data["name"])))

    return alter


async def _pg_cleanup(h: Harness) -> None:
    await _postgres.close_pools()  # opened in this scenario's event loop
    query = "SELECT rolname FROM pg_roles WHERE rolname LIKE %s"
    for (name,) in h.target.sql(query, (f"kit_{h.token}_%",)):
        h.target.sql(pg_sql.SQL("DROP ROLE IF EXISTS {}").format(pg_sql.Identifier(name)))


POSTGRES_ROLE = Case(
    provider=PostgresRoleProvider,
    fixture="postgres_server",
    documents=_pg_documents,
    companions=(ConnectionProvider,),
    cleanup=_pg_cleanup,
    spec=lambda h, n: {
        "connection": "db",
        "name": _pg_name(h, n),
        "login": n % 2 == 0,
        "createdb": False,
        "connectionLimit": n,
    },
    changed=lambda data: {**data, "createdb": True},
    changed_fields=frozenset({"/createdb"}),
    check=_pg_check,
    exists=lambda h, data: _pg_role(h, data) is not None,
    drifts=(
        Drift("createdb", "/createdb", _pg_alter("ALTER ROLE {} CREATEDB")),
        Drift(
            "connection-limit", "/connectionLimit", _pg_alter("ALTER ROLE {} CONNECTION LIMIT 77")
        ),
        Drift("dropped", "/connectionLimit", _pg_alter("DROP ROLE {}")),
    ),
    invalid=(
        Invalid(
            "unknown-field", lambda h: {"connection": "db", "name": "x", "colour": 1}, "spec.colour"
        ),
        Invalid("no-name", lambda h: {"connection": "db"}, "spec.name"),
        Invalid(
            "inline-password",
            lambda h: {"connection": "db", "name": "x", "password": "pw"},
            "spec.password",
        ),
    ),
    snapshot=lambda h: h.target.sql(
        "SELECT rolname, rolcanlogin, rolcreatedb, rolconnlimit, rolpassword"
        " FROM pg_authid ORDER BY 1"
    ),
    secret=lambda h, ref: {
        "connection": "db",
        "name": _pg_name(h, 99),
        "login": True,
        "password": ref,
    },
    marks=(pytest.mark.timeout(60),),
)


FILESYSTEM_CASES: tuple[Case, ...] = (FILE, DIRECTORY, SYMLINK)
"""The cases the filesystem safety tests also run on."""

CASES: tuple[Case, ...] = (*FILESYSTEM_CASES, HTTP_OBJECT, POSTGRES_ROLE)
"""Every provider the shared scenarios run on: add a provider's case here."""


def params(cases: Sequence[Case]) -> list[Any]:
    """Cases as pytest parameters, with their ids and marks."""
    return [pytest.param(case, id=case.kind, marks=case.marks) for case in cases]

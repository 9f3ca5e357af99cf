"""The built-in providers' conformance cases, for the packaged kit
(`reconciler.testing`): test_conformance.py runs the shared scenarios on `CASES`,
then the safety cases specific to the filesystem providers on `FILESYSTEM_CASES`.

Every built-in provider has a case in `CASES`; a new one joins the suite by
adding its `reconciler.testing.Case` there (see docs/writing-providers.md for what
each field means). A case whose target is a server names the fixture that starts
it (`fixture="postgres_server"`) and reads it as `h.target` in its callables;
`marks` can skip it where the server cannot run. Where a kind differs from the
contract by its nature (Command), its case says so with the kit's
declared differences and skips, each with the reason. Nothing of the provider is
mocked.
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

from reconciler.model import Action
from reconciler.providers import _postgres
from reconciler.providers.command import CommandProvider
from reconciler.providers.connection import ConnectionProvider
from reconciler.providers.directory import DirectoryProvider
from reconciler.providers.files import FileProvider
from reconciler.providers.http import HttpObjectProvider
from reconciler.providers.postgres_database import PostgresDatabaseProvider
from reconciler.providers.postgres_grant import PostgresGrantProvider
from reconciler.providers.postgres_role import PostgresRoleProvider
from reconciler.providers.symlink import SymlinkProvider
from reconciler.testing import Case, Drift, Harness, Invalid, SpecData, tree_snapshot

__all__ = [
    "CASES",
    "COMMAND",
    "DIRECTORY",
    "FILE",
    "FILESYSTEM_CASES",
    "HTTP_OBJECT",
    "POSTGRES_DATABASE",
    "POSTGRES_GRANT",
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


def _pg_name(h: Harness, n: int | str) -> str:
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


# PostgresDatabase and PostgresGrant, on the same server and Connection as
# PostgresRole; what their specs refer to but they do not manage (owner and
# grantee roles, a table) is made by the case's setup and dropped by its cleanup


def _pg_sql(h: Harness, *statements: pg_sql.Composable) -> None:
    """Statements out of band, in one session."""
    with h.target.connect() as conn:
        for statement in statements:
            conn.execute(statement)


def _pg_id(*parts: str) -> pg_sql.Identifier:
    return pg_sql.Identifier(*parts)


def _pg_owner(h: Harness, n: int) -> str:
    return f"kit_{h.token}_owner{n % 2}"


async def _pg_drop_all(h: Harness) -> None:
    """Close the provider's pools (opened in this scenario's loop), then drop the
    kit_<token>_* databases (sessions ended), schema and roles."""
    await _postgres.close_pools()
    pattern = f"kit_{h.token}_%"
    with h.target.connect() as conn:
        for what, query in (
            ("DATABASE {} WITH (FORCE)", "SELECT datname FROM pg_database WHERE datname LIKE %s"),
            ("SCHEMA {} CASCADE", "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s"),
            ("ROLE {}", "SELECT rolname FROM pg_roles WHERE rolname LIKE %s"),
        ):
            for (name,) in conn.execute(query, (pattern,)).fetchall():
                conn.execute(pg_sql.SQL("DROP " + what).format(_pg_id(name)))


def _pg_database_setup(h: Harness) -> None:
    _pg_sql(h, *(pg_sql.SQL("CREATE ROLE {}").format(_pg_id(_pg_owner(h, n))) for n in (0, 1)))


def _pg_database_spec(h: Harness, n: int) -> SpecData:
    return {
        "connection": "db",
        "name": _pg_name(h, n),
        "owner": _pg_owner(h, n),
        "encoding": "UTF8",
        "locale": "C.UTF-8",
    }


def _pg_database_row(h: Harness, data: SpecData) -> tuple[Any, ...] | None:
    rows = h.target.sql(
        "SELECT pg_get_userbyid(datdba)::text, pg_encoding_to_char(encoding)::text,"
        " datcollate::text, datctype::text FROM pg_database WHERE datname = %s",
        (data["name"],),
    )
    return rows[0] if rows else None


def _pg_database_check(h: Harness, data: SpecData) -> None:
    assert _pg_database_row(h, data) == (data["owner"], "UTF8", "C.UTF-8", "C.UTF-8")


def _pg_database_alter(what: str) -> Callable[[Harness, SpecData], None]:
    def alter(h: Harness, data: SpecData) -> None:
        _pg_sql(h, pg_sql.SQL(what).format(_pg_id(data["name"])))

    return alter


POSTGRES_DATABASE = Case(
    provider=PostgresDatabaseProvider,
    fixture="postgres_server",
    documents=_pg_documents,
    companions=(ConnectionProvider,),
    setup=_pg_database_setup,
    cleanup=_pg_drop_all,
    spec=_pg_database_spec,
    changed=lambda data: {
        **data,
        "owner": data["owner"][:-1] + str(1 - int(data["owner"][-1])),
    },
    changed_fields=frozenset({"/owner"}),
    check=_pg_database_check,
    exists=lambda h, data: _pg_database_row(h, data) is not None,
    drifts=(
        Drift("owner", "/owner", _pg_database_alter("ALTER DATABASE {} OWNER TO postgres")),
        Drift("dropped", "/name", _pg_database_alter("DROP DATABASE {} WITH (FORCE)")),
    ),
    invalid=(
        Invalid(
            "unknown-field", lambda h: {"connection": "db", "name": "x", "size": 1}, "spec.size"
        ),
        Invalid("no-name", lambda h: {"connection": "db"}, "spec.name"),
        Invalid("name-too-long", lambda h: {"connection": "db", "name": "d" * 64}, "spec.name"),
        Invalid(
            "encoding-not-a-name",
            lambda h: {"connection": "db", "name": "x", "encoding": "UTF8; DROP"},
            "spec.encoding",
        ),
        Invalid(
            "undeclared-connection",
            lambda h: {"connection": "nope", "name": "x"},
            "spec.connection",
        ),
    ),
    snapshot=lambda h: h.target.sql(
        "SELECT datname, pg_get_userbyid(datdba), encoding, datcollate, datctype"
        " FROM pg_database ORDER BY 1"
    ),
    many=4,  # a CREATE DATABASE copies template0 (0.1 s): the fewest the batch takes
    marks=(pytest.mark.timeout(60),),
)


_PG_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
_PG_GRANTEES = 5
"""Grantee roles made by setup: spec n grants to role n (the batch takes 5)."""


def _pg_grant_setup(h: Harness) -> None:
    schema = _pg_name(h, "s")
    _pg_sql(
        h,
        pg_sql.SQL("CREATE SCHEMA {}").format(_pg_id(schema)),
        pg_sql.SQL("CREATE TABLE {} (id int)").format(_pg_id(schema, "t")),
        *(pg_sql.SQL("CREATE ROLE {}").format(_pg_id(_pg_name(h, n))) for n in range(_PG_GRANTEES)),
    )


def _pg_grant_spec(h: Harness, n: int) -> SpecData:
    # privileges by the bits of n + 1: each object's observation differs
    privileges = [p for i, p in enumerate(_PG_TABLE_PRIVILEGES[1:]) if (n + 1) >> i & 1]
    return {
        "connection": "db",
        "role": _pg_name(h, n),
        "on": "table",
        "schema": _pg_name(h, "s"),
        "table": "t",
        "privileges": ["SELECT", *privileges],
    }


def _pg_held(h: Harness, data: SpecData) -> set[str]:
    """The privileges the grantee holds directly on the table."""
    rows = h.target.sql(
        "SELECT a.privilege_type FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
        " aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a"
        " WHERE n.nspname = %s AND c.relname = %s AND a.grantee = %s::regrole",
        (data["schema"], data["table"], data["role"]),
    )
    return {privilege for (privilege,) in rows}


def _pg_revoke(which: str) -> Callable[[Harness, SpecData], None]:
    def revoke(h: Harness, data: SpecData) -> None:
        privileges = data["privileges"][:1] if which == "first" else data["privileges"]
        _pg_sql(
            h,
            pg_sql.SQL("REVOKE {} ON {} FROM {}").format(
                pg_sql.SQL(", ").join(pg_sql.SQL(p) for p in privileges),  # the table's names
                _pg_id(data["schema"], data["table"]),
                _pg_id(data["role"]),
            ),
        )

    return revoke


def _pg_grant_bad(**over: Any) -> Callable[[Harness], SpecData]:
    return lambda h: {**_pg_grant_spec(h, 0), **over}


POSTGRES_GRANT = Case(
    provider=PostgresGrantProvider,
    fixture="postgres_server",
    documents=_pg_documents,
    companions=(ConnectionProvider,),
    setup=_pg_grant_setup,
    cleanup=_pg_drop_all,
    spec=_pg_grant_spec,
    changed=lambda data: {**data, "privileges": [*data["privileges"], "TRIGGER"]},
    changed_fields=frozenset({"/privileges"}),
    check=lambda h, data: _pg_assert_held(h, data),
    exists=lambda h, data: bool(_pg_held(h, data)),
    drifts=(
        Drift("one-revoked", "/privileges", _pg_revoke("first")),
        Drift("all-revoked", "/privileges", _pg_revoke("all")),
    ),
    invalid=(
        Invalid("unknown-field", _pg_grant_bad(grantor="x"), "spec.grantor"),
        Invalid("not-a-table-privilege", _pg_grant_bad(privileges=["CONNECT"]), "spec.privileges"),
        Invalid("no-privileges", _pg_grant_bad(privileges=[]), "spec.privileges"),
        Invalid("unknown-object", _pg_grant_bad(on="view"), "spec.on"),
        Invalid("table-without-schema", _pg_grant_bad(schema=None)),
        Invalid(
            "no-role",
            lambda h: {
                "connection": "db",
                "on": "database",
                "database": "d",
                "privileges": ["CONNECT"],
            },
            "spec.role",
        ),
    ),
    snapshot=lambda h: h.target.sql(
        "SELECT c.oid::regclass::text, a.grantee::regrole::text, a.privilege_type"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
        " aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a"
        " WHERE n.nspname = %s ORDER BY 1, 2, 3",
        (_pg_name(h, "s"),),
    ),
    many=_PG_GRANTEES,
    marks=(pytest.mark.timeout(60),),
)


def _pg_assert_held(h: Harness, data: SpecData) -> None:
    held = _pg_held(h, data)
    assert held == set(data["privileges"]), f"{data['role']} holds {sorted(held)}"


# Command, on real processes: spec n writes v<n> into the file c<n> under the
# root, guarded by `unless` comparing the file; the run records are in the
# harness's state directory


def _command_spec(h: Harness, n: int) -> SpecData:
    return {
        "argv": ["sh", "-c", 'printf %s "$V" > "$OUT"'],
        "env": {"OUT": str(h.root / f"c{n}"), "V": f"v{n}"},
        "unless": 'test "$(cat "$OUT")" = "$V"',
    }


def _command_check(h: Harness, data: SpecData) -> None:
    assert Path(data["env"]["OUT"]).read_text() == data["env"]["V"]


def _command_rewrite(h: Harness, data: SpecData) -> None:
    Path(data["env"]["OUT"]).write_text("by hand")


def _command_snapshot(h: Harness) -> Any:
    """The root (what the commands write) and the state directory (the run
    records): observing must change neither."""
    return tree_snapshot(h.root), tree_snapshot(h.state)


COMMAND = Case(
    provider=CommandProvider,
    settings={"allow_commands": True},  # operators opt in with --allow-commands
    spec=_command_spec,
    changed=lambda data: {**data, "env": {**data["env"], "V": data["env"]["V"] + "-next"}},
    changed_fields=frozenset({"/unless"}),
    # a changed spec is a new run, with its own record (decision 0074)
    update_action=Action.CREATE,
    # a command's observation says whether it must run, before its first run too
    absent_is_none=False,
    skip={
        "test_delete": "a command cannot be un-run: delete forgets its run record and "
        "leaves what the command did (decision 0076)",
    },
    check=_command_check,
    exists=lambda h, data: os.path.exists(data["env"]["OUT"]),
    drifts=(
        Drift("rewritten", "/unless", _command_rewrite),
        Drift("deleted", "/unless", lambda h, d: os.unlink(d["env"]["OUT"])),
    ),
    invalid=(
        Invalid("shell-with-argv", lambda h: {"shell": True, "argv": ["ls"]}, "spec.argv"),
        Invalid("nothing-to-run", lambda h: {}, "spec.argv"),
        Invalid("empty-argv", lambda h: {"argv": []}, "spec.argv"),
        Invalid("command-without-shell", lambda h: {"command": "ls"}, "spec.command"),
        Invalid("relative-creates", lambda h: {"argv": ["ls"], "creates": "x"}, "spec.creates"),
        Invalid("env-name", lambda h: {"argv": ["ls"], "env": {"A-B": "1"}}, "spec.env"),
        Invalid("nul-in-argv", lambda h: {"argv": ["l\0s"]}),
        Invalid("unknown-field", lambda h: {"argv": ["ls"], "stdin": "x"}, "spec.stdin"),
    ),
    snapshot=_command_snapshot,
    # no guard: a rotated secret is a changed spec, so a new run; the command
    # prints the secret, which its note must mask
    secret=lambda h, ref: {"argv": ["sh", "-c", 'echo "token: $T"'], "env": {"T": ref}},
    many=5,  # each observation spawns a guard: the batch scenario spawns about 40
)


FILESYSTEM_CASES: tuple[Case, ...] = (FILE, DIRECTORY, SYMLINK)
"""The cases the filesystem safety tests also run on."""

CASES: tuple[Case, ...] = (
    *FILESYSTEM_CASES,
    COMMAND,
    HTTP_OBJECT,
    POSTGRES_ROLE,
    POSTGRES_DATABASE,
    POSTGRES_GRANT,
)
"""Every provider the shared scenarios run on: add a provider's case here."""


def params(cases: Sequence[Case]) -> list[Any]:
    """Cases as pytest parameters, with their ids and marks."""
    return [pytest.param(case, id=case.kind, marks=case.marks) for case in cases]

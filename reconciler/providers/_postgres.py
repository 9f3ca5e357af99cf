"""The PostgreSQL client of the `postgres` connection type (psycopg 3, async).

Every provider of a PostgreSQL kind reaches its server through `session(conn)`:
a connection from a small pool per distinct `PostgresConnection` and event loop,
at most `maxConnections` open at once. A pool is keyed by the connection's dump
(`model_dump_json`), where the password is a keyed digest, never its text; a new
password is a new dump, so a new pool. Sessions are in autocommit mode (CREATE
DATABASE cannot run in a transaction); a provider that wants one opens it.

The password goes to libpq as a keyword argument, never in a conninfo string
that an error or a log line could quote. Connection failures become provider
errors: a server that refuses the credentials or lacks the database is a
PermanentError (retrying cannot help), an unreachable or slow one a
TemporaryError. Messages are masked against the password all the same.

Also here: SCRAM-SHA-256 verifiers (RFC 5802 / 7677, as PostgreSQL stores them
in `pg_authid.rolpassword`), so a role's password is set without its text ever
reaching the server and compared without being stored anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import psycopg
from pydantic import AfterValidator, BaseModel

from reconciler.model import (
    PermanentError,
    Provider,
    TemporaryError,
    mask,
)
from reconciler.providers.connection import PostgresConnection

SCRAM_ITERATIONS = 4096
"""PostgreSQL's default `scram_iterations`."""

_PERMANENT_FATAL = re.compile(
    r"authentication failed|does not exist|no pg_hba\.conf entry|permission denied|"
    r"not permitted to log in|SSL is not enabled|certificate",
    re.IGNORECASE,
)
"""Refusals of a connection attempt that retrying the same settings cannot cure
(libpq gives no SQLSTATE for them, only the server's FATAL message)."""


class _Pool:
    """Idle sessions of one connection on one loop; `limit` bounds the open ones."""

    def __init__(self, conn: PostgresConnection) -> None:
        self.conn = conn
        self.limit = asyncio.Semaphore(conn.max_connections)
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        self.facts: dict[str, Any] = {}
        """What a provider learnt about the server once (may it read pg_authid)."""
        self.retired = False
        """Forgotten by `retain`: sessions returned to it are closed, not kept."""

    def finish(self) -> None:
        """Close every idle session without awaiting (its loop may be gone)."""
        idle, self.idle = self.idle, []
        for session in idle:
            session.pgconn.finish()


_pools: dict[tuple[str, int], tuple[asyncio.AbstractEventLoop, _Pool]] = {}


def _pool(conn: PostgresConnection) -> _Pool:
    loop = asyncio.get_running_loop()
    key = (conn.model_dump_json(), id(loop))
    found = _pools.get(key)
    if found is not None and found[0] is loop:
        return found[1]
    for other_key, (other_loop, pool) in list(_pools.items()):
        if other_loop.is_closed() or other_key == key:
            pool.finish()  # a loop that ended (a test, an earlier CLI run) left them
            del _pools[other_key]
    pool = _Pool(conn)
    _pools[key] = (loop, pool)
    return pool


async def close_pools() -> None:
    """Close every idle session of the running loop's pools (end of a daemon or a
    test); later sessions open new ones."""
    loop = asyncio.get_running_loop()
    for key, (owner, pool) in list(_pools.items()):
        if owner is loop or owner.is_closed():
            idle, pool.idle = pool.idle, []
            for session in idle:
                await session.close()
            del _pools[key]


def retain(conns: Iterable[PostgresConnection]) -> None:
    """Forget the pools of connections not in `conns` (changed or removed by a
    new revision): their idle sessions close now, busy ones when returned."""
    kept = {conn.model_dump_json() for conn in conns}
    for key, (_, pool) in list(_pools.items()):
        if key[0] not in kept:
            pool.finish()
            pool.retired = True
            del _pools[key]


async def close_idle(conn: PostgresConnection, database: str) -> None:
    """Close this process's idle sessions to `database` on the server of `conn`
    (before dropping it: our own pooled sessions must not count as users)."""
    for owner, pool in list(_pools.values()):
        same = (pool.conn.host, pool.conn.port) == (conn.host, conn.port)
        if same and pool.conn.database == database:
            idle, pool.idle = pool.idle, []
            for session in idle:
                if owner.is_closed():
                    session.pgconn.finish()
                else:
                    await session.close()


def describe_error(conn: PostgresConnection, exc: BaseException) -> str:
    """An error's message (and the server's detail), safe to show: the password
    masked wherever it occurs. Only masked, not withheld on a partial match
    (`quotes_a_secret`): libpq and the server never echo a password, and their
    messages are full of words ("password authentication failed") that a
    password may share."""
    text = str(exc).strip()
    detail = exc.diag.message_detail if isinstance(exc, psycopg.Error) else None
    if detail:
        text = f"{text} ({detail.strip()})"
    text = " ".join(text.split())
    password = conn.password if isinstance(conn.password, str) else None
    return mask(text, [password]) if password else text


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


async def _connect(conn: PostgresConnection) -> psycopg.AsyncConnection[Any]:
    where = conn.describe()
    kwargs: dict[str, Any] = {
        "host": conn.host,
        "port": conn.port,
        "dbname": conn.database,
        "user": conn.user,
        "sslmode": conn.sslmode,
        "connect_timeout": max(1, round(conn.connect_timeout)),
        "application_name": "reconciler",
        "autocommit": True,
        # a server that stops answering, or a lock another session holds, must
        # not hold a pass forever: the statement fails (TemporaryError) instead
        "options": f"-c statement_timeout={_ms(conn.statement_timeout)} "
        f"-c lock_timeout={_ms(conn.statement_timeout)}",
    }
    if isinstance(conn.password, str):
        kwargs["password"] = str(conn.password)
    if conn.sslrootcert is not None:
        kwargs["sslrootcert"] = conn.sslrootcert
    try:
        async with asyncio.timeout(conn.connect_timeout):
            return await psycopg.AsyncConnection.connect(**kwargs)
    except TimeoutError:
        raise TemporaryError(
            f"{where}: no connection within the timeout of {conn.connect_timeout:g} s"
        ) from None
    except psycopg.Error as exc:
        message = describe_error(conn, exc)
        if "FATAL" in message and _PERMANENT_FATAL.search(message):
            raise PermanentError(f"{where}: the server refused the connection: {message}") from None
        raise TemporaryError(f"{where}: cannot connect: {message}") from None


@asynccontextmanager
async def session(conn: PostgresConnection) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A session (autocommit) of the pool of `conn`, returned to it afterwards
    unless it broke. Raises TemporaryError / PermanentError when it cannot connect."""
    pool = _pool(conn)
    async with pool.limit:
        session = pool.idle.pop() if pool.idle else await _connect(conn)
        try:
            yield session
        except Exception:
            _release(pool, session)
            raise
        except BaseException:
            session.pgconn.finish()  # cancelled mid-statement: never reused
            raise
        _release(pool, session)


def _release(pool: _Pool, session: psycopg.AsyncConnection[Any]) -> None:
    """Back to the pool if it is still usable, outside any transaction."""
    idle = session.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if session.closed or not idle or pool.retired:
        session.pgconn.finish()
    else:
        pool.idle.append(session)


def facts(conn: PostgresConnection) -> dict[str, Any]:
    """A scratch table of facts about the server of `conn` (per pool)."""
    return _pool(conn).facts


def operation_error(conn: PostgresConnection, what: str, exc: psycopg.Error) -> Exception:
    """A provider error for a failed statement: which, where, and why (masked).

    A lost connection, a lock timeout, a serialization failure or too many
    connections are temporary; everything else the server rejected is permanent
    until the spec changes."""
    message = f"{conn.describe()}: {what}: {describe_error(conn, exc)}"
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.OperationalError) and not state:
        return TemporaryError(message)
    if state[:2] in ("08", "40", "53", "55", "57"):
        return TemporaryError(message)
    return PermanentError(message)


async def ping(conn: PostgresConnection) -> None:
    """The server answers `SELECT 1` with these credentials, or raise."""
    try:
        async with session(conn) as s:
            await s.execute("SELECT 1")
    except psycopg.Error as exc:
        raise operation_error(conn, "ping", exc) from None


# SCRAM-SHA-256 verifiers


def saslprep(password: str) -> bytes:
    """The bytes PostgreSQL hashes for `password`: SASLprep (RFC 4013) when the
    text passes it, else the raw UTF-8 (as PostgreSQL falls back)."""
    if password.isascii():
        return password.encode()
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    text = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if not text or any(check(ch) for ch in text for check in prohibited):
        return password.encode()
    return text.encode()


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The verifier PostgreSQL would store for `password` (a fresh random salt
    unless given): `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    stored_key, server_key = _keys(password, salt, iterations)
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
        f"{b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


_VERIFIER = re.compile(
    r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$"
)


def password_matches(password: str, stored: str, role: str) -> bool | None:
    """Whether `stored` (a `rolpassword`) is a verifier of `password`: for SCRAM,
    recomputed with the stored salt and iteration count; for the legacy MD5 form,
    md5(password || role). None when `stored` is in neither form."""
    match = _VERIFIER.match(stored)
    if match is not None:
        iterations = int(match.group(1))
        if not 1 <= iterations <= 10_000_000:
            return None
        salt, stored_key, server_key = (base64.b64decode(match.group(i)) for i in (2, 3, 4))
        mine = _keys(password, salt, iterations)
        return hmac.compare_digest(mine[0], stored_key) and hmac.compare_digest(mine[1], server_key)
    if stored.startswith("md5") and len(stored) == 35:
        mine_md5 = "md5" + hashlib.md5((password + role).encode()).hexdigest()
        return hmac.compare_digest(mine_md5, stored)
    return None


# what the providers of the PostgreSQL kinds share


def check_name(value: str) -> str:
    """A PostgreSQL identifier as given: 1 to 63 bytes of UTF-8 without NUL (the
    server would silently truncate a longer one, and never match it again)."""
    if not value or len(value.encode()) > NAME_BYTES or "\x00" in value:
        raise ValueError(f"expected a name of 1 to {NAME_BYTES} bytes without NUL, found {value!r}")
    return value


NAME_BYTES = 63
"""NAMEDATALEN - 1 of a stock build."""

PgName = Annotated[str, AfterValidator(check_name)]


SpecT = TypeVar("SpecT", bound=BaseModel)


class PostgresProvider(Provider[SpecT]):
    """Base of the PostgreSQL kinds: specs name a `postgres` Connection."""

    connection_type = "postgres"

    def conn(self, spec: SpecT) -> PostgresConnection:
        return self.connection(spec, PostgresConnection)

    def groups(
        self, specs: Sequence[SpecT], target: Callable[[SpecT], PostgresConnection] | None = None
    ) -> list[tuple[PostgresConnection, list[int]]]:
        """The specs' indexes grouped by the server session they need (one query
        per group); `target` picks it (default: the named connection)."""
        pick = target if target is not None else self.conn
        grouped: dict[str, tuple[PostgresConnection, list[int]]] = {}
        for index, spec in enumerate(specs):
            conn = pick(spec)
            grouped.setdefault(conn.model_dump_json(), (conn, []))[1].append(index)
        return list(grouped.values())

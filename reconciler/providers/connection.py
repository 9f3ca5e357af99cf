"""`Connection`: how resources reach a remote system, declared in the repository.

As Terraform declares a provider block, a repository declares each server its
resources live on once, by name:

    kind: Connection
    metadata: {name: main-db}
    spec: {type: postgres, host: 127.0.0.1, user: admin,
           password: {valueFrom: {file: /run/secrets/db}}}

and a resource of a kind that needs one names it with `spec.connection: main-db`
(its provider's `connection_type` says which type). The resource then depends
on the Connection implicitly: an unreachable server fails the Connection, and
its resources wait as Blocked instead of each failing on its own.

Secrets only by reference (`SecretRef`): resolved at load time into `Sensitive`
values, dumped as keyed digests, never stored, logged or shown. The table of the
enforced revision's connections (`Connections`) is filled by `bind` before each
pass over a new desired state; providers read it with `Provider.connection`.

Observing a Connection checks that its server answers (`ping` of the type's
client module, `_postgres` or `_http`); there is nothing to create, change or
delete, so its plan is always empty.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, field_validator

from reconciler.model import (
    CONNECTION_KIND,
    NO_CHANGES,
    Observed,
    PermanentError,
    Plan,
    PrepareContext,
    Provider,
    ResourceId,
    SecretRef,
    SensitiveStr,
    SpecError,
    is_secret_ref,
    parse_duration,
)


def _duration(value: Any) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PostgresConnection(_Base):
    """A PostgreSQL server, reached with psycopg 3 (libpq)."""

    type: Literal["postgres"]
    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(default="postgres", min_length=1)
    user: str = Field(min_length=1)
    password: SecretRef | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    sslrootcert: str | None = None
    """A CA certificate file (absolute path) for verify-ca / verify-full."""
    connect_timeout: Duration = Field(default=10.0, alias="connectTimeout")
    statement_timeout: Duration = Field(default=60.0, alias="statementTimeout")
    """Longest a statement may run or wait for a lock; past it the statement
    fails with a temporary error (retried later) instead of holding the pass."""
    max_connections: int = Field(default=4, ge=1, le=64, alias="maxConnections")
    """Sessions the daemon may hold open to this server at once."""

    def describe(self) -> str:
        return f"postgres://{self.user}@{self.host}:{self.port}/{self.database}"


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class BasicAuth(_Base):
    username: str = Field(min_length=1)
    password: SecretRef


class HttpAuth(_Base):
    """Exactly one of a bearer token or a user name and password."""

    bearer: SecretRef | None = None
    basic: BasicAuth | None = None

    @field_validator("basic")
    @classmethod
    def _one(cls, value: BasicAuth | None, info: Any) -> BasicAuth | None:
        if value is not None and info.data.get("bearer") is not None:
            raise ValueError("expected one of bearer or basic, found both")
        return value


def _text_or_ref(value: Any) -> Any:
    if isinstance(value, str) or is_secret_ref(value):
        return value
    raise ValueError(f"expected text or a secret reference {{valueFrom: ...}}, found {value!r}")


HeaderValue = Annotated[SensitiveStr | dict[str, Any], BeforeValidator(_text_or_ref)]
"""A header's value: plain text, or a secret reference resolved at load time."""


class HttpConnection(_Base):
    """An HTTP(S) API, reached with httpx: one client per connection."""

    type: Literal["http"]
    base_url: str = Field(alias="baseUrl")
    headers: dict[str, HeaderValue] = {}
    """Sent with every request; a value may be a secret reference (an API key)."""
    auth: HttpAuth | None = None
    ca_file: str | None = Field(default=None, alias="caFile")
    """A CA bundle (absolute path, PEM) that signs the server's certificate."""
    verify: bool = True
    """Check the server's TLS certificate (never turn off outside tests)."""
    timeout: Duration = 30.0
    """Of each request: connect, each read, each write."""
    max_in_flight: int = Field(default=8, ge=1, le=256, alias="maxInFlight")
    """Requests sent at once on this connection."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(
                f"expected an absolute http:// or https:// URL without query, found {value!r}"
            )
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
        return value

    def describe(self) -> str:
        return self.base_url


ConnectionType = Annotated[PostgresConnection | HttpConnection, Field(discriminator="type")]


class ConnectionSpec(RootModel[ConnectionType]):
    """The spec of a Connection: one of the types above, chosen by `type`."""

    model_config = ConfigDict(frozen=True)


class _Client(Protocol):
    async def ping(self, connection: Any) -> None: ...


def _client(type_: str) -> _Client:
    """The client module of a connection type (`_postgres`, `_http`), imported when
    first used so a tree without such connections never loads psycopg or httpx."""
    return cast(_Client, importlib.import_module(f"reconciler.providers._{type_}"))


class ConnectionProvider(Provider[ConnectionSpec]):
    kind = CONNECTION_KIND
    Spec = ConnectionSpec
    summary = "How resources reach a server (postgres, http); secrets by reference."

    def prepare(self, spec: ConnectionSpec, ctx: PrepareContext) -> ConnectionSpec:
        conn = spec.root
        if isinstance(conn, PostgresConnection):
            _absolute(conn.sslrootcert, ("sslrootcert",))
            password = _secret(ctx, conn.password, ("password",))
            return ConnectionSpec(conn.model_copy(update={"password": password}))
        _absolute(conn.ca_file, ("caFile",))
        headers = {
            name: _secret(ctx, value, ("headers", name)) if isinstance(value, dict) else value
            for name, value in conn.headers.items()
        }
        auth = conn.auth
        if auth is not None and auth.bearer is not None:
            auth = auth.model_copy(update={"bearer": _secret(ctx, auth.bearer, ("auth", "bearer"))})
        elif auth is not None and auth.basic is not None:
            basic = auth.basic
            password = _secret(ctx, basic.password, ("auth", "basic", "password"))
            auth = auth.model_copy(
                update={"basic": basic.model_copy(update={"password": password})}
            )
        elif auth is not None:
            raise SpecError(("auth",), "expected one of bearer or basic")
        return ConnectionSpec(conn.model_copy(update={"headers": headers, "auth": auth}))

    def describe(self, spec: ConnectionSpec) -> str:
        return spec.root.describe()

    def bind(self, specs: Mapping[ResourceId, ConnectionSpec]) -> None:
        self.settings.connections.install(
            {rid.partition("/")[2]: spec.root for rid, spec in specs.items()}
        )
        http = [spec.root for spec in specs.values() if isinstance(spec.root, HttpConnection)]
        if http or "reconciler.providers._http" in sys.modules:  # clients of gone ones close
            from reconciler.providers import _http

            _http.retain(http)
        pg = [spec.root for spec in specs.values() if isinstance(spec.root, PostgresConnection)]
        if pg or "reconciler.providers._postgres" in sys.modules:  # and sessions
            from reconciler.providers import _postgres

            _postgres.retain(pg)

    async def observe_many(self, specs: Sequence[ConnectionSpec]) -> list[Observed | None]:
        """Each server answers, or the call raises (the engine then asks for each
        connection alone, so one server down fails only its own Connection)."""
        await asyncio.gather(*(_client(spec.root.type).ping(spec.root) for spec in specs))
        return [{"reachable": True} for _ in specs]

    def plan(self, spec: ConnectionSpec, observed: Observed | None) -> Plan:
        return NO_CHANGES

    async def apply(self, spec: ConnectionSpec, plan: Plan) -> None:
        raise PermanentError("a Connection has nothing to apply")  # its plan is empty

    async def delete(self, spec: ConnectionSpec) -> None:
        """Nothing to delete: a Connection only describes a server."""


def _absolute(path: str | None, where: tuple[str | int, ...]) -> None:
    if path is not None and not path.startswith("/"):
        raise SpecError(where, f"expected an absolute path, found {path!r}")


def _secret(ctx: PrepareContext, value: Any, where: tuple[str | int, ...]) -> Any:
    if value is None or not isinstance(value, dict):
        return value
    return ctx.secret(value, where)


__all__ = [
    "BasicAuth",
    "ConnectionProvider",
    "ConnectionSpec",
    "HttpAuth",
    "HttpConnection",
    "PostgresConnection",
]

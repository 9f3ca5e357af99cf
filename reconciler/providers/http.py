"""`HttpObject`: an object behind a REST API, addressed by URL on a Connection.

    kind: HttpObject
    metadata: {name: team-a}
    spec:
      connection: api                  # a Connection of type http
      url: /teams/team-a               # relative to the connection's baseUrl
      body: {name: team-a, plan: pro}  # the fields this object must have
      create: {method: POST, url: /teams}   # default: PUT to url
      update: {method: PATCH}               # default: PUT
      ignoreFields: [/plan]            # JSON pointers into the object

Read by GET of `url` (404: absent); created by PUT to `url`, or by POST of the
body to a collection URL; updated by PUT or PATCH of the body; deleted by
DELETE (404: already gone). Drift compares only the fields the body sets (a
subset comparison: objects recursively, arrays and scalars whole) minus
`ignoreFields`, so what the server adds (ids, timestamps, defaults) is no drift.
Plan changes are JSON pointers `/body/...`.

Any value of the body may be a secret reference (`{valueFrom: {env: NAME}}`):
resolved at load time into a `Sensitive` string, sent as its text, masked in
plans and errors, and dumped (stored spec, spec hash) as its keyed digest.

Answers: 429 and 5xx are TemporaryError with the Retry-After delay when the
server gives one (else the engine's backoff); 409 on a create is TemporaryError
(the object appeared meanwhile: the next pass observes it); any other 4xx is
PermanentError quoting the first bytes of the answer, redacted with every secret
of the connection and of the body. Requests go through `_http`, one client per
connection with at most `maxInFlight` requests at once; `observe_many` and
`apply_many` send theirs concurrently through it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator, model_validator

from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    JsonPointers,
    Observed,
    PermanentError,
    Plan,
    PrepareContext,
    Provider,
    ResourceId,
    Sensitive,
    TemporaryError,
)
from reconciler.providers import _http
from reconciler.providers.connection import HttpConnection

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESERVED_HEADERS = frozenset({"authorization", "content-type", "content-length", "host"})


def _dump_json(value: Any) -> Any:
    """A body for dumps: Sensitive strings as their markers, at any depth."""
    if isinstance(value, Sensitive):
        return value.marker
    if isinstance(value, dict):
        return {k: _dump_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump_json(v) for v in value]
    return value


def _check_json(value: Any, where: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where or '/'}: {value} is not a JSON number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}/{i}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where or '/'}: key {key!r} is not a string")
            _check_json(item, f"{where}/{_escape(key)}")
        return
    raise ValueError(
        f"{where or '/'}: a {type(value).__name__} is not a JSON value (quote dates and times)"
    )


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _relative_url(value: str) -> str:
    if (
        not value.startswith("/")
        or value.startswith("//")
        or re.search(r"[\s#\\]", value)
        or any(part in (".", "..") for part in value.split("?")[0].split("/"))
    ):
        raise ValueError(
            f"expected a path relative to the connection's baseUrl such as /things/a, "
            f"found {value!r}"
        )
    return value


JsonObject = Annotated[dict[str, Any], PlainSerializer(_dump_json)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CreateSpec(_Base):
    method: Literal["PUT", "POST"] = "PUT"
    url: str | None = None
    """POST only: the collection the body is posted to."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _relative_url(value)

    @model_validator(mode="after")
    def _post_needs_url(self) -> CreateSpec:
        if self.method == "POST" and self.url is None:
            raise ValueError("create.method POST needs create.url, the collection to post to")
        if self.method == "PUT" and self.url is not None:
            raise ValueError("create.url is only for POST (PUT creates at the object's url)")
        return self


class UpdateSpec(_Base):
    method: Literal["PUT", "PATCH"] = "PUT"


class HttpObjectSpec(_Base):
    connection: str = Field(min_length=1)
    url: str
    body: JsonObject
    create: CreateSpec = CreateSpec()
    update: UpdateSpec = UpdateSpec()
    ignore_fields: JsonPointers = Field(default=(), alias="ignoreFields")
    headers: dict[str, str] = {}
    """Sent with this object's requests (not secrets: those go on the Connection)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _relative_url(value)

    @field_validator("body")
    @classmethod
    def _body(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json(value, "")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name} is set by the connection, not per object")
        return value


def _resolve(ctx: PrepareContext, value: Any, where: tuple[str | int, ...]) -> Any:
    secret = ctx.secret(value, where)
    if secret is not None:
        return secret
    if isinstance(value, dict):
        return {k: _resolve(ctx, v, (*where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(ctx, v, (*where, i)) for i, v in enumerate(value)]
    return value


def _has_secret(value: Any) -> bool:
    if isinstance(value, Sensitive):
        return True
    if isinstance(value, dict):
        return any(_has_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_secret(v) for v in value)
    return False


def _secrets_of(value: Any, found: list[str]) -> list[str]:
    if isinstance(value, Sensitive):
        found.append(str.__str__(value))
    elif isinstance(value, dict):
        for item in value.values():
            _secrets_of(item, found)
    elif isinstance(value, list):
        for item in value:
            _secrets_of(item, found)
    return found


def _same(desired: Any, seen: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0, arrays element by element."""
    if isinstance(desired, bool) or isinstance(seen, bool):
        return type(desired) is type(seen) and desired == seen
    if isinstance(desired, int | float) and isinstance(seen, int | float):
        return desired == seen
    if isinstance(desired, list) and isinstance(seen, list):
        return len(desired) == len(seen) and all(map(_same, desired, seen))
    if isinstance(desired, dict) and isinstance(seen, dict):
        return desired.keys() == seen.keys() and all(_same(v, seen[k]) for k, v in desired.items())
    if isinstance(desired, str) and isinstance(seen, str):
        return str.__eq__(desired, seen)
    return desired is None and seen is None


def _changes(desired: Any, seen: Any, pointer: str, ignored: tuple[str, ...]) -> list[Change]:
    """The changes that make `seen` hold `desired`: only what `desired` sets."""
    if any(pointer == p or pointer.startswith(p + "/") for p in ignored):
        return []
    if isinstance(desired, dict) and isinstance(seen, dict):
        changes: list[Change] = []
        for key, value in desired.items():
            child = f"{pointer}/{_escape(key)}"
            if key in seen:
                changes += _changes(value, seen[key], child, ignored)
            elif not any(child == p or child.startswith(p + "/") for p in ignored):
                changes.append(_change(child, None, value, absent=True))
        return changes
    if _same(desired, seen):
        return []
    return [_change(pointer, seen, desired)]


def _change(pointer: str, before: Any, after: Any, *, absent: bool = False) -> Change:
    field = "/body" + pointer
    if _has_secret(after):
        return Change.masked(field, absent=absent)
    return Change(field, before, _dump_json(after))


class HttpObjectProvider(Provider[HttpObjectSpec]):
    kind = "HttpObject"
    Spec = HttpObjectSpec
    summary = "An object behind a REST API on an http Connection: GET, PUT/POST, PATCH, DELETE."
    connection_type = "http"

    def prepare(self, spec: HttpObjectSpec, ctx: PrepareContext) -> HttpObjectSpec:
        body = _resolve(ctx, spec.body, ("body",))
        return spec.model_copy(update={"body": body})

    def describe(self, spec: HttpObjectSpec) -> str:
        return f"{spec.url} on {spec.connection}"

    def bind(self, specs: Mapping[ResourceId, HttpObjectSpec]) -> None:
        # retire the clients of connections no object of this revision uses
        named = {spec.connection for spec in specs.values()}
        conns = []
        for name in named:
            try:
                conns.append(self.settings.connections.get(name, HttpConnection))
            except PermanentError:
                continue
        _http.retain(conns)

    def _conn(self, spec: HttpObjectSpec) -> tuple[HttpConnection, list[str]]:
        conn = self.connection(spec, HttpConnection)
        return conn, _http.secrets(conn) + _secrets_of(spec.body, [])

    async def observe_many(self, specs: Sequence[HttpObjectSpec]) -> list[Observed | None]:
        results = await asyncio.gather(*(self._observe(s) for s in specs), return_exceptions=True)
        observed: list[Observed | None] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the engine then observes each alone
            observed.append(result)
        return observed

    async def _observe(self, spec: HttpObjectSpec) -> Observed | None:
        conn, secrets = self._conn(spec)
        answer = await _http.request(conn, "GET", spec.url, headers=spec.headers)
        if answer.status == 404:
            return None
        _check(answer, "GET", conn, spec.url, secrets)
        return {"body": answer.json_object(f"GET {conn.base_url}{spec.url}")}

    def plan(self, spec: HttpObjectSpec, observed: Observed | None) -> Plan:
        if observed is None:
            changes = [
                _change(f"/{_escape(key)}", None, value, absent=True)
                for key, value in spec.body.items()
            ]
            return Plan(Action.CREATE, tuple(changes))
        changes = _changes(spec.body, observed["body"], "", spec.ignore_fields)
        return Plan(Action.UPDATE, tuple(changes)) if changes else NO_CHANGES

    async def apply(self, spec: HttpObjectSpec, plan: Plan) -> None:
        conn, secrets = self._conn(spec)
        method: str = spec.update.method
        url = spec.url
        if plan.action is Action.CREATE:
            method, url = spec.create.method, spec.create.url or spec.url
        answer = await _http.request(conn, method, url, body=spec.body, headers=spec.headers)
        if answer.status == 409 and plan.action is Action.CREATE:
            raise TemporaryError(
                f"{method} {conn.base_url}{url} answered 409: the object exists already "
                "(it is observed again)"
            )
        if answer.status == 404 and plan.action is Action.UPDATE:
            raise TemporaryError(
                f"{method} {conn.base_url}{url} answered 404: the object is gone "
                "(it is observed again)"
            )
        _check(answer, method, conn, url, secrets)

    async def delete(self, spec: HttpObjectSpec) -> None:
        conn, secrets = self._conn(spec)
        answer = await _http.request(conn, "DELETE", spec.url, headers=spec.headers)
        if answer.status != 404:
            _check(answer, "DELETE", conn, spec.url, secrets)


def _check(
    answer: _http.Answer, method: str, conn: HttpConnection, url: str, secrets: list[str]
) -> None:
    """Raise the provider error an answer that is not a success stands for."""
    status = answer.status
    if 200 <= status < 300:
        return
    what = f"{method} {conn.base_url}{url} answered {status}"
    if status == 429 or status >= 500:
        delay = answer.retry_after()
        after = f", retry after {delay:g} s" if delay is not None else ""
        raise TemporaryError(f"{what}{after}: {answer.shown(secrets)}", delay=delay)
    if 300 <= status < 400:
        location = _http.redact(answer.headers.get("location", "?"), secrets)
        raise PermanentError(f"{what}: redirected to {location} (give the final URL)")
    raise PermanentError(f"{what}: {answer.shown(secrets)}")


__all__ = ["CreateSpec", "HttpObjectProvider", "HttpObjectSpec", "UpdateSpec"]

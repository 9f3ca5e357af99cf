"""The tables every provider shares through `ProviderSettings` (reconciler.model):
`Connections`, the enforced revision's Connection resources by name, and
`Changes`, when resources were last applied. The engine and the Connection
provider fill them; providers read them. And `RunRecords`, what a provider
remembers between runs when the state is shared by several daemons (a store
implements it). Imports only `reconciler.errors`; `reconciler.model`
re-exports the names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from reconciler.errors import PermanentError

ConnectionT = TypeVar("ConnectionT", bound=BaseModel)


class Connections:
    """The `Connection` resources of the desired state being enforced, by name:
    how providers of remote objects reach their server. One table per registry,
    shared by every provider through `ProviderSettings.connections`; the
    Connection provider fills it (`Provider.bind`) before each pass over a new
    desired state, so a rejected revision never changes it."""

    def __init__(self) -> None:
        self._by_name: dict[str, BaseModel] = {}

    def install(self, by_name: Mapping[str, BaseModel]) -> None:
        self._by_name = dict(by_name)

    def get(self, name: str, expected: type[ConnectionT]) -> ConnectionT:
        """The connection `name`, which must be an `expected`; PermanentError if it
        is not declared in the enforced revision (a prune after the Connection was
        removed with its resources) or is of another type."""
        found = self._by_name.get(name)
        if found is None:
            raise PermanentError(
                f"connection {name!r} is not declared in this revision "
                f"(add a Connection named {name!r}, or keep it until its resources are gone)"
            )
        if not isinstance(found, expected):
            raise PermanentError(f"connection {name!r} is not a {expected.__name__}")
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


class Changes:
    """When resources last changed, for providers whose objects must act on a
    change of another resource (a Command's `refreshOn`: restart a service after
    its config file was rewritten). `token(rid)` is an opaque text that changes
    each time `rid` is applied (created, updated, healed) and None while it is
    not in sync; the engine fills it, from the store, before each pass, for the
    resources some provider `refreshes` on."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def install(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    def set(self, rid: str, token: str) -> None:
        self._tokens[rid] = token

    def token(self, rid: str) -> str | None:
        return self._tokens.get(rid)


class RunRecords(Protocol):
    """Small JSON records by key, kept by the state store for a provider that
    must remember what it did (a guard-less Command's last run), so a daemon
    that takes over from another finds them (decision 0151). Calls block (run
    them in a thread); `put` and `drop` are durable when they return.

    Errors are the providers' own: `put` and `drop` raise `PermanentError` when
    the store refuses the write (a newer leader holds the lease: fenced) or
    cannot make it, their message naming the store; `get_many` raises
    `TemporaryError` when the store cannot be read."""

    def get_many(self, keys: Sequence[str]) -> list[Mapping[str, Any] | None]:
        """The record of each key, in order (None: none)."""
        ...

    def put(self, key: str, record: Mapping[str, Any]) -> None: ...

    def drop(self, key: str) -> None: ...

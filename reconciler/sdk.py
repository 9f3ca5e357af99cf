"""The public surface for provider authors: everything a provider package needs,
and nothing else of reconciler's internals.

A provider is a `Provider` subclass for one kind, registered under the
`reconciler.providers` entry-point group of its own package (see
docs/writing-providers.md). Import from here, not from the modules behind it:
the names in `__all__` are stable within a major version (docs/providers.md
says what that promises); everything else in reconciler may change.

    from reconciler.sdk import Plan, Provider, Spec

The conformance kit that checks a provider against the engine's expectations is
`reconciler.testing`, a pytest plugin installed with the package.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from reconciler.confined import Batch, ConfinementError, Roots
from reconciler.model import (
    NO_CHANGES,
    PREPARED,
    SENSITIVE,
    WATCHING,
    Action,
    Change,
    Connections,
    Observed,
    PermanentError,
    Plan,
    PrepareContext,
    Provider,
    ProviderError,
    ProviderSettings,
    ResourceId,
    SecretRef,
    Sensitive,
    SensitiveStr,
    SpecError,
    TemporaryError,
    is_prepared,
    mask,
    parse_duration,
)
from reconciler.providers._fs import LocalFileProvider, PathSpec
from reconciler.providers.connection import HttpConnection, PostgresConnection


class Spec(BaseModel):
    """The base of a provider's spec: unknown fields are errors (named with their
    file and line), specs are immutable, and a field may be written by its alias
    (`onlyIf`) or its name. Validators of what only a user writes (an "exactly one
    of" rule) should skip specs read back from the store: `is_prepared(info)`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


__all__ = [
    "NO_CHANGES",
    "PREPARED",
    "SENSITIVE",
    "WATCHING",
    "Action",
    "Batch",
    "Change",
    "ConfinementError",
    "Connections",
    "HttpConnection",
    "LocalFileProvider",
    "Observed",
    "PathSpec",
    "PermanentError",
    "Plan",
    "PostgresConnection",
    "PrepareContext",
    "Provider",
    "ProviderError",
    "ProviderSettings",
    "ResourceId",
    "Roots",
    "SecretRef",
    "Sensitive",
    "SensitiveStr",
    "Spec",
    "SpecError",
    "TemporaryError",
    "is_prepared",
    "mask",
    "parse_duration",
]

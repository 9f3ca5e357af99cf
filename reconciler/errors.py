"""The errors of the provider contract: what a provider raises and the engine
turns into outcomes (TemporaryError, PermanentError), and what `prepare` raises
about a spec (SpecError). Imports nothing of ours, so the secrets module below
`model` can raise them too; `reconciler.model` re-exports every name.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of what a provider may raise; the engine turns it into an outcome."""


class TemporaryError(ProviderError):
    """Retry later: after `delay` seconds if given, else after the engine's backoff."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ProviderError):
    """Retrying the same spec cannot help; wait for a new spec."""


class SpecError(ValueError):
    """Raised by `Provider.prepare`: a spec that is well-formed but unusable.

    `field` is a field name or a path into the spec (`("vars", "db", 0)`); errors
    name it with the line it is on."""

    def __init__(self, field: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path: tuple[str | int, ...] = field if isinstance(field, tuple) else (field,)
        self.field = ".".join(str(part) for part in self.path)

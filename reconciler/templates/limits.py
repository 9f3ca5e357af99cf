"""What one render may cost (`TemplateLimits`; decision 0054) and the error a
crossed limit raises: the bottom of the package, used by the loader, the
sandbox and `render` (which turns `_Limit` into a `SpecError`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "MIB", "TemplateLimits"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """What one render may cost. Crossing any limit is an error naming it."""

    output_bytes: int = 8 * MIB
    """Rendered output (UTF-8), and any single value computed on the way."""
    seconds: float = 5.0
    """Wall-clock time of loading, compiling and rendering."""
    template_bytes: int = 1 * MIB
    """Each template file loaded: the one named and every include, import, extends."""
    depth: int = 100
    """Calls (macros, `caller()`, methods) nested in one another."""
    work_factor: int = 8
    """All values computed by calls, filters and operators together: this many
    times `output_bytes`. Bounds what a template can keep alive at once."""


DEFAULT_LIMITS = TemplateLimits()

_INT_BITS = 65536
"""Largest integer a template may compute (bits): enough for any port or size,
far below what makes multiplication or `str()` slow."""


class _Limit(Exception):
    """A limit crossed. Its message is fixed text and figures, never input."""

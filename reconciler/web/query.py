"""The status page's query: what a visitor filters, sorts and pages by, parsed
from `?q=&state=&kind=&sort=&order=&page=&size=` and checked.

The same parameters drive the server-rendered page (`/`), its live fragment
(`/live`) and the JSON answer (`/api/v1/page`), so a link, a bookmarked filter
and the script's polls all ask for the same thing. A plain GET form submits
every field, empty ones too, so an empty value means "not given"; anything
unknown, repeated or out of bounds is refused (a 400 saying what was expected)
rather than ignored: a misspelt filter silently dropped would show unfiltered
data that looks filtered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Final
from urllib.parse import urlencode

from reconciler.fsm import State

DEFAULT_SIZE: Final = 100
MAX_SIZE: Final = 500
MAX_PAGE: Final = 100_000
"""Far beyond any inventory (250,000 resources at most in pages of 1 or more is
bounded by the page count anyway); a bound so the number stays a small int."""
MAX_TEXT: Final = 200
"""Characters of a search text or kind: longer is a typo or an attack."""

SORTS: Final = ("id", "kind", "state", "transition", "error", "instance")
"""The columns a table sorts by (`transition`: the last transition's time,
`error`: the last error's text)."""
ORDERS: Final = ("asc", "desc")
PARAMS: Final = ("q", "state", "kind", "sort", "order", "page", "size")
STATES: Final = tuple(state.value for state in State)


class BadQuery(ValueError):
    """A query parameter the page does not take; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One request of the page: a filter (text on the resource id, which holds
    its name; a state; a kind), a sort and a page."""

    q: str = ""
    state: str | None = None
    kind: str | None = None
    sort: str = "id"
    order: str = "asc"
    page: int = 1
    size: int = DEFAULT_SIZE

    def params(self, **changes: object) -> str:
        """The query string (with "?") of this query with `changes`, leaving out
        what is the default: the links of the page (sort, pages) are made here."""
        changed = replace(self, **changes)  # type: ignore[arg-type]
        pairs = [
            (field.name, str(value))
            for field in fields(changed)
            if (value := getattr(changed, field.name)) != field.default and value is not None
        ]
        return "?" + urlencode(pairs) if pairs else "?"


def parse(
    query: Mapping[str, str], getall: Callable[[str], Sequence[str]] | None = None
) -> PageQuery:
    """A `PageQuery` from a request's query (`getall(key)`: every value of a
    key, to refuse repeats); raises `BadQuery`."""
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        raise BadQuery(
            f"unknown query parameter(s) {', '.join(unknown)}; expected any of {', '.join(PARAMS)}"
        )
    if getall is not None:
        repeated = [key for key in PARAMS if len(getall(key)) > 1]
        if repeated:
            raise BadQuery(f"query parameter(s) given more than once: {', '.join(repeated)}")

    def text(key: str) -> str | None:
        value = query.get(key, "").strip()
        if len(value) > MAX_TEXT:
            raise BadQuery(f"{key}: expected at most {MAX_TEXT} characters, got {len(value)}")
        return value or None

    state = text("state")
    if state is not None and state not in STATES:
        raise BadQuery(f"state: expected one of {', '.join(STATES)}, got {state!r}")
    sort = text("sort") or "id"
    if sort not in SORTS:
        raise BadQuery(f"sort: expected one of {', '.join(SORTS)}, got {sort!r}")
    order = text("order") or "asc"
    if order not in ORDERS:
        raise BadQuery(f"order: expected asc or desc, got {order!r}")
    return PageQuery(
        q=text("q") or "",
        state=state,
        kind=text("kind"),
        sort=sort,
        order=order,
        page=_number(text("page"), "page", 1, MAX_PAGE, 1),
        size=_number(text("size"), "size", 1, MAX_SIZE, DEFAULT_SIZE),
    )


def _number(raw: str | None, key: str, low: int, high: int, default: int) -> int:
    if raw is None:
        return default
    expected = f"{key}: expected an integer {low}..{high}, got {raw!r}"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 7:
        raise BadQuery(expected)
    value = int(raw)
    if not low <= value <= high:
        raise BadQuery(expected)
    return value


__all__ = ["DEFAULT_SIZE", "MAX_SIZE", "SORTS", "STATES", "BadQuery", "PageQuery", "parse"]

"""What a rejected revision reports: one `Issue` per error (file, line, field,
message), all of them in a `ManifestError`; and the loader's internal signals."""

from __future__ import annotations

from dataclasses import dataclass

EMPTY_MARK = "# reconciler: empty"
"""The first line of a manifest that is meant to declare nothing (0094)."""
_EMPTY_FILE = (
    "empty manifest: a truncated file would prune what it declared; "
    f"to keep an empty file on purpose, make {EMPTY_MARK!r} its first line"
)
_MARKED_BUT_DECLARES = (
    f"the file starts with {EMPTY_MARK!r} but declares resources: remove the marker"
)


_MAX_ISSUES = 1000
"""A revision with more errors is reported up to here: the rest cannot be read anyway."""


class _Stop(Exception):
    """A limit of the whole revision was crossed: stop reading (the issue is recorded)."""


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    line: int | None
    field: str
    message: str
    via: str = ""
    """The bundle instance(s) the error was found in, for a file of a bundle:
    `Bundle/team-a-web at app.yaml:3` (the innermost first)."""

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{text} (in {self.via})" if self.via else text


class ManifestError(Exception):
    """The revision is invalid; `issues` holds every error found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        noun = "error" if len(issues) == 1 else "errors"
        super().__init__(f"{len(issues)} {noun}:\n" + "\n".join(f"  {i}" for i in issues))


def _field(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Reparse(Exception):
    """A memoized file needs its YAML nodes (to point at a line): parse afresh."""

"""The error of the confined filesystem: a path that leaves the roots or goes
through a symlink, and the messages that say so."""

from __future__ import annotations

from reconciler.errors import PermanentError


class ConfinementError(PermanentError):
    """A path that cannot be reached without following a symlink, or that lies
    outside every allowed root. `path` is the path asked for; `component` the
    part of it that is a symlink (or the path itself)."""

    def __init__(self, path: str, component: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.component = component


def _not_regular(path: str) -> ConfinementError:
    return ConfinementError(path, path, f"{path} is not a regular file; not reading it")


def _link_error(path: str, component: str) -> ConfinementError:
    where = "is a symlink" if component == path else f"goes through the symlink {component}"
    return ConfinementError(
        path,
        component,
        f"{path} {where}; refusing to follow it "
        "(nothing is read, written or changed through a link)",
    )

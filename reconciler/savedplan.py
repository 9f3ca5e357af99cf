"""Saved plans: `reconciler plan PATH --out FILE` and `reconciler apply FILE`.

A saved plan is one JSON document (format `reconciler-plan`, version 1) holding
what a plan rests on: the revision, the config path, the state directory, the
options that change the outcome (roots, --allow-commands, the secret allow-list),
and for each line of the plan its action, the resource's spec hash and a digest
of the object as the preview observed it; plus the plan as `plan --format json`
shows it. `apply FILE` loads the recorded config again, plans again, and applies
only if nothing the plan rests on moved: otherwise it refuses, naming each
resource and what changed (see `refusals`).

Digests are HMAC-SHA256 under keys derived from the state directory's
`digest.key` (the key of the digests that stand for secrets in stored specs): an
observed object may hold a secret in clear (a file made from one), and a plain
hash of a short secret can be guessed offline; a keyed one cannot. The same key
authenticates the whole file (`mac`), so a hand-edited plan is refused, and ties
the plan to the state directory it was made against (`keyId`). See decision 0101.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.cache import Cache, state_key
from reconciler.diff import plan_json
from reconciler.engine import PlanAction, Planned
from reconciler.model import DesiredState, Observed, ResourceId

FORMAT = "reconciler-plan"
VERSION = 1
"""The `version` of the document this module writes and reads. A field added
keeps it; a field removed, renamed or retyped bumps it (and older files are
refused with a message saying so)."""
MAX_FILE_BYTES = 256 * 1024 * 1024
"""A saved plan bigger than this is not one (a wrong file)."""
_PEEK_BYTES = 256


class PlanFileError(Exception):
    """A saved plan that cannot be used: unreadable, another format or version,
    made against another state directory, or edited since it was written."""


@dataclass(frozen=True, slots=True)
class Options:
    """The options that change what a plan is: which objects providers may touch,
    whether commands run, and where secret references may read."""

    roots: tuple[str, ...]
    allow_commands: bool
    secret_dirs: tuple[str, ...]
    secret_env: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Line:
    """One resource of a saved plan."""

    id: ResourceId
    action: str
    spec_hash: str | None
    """The desired spec's hash; None for a resource the plan removes."""
    observed: str | None
    """Keyed digest of the object as observed; None where the preview did not
    observe (suspended, drift ignored, removed from the tree)."""


@dataclass(frozen=True, slots=True)
class SavedPlan:
    revision: str
    config: str
    """The config tree's path, absolute."""
    state_dir: str
    """The state directory planned against, absolute."""
    options: Options
    lines: tuple[Line, ...]
    plan: Mapping[str, Any]
    """The plan as `plan --format json` shows it (secrets masked)."""
    reconciler: str = __version__
    created: str = ""

    @property
    def targets(self) -> set[ResourceId]:
        """The resources an apply of this plan drives: every line that changes
        something or reports drift. Unchanged lines are left as they are."""
        return {
            line.id
            for line in self.lines
            if line.action not in (PlanAction.NONE, PlanAction.SUSPENDED)
        }


# keys


def digest_key(state_dir: Path, *, write: bool) -> bytes | None:
    """The state directory's digest key (made if absent and `write`), or None."""
    return state_key(Cache(state_dir / "cache", "", write=write).key_file, write=write)


def _subkey(key: bytes, purpose: str) -> bytes:
    """A key of its own for each use of the state key (never the key itself)."""
    return hmac.new(key, f"reconciler saved plan: {purpose}".encode(), hashlib.sha256).digest()


def _mac(key: bytes, purpose: str, body: bytes) -> str:
    return "hmac-sha256:" + hmac.new(_subkey(key, purpose), body, hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """Names the state key without revealing it: a plan made against another
    state directory is told apart from an edited one."""
    return hmac.new(_subkey(key, "key id"), b"", hashlib.sha256).hexdigest()[:16]


# canonical JSON


def _plain(value: Any) -> Any:
    """What canonical JSON has no form for, in a fixed form of its own."""
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, set | frozenset):
        return {"$set": sorted(_canonical(v) for v in value)}
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return {"$repr": f"{type(value).__module__}.{type(value).__qualname__}:{value!s}"}


def _floats(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, Mapping):
        return {str(k): _floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_floats(v) for v in value]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(
        _floats(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_plain,
    )


def observation_digest(key: bytes, observed: Observed | None) -> str:
    """Keyed digest of an observed object (None: absent) over its canonical JSON."""
    return _mac(key, "observation", _canonical(observed).encode())


# writing


def build(
    planned: Sequence[Planned],
    desired: DesiredState,
    *,
    config: Path,
    state_dir: Path,
    options: Options,
    key: bytes,
) -> SavedPlan:
    """The saved plan of a preview. Every line must be plannable (no `error`)."""
    lines = []
    for p in planned:
        if p.action == PlanAction.ERROR:
            raise ValueError(f"{p.id} could not be planned: a plan with errors is not saved")
        res = desired.resources.get(p.id)
        observed = observation_digest(key, p.observed) if p.plan is not None else None
        lines.append(Line(p.id, p.action, res.spec_hash if res else None, observed))
    return SavedPlan(
        revision=desired.revision,
        config=os.path.abspath(config),
        state_dir=os.path.abspath(state_dir),
        options=options,
        lines=tuple(sorted(lines, key=lambda line: line.id)),
        plan=plan_json(planned, desired.revision),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def _document(saved: SavedPlan, key: bytes) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "reconciler": saved.reconciler,
        "created": saved.created,
        "revision": saved.revision,
        "config": saved.config,
        "stateDir": saved.state_dir,
        "keyId": key_id(key),
        "options": {
            "roots": list(saved.options.roots),
            "allowCommands": saved.options.allow_commands,
            "secretDirs": list(saved.options.secret_dirs),
            "secretEnv": list(saved.options.secret_env),
        },
        "resources": [
            {
                "id": line.id,
                "action": line.action,
                "specHash": line.spec_hash,
                "observed": line.observed,
            }
            for line in saved.lines
        ],
        "plan": saved.plan,
    }


def dumps(saved: SavedPlan, key: bytes) -> str:
    """The file's text: the document and, last, `mac` over the rest of it."""
    document = _document(saved, key)
    document["mac"] = _mac(key, "file", _canonical(document).encode())
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write(path: Path, saved: SavedPlan, key: bytes) -> None:
    """Write the plan to `path` atomically, mode 0600 (it names the system's
    objects and the plan's values): a temporary file beside it, fsync, rename."""
    text = dumps(saved, key).encode()
    directory = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def in_tree(out: Path, config: Path) -> bool:
    """Whether a plan written to `out` would be a file of the config tree at
    `config`, and so change the revision it records: a load reads every file of a
    tree but hidden ones (`.tfplan`, `.plans/x`)."""
    if not config.is_dir():
        return False  # a single manifest is its own tree
    try:
        inside = Path(os.path.abspath(out)).relative_to(os.path.abspath(config))
    except ValueError:
        return False
    return not any(part.startswith(".") for part in inside.parts)


# reading


def is_saved_plan(path: Path) -> bool:
    """Whether `path` is a saved plan rather than a manifest or a config tree:
    a file whose JSON opens with `{"format": "reconciler-plan"`. A YAML manifest
    cannot be one (it would not be a manifest)."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(_PEEK_BYTES)
    except OSError:
        return False
    start = head.lstrip()
    if not start.startswith(b"{"):
        return False
    # the writer puts "format" first; a file edited by hand is refused by its mac anyway
    return b'"format"' in start and FORMAT.encode() in start


@dataclass(frozen=True, slots=True)
class Unverified:
    """A saved plan as read, before its mac is checked: only where to find the
    key (the state directory) may be taken from it."""

    path: Path
    document: Mapping[str, Any]

    @property
    def state_dir(self) -> Path:
        return Path(str(self.document.get("stateDir", "")))

    def verify(self, key: bytes) -> SavedPlan:
        """The plan, if it was written under `key` and not changed since."""
        doc = self.document
        if doc.get("keyId") != key_id(key):
            raise PlanFileError(
                f"{self.path} was planned against another state directory (its key "
                f"differs): apply it with the --state-dir it was planned with "
                f"({doc.get('stateDir')})"
            )
        body = {k: v for k, v in doc.items() if k != "mac"}
        expected = _mac(key, "file", _canonical(body).encode())
        if not isinstance(doc.get("mac"), str) or not hmac.compare_digest(doc["mac"], expected):
            raise PlanFileError(
                f"{self.path} was changed after it was written (its digest does not "
                "match): plan again"
            )
        try:
            return _parse(doc)
        except (KeyError, TypeError, ValueError) as exc:  # authentic but malformed: our bug
            raise PlanFileError(f"{self.path}: malformed saved plan: {exc!r}") from exc


def read(path: Path) -> Unverified:
    """Read a saved plan; check its format and version (not yet its mac)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PlanFileError(f"{path}: over {MAX_FILE_BYTES} bytes: not a saved plan")
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise PlanFileError(f"{path}: not a saved plan: invalid JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PlanFileError(f"{path}: not a saved plan (expected format {FORMAT!r})")
    if document.get("version") != VERSION:
        raise PlanFileError(
            f"{path}: a saved plan of version {document.get('version')!r}; this reconciler "
            f"reads version {VERSION}: plan again"
        )
    return Unverified(path, document)


def _parse(doc: Mapping[str, Any]) -> SavedPlan:
    opts = doc["options"]
    options = Options(
        roots=tuple(str(r) for r in opts["roots"]),
        allow_commands=bool(opts["allowCommands"]),
        secret_dirs=tuple(str(d) for d in opts["secretDirs"]),
        secret_env=tuple(str(e) for e in opts["secretEnv"]),
    )
    lines = tuple(
        Line(str(r["id"]), str(r["action"]), r["specHash"], r["observed"]) for r in doc["resources"]
    )
    return SavedPlan(
        revision=str(doc["revision"]),
        config=str(doc["config"]),
        state_dir=str(doc["stateDir"]),
        options=options,
        lines=lines,
        plan=doc["plan"],
        reconciler=str(doc["reconciler"]),
        created=str(doc["created"]),
    )


# checking


def refusals(
    saved: SavedPlan, planned: Sequence[Planned], desired: DesiredState, key: bytes
) -> list[str]:
    """Why `saved` may not be applied now, given a new preview of the same config
    (`planned`, `desired`): one message per thing that moved, resource ids first;
    empty when the plan would be the same."""
    found: list[str] = []
    if saved.reconciler != __version__:
        found.append(f"reconciler changed: planned with {saved.reconciler}, now {__version__}")
    if saved.revision != desired.revision:
        found.append(f"revision changed: planned {saved.revision}, now {desired.revision}")
    now = {p.id: p for p in planned}
    before = {line.id: line for line in saved.lines}
    for rid in sorted(before.keys() | now.keys()):
        line, p = before.get(rid), now.get(rid)
        if p is None:
            assert line is not None
            found.append(f"{rid}: planned to {line.action}, now not in the plan")
            continue
        if p.action == PlanAction.ERROR:
            found.append(f"{rid}: cannot be planned now: {p.error}")
            continue
        if line is None:
            found.append(f"{rid}: not in the plan, now {p.action}")
            continue
        res = desired.resources.get(rid)
        if line.spec_hash != (res.spec_hash if res else None):
            found.append(f"{rid}: desired spec changed since the plan")
        elif (
            line.observed is not None
            and p.plan is not None
            and not hmac.compare_digest(line.observed, observation_digest(key, p.observed))
        ):
            found.append(f"{rid}: observed state changed since the plan")
            continue  # a new action follows from it: said once
        if line.action != p.action:
            found.append(f"{rid}: planned {line.action}, now {p.action}")
    if not found:
        # same revision, specs and observations: the same plan, unless a provider
        # plans from something else (the inventory, refresh tokens)
        again = plan_json(planned, desired.revision)
        old = {c["id"]: _canonical(c) for c in saved.plan.get("changes", [])}
        for change in again["changes"]:
            if old.get(change["id"]) != _canonical(change):
                found.append(f"{change['id']}: the planned changes differ")
    return found

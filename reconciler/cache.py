"""The cache of validated config trees in the state directory, and the keys kept
beside it.

A load of an unchanged tree returns the desired state an earlier load validated,
without parsing anything. An entry is data, never code: plain values (str, int,
float, bool, None, lists and dicts of them) in `marshal`'s format, authenticated
with HMAC-SHA256 under `cache.key` (32 random bytes, mode 0600, in the same
directory) before it is decoded, so a state directory that someone else could
write can at worst cost a parse. An
entry that is not of this format, does not authenticate, or does not rebuild is
ignored with one warning and the tree is parsed as if there were no cache
(decisions 0017 and 0057).

The directory also holds `digest.key`, the key of the digests that stand for
secrets in stored specs (decision 0046), made the same careful way.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import marshal
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from reconciler.model import (
    DEFAULT_POLICY,
    PREPARED,
    PROCESS_DIGEST_KEY,
    DesiredState,
    Instance,
    Location,
    Policy,
    Provider,
    Requirement,
    Resource,
    Shard,
)
from reconciler.statekey import state_key as state_key

log = logging.getLogger("reconciler.cache")

_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
FORMAT = f"reconciler-tree-cache/3+marshal{marshal.version}+py{_PYTHON}".encode()
"""First word of every entry: its format and version, and those of marshal and Python
(marshal's format may change with Python's: another Python is a miss)."""
SUFFIX = ".entry"
_OLD_SUFFIX = ".pickle"
"""Entries of the first format (decision 0017): never loaded, removed by the next write."""


@dataclass(frozen=True, slots=True)
class Cache:
    """Where validated desired states are kept between runs, keyed by the digest
    of the config tree and `fingerprint` (the providers, their settings and the
    code of reconciler itself): an unchanged tree is not parsed again. A tree
    whose specs resolved secrets is never kept (decision 0045).

    The directory also holds `digest.key`, the key of the digests that stand for
    secrets in stored specs, so that they compare equal from one run to the next,
    and `cache.key`, the key that authenticates the entries."""

    directory: Path
    fingerprint: str
    write: bool = True

    @property
    def key_file(self) -> Path:
        return self.directory / "digest.key"

    @property
    def entry_key_file(self) -> Path:
        return self.directory / "cache.key"

    def entry(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"


class DigestKey:
    """The state directory's digest key, read (or made) when a load first needs it."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.key: bytes | None = None

    def __call__(self) -> bytes:
        if self.key is None:
            self.key = state_key(self.cache.key_file, write=self.cache.write)
            self.key = self.key or PROCESS_DIGEST_KEY
        return self.key


def _mac(key: bytes, name: str, body: bytes) -> str:
    """The entry's code also covers its name (the cache key), so a valid entry of
    one tree cannot be passed off as another's."""
    return hmac.new(key, FORMAT + b"\0" + name.encode() + b"\0" + body, hashlib.sha256).hexdigest()


def read(
    cache: Cache, key: str, registry: Mapping[str, Provider[Any]], revision: str
) -> DesiredState | None:
    """The desired state kept under `key`, or None (a miss). An entry that cannot
    be trusted or used is a miss with one warning; nothing in it is executed."""
    path = cache.entry(key)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if cache.directory.joinpath(f"{key}{_OLD_SUFFIX}").exists():
            _ignored(path.with_suffix(_OLD_SUFFIX), "an entry of the old format (pickle)")
        return None
    except OSError as exc:
        _ignored(path, f"cannot read it: {exc.strerror}")
        return None
    head, newline, body = raw.partition(b"\n")
    word, _, mac = head.partition(b" ")
    if word != FORMAT or not newline:
        what = "an entry of the old format (pickle)" if raw[:1] == b"\x80" else "not an entry"
        _ignored(path, what)
        return None
    entry_key = state_key(cache.entry_key_file, write=False)
    if entry_key is None:
        _ignored(path, f"no key to check it with ({cache.entry_key_file.name})")
        return None
    if not hmac.compare_digest(mac, _mac(entry_key, key, body).encode()):
        _ignored(path, "it does not authenticate (changed, truncated or made with another key)")
        return None
    try:
        return _decode(body, registry, revision)
    except Exception as exc:  # authentic but unusable (a provider changed its spec): a miss
        _ignored(path, f"it does not rebuild: {type(exc).__name__}")
        return None


def _ignored(path: Path, why: str) -> None:
    log.warning("cache entry %s ignored, the tree is parsed instead: %s", path, why)


def write(cache: Cache, key: str, state: DesiredState) -> None:
    """Keep `state` as the only entry; a failure to write costs only the next parse."""
    entry_key = state_key(cache.entry_key_file, write=True)
    if entry_key is None:
        return
    body = _encode(state)
    data = FORMAT + b" " + _mac(entry_key, key, body).encode() + b"\n" + body
    path = cache.entry(key)
    temp = cache.directory / f".{key}.{os.getpid()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as handle:
                handle.write(data)
        finally:
            os.close(fd)
        temp.replace(path)
        for old in cache.directory.iterdir():
            if old.suffix in (SUFFIX, _OLD_SUFFIX) and old.name != path.name:
                old.unlink(missing_ok=True)
    except OSError:
        temp.unlink(missing_ok=True)


def _encode(state: DesiredState) -> bytes:
    """The entry's body. Specs are kept as their fields' values when they are plain
    JSON values, so that a hit can rebuild them without validating again; otherwise
    (a tuple, a date, a nested model) as their JSON dumps, validated again. The
    body is `marshal`, not JSON text (decision 133): encoding 12,000 resources takes
    ~5 ms of the GIL instead of ~60 ms, which the daemon's event loop waited out at
    every new revision, and decoding takes half the time."""
    try:
        return _body(state, exact=True)
    except TypeError:  # a value JSON cannot hold as it is
        return _body(state, exact=False)


def _body(state: DesiredState, *, exact: bool) -> bytes:
    resources = []
    for res in state.resources.values():
        spec = res.spec
        if exact:
            values: Any = spec.__dict__
            if not (_plain(type(spec)) and all(map(_exact, values.values()))):
                raise TypeError(f"{type(spec).__name__} is more than JSON holds")
            fields: Any = sorted(spec.model_fields_set)
        else:
            values, fields = spec.model_dump(mode="json", by_alias=True), None
        policy = None if res.policy == DEFAULT_POLICY else res.policy.model_dump(by_alias=True)
        row = [res.kind, res.name, values, fields, policy, res.spec_hash]
        row += [res.location.file, res.location.line, dict(res.labels), res.instance]
        resources.append(row)
    dependencies = {rid: list(deps) for rid, deps in state.dependencies.items()}
    instances = [
        [i.id, i.source, i.location.file, i.location.line, i.values, i.parent, i.ref, i.commit]
        for i in state.instances.values()
    ]
    data: dict[str, Any] = {
        "exact": exact,
        "resources": resources,
        "dependencies": dependencies,
        "instances": instances,
    }
    if state.shards:  # only a sharded tree's entry has them
        data["shards"] = [
            [
                s.name,
                s.location.file,
                s.location.line,
                [[r.key, r.operator, list(r.values)] for r in s.requirements],
            ]
            for s in state.shards.values()
        ]
    return marshal.dumps(data)


def _exact(value: Any) -> bool:
    """Whether JSON gives `value` back as it is, type included."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return all(type(k) is str and _exact(v) for k, v in value.items())
    if kind is list:
        return all(_exact(v) for v in value)
    return False


def _plain(cls: type[BaseModel]) -> bool:
    """Whether a model is its fields and nothing else (no extra or private
    attributes, no post-init hook), so that it can be built from them."""
    return (
        not cls.__private_attributes__
        and cls.__pydantic_post_init__ is None
        and cls.model_config.get("extra") != "allow"
    )


def _build(cls: type[BaseModel], values: dict[str, Any], fields: list[str]) -> BaseModel:
    """A model from values it held before, without validating them again (an
    authentic entry holds only what a validation made): as `model_construct`,
    minus its defaults and alias handling, which an exact entry does not need."""
    spec = cls.__new__(cls)
    object.__setattr__(spec, "__dict__", values)
    object.__setattr__(spec, "__pydantic_fields_set__", set(fields))
    object.__setattr__(spec, "__pydantic_extra__", None)
    object.__setattr__(spec, "__pydantic_private__", None)
    return spec


def _decode(body: bytes, registry: Mapping[str, Provider[Any]], revision: str) -> DesiredState:
    data = marshal.loads(body)  # authenticated: bytes this code wrote
    exact = data["exact"] is True
    specs: dict[str, type[BaseModel]] = {}
    resources: dict[str, Resource] = {}
    for row in data["resources"]:
        kind, name, values, fields, policy, spec_hash, file, line, labels, instance = row
        cls = specs.get(kind)
        if cls is None:
            cls = specs[kind] = registry[kind].Spec
            if exact and not (_plain(cls) and isinstance(values, dict)):
                raise TypeError(f"{cls.__name__} cannot be built from its fields")
        spec = (
            _build(cls, values, fields)
            if exact
            else cls.model_validate(values, context=PREPARED)  # as the engine reads a stored spec
        )
        res = Resource(
            kind,
            name,
            spec,
            DEFAULT_POLICY if policy is None else Policy.model_validate(policy),
            spec_hash,
            Location(file, line),
            labels,
            instance,
        )
        resources[res.id] = res
    dependencies = {rid: tuple(deps) for rid, deps in data["dependencies"].items()}
    instances = {
        iid: Instance(iid, source, Location(file, line), values, parent, ref, commit)
        for iid, source, file, line, values, parent, ref, commit in data["instances"]
    }
    shards = {
        name: Shard(
            name, Location(file, line), tuple(Requirement(k, o, tuple(v)) for k, o, v in terms)
        )
        for name, file, line, terms in data.get("shards", ())
    }
    return DesiredState(
        revision=revision,
        resources=resources,
        dependencies=dependencies,
        instances=instances,
        shards=shards,
    )

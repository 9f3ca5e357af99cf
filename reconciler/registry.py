"""Provider discovery: every class registered under the `reconciler.providers`
entry-point group, built-ins included, keyed by kind."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from reconciler.model import Provider, ProviderSettings

GROUP = "reconciler.providers"


class RegistryError(Exception):
    pass


class Registry(Mapping[str, Provider[Any]]):
    """Provider instances by kind, with shared settings. A provider found through
    its entry point is imported when its kind is first used: a tree of files
    never pays for the HTTP or PostgreSQL client libraries."""

    def __init__(
        self,
        providers: Iterable[Provider[Any]] = (),
        *,
        settings: ProviderSettings | None = None,
        entries: Iterable[EntryPoint] = (),
    ) -> None:
        self._by_kind: dict[str, Provider[Any]] = {}
        for provider in providers:
            if provider.kind in self._by_kind:
                raise RegistryError(f"two providers for kind {provider.kind!r}")
            self._by_kind[provider.kind] = provider
        self._entries: dict[str, EntryPoint] = {}
        for ep in entries:
            if ep.name in self._by_kind or ep.name in self._entries:
                raise RegistryError(f"two providers for kind {ep.name!r}")
            self._entries[ep.name] = ep
        if settings is None:  # built from instances: they share theirs
            first = next(iter(self._by_kind.values()), None)
            settings = first.settings if first is not None else ProviderSettings()
        self.settings = settings
        """What every provider is built with."""

    @classmethod
    def discover(cls, settings: ProviderSettings) -> Registry:
        """Every provider of the `reconciler.providers` entry-point group; each is
        imported (and checked) when its kind is first used."""
        return cls(settings=settings, entries=entry_points(group=GROUP))

    def _load(self, ep: EntryPoint) -> Provider[Any]:
        try:
            provider_class = ep.load()
        except Exception as exc:  # a broken third-party package must say which
            raise RegistryError(f"provider entry point {ep.name!r} ({ep.value}): {exc}") from exc
        if not (isinstance(provider_class, type) and issubclass(provider_class, Provider)):
            raise RegistryError(
                f"entry point {ep.name!r} ({ep.value}) is not a reconciler Provider subclass"
            )
        if provider_class.kind != ep.name:
            raise RegistryError(
                f"entry point {ep.name!r} ({ep.value}) declares kind {provider_class.kind!r}"
            )
        provider: Provider[Any] = provider_class(self.settings)
        return provider

    def loaded(self) -> list[Provider[Any]]:
        """The providers in use so far (those of every kind a loaded tree holds)."""
        return [self._by_kind[kind] for kind in sorted(self._by_kind)]

    def fingerprint(self) -> str:
        """What a validated desired state depends on besides the config tree: each
        provider's class, settings and code (module files' size and mtime), and the
        code of reconciler itself. A cache keyed by it goes stale on any change."""
        import reconciler

        parts = [reconciler.__version__]
        files = set(Path(reconciler.__file__).parent.rglob("*.py"))
        for kind, ep in sorted(self._entries.items()):  # not imported: by name and file
            name = ep.value.partition(":")[0]
            parts.append(f"{kind}={ep.value}:{self.settings!r}")
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None  # reported when the kind is used
            if spec is not None and spec.origin:
                files.add(Path(spec.origin))
        for kind in sorted(set(self._by_kind) - set(self._entries)):
            provider = self._by_kind[kind]
            cls = type(provider)
            parts.append(f"{kind}={cls.__module__}:{cls.__qualname__}:{provider.settings!r}")
            module = sys.modules.get(cls.__module__)
            if module is not None and getattr(module, "__file__", None):
                files.add(Path(str(module.__file__)))
        for file in sorted(files):
            try:
                st = file.stat()
            except OSError:
                continue
            parts.append(f"{file}:{st.st_size}:{st.st_mtime_ns}")
        return "\n".join(parts)

    def __getitem__(self, kind: str) -> Provider[Any]:
        provider = self._by_kind.get(kind)
        if provider is None:
            ep = self._entries.get(kind)
            if ep is None:
                raise KeyError(kind)
            provider = self._by_kind[kind] = self._load(ep)
        return provider

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind or kind in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._by_kind) | set(self._entries)))

    def __len__(self) -> int:
        return len(set(self._by_kind) | set(self._entries))

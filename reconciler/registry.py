"""Provider discovery: every class registered under the `reconciler.providers`
entry-point group, built-ins included, keyed by kind."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from reconciler.model import Provider, ProviderSettings

GROUP = "reconciler.providers"


class RegistryError(Exception):
    pass


class Registry(Mapping[str, Provider[Any]]):
    """Provider instances by kind, built once per process with shared settings."""

    def __init__(self, providers: Iterable[Provider[Any]]) -> None:
        self._by_kind: dict[str, Provider[Any]] = {}
        for provider in providers:
            if provider.kind in self._by_kind:
                raise RegistryError(f"two providers for kind {provider.kind!r}")
            self._by_kind[provider.kind] = provider

    @classmethod
    def discover(cls, settings: ProviderSettings) -> Registry:
        providers: list[Provider[Any]] = []
        for ep in entry_points(group=GROUP):
            try:
                provider_class = ep.load()
            except Exception as exc:  # a broken third-party package must say which
                raise RegistryError(
                    f"provider entry point {ep.name!r} ({ep.value}): {exc}"
                ) from exc
            if not (isinstance(provider_class, type) and issubclass(provider_class, Provider)):
                raise RegistryError(
                    f"entry point {ep.name!r} ({ep.value}) is not a reconciler Provider subclass"
                )
            if provider_class.kind != ep.name:
                raise RegistryError(
                    f"entry point {ep.name!r} ({ep.value}) declares kind {provider_class.kind!r}"
                )
            providers.append(provider_class(settings))
        return cls(providers)

    def fingerprint(self) -> str:
        """What a validated desired state depends on besides the config tree: each
        provider's class, settings and code (module files' size and mtime), and the
        code of reconciler itself. A cache keyed by it goes stale on any change."""
        import reconciler

        parts = [reconciler.__version__]
        files = set(Path(reconciler.__file__).parent.rglob("*.py"))
        for kind in sorted(self._by_kind):
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
        return self._by_kind[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_kind))

    def __len__(self) -> int:
        return len(self._by_kind)

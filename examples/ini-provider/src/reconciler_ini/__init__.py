"""reconciler-ini: the `IniValue` kind, one key of an INI file set to a value (Python 3.11+).

Every file call goes through the SDK's confined filesystem (`self.fs()`), so a
spec reaches only files under the allowed roots and never through a symlink.
The file is rewritten whole (configparser): comments in it are not kept.
"""

import asyncio
import configparser
import io
import threading
from collections.abc import Sequence

from pydantic import Field

from reconciler import sdk


class IniValueSpec(sdk.PathSpec):  # `path`, checked against the roots; unknown fields refused
    # what configparser reads back exactly as written: one line, no spaces at the ends
    section: str = Field(pattern=r"^[^\s\[\]](?:[^\n\[\]]*[^\s\[\]])?$")
    key: str = Field(pattern=r"^[^\s=:#;\[](?:[^\n=:]*[^\s=:])?$")
    value: str = Field(pattern=r"^(?:\S(?:[^\n]*\S)?)?$")


class IniValueProvider(sdk.LocalFileProvider[IniValueSpec]):
    kind = "IniValue"
    Spec = IniValueSpec
    summary = "One key of an INI file set to a value."
    _lock = threading.Lock()  # the keys of a file are read, changed and written in turn

    def path(self, spec: IniValueSpec) -> str | None:
        return None  # many keys share a file: none of them owns it

    async def observe_many(self, specs: Sequence[IniValueSpec]) -> list[sdk.Observed | None]:
        return await asyncio.to_thread(self._observe, specs)

    def _observe(self, specs: Sequence[IniValueSpec]) -> list[sdk.Observed | None]:
        with self.fs() as fs:  # one confined batch; each file read once
            files = {path: _read(fs, path) for path in {s.path for s in specs}}
        found = [files[s.path].get(s.section, s.key, fallback=None) for s in specs]
        return [None if value is None else {"value": value} for value in found]

    def plan(self, spec: IniValueSpec, observed: sdk.Observed | None) -> sdk.Plan:
        seen = None if observed is None else observed["value"]
        if seen == spec.value:
            return sdk.NO_CHANGES
        action = sdk.Action.UPDATE if observed else sdk.Action.CREATE
        return sdk.Plan(action, (sdk.Change("/value", seen, spec.value),))

    async def apply(self, spec: IniValueSpec, plan: sdk.Plan) -> None:
        await asyncio.to_thread(self._edit, spec, True)

    async def delete(self, spec: IniValueSpec) -> None:
        await asyncio.to_thread(self._edit, spec, False)

    def _edit(self, spec: IniValueSpec, present: bool) -> None:
        with self._lock, self.fs() as fs:
            ini, st = _read(fs, spec.path), fs.lstat(spec.path)
            if present:
                ini.read_dict({spec.section: {spec.key: spec.value}})
            elif not (ini.has_section(spec.section) and ini.remove_option(spec.section, spec.key)):
                return  # absent already: write nothing
            ini.write(text := io.StringIO())
            mode = st.st_mode & 0o7777 if st else 0o644  # keep the file's mode
            try:
                fs.write_atomic(spec.path, text.getvalue().encode(), mode, parents=True)
            except OSError as exc:
                raise sdk.TemporaryError(f"write {spec.path}: {exc.strerror}") from exc


def _read(fs: sdk.Batch, path: str) -> configparser.RawConfigParser:
    ini = configparser.RawConfigParser(default_section="\0")  # DEFAULT is a plain section
    ini.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    try:
        data = fs.read(path, (1 << 20) + 1) if fs.lstat(path) is not None else b""
        if len(data) > 1 << 20:
            raise ValueError("over 1 MiB: not read, not rewritten")
        ini.read_string(data.decode(), source=path)
    except (OSError, ValueError, configparser.Error) as exc:  # until fixed by hand: retried
        raise sdk.TemporaryError(f"read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    return ini

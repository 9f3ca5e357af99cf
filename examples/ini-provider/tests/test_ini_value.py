"""IniValue against reconciler's conformance kit, on real files in a temporary
root. The kit (`reconciler.testing`) is a pytest plugin installed with
reconciler: this class only describes the provider; the plugin runs every
scenario on it."""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable
from pathlib import Path

from reconciler_ini import IniValueProvider

from reconciler.testing import Case, Drift, Harness, Invalid, ProviderConformance, SpecData


def _spec(h: Harness, n: int) -> SpecData:
    # two files, several keys in each: objects share files, as they do in use
    path = h.root / "etc" / f"app-{n % 2}.ini"
    return {"path": str(path), "section": "server", "key": f"port{n}", "value": str(8000 + n)}


def _ini(data: SpecData) -> configparser.RawConfigParser:
    ini = configparser.RawConfigParser(default_section="\0")
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read(data["path"])
    return ini


def _exists(h: Harness, data: SpecData) -> bool:
    return _ini(data).has_option(data["section"], data["key"])


def _check(h: Harness, data: SpecData) -> None:
    assert _ini(data).get(data["section"], data["key"]) == data["value"]


def _set_by_hand(h: Harness, data: SpecData) -> None:
    text = Path(data["path"]).read_text()
    line = f"{data['key']} = {data['value']}\n"
    assert line in text
    Path(data["path"]).write_text(text.replace(line, f"{data['key']} = edited by hand\n"))


def _remove_by_hand(h: Harness, data: SpecData) -> None:
    lines = Path(data["path"]).read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(f"{data['key']} =")]
    Path(data["path"]).write_text("".join(kept))


def _valid_but(**fields: str | None) -> Callable[[Harness], SpecData]:
    """A valid spec with some fields changed (None: left out)."""

    def data(h: Harness) -> SpecData:
        spec = {"path": str(h.root / "app.ini"), "section": "s", "key": "k", "value": "v"}
        return {k: v for k, v in (spec | fields).items() if v is not None}

    return data


class TestIniValue(ProviderConformance):
    cases = (
        Case(
            provider=IniValueProvider,
            spec=_spec,
            changed=lambda data: {**data, "value": data["value"] + "0"},
            changed_fields=frozenset({"/value"}),
            check=_check,
            exists=_exists,
            drifts=(
                Drift("edited", "/value", _set_by_hand),
                Drift("removed", "/value", _remove_by_hand),
                Drift("file-deleted", "/value", lambda h, data: os.unlink(data["path"])),
            ),
            invalid=(
                Invalid("outside-root", _valid_but(path="/etc/app.ini"), "spec.path"),
                Invalid("relative-path", _valid_but(path="app.ini"), "spec.path"),
                Invalid("key-with-equals", _valid_but(key="a=b"), "spec.key"),
                Invalid("key-as-comment", _valid_but(key="#port"), "spec.key"),
                Invalid("section-bracket", _valid_but(section="a]b"), "spec.section"),
                Invalid("value-two-lines", _valid_but(value="a\nb"), "spec.value"),
                Invalid("value-edge-space", _valid_but(value="8080 "), "spec.value"),
                Invalid("value-missing", _valid_but(value=None), "spec.value"),
                Invalid("unknown-field", _valid_but(comment="x"), "spec.comment"),
            ),
        ),
    )

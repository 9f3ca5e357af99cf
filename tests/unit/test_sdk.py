"""The SDK is the provider author's whole surface: every public name resolves,
nothing private leaks through it, and a provider written against it alone is a
real provider (the loader validates its specs with file:line:field errors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

import reconciler.sdk as sdk
from reconciler.manifests import ManifestError, load
from reconciler.registry import Registry


def test_every_public_name_resolves_and_none_is_private() -> None:
    assert sorted(sdk.__all__) == sorted(set(sdk.__all__))
    for name in sdk.__all__:
        assert not name.startswith("_")
        assert getattr(sdk, name) is not None


class _GreetingSpec(sdk.Spec):
    text: str
    token: sdk.SecretRef | None = None


class _Greeting(sdk.Provider[_GreetingSpec]):
    kind = "Greeting"
    Spec = _GreetingSpec

    def prepare(self, spec: _GreetingSpec, ctx: sdk.PrepareContext) -> _GreetingSpec:
        token = ctx.secret(spec.token, ("token",)) if spec.token is not None else None
        return spec.model_copy(update={"token": token})

    async def observe_many(self, specs: Sequence[_GreetingSpec]) -> list[sdk.Observed | None]:
        return [None for _ in specs]

    def plan(self, spec: _GreetingSpec, observed: sdk.Observed | None) -> sdk.Plan:
        return sdk.Plan(sdk.Action.CREATE, (sdk.Change("/text", None, spec.text),))

    async def apply(self, spec: _GreetingSpec, plan: sdk.Plan) -> None:
        return None

    async def delete(self, spec: _GreetingSpec) -> None:
        return None


def test_a_provider_written_against_the_sdk_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREETING_TOKEN", "tok-123456")
    registry = Registry([_Greeting(sdk.ProviderSettings())])
    head = "apiVersion: reconciler/v1\nkind: Greeting\nmetadata: {name: hi}\n"
    (tmp_path / "a.yaml").write_text(
        head + "spec: {text: hello, token: {valueFrom: {env: GREETING_TOKEN}}}\n"
    )
    desired = load(tmp_path, registry)
    spec = desired.resources["Greeting/hi"].spec
    assert isinstance(spec.token, sdk.Sensitive) and spec.token == "tok-123456"
    assert "tok-123456" not in spec.model_dump_json()
    (tmp_path / "a.yaml").write_text(head + "spec: {text: hello, colour: red, token: plain}\n")
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, registry)
    shown = [str(issue) for issue in caught.value.issues]
    assert any(
        "a.yaml:4: spec.colour: unknown field; expected one of text, token" in s for s in shown
    )
    assert any("a.yaml:4: spec.token: expected a secret reference" in s for s in shown)
    assert all("plain" not in s for s in shown)

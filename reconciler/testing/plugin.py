"""The pytest plugin of the conformance kit, loaded through the `pytest11` entry
point of the reconciler distribution (disable it with `-p no:reconciler`).

It parametrizes the scenarios of every `ProviderConformance` subclass: each one
over the class's `cases`, the drift scenario over each case's drifts, the
invalid-spec scenario over its invalid specs; every such test is marked
`conformance`. It imports nothing of the kit until a test class asks for it, so
it costs other test suites nothing.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: a scenario of reconciler's provider conformance kit"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    cls = metafunc.cls
    if cls is None or not getattr(cls, "__reconciler_conformance__", False):
        return
    if "conformance_case" not in metafunc.fixturenames:
        return
    cases: tuple[Any, ...] = tuple(cls.cases)
    if not cases:
        raise TypeError(f"{cls.__name__}: set cases = (reconciler.testing.Case(...),)")
    mark = pytest.mark.conformance
    params: list[Any]
    if "conformance_drift" in metafunc.fixturenames:
        names: tuple[str, ...] = ("conformance_case", "conformance_drift")
        params = [
            pytest.param(case, drift, id=f"{case.kind}-{drift.name}", marks=(mark, *case.marks))
            for case in cases
            for drift in case.drifts
        ]
    elif "conformance_invalid" in metafunc.fixturenames:
        names = ("conformance_case", "conformance_invalid")
        params = [
            pytest.param(case, bad, id=f"{case.kind}-{bad.name}", marks=(mark, *case.marks))
            for case in cases
            for bad in case.invalid
        ]
    else:
        names = ("conformance_case",)
        params = [pytest.param(case, id=case.kind, marks=(mark, *case.marks)) for case in cases]
    metafunc.parametrize(names, params)

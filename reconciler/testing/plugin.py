"""The pytest plugin of the conformance kit, loaded through the `pytest11` entry
point of the reconciler distribution (disable it with `-p no:reconciler`).

It parametrizes the scenarios of every `ProviderConformance` subclass: each one
over the class's `cases`, the drift scenario over each case's drifts, the
invalid-spec scenario over its invalid specs; every such test is marked
`conformance`, and skipped with its reason where the case's `skip` names it
(a name that is no test of the class is an error, so a typo cannot pass
silently). It imports nothing of the kit until a test class asks for it, so
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
    scenario = metafunc.function.__name__
    tests = {name for name in dir(cls) if name.startswith("test_")}
    for case in cases:
        unknown = sorted(set(case.skip) - tests)
        if unknown:
            raise TypeError(
                f"{cls.__name__}: case {case.kind} skips {', '.join(unknown)}, which is "
                f"no test of the class; expected some of {', '.join(sorted(tests))}"
            )

    def marks(case: Any) -> tuple[Any, ...]:
        found = (pytest.mark.conformance, *case.marks)
        reason = case.skip.get(scenario)
        return (
            found if reason is None else (*found, pytest.mark.skip(reason=f"{case.kind}: {reason}"))
        )

    params: list[Any]
    if "conformance_drift" in metafunc.fixturenames:
        names: tuple[str, ...] = ("conformance_case", "conformance_drift")
        params = [
            pytest.param(case, drift, id=f"{case.kind}-{drift.name}", marks=marks(case))
            for case in cases
            for drift in case.drifts
        ]
    elif "conformance_invalid" in metafunc.fixturenames:
        names = ("conformance_case", "conformance_invalid")
        params = [
            pytest.param(case, bad, id=f"{case.kind}-{bad.name}", marks=marks(case))
            for case in cases
            for bad in case.invalid
        ]
    else:
        names = ("conformance_case",)
        params = [pytest.param(case, id=case.kind, marks=marks(case)) for case in cases]
    metafunc.parametrize(names, params)

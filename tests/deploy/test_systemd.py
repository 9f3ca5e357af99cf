"""deploy/systemd: the unit passes `systemd-analyze verify` and scores as well
sandboxed by `systemd-analyze security --offline`. Both run without systemd as
PID 1 (this machine and CI containers have none), against a throwaway root that
holds the system's stock units and a stand-in for /usr/local/bin/reconciler, the
ExecStart= verify insists exists. What systemd cannot judge, that the unit hands
the daemon real settings and its secrets as credentials, is checked here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest

from reconciler.cli import run
from tests.deploy.conftest import DEPLOY
from tests.system import ensure_debian

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "reconciler.service"
EXPOSURE_THRESHOLD = 20  # 2.0 shown: "OK" on the scale of 0 (locked down) to 10 (exposed)


def _unit() -> dict[str, list[tuple[str, str]]]:
    """Sections of the unit, each a list of (key, value) in order (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def _values(section: str, key: str) -> list[str]:
    return [v for k, v in _unit()[section] if k == key]


def _envvars() -> set[str]:
    return {p.envvar for p in run.params if isinstance(p, click.Option) and p.envvar}  # type: ignore[misc]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ensure_debian("systemd-analyze", "systemd")
    units = next(
        Path(d) for d in ("/usr/lib/systemd/system", "/lib/systemd/system") if Path(d).is_dir()
    )
    shutil.copytree(units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system")
    binary = tmp_path / "usr/local/bin/reconciler"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return tmp_path


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    analyze = ensure_debian("systemd-analyze", "systemd")
    return subprocess.run([analyze, *args], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify(root: Path) -> None:
    result = _analyze("verify", f"--root={root}", UNIT.name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys and bad values are only warnings


def test_systemd_analyze_verify_finds_mistakes(root: Path) -> None:
    """verify has teeth here: a misspelt directive is reported."""
    unit = root / "etc/systemd/system" / UNIT.name
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSistem=strict"))
    result = _analyze("verify", f"--root={root}", UNIT.name)
    assert "Unknown key 'ProtectSistem'" in result.stderr


def test_systemd_analyze_security(root: Path) -> None:
    result = _analyze(
        "security",
        "--offline=true",
        f"--root={root}",
        f"--threshold={EXPOSURE_THRESHOLD}",
        UNIT.name,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level for reconciler.service" in result.stdout


def test_sandbox() -> None:
    service = dict(_unit()["Service"])  # the last value of each key
    expected = {
        "StateDirectory": "reconciler",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "User": "reconciler",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert "@system-service" in _values("Service", "SystemCallFilter")
    assert _values("Service", "ExecStart") == ["/usr/local/bin/reconciler run"]


def test_settings_are_real_and_roots_are_writable() -> None:
    environment = dict(v.split("=", 1) for v in _values("Service", "Environment"))
    assert set(environment) - {"HOME"} <= _envvars()
    assert environment["RECONCILER_STATE_DIR"] == "%S/reconciler"  # StateDirectory=
    (env_file,) = _values("Service", "EnvironmentFile")
    assert env_file == "/etc/reconciler/reconciler.env"
    example = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "reconciler.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) <= _envvars()
    assert "RECONCILER_REPO" in example
    writable = " ".join(_values("Service", "ReadWritePaths")).split()
    for root in example["RECONCILER_ROOT"].split():
        assert any(root == path or root.startswith(path.rstrip("/") + "/") for path in writable)


def test_secrets_are_credentials() -> None:
    environment = dict(v.split("=", 1) for v in _values("Service", "Environment"))
    credentials = dict(v.split(":", 1) for v in _values("Service", "LoadCredential"))
    assert set(credentials) == {"git-token", "webhook-secret", "api-token"}
    for name, source in credentials.items():
        assert source == f"/etc/reconciler/credentials/{name}"
    handed = {var: path for var, path in environment.items() if path.startswith("%d/")}
    assert handed == {
        "RECONCILER_TOKEN_FILE": "%d/git-token",
        "RECONCILER_WEBHOOK_SECRET_FILE": "%d/webhook-secret",
        "RECONCILER_API_TOKEN_FILE": "%d/api-token",
    }


def test_sysusers_creates_the_service_user() -> None:
    lines = [
        line.split()
        for line in (SYSTEMD / "reconciler.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [line[:2] for line in lines] == [["u", "reconciler"]]
    assert lines[0][-1] == "/var/lib/reconciler"  # its home: the StateDirectory

"""deploy/compose.yaml checked structurally: `docker compose` is not installed here
(and no image can be pulled), so the test reads the file the way compose would:
services, the files it mounts (relative to deploy/), the build context, the
daemon's settings and how the three services find each other."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import click
import pytest
import yaml

from reconciler.cli import run
from tests.deploy.conftest import DEPLOY, REPO

COMPOSE = DEPLOY / "compose.yaml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _run_envvars() -> set[str]:
    return {p.envvar for p in run.params if isinstance(p, click.Option) and p.envvar}  # type: ignore[misc]


def test_services_and_named_volumes() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"reconciler", "prometheus", "grafana"}
    named = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in named, f"{name}: volume {source!r} is not declared"


@pytest.mark.parametrize("service", ["reconciler", "prometheus", "grafana"])
def test_mounted_files_exist(service: str) -> None:
    for volume in _compose()["services"][service].get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            assert (DEPLOY / source).exists(), f"{service} mounts {source}, which does not exist"
            assert mode == ["ro"], f"{service}: {source} should be mounted read-only"
            assert target.startswith("/")


def test_reconciler_is_built_from_the_repository() -> None:
    service = _compose()["services"]["reconciler"]
    context = (DEPLOY / service["build"]["context"]).resolve()
    assert context == REPO
    assert (context / service["build"]["dockerfile"]).is_file(), "no Dockerfile at the root"


def test_reconciler_settings_are_real_settings() -> None:
    service = _compose()["services"]["reconciler"]
    environment = service["environment"]
    unknown = set(environment) - _run_envvars()
    assert not unknown, f"not settings of reconciler run: {sorted(unknown)}"
    assert environment["RECONCILER_LISTEN"] == "0.0.0.0:9108"
    assert environment["RECONCILER_STATE_DIR"] == "/var/lib/reconciler"
    assert "state:/var/lib/reconciler" in service["volumes"]
    assert "/config" in environment["RECONCILER_REPO"]
    assert any(v.endswith(":/config:ro") for v in service["volumes"])
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "127.0.0.1:9108:9108" in service["ports"]  # the API has no auth on reads


def test_prometheus_loads_the_config_and_rules_the_repo_ships() -> None:
    service = _compose()["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yaml"] == "./prometheus/alerts.yaml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert "reconciler:9108" in targets  # the service name and the daemon's port


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed",
)
def test_docker_compose_config() -> None:
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "reconciler-test"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr

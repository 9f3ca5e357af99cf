"""deploy/compose.yaml: validated by compose itself (`docker compose config`, or
Debian's docker-compose 1.29 where the v2 plugin is missing, as here), and checked
for what compose does not know: the files it mounts (relative to deploy/) exist,
the build context holds the Dockerfile, the daemon's variables are real settings,
and the three services find each other. No image can be pulled here, so the stack
is not started.

The "ha" profile (PostgreSQL and two replicas on it) is validated by the same
compose with `--profile ha` (docker-compose 1.29 knows profiles), and checked here
for what compose does not: the default stack stays as it was, the replicas'
settings are real, both reach the database as its one user with the password
file postgres itself reads, and each advertises the address it is published on."""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from reconciler.cli import run
from tests.deploy.conftest import DEPLOY, REPO
from tests.system import ensure_debian

COMPOSE = DEPLOY / "compose.yaml"
DEFAULT = {"reconciler", "receiver", "prometheus", "grafana"}
HA = {"postgres", "reconciler-a", "reconciler-b"}
REPLICAS = {"reconciler-a": 9118, "reconciler-b": 9128}
"""The ha profile's daemons and the host port each is published on."""


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _run_envvars() -> set[str]:
    return {p.envvar for p in run.params if isinstance(p, click.Option) and p.envvar}  # type: ignore[misc]


def test_services_and_named_volumes() -> None:
    compose = _compose()
    assert set(compose["services"]) == DEFAULT | HA
    named = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in named, f"{name}: volume {source!r} is not declared"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret!r} is not declared"
    for name, secret in compose["secrets"].items():
        assert (DEPLOY / secret["file"]).is_file(), f"secret {name}: no {secret['file']}"


def test_the_ha_profile_leaves_the_default_stack_alone() -> None:
    """`docker compose up` without --profile starts what it always did."""
    services = _compose()["services"]
    assert {name for name, s in services.items() if "profiles" not in s} == DEFAULT
    for name in HA:
        assert services[name]["profiles"] == ["ha"]
    for name in DEFAULT:
        assert not set(services[name].get("depends_on", [])) & HA, name


@pytest.mark.parametrize("service", sorted(DEFAULT | HA))
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


def _compose_command() -> list[str]:
    """`docker compose` (v2) where it is installed, else Debian's docker-compose 1.29."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return [ensure_debian("docker-compose", "docker-compose")]


def _config(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_command(), "-p", "reconciler", "-f", str(path), *options, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
    )


@pytest.mark.parametrize("options", [(), ("--profile", "ha")], ids=["default", "ha"])
def test_compose_config_validates(options: tuple[str, ...]) -> None:
    """Compose's own schema check: unknown keys, wrong types, bad interpolation."""
    result = _config(COMPOSE, *options)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_rejects_a_misspelt_key_of_the_ha_profile(tmp_path: Path) -> None:
    """The check sees the profile's services too."""
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text()
    assert text.count("    healthcheck:\n") == 1
    broken.write_text(text.replace("    healthcheck:\n", "    healthchek:\n"))
    result = _config(broken, "--profile", "ha")
    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


def test_postgres_of_the_ha_profile() -> None:
    service = _compose()["services"]["postgres"]
    assert service["image"] == "postgres:15"
    environment = service["environment"]
    assert "POSTGRES_PASSWORD" not in environment  # from the file only
    (secret,) = service["secrets"]
    assert environment["POSTGRES_PASSWORD_FILE"] == f"/run/secrets/{secret}"
    assert "pg_isready" in " ".join(service["healthcheck"]["test"])
    assert "postgres:/var/lib/postgresql/data" in service["volumes"]
    assert "ports" not in service  # reached by the replicas only, on compose's network
    password = (DEPLOY / _compose()["secrets"][secret]["file"]).read_text()
    assert password.count("\n") == 1 and password.strip()  # one line: both read it whole


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_ha_replicas_share_the_store_and_advertise_their_own_address(name: str) -> None:
    services = _compose()["services"]
    service, postgres = services[name], services["postgres"]
    environment = service["environment"]
    unknown = set(environment) - _run_envvars()
    assert not unknown, f"not settings of reconciler run: {sorted(unknown)}"
    url = urllib.parse.urlsplit(environment["RECONCILER_STATE_URL"])
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.password is None  # from the file
    assert url.path == "/" + postgres["environment"]["POSTGRES_DB"]
    assert service["secrets"] == postgres["secrets"]
    assert environment["RECONCILER_STATE_PASSWORD_FILE"] == f"/run/secrets/{service['secrets'][0]}"
    assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    port = REPLICAS[name]
    assert service["ports"] == [f"127.0.0.1:{port}:9108"]
    assert environment["RECONCILER_LISTEN"] == "0.0.0.0:9108"
    assert environment["RECONCILER_ADVERTISE_URL"] == f"http://127.0.0.1:{port}"
    assert environment["RECONCILER_DAEMON_ID"] == name
    # caches only, in memory; the rest as confined as the default daemon
    assert environment["RECONCILER_STATE_DIR"] in service["tmpfs"]
    default = services["reconciler"]
    for key in ("image", "build", "read_only", "cap_drop", "security_opt"):
        assert service[key] == default[key], key
    shared = set(default["environment"]) - {"RECONCILER_NOTIFICATIONS"}
    assert {k: default["environment"][k] for k in shared} == {k: environment[k] for k in shared}, (
        "the replicas follow what the default daemon follows"
    )


def test_compose_config_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """The check above has teeth."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("cap_drop:", "cap_dorp:"))
    result = _config(broken)
    assert result.returncode != 0
    assert "cap_dorp" in result.stdout + result.stderr


def test_the_stack_notifies_its_receiver_by_one_setting() -> None:
    """RECONCILER_NOTIFICATIONS names the mounted receivers file, which loads (its
    secret file beside it) and sends to the receiver service."""
    from reconciler.daemon.receivers import load_receivers

    services = _compose()["services"]
    raw = services["reconciler"]["environment"]["RECONCILER_NOTIFICATIONS"]
    assert raw.startswith("${RECONCILER_NOTIFICATIONS:-") and raw.endswith("}")
    setting = raw.removeprefix("${RECONCILER_NOTIFICATIONS:-").removesuffix("}")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["reconciler"]["volumes"]}
    host = DEPLOY / mounts["/etc/reconciler/notifications"]
    read = load_receivers(host / setting.removeprefix("/etc/reconciler/notifications/"))
    (demo,) = read.receivers
    assert demo.url == "http://receiver:9109/"
    assert "--listen=0.0.0.0:9109" in services["receiver"]["command"]
    assert services["receiver"]["image"] == services["reconciler"]["image"]

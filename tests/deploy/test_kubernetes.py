"""deploy/kubernetes: the built-in kinds validated offline with `kubernetes-validate
--strict` (unknown fields are errors) against an older and the newest Kubernetes
the installed package knows. ServiceMonitor and PrometheusRule are Prometheus
Operator CRDs, for which kubernetes-validate has no schema: those are checked
structurally here instead, and the PrometheusRule must carry exactly the rules of
deploy/prometheus/alerts.yaml. The Deployment is checked against the daemon: its
variables are real settings, secrets are files from the Secrets it mounts."""

from __future__ import annotations

import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from reconciler.cli import run
from tests.deploy.conftest import DEPLOY

KUBERNETES = DEPLOY / "kubernetes"
BUILT_IN = (
    "namespace.yaml",
    "pvc.yaml",
    "secret-git-https.yaml",
    "secret-git-ssh.yaml",
    "secret-http.yaml",
    "deployment.yaml",
    "service.yaml",
)
CRDS = ("servicemonitor.yaml", "prometheusrule.yaml")
VALIDATE = [sys.executable, "-m", "kubernetes_validate", "--strict"]


def _load(name: str) -> dict[str, Any]:
    (document,) = list(yaml.safe_load_all((KUBERNETES / name).read_text()))
    assert isinstance(document, dict)
    return document


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VALIDATE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_kubernetes_validate_strict(version: str) -> None:
    files = [str(KUBERNETES / name) for name in BUILT_IN]
    result = _validate("--kubernetes-version", version, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(BUILT_IN), result.stdout + result.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The check above has teeth: a misplaced field fails it."""
    deployment = _load("deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    result = _validate(str(bad))
    assert result.returncode != 0
    assert "livenesProbe" in result.stdout + result.stderr


def test_every_file_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    shipped = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == shipped == set(BUILT_IN) | set(CRDS)
    assert kustomization["namespace"] == _load("namespace.yaml")["metadata"]["name"]


def test_deployment_security() -> None:
    deployment = _load("deployment.yaml")
    assert deployment["spec"]["replicas"] == 1  # one daemon per state directory
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_deployment_probes_and_port() -> None:
    pod = _load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (port,) = container["ports"]
    assert container["livenessProbe"]["httpGet"]["port"] == port["name"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RECONCILER_LISTEN"] == f"0.0.0.0:{port['containerPort']}"
    service = _load("service.yaml")
    assert service["metadata"]["name"] == "reconciler"  # the job label alerts.yaml matches
    assert service["spec"]["selector"].items() <= _pod_labels().items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def _pod_labels() -> dict[str, str]:
    labels = _load("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def test_deployment_settings_are_real_and_secrets_are_mounted_files() -> None:
    pod = _load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    options = {p.envvar: p for p in run.params if isinstance(p, click.Option) and p.envvar}
    unknown = set(env) - set(options)
    assert not unknown, f"not settings of reconciler run: {sorted(unknown)}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for mount in mounts.values():
        assert mount["name"] in volumes, f"mount of an undeclared volume {mount['name']}"
    assert volumes[mounts[env["RECONCILER_STATE_DIR"]]["name"]]["persistentVolumeClaim"] == {
        "claimName": _load("pvc.yaml")["metadata"]["name"]
    }
    assert env["RECONCILER_ROOT"] in mounts
    assert "/tmp" in mounts  # the root filesystem is read-only
    secret_files = [name for name in env if name.endswith(("_FILE", "_SSH_KEY", "_KNOWN_HOSTS"))]
    assert {"RECONCILER_TOKEN_FILE", "RECONCILER_WEBHOOK_SECRET_FILE"} <= set(secret_files)
    for name in secret_files:
        directory, key = posixpath.split(env[name])
        mount = mounts[directory]
        assert mount["readOnly"] is True
        secret_name = volumes[mount["name"]]["secret"]["secretName"]
        secret = _secret(secret_name)
        assert key in secret["stringData"], f"{name}: Secret {secret_name} has no key {key}"


def _secret(name: str) -> dict[str, Any]:
    for file in ("secret-git-https.yaml", "secret-git-ssh.yaml", "secret-http.yaml"):
        document = _load(file)
        if document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no Secret {name} in {KUBERNETES}")


def test_ssh_secret_example_fits_the_ssh_settings() -> None:
    secret = _secret("reconciler-git-ssh")
    assert secret["type"] == "kubernetes.io/ssh-auth"
    assert {"ssh-privatekey", "known_hosts"} <= set(secret["stringData"])


def test_service_monitor() -> None:
    """Structural: kubernetes-validate has no schema for this CRD."""
    monitor = _load("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    service = _load("service.yaml")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_prometheus_rule_carries_exactly_the_alerts_of_alerts_yaml() -> None:
    """Structural: kubernetes-validate has no schema for this CRD. alerts.yaml is
    itself checked by promtool."""
    rule = _load("prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"] == "reconciler"
    assert set(rule["spec"]) == {"groups"}
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], (
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml: "
        "copy the groups of alerts.yaml under spec:"
    )


@pytest.mark.parametrize("name", BUILT_IN + CRDS)
def test_common_labels_and_no_namespace(name: str) -> None:
    metadata = _load(name)["metadata"]
    assert metadata["labels"]["app.kubernetes.io/name"] == "reconciler"
    if name != "namespace.yaml":
        assert "namespace" not in metadata  # set once, by the kustomization

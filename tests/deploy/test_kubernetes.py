"""deploy/kubernetes: the built-in kinds validated offline with `kubernetes-validate
--strict` (unknown fields are errors) against an older and the newest Kubernetes
the installed package knows. ServiceMonitor and PrometheusRule are Prometheus
Operator CRDs, for which kubernetes-validate has no schema: those are checked
structurally here instead, and the PrometheusRule must carry exactly the rules of
deploy/prometheus/alerts.yaml. The Deployment is checked against the daemon: its
variables are real settings, secrets are files from the Secrets it mounts.

deploy/kubernetes/ha (two replicas on a PostgreSQL store) is checked the same way;
the objects it shares with the single replica are deploy/kubernetes/common, a
kustomization both include. Files are found as kustomize finds them: through the
kustomization's resources, directories included."""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from reconciler.cli import run
from tests.deploy.conftest import DEPLOY

KUBERNETES = DEPLOY / "kubernetes"
HA = KUBERNETES / "ha"
COMMON = KUBERNETES / "common"
OWN = {
    KUBERNETES: ("pvc.yaml", "deployment.yaml"),
    HA: ("secret-state.yaml", "deployment.yaml", "pdb.yaml"),
    COMMON: (
        "namespace.yaml",
        "secret-git-https.yaml",
        "secret-git-ssh.yaml",
        "secret-http.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
    ),
}
"""Each kustomization's own files."""
CRDS = ("servicemonitor.yaml", "prometheusrule.yaml")
BUILT_IN = [d / name for d, names in OWN.items() for name in names if name not in CRDS]
SECRETS = ("secret-git-https.yaml", "secret-git-ssh.yaml", "secret-http.yaml", "secret-state.yaml")
VALIDATE = [sys.executable, "-m", "kubernetes_validate", "--strict"]


def _files(directory: Path) -> dict[str, Path]:
    """The files `directory`'s kustomization takes in, by name, through the
    kustomizations it includes too."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files: dict[str, Path] = {}
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        files.update(_files(path) if path.is_dir() else {path.name: path})
    return files


def _load(name: str, directory: Path = KUBERNETES) -> dict[str, Any]:
    (document,) = list(yaml.safe_load_all(_files(directory)[name].read_text()))
    assert isinstance(document, dict)
    return document


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VALIDATE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_kubernetes_validate_strict(version: str) -> None:
    files = [str(path) for path in BUILT_IN]
    result = _validate("--kubernetes-version", version, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(files), result.stdout + result.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The check above has teeth: a misplaced field fails it."""
    deployment = _load("deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    result = _validate(str(bad))
    assert result.returncode != 0
    assert "livenesProbe" in result.stdout + result.stderr


@pytest.mark.parametrize("directory", list(OWN), ids=["single", "ha", "common"])
def test_every_file_is_in_the_kustomization(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    shipped = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    files = [r for r in kustomization["resources"] if not (directory / r).is_dir()]
    assert set(files) == shipped == set(OWN[directory])
    assert len(files) == len(OWN[directory])
    assert kustomization["namespace"] == _load("namespace.yaml", directory)["metadata"]["name"]


@pytest.mark.parametrize("directory", [KUBERNETES, HA], ids=["single", "ha"])
def test_both_ship_the_common_objects(directory: Path) -> None:
    """ha/ cannot be an overlay of its parent (kustomize sees a cycle): both
    include common/ instead of keeping copies."""
    files = _files(directory)
    assert {name: path.parent for name, path in files.items()} == {
        **dict.fromkeys(OWN[COMMON], COMMON),
        **dict.fromkeys(OWN[directory], directory),
    }


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


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables with a `value`; the others must come from the
    downward API, and a `$(NAME)` reference must name a variable defined before it
    (Kubernetes leaves a later one unexpanded)."""
    env: dict[str, str] = {}
    defined: set[str] = set()
    for entry in container["env"]:
        if "value" in entry:
            for reference in re.findall(r"\$\((\w+)\)", entry["value"]):
                assert reference in defined, f"{entry['name']} uses $({reference}) before it is set"
            env[entry["name"]] = entry["value"]
        else:
            assert set(entry["valueFrom"]) == {"fieldRef"}, f"{entry['name']}: not a file"
            assert not entry["name"].startswith("RECONCILER_"), entry["name"]
        defined.add(entry["name"])
    return env


@pytest.mark.parametrize("directory", [KUBERNETES, HA], ids=["single", "ha"])
def test_deployment_settings_are_real_and_secrets_are_mounted_files(directory: Path) -> None:
    pod = _load("deployment.yaml", directory)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    options = {p.envvar: p for p in run.params if isinstance(p, click.Option) and p.envvar}
    unknown = set(env) - set(options)
    assert not unknown, f"not settings of reconciler run: {sorted(unknown)}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for mount in mounts.values():
        assert mount["name"] in volumes, f"mount of an undeclared volume {mount['name']}"
    state = volumes[mounts[env["RECONCILER_STATE_DIR"]]["name"]]
    if directory == HA:
        # the state is in PostgreSQL; the state directory holds caches only
        url = urllib.parse.urlsplit(env["RECONCILER_STATE_URL"])
        assert url.scheme == "postgresql" and url.username and url.password is None
        assert "emptyDir" in state
    else:
        assert "RECONCILER_STATE_URL" not in env
        assert state["persistentVolumeClaim"] == {
            "claimName": _load("pvc.yaml")["metadata"]["name"]
        }
    assert env["RECONCILER_ROOT"] in mounts
    assert "/tmp" in mounts  # the root filesystem is read-only
    secret_files = [name for name in env if name.endswith(("_FILE", "_SSH_KEY", "_KNOWN_HOSTS"))]
    assert {"RECONCILER_TOKEN_FILE", "RECONCILER_WEBHOOK_SECRET_FILE"} <= set(secret_files)
    if directory == HA:
        assert "RECONCILER_STATE_PASSWORD_FILE" in secret_files
    for name in secret_files:
        secret_dir, key = posixpath.split(env[name])
        mount = mounts[secret_dir]
        assert mount["readOnly"] is True
        secret_name = volumes[mount["name"]]["secret"]["secretName"]
        secret = _secret(secret_name, directory)
        assert key in secret["stringData"], f"{name}: Secret {secret_name} has no key {key}"


def _secret(name: str, directory: Path = KUBERNETES) -> dict[str, Any]:
    for file in SECRETS:
        if file not in _files(directory):
            continue
        document = _load(file, directory)
        if document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no Secret {name} in {directory}")


def test_ha_two_replicas_on_separate_nodes_one_always_available() -> None:
    deployment = _load("deployment.yaml", HA)
    assert deployment["spec"]["replicas"] == 2
    # never a third pod: anti-affinity would leave it no node on a two-node cluster
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    (term,) = template["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    budget = _load("pdb.yaml", HA)
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _load("service.yaml", HA)
    assert service["spec"]["selector"].items() <= labels.items()  # reads go to either


def test_ha_replicas_advertise_their_pod_and_name_themselves() -> None:
    pod = _load("deployment.yaml", HA)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert fields == {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"}
    env = _env(container)
    (port,) = container["ports"]
    assert env["RECONCILER_ADVERTISE_URL"] == f"http://$(POD_IP):{port['containerPort']}"
    assert env["RECONCILER_DAEMON_ID"] == "$(POD_NAME)"
    assert env["RECONCILER_LISTEN"] == f"0.0.0.0:{port['containerPort']}"


def test_ha_deployment_is_as_confined_and_probed_as_the_single_one() -> None:
    single = _load("deployment.yaml")["spec"]["template"]["spec"]
    ha = _load("deployment.yaml", HA)["spec"]["template"]["spec"]
    for key in ("securityContext", "automountServiceAccountToken", "terminationGracePeriodSeconds"):
        assert ha[key] == single[key], key
    (one,), (two,) = single["containers"], ha["containers"]
    for key in ("securityContext", "resources", "ports", "livenessProbe", "readinessProbe"):
        assert two[key] == one[key], key
    assert two["image"] == one["image"]
    assert two["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert two["readinessProbe"]["httpGet"]["path"] == "/readyz"


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
        "deploy/kubernetes/common/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml: "
        "copy the groups of alerts.yaml under spec:"
    )


@pytest.mark.parametrize(
    "path",
    [d / name for d, names in OWN.items() for name in names],
    ids=lambda path: str(path.relative_to(KUBERNETES)),
)
def test_common_labels_and_no_namespace(path: Path) -> None:
    metadata = _load(path.name, path.parent)["metadata"]
    assert metadata["labels"]["app.kubernetes.io/name"] == "reconciler"
    if path.name != "namespace.yaml":
        assert "namespace" not in metadata  # set once, by the kustomization

"""The Helm chart (charts/eventstore) with the real helm binary and the real control plane.

lint --strict; schema refusals; `helm template` accepted by a server-side dry run; and
a full life cycle: install (operator objects + an EventStore), the operator run as a
local process with the chart's ServiceAccount token reconciles it, upgrade rolls what
it should, uninstall leaves only what the docs say is kept (the CRD and the volumes).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventstore_operator import crd, names
from tests.k8s.test_operator_support import (
    MANIFESTS,
    REPO,
    Kubectl,
    OperatorProcess,
    condition,
    install_crd,
    service_account_kubeconfig,
    wait_for,
)

CHART = REPO / "charts" / "eventstore"
RELEASE = "r1"
CHART_SA = "r1-eventstore-operator"  # eventstore.fullname for release r1


class Helm:
    def __init__(self, binary: Path, kubeconfig: Path | None = None) -> None:
        self.binary = Path(binary)
        self.kubeconfig = kubeconfig

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        config = ["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []
        proc = subprocess.run([str(self.binary), *config, *args], capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc


VALUE_SETS = {
    "defaults": [],
    "everything": [
        "--set",
        "eventstore.create=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
        "--set",
        "operator.watchNamespaces={a,b}",
        "--set",
        "eventstore.spec.replicas=5",
        "--set",
        "eventstore.spec.storage.size=200Gi",
    ],
}


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_lint_strict(helm_binary: Path, values: str) -> None:
    proc = Helm(helm_binary).run("lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "eventstore.spec.replicas=three"], "/eventstore/spec/replicas"),
        (["--set", "replicaCount=three"], "/replicaCount"),
        (["--set", "replicas=3"], "additional properties 'replicas' not allowed"),
        (["--set", "eventstore.spec.storage.sise=1Gi"], "additional properties 'sise' not allowed"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    ],
)
def test_values_schema_refuses_with_a_clear_message(
    helm_binary: Path, values: list[str], message: str
) -> None:
    proc = Helm(helm_binary).run("template", RELEASE, str(CHART), *values, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_values_schema_is_generated_from_the_crd() -> None:
    path = REPO / crd.VALUES_SCHEMA_PATH
    assert path.read_text() == crd.render_values_schema(), (
        "values.schema.json drifted: run python -m eventstore_operator.crd --write"
    )


def rendered(helm_binary: Path, namespace: str, *values: str) -> list[dict[str, Any]]:
    out = Helm(helm_binary).run("template", RELEASE, str(CHART), "-n", namespace, *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_chart_rbac_equals_manifests_rbac(helm_binary: Path) -> None:
    """One set of rules: the chart's Role and manifests/rbac.yaml's Role agree."""
    chart_role = next(d for d in rendered(helm_binary, "x") if d["kind"] == "Role")
    manifest_role = next(
        d for d in yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()) if d["kind"] == "Role"
    )
    assert chart_role["rules"] == manifest_role["rules"]


def test_chart_renders_no_nulls_and_standard_labels(helm_binary: Path) -> None:
    for values in VALUE_SETS.values():
        for doc in rendered(helm_binary, "x", *values):
            text = json.dumps(doc)
            assert "null" not in text, f"null in {doc['kind']}"
            labels = doc["metadata"].get("labels", {})
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
                assert key in labels, f"{doc['kind']} lacks {key}"


def test_chart_crd_is_the_single_source(helm_binary: Path) -> None:
    assert (CHART / "crds" / "eventstore.yaml").read_text() == (MANIFESTS / "crd.yaml").read_text()
    out = Helm(helm_binary).run("show", "crds", str(CHART)).stdout
    assert "eventstores.eventstore.io" in out


# --- against the control plane -------------------------------------------------------


@pytest.fixture
def kubectl(control_plane: Any) -> Kubectl:
    k = Kubectl(control_plane.kubectl, control_plane.kubeconfig)
    install_crd(k)
    return k


@pytest.fixture
def helm(control_plane: Any) -> Helm:
    return Helm(control_plane.helm, control_plane.kubeconfig)


def test_template_passes_a_server_side_dry_run(helm: Helm, kubectl: Kubectl, namespace: str) -> None:
    values = ["--set", "eventstore.create=true", "--set", "metrics.grafanaDashboard.enabled=true"]
    out = helm.run("template", RELEASE, str(CHART), "-n", namespace, *values).stdout
    proc = kubectl.run("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=out)
    for kind in ("serviceaccount", "role", "rolebinding", "deployment", "eventstore", "configmap"):
        assert f"{kind}" in proc.stdout.lower()
    assert "(server dry run)" in proc.stdout


@pytest.fixture
def release(helm: Helm, kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """helm install + the operator as a local process with the chart's ServiceAccount."""
    helm.run(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--set",
        "eventstore.create=true",
        "--set",
        "eventstore.spec.settings.snapshotFrequency=25",
    )
    kubeconfig = service_account_kubeconfig(kubectl, namespace, tmp_path, CHART_SA)
    op = OperatorProcess(kubeconfig, namespace, tmp_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        helm.run("uninstall", RELEASE, "-n", namespace, check=False)
    op.assert_clean_logs()


def store_of(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    body = kubectl.get("eventstore", "eventstore", namespace)
    cond = condition(body, names.CONDITION_RECONCILED)
    if not body or not cond or cond["status"] != "True":
        return None
    if cond["observedGeneration"] != body["metadata"]["generation"]:
        return None
    return kubectl.get("statefulset", "eventstore", namespace)


def test_upgrading_the_image_tag_rolls_the_store(
    helm: Helm, kubectl: Kubectl, namespace: str, release: OperatorProcess
) -> None:
    """Issue 13 #5: `helm upgrade --set image.tag=...` upgrades the store, not only the
    operator (an EventStore without spec.image runs the operator's image)."""
    sts = wait_for(lambda: store_of(kubectl, namespace), 30, "the chart's EventStore to converge")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == names.DEFAULT_IMAGE
    helm.run("upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values", "--set", "image.tag=0.2.0")
    deployment = kubectl.get("deployment", CHART_SA, namespace)
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == env["EVENTSTORE_DEFAULT_IMAGE"] == "ghcr.io/eventstore-py/eventstore:0.2.0"
    # The Deployment's rollout, here: the local operator restarts with the new env.
    release.stop()
    release.env["EVENTSTORE_DEFAULT_IMAGE"] = env["EVENTSTORE_DEFAULT_IMAGE"]
    release.start()

    def rolled() -> bool:
        s = store_of(kubectl, namespace)
        return bool(s and s["spec"]["template"]["spec"]["containers"][0]["image"] == container["image"])

    wait_for(rolled, 30, "the store StatefulSet to run the upgraded image")
    body = kubectl.get("eventstore", "eventstore", namespace)
    assert body is not None and "image" not in body["spec"]
    assert body["status"]["image"] == container["image"]


def test_install_upgrade_uninstall(
    helm: Helm, kubectl: Kubectl, namespace: str, release: OperatorProcess
) -> None:
    deployment = kubectl.get("deployment", CHART_SA, namespace)
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={namespace}" in args
    sts = wait_for(lambda: store_of(kubectl, namespace), 30, "the chart's EventStore to converge")
    assert sts["spec"]["replicas"] == 3
    cm = kubectl.get("configmap", "eventstore-config", namespace)
    assert cm and "snapshot_frequency: 25" in cm["data"]["event-store.yaml"]

    # Upgrade: the EventStore's spec rolls the store; operator values roll the operator.
    helm.run(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--reuse-values",
        "--set",
        "eventstore.spec.replicas=5",
        "--set",
        "eventstore.spec.image=registry.local/eventstore:0.2.0",
        "--set",
        "operator.resyncSeconds=10",
    )

    def upgraded() -> bool:
        s = store_of(kubectl, namespace)
        return bool(
            s
            and s["spec"]["replicas"] == 5
            and s["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/eventstore:0.2.0"
        )

    wait_for(upgraded, 30, "the upgrade to reach the store StatefulSet")
    deployment = kubectl.get("deployment", CHART_SA, namespace)
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EVENTSTORE_OPERATOR_RESYNC_SECONDS"] == "10"
    # The ConfigMap is the user's after creation: an upgrade does not reset it.
    cm = kubectl.get("configmap", "eventstore-config", namespace)
    assert cm and "snapshot_frequency: 25" in cm["data"]["event-store.yaml"]
    claims_before = {c["metadata"]["name"] for c in kubectl.list("pvc", namespace)}

    # In a cluster helm deletes the operator's Deployment with its Role; here the local
    # operator process goes first, so it does not run on without its permissions.
    release.stop()
    helm.run("uninstall", RELEASE, "-n", namespace)
    kinds = (
        "deployments,statefulsets,services,configmaps,secrets,networkpolicies,"
        "poddisruptionbudgets,serviceaccounts,roles,rolebindings,eventstores"
    )

    def leftovers() -> list[str]:
        items = kubectl.list(kinds, namespace, "app.kubernetes.io/part-of=eventstore")
        return [
            f"{o['kind']}/{o['metadata']['name']}"
            for o in items
            if names.LABEL_KEPT_WITH_DATA not in o["metadata"].get("labels", {})
        ]

    try:
        wait_for(lambda: not leftovers(), 60, "uninstall to leave no orphans")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {leftovers()}") from None
    # Kept on purpose (documented in NOTES.txt and the README): the volumes and the CRD.
    assert {c["metadata"]["name"] for c in kubectl.list("pvc", namespace)} == claims_before
    # ... and what that data needs: a later `helm install` finds the same credentials and
    # settings (issue 13 #1).
    kept = kubectl.list("secrets,configmaps", namespace, f"{names.LABEL_KEPT_WITH_DATA}=true")
    assert {o["metadata"]["name"] for o in kept} >= {
        "eventstore-config",
        "eventstore-postgres-credentials",
        "eventstore-mongodb-credentials",
    }
    assert kubectl.get("crd", names.CRD_NAME, "default") is not None


def test_create_namespace_without_pod_security_label_is_said(
    helm: Helm, kubectl: Kubectl, namespace: str
) -> None:
    """Issue 13 #9: helm cannot label the namespace it creates; the notes say how."""
    fresh = f"{namespace}-new"
    try:
        out = helm.run("install", RELEASE, str(CHART), "-n", fresh, "--create-namespace").stdout
        assert f"WARNING: namespace {fresh} has no pod-security.kubernetes.io/enforce label" in out, out
        assert f"kubectl label namespace {fresh} pod-security.kubernetes.io/enforce=restricted" in out
        helm.run("uninstall", RELEASE, "-n", fresh)
        kubectl.run("label", "namespace", fresh, "pod-security.kubernetes.io/enforce=restricted")
        out = helm.run("install", RELEASE, str(CHART), "-n", fresh).stdout
        assert "WARNING" not in out, out
        assert "app.kubernetes.io/instance=<name>" in out  # the clean-up targets one EventStore
    finally:
        helm.run("uninstall", RELEASE, "-n", fresh, check=False)
        kubectl.run("delete", "namespace", fresh, "--wait=false", "--ignore-not-found", check=False)

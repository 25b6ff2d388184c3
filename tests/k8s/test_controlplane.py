"""The local control plane behaves like a real cluster where the operator relies on it:
version reporting, the StatefulSet controller, garbage collection by owner references,
and RBAC for ServiceAccounts and users."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.harness.controlplane import K8S_VERSION, ControlPlane
from tests.harness.kubeaccess import wait_until

pytestmark = pytest.mark.k8s


def _names(control_plane: ControlPlane, kind: str, namespace: str, selector: str) -> list[str]:
    items = control_plane.kubectl_json("get", kind, "-n", namespace, "-l", selector)["items"]
    return sorted(item["metadata"]["name"] for item in items)


def _exists(control_plane: ControlPlane, kind: str, name: str, namespace: str) -> bool:
    proc = control_plane.kubectl_run(
        "get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name", check=False
    )
    assert proc.returncode == 0, proc.stderr
    return bool(proc.stdout.strip())


def _statefulset(
    name: str,
    replicas: int,
    *,
    parallel: bool,
    delete_claims: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceName": name,
        "replicas": replicas,
        "podManagementPolicy": "Parallel" if parallel else "OrderedReady",
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [
                    {
                        "name": "store",
                        "image": "registry.invalid/eventstore:test",
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ]
            },
        },
        "volumeClaimTemplates": [
            {
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Gi"}}},
            }
        ],
    }
    if delete_claims:
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete", "whenScaled": "Delete"}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": spec,
    }


def test_server_reports_the_built_version(control_plane: ControlPlane) -> None:
    versions = json.loads(control_plane.kubectl_run("version", "-o", "json").stdout)
    server = versions["serverVersion"]
    assert server["gitVersion"] == K8S_VERSION
    assert (server["major"], server["minor"]) == ("1", K8S_VERSION.split(".")[1])
    client_minor = int(versions["clientVersion"]["minor"].rstrip("+"))
    assert abs(client_minor - int(server["minor"])) <= 1, "kubectl must be within one minor of the server"
    helm = subprocess.run(
        [str(control_plane.helm), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert helm.stdout.startswith("v3.") or helm.stdout.startswith("v4."), helm.stdout


def test_statefulset_controller_creates_pods_and_claims(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.apply(_statefulset("store", 3, parallel=True), namespace)

    pods = wait_until(
        lambda: (
            (names := _names(control_plane, "pods", namespace, "app=store"))
            == ["store-0", "store-1", "store-2"]
            and names
        ),
        timeout=60,
        message="the StatefulSet's 3 Pods",
    )
    assert pods == ["store-0", "store-1", "store-2"]
    claims = wait_until(
        lambda: len(names := _names(control_plane, "pvc", namespace, "app=store")) == 3 and names,
        timeout=30,
        message="the StatefulSet's 3 PVCs",
    )
    assert claims == ["data-store-0", "data-store-1", "data-store-2"]

    sts_uid = control_plane.kubectl_json("get", "statefulset", "store", "-n", namespace)["metadata"]["uid"]
    pod = control_plane.kubectl_json("get", "pod", "store-1", "-n", namespace)
    assert [(o["kind"], o["uid"], o.get("controller")) for o in pod["metadata"]["ownerReferences"]] == [
        ("StatefulSet", sts_uid, True)
    ]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "data-store-1"
    assert pod["status"]["phase"] == "Pending"  # no kubelet, by design
    pvc = control_plane.kubectl_json("get", "pvc", "data-store-1", "-n", namespace)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"

    # Deleting the StatefulSet garbage-collects its Pods; the default policy keeps the claims.
    control_plane.kubectl_run("delete", "statefulset", "store", "-n", namespace, "--wait=false")
    wait_until(
        lambda: not _names(control_plane, "pods", namespace, "app=store"),
        timeout=60,
        message="garbage collection of the StatefulSet's Pods",
    )
    assert len(_names(control_plane, "pvc", namespace, "app=store")) == 3


def test_ordered_statefulset_waits_for_a_ready_first_pod(control_plane: ControlPlane, namespace: str) -> None:
    # OrderedReady (the default) creates store-1 only once store-0 is Ready, which needs a
    # kubelet: here exactly one Pod and one claim appear. Operator tests must expect this.
    control_plane.apply(_statefulset("ordered", 3, parallel=False), namespace)
    wait_until(
        lambda: _names(control_plane, "pods", namespace, "app=ordered") == ["ordered-0"],
        timeout=60,
        message="the first ordered Pod",
    )
    wait_until(
        lambda: _names(control_plane, "pvc", namespace, "app=ordered") == ["data-ordered-0"],
        timeout=30,
        message="the first ordered PVC",
    )
    status = control_plane.kubectl_json("get", "statefulset", "ordered", "-n", namespace)["status"]
    assert status.get("readyReplicas", 0) == 0


def test_claim_retention_policy_delete_collects_claims(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.apply(_statefulset("scratch", 2, parallel=True, delete_claims=True), namespace)
    wait_until(
        lambda: len(_names(control_plane, "pvc", namespace, "app=scratch")) == 2,
        timeout=60,
        message="the claims",
    )
    control_plane.kubectl_run("delete", "statefulset", "scratch", "-n", namespace, "--wait=false")
    wait_until(
        lambda: not _names(control_plane, "pvc", namespace, "app=scratch"),
        timeout=60,
        message="garbage collection of claims with whenDeleted=Delete",
    )


def test_deleting_an_owner_garbage_collects_its_dependents(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl_run("create", "configmap", "owner", "-n", namespace, "--from-literal=a=1")
    owner_uid = control_plane.kubectl_json("get", "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
                ],
            },
            "data": {"b": "2"},
        },
        namespace,
    )
    control_plane.kubectl_run("create", "configmap", "bystander", "-n", namespace)

    control_plane.kubectl_run("delete", "configmap", "owner", "-n", namespace)
    wait_until(
        lambda: not _exists(control_plane, "configmap", "dependent", namespace),
        timeout=60,
        message="garbage collection of the dependent ConfigMap",
    )
    assert _exists(control_plane, "configmap", "bystander", namespace)


def test_rbac_for_service_accounts_and_users(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl_run("create", "serviceaccount", "reader", "-n", namespace)
    control_plane.kubectl_run(
        "create", "role", "cm-reader", "-n", namespace, "--verb=get,list,watch", "--resource=configmaps"
    )
    control_plane.kubectl_run(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
        "--group=readers",
    )
    subject = f"system:serviceaccount:{namespace}:reader"

    def can_i(*args: str) -> str:
        proc = control_plane.kubectl_run(
            "auth", "can-i", *args, "-n", namespace, f"--as={subject}", check=False
        )
        return proc.stdout.strip()

    assert can_i("list", "configmaps") == "yes"
    assert can_i("delete", "configmaps") == "no"
    assert can_i("get", "secrets") == "no"

    # The same permissions hold for a process that runs with the account's token.
    sa_config = control_plane.service_account_kubeconfig(namespace, "reader")
    whoami = control_plane.kubectl_json("auth", "whoami", kubeconfig=sa_config)
    assert whoami["status"]["userInfo"]["username"] == subject
    control_plane.kubectl_run("get", "configmaps", "-n", namespace, kubeconfig=sa_config)
    denied = control_plane.kubectl_run("get", "secrets", "-n", namespace, kubeconfig=sa_config, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

    # And for a certificate user through a group binding; a stranger gets nothing.
    alice = control_plane.make_user_kubeconfig("alice", ["readers"])
    control_plane.kubectl_run("get", "configmaps", "-n", namespace, kubeconfig=alice)
    bob = control_plane.make_user_kubeconfig("bob", ["others"])
    assert (
        control_plane.kubectl_run(
            "get", "configmaps", "-n", namespace, kubeconfig=bob, check=False
        ).returncode
        != 0
    )


def test_services_get_cluster_ips_and_headless_services_none(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl_run("create", "service", "clusterip", "client", "-n", namespace, "--tcp=8080:8080")
    control_plane.kubectl_run(
        "create", "service", "clusterip", "headless", "-n", namespace, "--clusterip=None", "--tcp=8080:8080"
    )
    client = control_plane.kubectl_json("get", "service", "client", "-n", namespace)["spec"]
    assert client["clusterIP"].startswith("10.0.0.")
    headless = control_plane.kubectl_json("get", "service", "headless", "-n", namespace)["spec"]
    assert headless["clusterIP"] == "None"

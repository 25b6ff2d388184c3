"""manifests/ against the real API server: every file is accepted (server-side dry run)
and the pieces agree with each other (ServiceAccount, namespace, image, CRD copy)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from eventstore_operator import crd, names
from tests.k8s.test_operator_support import (
    MANIFEST_NAMESPACE,
    MANIFESTS,
    REPO,
    SERVICE_ACCOUNT,
    Kubectl,
    install_crd,
    manifest,
)


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def test_crd_copies_are_identical() -> None:
    """Also in tests/unit; repeated here because issue 6 asks it of the chart copy."""
    texts = {str(p): (REPO / p).read_text() for p in crd.CRD_COPIES}
    assert len(set(texts.values())) == 1, f"CRD copies differ: {sorted(texts)}"
    assert next(iter(texts.values())) == crd.render_crd()


def test_operator_deployment_matches_rbac() -> None:
    (deployment,) = docs("operator.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["namespace"] == MANIFEST_NAMESPACE
    assert deployment["spec"]["replicas"] == 1  # standalone: no peering, one replica
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    (c,) = pod["containers"]
    assert c["command"] == ["eventstore-operator"]
    assert "--standalone" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs("rbac.yaml")}
    assert kinds == {
        ("ServiceAccount", SERVICE_ACCOUNT),
        ("Role", SERVICE_ACCOUNT),
        ("RoleBinding", SERVICE_ACCOUNT),
    }
    assert all(d["metadata"]["namespace"] == MANIFEST_NAMESPACE for d in docs("rbac.yaml"))


def test_rbac_has_no_wildcards_and_no_secret_listing() -> None:
    """Secrets: create (generated ones) and get (the opt-in label of a referenced one,
    see eventstore_operator/trust.py); never list or watch."""
    role = next(d for d in docs("rbac.yaml") if d["kind"] == "Role")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get", "create"]


def test_example_uses_the_crd_kind() -> None:
    (example,) = docs("examples/eventstore.yaml")
    assert example["apiVersion"] == names.API_VERSION and example["kind"] == names.KIND
    assert "namespace" not in example["metadata"]  # applied with -n


#: The fields in which manifests/examples/eventstore-local.yaml may differ from the example.
LOCAL_IMAGE_FIELDS = (("imagePullPolicy",), ("postgres", "image"), ("mongodb", "image"))


def test_local_example_is_the_example_on_the_local_images() -> None:
    """eventstore-local.yaml (README: `make cluster-up && make images`, then kubectl apply)
    names exactly the images tests/harness/images.py builds, pulls none of them, and is
    eventstore.yaml in everything else."""
    from tests.harness import images

    (example,) = docs("examples/eventstore.yaml")
    (local,) = docs("examples/eventstore-local.yaml")
    spec = local["spec"]
    assert spec["image"] == images.STORE_IMAGE
    assert spec["postgres"]["image"] == images.POSTGRES_IMAGE
    assert spec["mongodb"]["image"] == images.MONGODB_IMAGE
    assert spec.get("imagePullPolicy", "IfNotPresent") in ("IfNotPresent", "Never")
    for doc in (example, local):
        for path in LOCAL_IMAGE_FIELDS:
            node = doc["spec"]
            for key in path[:-1]:
                node = node.get(key) or {}
            node.pop(path[-1], None)
    assert local == example, (
        "manifests/examples/eventstore-local.yaml differs from eventstore.yaml in more than the "
        f"images: update it.\nexample: {example}\nlocal:   {local}"
    )


@pytest.mark.k8s
def test_manifests_pass_a_server_side_dry_run(control_plane: Any, namespace: str) -> None:
    kubectl = Kubectl(control_plane.kubectl, control_plane.kubeconfig)
    install_crd(kubectl)
    for name in ("crd.yaml", "rbac.yaml", "operator.yaml"):
        text = manifest(name, namespace)
        proc = kubectl.run("apply", "--dry-run=server", "-f", "-", input=text)
        assert "server dry run" in proc.stdout, proc.stdout
    proc = kubectl.run(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(MANIFESTS / "examples/eventstore.yaml")
    )
    assert "eventstore.eventstore.io/demo created (server dry run)" in proc.stdout
    proc = kubectl.run(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(MANIFESTS / "examples/eventstore-local.yaml")
    )
    assert "eventstore.eventstore.io/demo created (server dry run)" in proc.stdout
    # The Namespace manifest too (a new name, so the dry run does not touch a real one).
    ns_doc = (MANIFESTS / "namespace.yaml").read_text().replace(MANIFEST_NAMESPACE, f"{namespace}-x")
    kubectl.run("apply", "--dry-run=server", "-f", "-", input=ns_doc)

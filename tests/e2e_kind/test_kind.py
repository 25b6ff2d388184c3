"""The whole product in a kind cluster: image, chart, operator, store pods, databases.

The same scenarios as tests/e2e_node (tests/e2e_shared/scenarios.py, one module for both),
in the same order, on one Helm release shared by the module: the chart installs the
operator and the example EventStore (manifests/examples/eventstore.yaml, pointed at the
image the suite built); then the objects, a client workload from the host (through
`kubectl port-forward`) and from a pod, a ConfigMap edit that rolls the pods, an invalid
one that changes nothing, a store pod restarted on its claim, a store pod and the
PostgreSQL pod deleted under load, backup Jobs onto a claim and a new EventStore restored
from them, `helm upgrade` to a new image tag and `helm uninstall`. The same backup scenario
onto an S3 bucket skips here: this suite has no S3 endpoint its pods can reach (tests/e2e_node
runs it against versitygw on its node bridge).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventstore_operator import names
from tests.e2e_kind.cluster import REPO, KindCluster
from tests.e2e_shared import scenarios
from tests.e2e_shared.access import PortForwardAccess, Timings
from tests.e2e_shared.scenarios import Deployment

NAMESPACE = "eventstore-e2e"
RELEASE = "eventstore"
EXAMPLE = REPO / "manifests" / "examples" / "eventstore.yaml"
READY_TIMEOUT = 900  # image pulls of postgres/mongo on a cold node can be slow
TIMINGS = Timings()


@pytest.fixture(scope="module")
def deployment(kind_cluster: KindCluster, store_image: str) -> Iterator[Deployment]:
    values = scenarios.release_values(EXAMPLE, store_image, "Never", image=store_image,
                                      imagePullPolicy="Never")
    dep = Deployment(kube=kind_cluster, access=PortForwardAccess(kind_cluster.kubectl_argv()),
                     namespace=NAMESPACE, release=RELEASE, name=values["eventstore"]["name"],
                     store_image=store_image, values=values, timings=TIMINGS, ready_timeout=READY_TIMEOUT)
    try:
        with TIMINGS.phase("helm install (operator available)"):
            dep.install()
        yield dep
    finally:
        kind_cluster.helm_run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        kind_cluster.kubectl_run("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found",
                                 check=False)
        print("kind suite timings:\n  " + "\n  ".join(TIMINGS.lines()))


@pytest.fixture(scope="module")
def s3_backup_target() -> scenarios.S3BackupTarget:
    pytest.skip("no S3 endpoint that kind's pods can reach: tests/harness/s3.py's versitygw runs "
                "on the host and this suite does not serve it on kind's Docker network (the "
                "one-node suite, tests/e2e_node, runs this scenario against versitygw on its "
                "node bridge)")


@pytest.fixture(autouse=True)
def timed_scenario(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each scenario's whole time (its own phases are listed under it)."""
    with TIMINGS.phase(f"scenario {request.node.name.removeprefix('test_')}"):
        yield


def test_operator_runs_as_a_pod(deployment: Deployment) -> None:
    scenarios.check_operator_pod(deployment)


def test_store_comes_up_with_its_databases(deployment: Deployment) -> None:
    scenarios.check_store_comes_up(deployment, {
        names.COMPONENT_STORE: deployment.store_image,
        names.COMPONENT_POSTGRES: names.DEFAULT_POSTGRES_IMAGE,
        names.COMPONENT_MONGODB: names.DEFAULT_MONGODB_IMAGE,
    })


def test_client_workload_from_the_host(deployment: Deployment) -> None:
    with TIMINGS.phase("client workload from the host"):
        scenarios.check_client_from_the_host(deployment)


def test_client_workload_from_a_pod(deployment: Deployment) -> None:
    with TIMINGS.phase("client workload from a pod (Job)"):
        scenarios.check_client_from_a_pod(deployment)


def test_store_network_policy_admits_only_allowed_clients(deployment: Deployment) -> None:
    # kind's default CNI may not enforce NetworkPolicies: the objects and the allowed client.
    scenarios.check_store_network_policy(deployment, enforced=False)


def test_configmap_edit_rolls_the_store_pods_onto_the_new_settings(deployment: Deployment) -> None:
    scenarios.check_configmap_edit_rolls(deployment)


def test_invalid_configmap_edit_keeps_the_last_good_settings(deployment: Deployment) -> None:
    scenarios.check_invalid_configmap_edit_keeps_last_good(deployment)


def test_store_pod_restarted_on_its_claim_keeps_its_data(deployment: Deployment) -> None:
    scenarios.check_store_pod_restart_keeps_its_data(deployment)


def test_store_pod_deleted_under_load_loses_no_acknowledged_append(deployment: Deployment) -> None:
    scenarios.check_store_pod_deleted_under_load(deployment)


def test_postgres_pod_deleted_under_load_503_then_recovery(deployment: Deployment) -> None:
    scenarios.check_postgres_deleted_under_load(deployment)


def test_backup_jobs_then_a_new_eventstore_restored_from_them(deployment: Deployment) -> None:
    scenarios.check_backup_then_restore_into_a_new_eventstore(deployment, scenarios.ClaimBackupTarget())


def test_s3_backup_jobs_then_a_new_eventstore_restored_from_the_bucket(
        s3_backup_target: scenarios.S3BackupTarget, deployment: Deployment) -> None:
    scenarios.check_backup_then_restore_into_a_new_eventstore(deployment, s3_backup_target)


def test_helm_upgrade_to_a_new_image_tag_rolls_the_store(deployment: Deployment) -> None:
    scenarios.check_helm_upgrade_rolls_the_store(deployment, "e2e-upgrade")


def test_helm_uninstall_keeps_the_claims(deployment: Deployment) -> None:
    scenarios.check_helm_uninstall_keeps_the_claims(deployment)


def test_helm_uninstall_keeps_the_credentials_to_reuse_the_claims(deployment: Deployment) -> None:
    scenarios.check_reinstall_reuses_the_claims(deployment)

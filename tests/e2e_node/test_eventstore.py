"""The product on real pods: the one-node cluster (tests/harness/node.py) runs the chart's
operator, three store pods, PostgreSQL and MongoDB (FerretDB) from the images of
tests/harness/images.py, imported into the node's containerd (no registry: nothing is
ever pulled).

The scenarios are tests/e2e_shared/scenarios.py, the same module the kind suite runs, in
the same order, on one Helm release shared by this module (destructive scenarios last):

1. `helm install` of charts/eventstore: the operator as a pod from the store image, and
   the EventStore of manifests/examples/eventstore-local.yaml (3 replicas, 100Gi claims);
2. store, PostgreSQL and MongoDB pods Ready, every claim Bound, the shared object
   assertions (tests/k8s/assertions.py);
3. a client workload through the Service from the host (its ClusterIP, served on the host
   by kube-proxy) and from a pod (a Job on the store image, by the Service's DNS name);
   the store pods' NetworkPolicy: a pod of another namespace gets no connection until
   spec.network.allowFrom admits it (when kube-router enforces policies);
4. a ConfigMap edit rolls the store pods one at a time, the new settings in effect
   (GET /settings, the local read model served, snapshots at the new cadence);
5. an invalid ConfigMap edit changes nothing the pods run;
6. a store pod restarted on its claim keeps /data (its read model goes on from its
   checkpoint);
7. a store pod, then the PostgreSQL pod, deleted under in-cluster append load;
8. spec.backup onto a claim, then onto an S3 bucket (versitygw on the node bridge's
   address, which the pods reach; its credentials in a Secret only): two backup Jobs (full,
   then incremental) reported in status.lastBackup, the segments read back from the target
   apart from the Jobs, then a new EventStore with spec.restore.from restores the same log;
9. `helm upgrade` to a second tag of the store image rolls the store;
10. `helm uninstall` keeps the claims (and should keep the credentials to reuse them).

Phase timings are printed at the end of the session (conftest.py).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstore_operator import names
from tests.e2e_node.conftest import NodeSession, unavailable
from tests.e2e_shared import scenarios
from tests.e2e_shared.access import DirectAccess, Timings
from tests.e2e_shared.scenarios import Deployment
from tests.harness import images
from tests.harness.fixtures import started_or_skipped
from tests.harness.node import GATEWAY_IP, Node
from tests.harness.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "eventstore-e2e"
RELEASE = "eventstore"
EXAMPLE = REPO / "manifests" / "examples" / "eventstore-local.yaml"
#: The second tag of the store image that `helm upgrade` moves to.
UPGRADE_TAG = "0.1.0-e2e-upgrade"


class NodeCluster:
    """The harness's Node as a tests.e2e_shared.scenarios.Cluster."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def kubectl_run(self, *args: str, check: bool = True, input: str | None = None,
                    timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.node.kubectl_run(*args, check=check, input=input, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return self.node.kubectl_json(*args)

    def helm_run(self, *args: str, check: bool = True, timeout: float = 600.0
                 ) -> subprocess.CompletedProcess[str]:
        return self.node.helm_run(*args, check=check, timeout=timeout)

    def diagnostics(self, namespace: str) -> str:
        """The node's own diagnostics, plus the operator's log and the EventStore's status
        (a reconcile error shows there first)."""
        parts = [self.node.diagnostics(namespace)]
        for args in (("get", "eventstores", "-n", namespace, "-o", "yaml"),
                     ("logs", "-n", namespace, "-l", "app.kubernetes.io/component=operator", "--tail=100"),
                     ("logs", "-n", namespace, "-l", f"{names.LABEL_COMPONENT}={names.COMPONENT_STORE}",
                      "--tail=30", "--prefix")):
            proc = self.node.kubectl_run(*args, check=False, timeout=30)
            parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        return "\n".join(parts)

    def tag_image(self, source: str, target: str) -> None:
        self.node.ctr("images", "tag", "--force", source, target)


@pytest.fixture(scope="module")
def local_images(node_session: NodeSession, timings: Timings) -> None:
    """Every image the pods run, built (cached by content) and in the node's containerd.
    Skipped (failed with EVENTSTORE_REQUIRE_NODE=1) when an image must be built and the
    tools to build it are missing."""
    timings.phases.setdefault("cluster up (or adopted)", node_session.up_seconds)
    uncached = [key for key, recipe in images.RECIPES.items() if not recipe.archive_path().exists()]
    tools = [tool for tool in ("debootstrap", "go") if shutil.which(tool) is None]
    if uncached and tools:
        unavailable(f"the images {', '.join(uncached)} are not built (`make images`) and this machine "
                    f"lacks {', '.join(tools)} to build them")
    with timings.phase("images (build if changed, import)"):
        images.ensure_imported(Path(node_session.node.containerd_address))


def remove_leftovers(cluster: NodeCluster) -> None:
    """A release or namespace left by an interrupted earlier run (on an adopted cluster)."""
    if cluster.kubectl_run("get", "namespace", NAMESPACE, check=False).returncode == 0:
        cluster.helm_run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        cluster.kubectl_run("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=240s", timeout=300)


@pytest.fixture(scope="module")
def deployment(node: Node, local_images: None, timings: Timings) -> Iterator[Deployment]:
    cluster = NodeCluster(node)
    values = scenarios.release_values(EXAMPLE, images.STORE_IMAGE, "IfNotPresent")
    dep = Deployment(kube=cluster, access=DirectAccess(cluster), namespace=NAMESPACE, release=RELEASE,
                     name=values["eventstore"]["name"], store_image=images.STORE_IMAGE, values=values,
                     timings=timings, ready_timeout=300)
    remove_leftovers(cluster)
    try:
        with timings.phase("helm install (operator available)"):
            dep.install()
        yield dep
    finally:
        with timings.phase("cleanup (uninstall, namespace and volumes deleted)"):
            cluster.helm_run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
            cluster.kubectl_run("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
                                "--timeout=240s", check=False, timeout=300)
            repository = images.STORE_IMAGE.rsplit(":", 1)[0]
            node.ctr("images", "rm", f"{repository}:{UPGRADE_TAG}", check=False)


@pytest.fixture(scope="module")
def s3_backup_target(node: Node) -> Iterator[scenarios.S3BackupTarget]:
    """versitygw (tests/harness/s3.py) on the node bridge's address, which the pods reach,
    with a random key and secret and a bucket of its own, for this module; then stopped
    through its own process handle and its data removed. Skipped when it cannot start here
    (a failure with EVENTSTORE_REQUIRE_S3=1, as .ci/run sets)."""
    servers = started_or_skipped(S3Server(host=GATEWAY_IP), f"versitygw on the node bridge ({GATEWAY_IP})",
                                 "EVENTSTORE_REQUIRE_S3")
    server = next(servers)
    try:
        bucket = server.create_bucket(f"e2e-{uuid.uuid4().hex[:8]}")
        yield scenarios.S3BackupTarget(endpoint=server.endpoint, bucket=bucket, prefix=f"{NAMESPACE}/backups",
                                       region=server.region, access_key=server.access_key,
                                       secret_key=server.secret_key)
    finally:
        servers.close()


@pytest.fixture(autouse=True)
def timed_scenario(request: pytest.FixtureRequest, timings: Timings) -> Iterator[None]:
    """Each scenario's whole time (its own phases are listed under it)."""
    with timings.phase(f"scenario {request.node.name.removeprefix('test_')}"):
        yield


def test_operator_runs_as_a_pod_from_the_local_image(deployment: Deployment) -> None:
    scenarios.check_operator_pod(deployment)


def test_store_comes_up_with_its_databases_and_claims(deployment: Deployment) -> None:
    scenarios.check_store_comes_up(deployment, {
        names.COMPONENT_STORE: images.STORE_IMAGE,
        names.COMPONENT_POSTGRES: images.POSTGRES_IMAGE,
        names.COMPONENT_MONGODB: images.MONGODB_IMAGE,
    })


def test_client_workload_from_the_host(deployment: Deployment) -> None:
    with deployment.timings.phase("client workload from the host (ClusterIP)"):
        scenarios.check_client_from_the_host(deployment)


def test_client_workload_from_a_pod(deployment: Deployment) -> None:
    with deployment.timings.phase("client workload from a pod (Job)"):
        scenarios.check_client_from_a_pod(deployment)


def test_store_network_policy_admits_only_allowed_clients(deployment: Deployment, node: Node) -> None:
    with deployment.timings.phase("store NetworkPolicy (allowed, refused, widened)"):
        scenarios.check_store_network_policy(deployment, enforced="kube-router" in node.status())


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
        deployment: Deployment, s3_backup_target: scenarios.S3BackupTarget) -> None:
    scenarios.check_backup_then_restore_into_a_new_eventstore(deployment, s3_backup_target)


def test_helm_upgrade_to_a_new_image_tag_rolls_the_store(deployment: Deployment) -> None:
    scenarios.check_helm_upgrade_rolls_the_store(deployment, UPGRADE_TAG)


def test_helm_uninstall_keeps_the_claims(deployment: Deployment) -> None:
    scenarios.check_helm_uninstall_keeps_the_claims(deployment)


def test_helm_uninstall_keeps_the_credentials_to_reuse_the_claims(deployment: Deployment) -> None:
    scenarios.check_reinstall_reuses_the_claims(deployment)

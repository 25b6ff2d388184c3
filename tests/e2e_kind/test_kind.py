"""The whole product in a kind cluster: image, chart, operator, store pods, databases.

In order (one deployment shared by the module): helm install the operator, apply an
EventStore, wait for three ready store pods and both databases, check the objects with
the shared assertions (the same ones tests/k8s runs against the local control plane),
run a client workload through the Service (appends, reads, a snapshot), edit the
ConfigMap and check the pods roll onto the new snapshot_frequency, then delete a store
pod under an in-cluster write load and check that no acknowledged event is lost.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from eventstore.errors import ConcurrencyError
from eventstore.events import ExpectedVersion, NewEvent
from eventstore.server.client import EventStoreClient
from eventstore_operator import names
from tests.e2e_kind.cluster import REPO, KindCluster, PortForward, timed
from tests.e2e_kind.conftest import IMAGE_REPOSITORY, IMAGE_TAG
from tests.e2e_kind.workload import lost_or_duplicated
from tests.k8s import assertions

NAMESPACE = "eventstore-e2e"
RELEASE = "eventstore"
NAME = "demo"
READY_TIMEOUT = 900  # image pulls of postgres/mongo on a cold node can be slow
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def deployed(kind_cluster: KindCluster, store_image: str) -> Iterator[KindCluster]:
    """helm install of the operator (waiting for its Deployment), then the example
    EventStore applied with kubectl, pointed at the image built by the suite."""
    kube = kind_cluster
    try:
        with timed(TIMINGS, "helm install (operator available)"):
            kube.helm_run("install", RELEASE, str(REPO / "charts" / "eventstore"), "--namespace", NAMESPACE,
                          "--create-namespace", "--set", f"image.repository={IMAGE_REPOSITORY}",
                          "--set", f"image.tag={IMAGE_TAG}", "--set", "image.pullPolicy=Never",
                          "--set", "operator.resyncSeconds=10", "--wait", "--timeout", "5m")
        example = yaml.safe_load((REPO / "manifests" / "examples" / "eventstore.yaml").read_text())
        assert example["metadata"]["name"] == NAME
        example["spec"].update(image=store_image, imagePullPolicy="Never")
        kube.kubectl_run("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(example))
        yield kube
    except BaseException:
        print(kube.diagnostics(NAMESPACE))
        raise
    finally:
        kube.helm_run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        kube.kubectl_run("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found", check=False)
        print(f"kind suite timings (s): {json.dumps(TIMINGS)}")


def ready_replicas(kube: KindCluster, name: str) -> int:
    sts = assertions.get(kube, "statefulset", name, NAMESPACE) or {}
    return int((sts.get("status") or {}).get("readyReplicas") or 0)


def wait_all_ready(kube: KindCluster, store_replicas: int = 3, timeout: float = READY_TIMEOUT) -> None:
    def ready() -> bool:
        return (ready_replicas(kube, names.postgres(NAME)) == 1
                and ready_replicas(kube, names.mongodb(NAME)) == 1
                and ready_replicas(kube, names.store(NAME)) == store_replicas)

    try:
        assertions.poll(ready, timeout, f"{store_replicas} ready store pods and both databases", interval=2)
    except AssertionError:
        print(kube.diagnostics(NAMESPACE))
        raise


def api_token(kube: KindCluster) -> str:
    secret = assertions.get(kube, "secret", names.api_token(NAME), NAMESPACE)
    assert secret is not None
    return base64.b64decode(secret["data"][names.TOKEN_KEY]).decode().strip()


def store_pods(kube: KindCluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.kubectl_json(
        "get", "pods", "-n", NAMESPACE, "-l",
        f"{names.LABEL_INSTANCE}={NAME},{names.LABEL_COMPONENT}={names.COMPONENT_STORE}")["items"]
    return items


def test_store_comes_up_with_its_databases(deployed: KindCluster) -> None:
    kube = deployed
    with timed(TIMINGS, "EventStore reconciled"):
        assertions.wait_reconciled(kube, NAMESPACE, NAME, timeout=120)
    with timed(TIMINGS, "3 store pods + databases ready"):
        wait_all_ready(kube)
    body = assertions.assert_store_objects(kube, NAMESPACE, NAME)  # shared with tests/k8s
    ready = assertions.poll(
        lambda: (c := assertions.condition(assertions.get(kube, "eventstore", NAME, NAMESPACE),
                                           names.CONDITION_READY)) and c["status"] == "True" and c,
        60, "Ready=True on the EventStore")
    assert ready["observedGeneration"] == body["metadata"]["generation"]
    status = (assertions.get(kube, "eventstore", NAME, NAMESPACE) or {})["status"]
    assert status["readyReplicas"] == 3
    # `kubectl get eventstores` shows it, as the README says.
    table = kube.kubectl_run("get", "eventstores", "-n", NAMESPACE).stdout
    assert NAME in table and "True" in table


def test_client_workload_through_the_service(deployed: KindCluster) -> None:
    kube = deployed
    wait_all_ready(kube)
    with PortForward(kube, NAMESPACE, f"svc/{names.store(NAME)}", names.HTTP_PORT) as forward, \
            EventStoreClient(forward.url, api_token(kube)) as client, timed(TIMINGS, "client workload"):
        assert client.ready()
        streams = [f"account-{i}" for i in range(10)]
        for stream in streams:
            for version in range(5):
                client.append(stream, [NewEvent(type="Deposited", payload={"amount": version + 1})],
                              expected_version=version if version else ExpectedVersion.NO_STREAM)
        for stream in streams:
            events = client.read_stream(stream)
            assert [e.version for e in events] == [1, 2, 3, 4, 5]
            assert sum(e.payload["amount"] for e in events) == 15
        # Optimistic concurrency over HTTP, with the actual version in the error.
        with pytest.raises(ConcurrencyError) as conflict:
            client.append(streams[0], [NewEvent(type="Deposited", payload={"amount": 1})], expected_version=2)
        assert conflict.value.actual_version == 5
        # Re-sending the same event id is idempotent.
        event = NewEvent(type="Withdrawn", payload={"amount": 3})
        first = client.append(streams[1], [event], expected_version=5)
        again = client.append(streams[1], [event], expected_version=5)
        assert again.idempotent and again.positions == first.positions
        assert len(client.read_stream(streams[1])) == 6
        # The global log holds every event once, in position order.
        log = client.read_all(from_position=0, limit=1000)
        ours = [e for e in log if e.aggregate_id in streams]
        assert len(ours) == 51
        positions = [e.position for e in log]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        # A snapshot round trip (MongoDB behind the store).
        client.put_snapshot(streams[2], "Account", 5, {"balance": 15})
        snapshot = client.get_snapshot(streams[2], "Account")
        assert snapshot is not None and snapshot["version"] == 5 and snapshot["state"] == {"balance": 15}
        assert "eventstore_events_appended_total" in client.metrics()


def pod_settings(kube: KindCluster, pod: str) -> dict[str, Any]:
    """The settings the running pod loads, by the store's own `check-config` in the pod."""
    proc = kube.kubectl_run("exec", "-n", NAMESPACE, pod, "--", "sh", "-c",
                            'eventstore check-config "${EVENTSTORE_CONFIG_DIR:-/etc/eventstore}"')
    text = proc.stdout
    loaded: dict[str, Any] = json.loads(text[text.index("{"):])
    return loaded


def test_configmap_edit_rolls_the_pods_onto_the_new_snapshot_frequency(deployed: KindCluster) -> None:
    kube = deployed
    wait_all_ready(kube)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in store_pods(kube)}
    assert all(pod_settings(kube, pod)["store"]["snapshot_frequency"] == 100 for pod in before)
    with timed(TIMINGS, "ConfigMap edit -> all store pods rolled"):
        digest = assertions.assert_configmap_edit_rolls(kube, NAMESPACE, NAME, frequency=50, timeout=120)
        kube.kubectl_run("rollout", "status", f"statefulset/{names.store(NAME)}", "-n", NAMESPACE,
                         "--timeout=900s", timeout=960)
        wait_all_ready(kube)
    after = store_pods(kube)
    assert len(after) == 3
    for pod in after:
        name = pod["metadata"]["name"]
        assert pod["metadata"]["uid"] != before.get(name), f"{name} was not replaced"
        assert pod["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == digest
        assert pod_settings(kube, name)["store"]["snapshot_frequency"] == 50


WORKLOAD_JOB = "workload"


def workload_job(image: str, seconds: int) -> dict[str, Any]:
    """The workload (tests/e2e_kind/workload.py, mounted from a ConfigMap) as a Job that
    talks to the store's Service by its cluster DNS name."""
    restricted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                  "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": WORKLOAD_JOB, "namespace": NAMESPACE},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True},
            "containers": [{
                "name": "workload", "image": image, "imagePullPolicy": "Never",
                "command": ["python", "/workload/workload.py",
                            "--url", f"http://{names.store(NAME)}:{names.HTTP_PORT}",
                            "--token-file", f"/token/{names.TOKEN_KEY}", "--seconds", str(seconds),
                            "--writers", "4", "--prefix", "under-load"],
                "securityContext": restricted,
                "volumeMounts": [{"name": "workload", "mountPath": "/workload", "readOnly": True},
                                 {"name": "token", "mountPath": "/token", "readOnly": True}],
            }],
            "volumes": [{"name": "workload", "configMap": {"name": WORKLOAD_JOB}},
                        {"name": "token", "secret": {"secretName": names.api_token(NAME)}}],
        }}},
    }


def test_deleting_a_store_pod_under_load_loses_no_acknowledged_event(deployed: KindCluster,
                                                                    store_image: str) -> None:
    kube = deployed
    wait_all_ready(kube)
    source = REPO / "tests" / "e2e_kind" / "workload.py"
    kube.kubectl_run("create", "configmap", WORKLOAD_JOB, "-n", NAMESPACE,
                     f"--from-file=workload.py={source}")
    kube.kubectl_run("apply", "-f", "-", input=json.dumps(workload_job(store_image, seconds=90)))

    def logs() -> str:
        return kube.kubectl_run("logs", "-n", NAMESPACE, f"job/{WORKLOAD_JOB}", check=False).stdout

    assertions.poll(lambda: "WORKLOAD STARTED" in logs(), 300, "the workload's first acknowledged append")
    time.sleep(5)  # let the load build up
    victim = f"{names.store(NAME)}-1"
    old_uid = (assertions.get(kube, "pod", victim, NAMESPACE) or {})["metadata"]["uid"]
    with timed(TIMINGS, "store pod deleted under load -> replaced and ready"):
        kube.kubectl_run("delete", "pod", victim, "-n", NAMESPACE, "--wait=false")
        assertions.poll(lambda: (p := assertions.get(kube, "pod", victim, NAMESPACE)) and
                        p["metadata"]["uid"] != old_uid, 120, f"{victim} to be re-created")
        wait_all_ready(kube)
    kube.kubectl_run("wait", "-n", NAMESPACE, f"job/{WORKLOAD_JOB}", "--for=condition=Complete",
                     "--timeout=600s", timeout=660)
    report = json.loads(logs().strip().splitlines()[-1])
    assert report["failures"] == [], report["failures"]
    acked = report["acked"]
    total = sum(len(ids) for ids in acked.values())
    assert total > 0
    print(f"workload: {total} acknowledged appends, {report['retries']} retried attempts")
    with PortForward(kube, NAMESPACE, f"svc/{names.store(NAME)}", names.HTTP_PORT) as forward, \
            EventStoreClient(forward.url, api_token(kube)) as client:
        assert lost_or_duplicated(client, acked) == []

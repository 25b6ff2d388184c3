"""The product on running pods: one Helm release (operator + EventStore) and the scenarios
both end-to-end suites run against it (tests/e2e_node on the one-node cluster,
tests/e2e_kind on kind). Everything cluster-specific comes in through `Deployment`: the
cluster (`Cluster`: kubectl, helm, diagnostics, image tagging), how the host reaches
Services and pods (`Access`), and the images.

Scenarios, in the order the suites run them (destructive ones last, one deployment):
operator pod up -> store, databases and claims up (+ the shared object assertions) ->
client workload from the host and from a pod -> the store pods' NetworkPolicy admits the
namespace, not another one, until spec.network.allowFrom widens it -> a ConfigMap edit
rolls the store pods one at a time onto the new settings -> an invalid edit changes
nothing -> a store pod restarted on its claim keeps /data -> a store pod deleted under
load loses nothing -> the PostgreSQL pod deleted under load: 503s, never 500, recovery,
nothing lost -> backup Jobs from spec.backup onto a claim, then onto an S3 bucket, each
followed by a new EventStore restored from them (one scenario, `BackupTarget`) ->
helm upgrade to a new image tag rolls the store -> helm uninstall keeps the claims (and
the credentials).

Never sleep-and-hope: every wait polls a condition with a deadline
(tests.k8s.assertions.poll) and says what it waited for.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import gzip
import hashlib
import json
import re
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from eventstore.errors import ConcurrencyError
from eventstore.events import AGGREGATE_TYPE_KEY, ExpectedVersion, NewEvent, RecordedEvent
from eventstore.server.client import EventStoreClient
from eventstore_operator import names
from tests.e2e_shared.access import Access, Timings
from tests.e2e_shared.workload import lost_or_duplicated
from tests.k8s import assertions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "eventstore"
WORKLOAD_SCRIPT = Path(__file__).resolve().parent / "workload.py"
WORKLOAD_CONFIGMAP = "e2e-workload"

#: The example projection every store pod runs into its own read model on /data once the
#: ConfigMap edit scenario has switched it on.
LOCAL_PROJECTION = "balances"
LOCAL_PROJECTION_TARGET = "eventstore.projections.bank:AccountBalances"
#: Where the mongo snapshot store files snapshots (eventstore.snapshots.mongo's default).
SNAPSHOT_COLLECTION = "snapshots"
#: Container restrictions of the pods the suite itself runs (the restricted profile).
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


class Cluster(assertions.Kube, Protocol):
    """What the scenarios need of a cluster besides kubectl (tests.k8s.assertions.Kube)."""

    def helm_run(self, *args: str, check: bool = ..., timeout: float = ...
                 ) -> subprocess.CompletedProcess[str]: ...

    def diagnostics(self, namespace: str) -> str: ...

    def tag_image(self, source: str, target: str) -> None:
        """Make image `source` also known as `target` on every node (no registry)."""
        ...


@dataclass
class Deployment:
    """One Helm release of the chart with an EventStore in it, and what the suite knows
    about it (the acknowledged appends, to check after every disruption)."""

    kube: Cluster
    access: Access
    namespace: str
    release: str
    name: str  #: the EventStore's name
    store_image: str  #: the image of the operator, the store pods and the suite's Jobs
    values: dict[str, Any]  #: the Helm values installed
    timings: Timings
    ready_timeout: float = 300.0
    #: Every append the suite got an acknowledgement for: stream -> event ids in order.
    acked: dict[str, list[str]] = field(default_factory=dict)

    # -- helm -------------------------------------------------------------------------

    def helm(self, *args: str, values: Mapping[str, Any] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="e2e-values-") as file:
            extra: list[str] = []
            if values is not None:
                yaml.safe_dump(dict(values), file)
                file.flush()
                extra = ["-f", file.name]
            return self.kube.helm_run(*args, "--namespace", self.namespace, *extra, timeout=timeout)

    def install(self) -> None:
        self.helm("install", self.release, str(CHART), "--create-namespace", "--wait", "--timeout", "5m",
                  values=self.values)

    # -- objects ----------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return assertions.get(self.kube, kind, name, self.namespace)

    def pods(self, component: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kube.kubectl_json(
            "get", "pods", "-n", self.namespace, "-l",
            f"{names.LABEL_INSTANCE}={self.name},{names.LABEL_COMPONENT}={component}")["items"]
        return sorted(items, key=lambda p: p["metadata"]["name"])

    def store_pods(self) -> list[dict[str, Any]]:
        return self.pods(names.COMPONENT_STORE)

    def store_pod_names(self) -> list[str]:
        return [f"{names.store(self.name)}-{i}" for i in range(self.replicas)]

    @property
    def replicas(self) -> int:
        return int((self.values.get("eventstore") or {}).get("spec", {}).get("replicas", 3))

    def claims(self) -> dict[str, dict[str, Any]]:
        items = self.kube.kubectl_json("get", "pvc", "-n", self.namespace, "-l",
                                       f"{names.LABEL_INSTANCE}={self.name}")["items"]
        return {c["metadata"]["name"]: c for c in items}

    def expected_claims(self) -> list[str]:
        return [*(names.pvc(names.store(self.name), i) for i in range(self.replicas)),
                names.pvc(names.postgres(self.name), 0), names.pvc(names.mongodb(self.name), 0)]

    def secret_value(self, secret: str, key: str) -> str:
        body = self.get("secret", secret)
        assert body is not None, f"Secret {self.namespace}/{secret} does not exist"
        return base64.b64decode(body["data"][key]).decode().strip()

    def token(self) -> str:
        """The API token, from the `<name>-api-token` Secret."""
        return self.secret_value(names.api_token(self.name), names.TOKEN_KEY)

    def ready_replicas(self, statefulset: str) -> int:
        sts = self.get("statefulset", statefulset) or {}
        return int((sts.get("status") or {}).get("readyReplicas") or 0)

    def all_ready(self, store_replicas: int | None = None) -> bool:
        """Both databases and every store pod Ready, the store StatefulSet fully rolled out,
        and no store pod terminating."""
        want = self.replicas if store_replicas is None else store_replicas
        for database in (names.postgres(self.name), names.mongodb(self.name)):
            if self.ready_replicas(database) < 1:
                return False
        sts = self.get("statefulset", names.store(self.name)) or {}
        status = sts.get("status") or {}
        if not (status.get("readyReplicas") == want and status.get("updatedReplicas") == want
                and status.get("currentRevision") == status.get("updateRevision")
                and status.get("observedGeneration") == sts.get("metadata", {}).get("generation")):
            return False
        pods = self.store_pods()
        return len(pods) == want and all(pod_ready(p) for p in pods)

    def wait_all_ready(self, timeout: float | None = None) -> None:
        assertions.poll(self.all_ready, timeout or self.ready_timeout,
                        f"{self.replicas} ready store pods (rolled out) and both databases", interval=1)

    # -- talking to the store ---------------------------------------------------------

    @contextlib.contextmanager
    def client(self, timeout: float = 30.0) -> Iterator[EventStoreClient]:
        """A client of the store's Service, from this process."""
        with self.access.service(self.namespace, names.store(self.name), names.HTTP_PORT) as address, \
                EventStoreClient(f"http://{address}", self.token(), timeout=timeout) as client:
            yield client

    @contextlib.contextmanager
    def pod_http(self, pod: str) -> Iterator[httpx.Client]:
        """An authenticated HTTP client of one store pod (its own read model, /metrics)."""
        with self.access.pod(self.namespace, pod, names.HTTP_PORT) as address, \
                httpx.Client(base_url=f"http://{address}", timeout=30.0,
                             headers={"Authorization": f"Bearer {self.token()}"}) as http:
            yield http

    def exec(self, pod: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kube.kubectl_run("exec", "-n", self.namespace, pod, "--", *command, check=check,
                                     timeout=120)

    def pod_settings(self, pod: str) -> dict[str, Any]:
        """The settings the pod runs: GET /settings where the server has it, else what the
        store's own `check-config` loads from the pod's mounted config dir (the files the
        process read at startup: the pod mounts an immutable copy)."""
        with self.pod_http(pod) as http:
            response = http.get("/settings")
        if response.status_code == 200 and {"store", "projections"} <= set(response.json()):
            served: dict[str, Any] = response.json()
            return served
        proc = self.exec(pod, "sh", "-c",
                         'eventstore check-config "${EVENTSTORE_CONFIG_DIR:-/etc/eventstore}"')
        text = proc.stdout
        loaded: dict[str, Any] = json.loads(text[text.index("{"):])
        return loaded

    def record(self, acked: Mapping[str, list[str]]) -> None:
        for stream, ids in acked.items():
            self.acked.setdefault(stream, []).extend(ids)

    def assert_nothing_lost(self) -> None:
        """Every append acknowledged so far in the suite is stored, once, in order."""
        with self.client() as client:
            problems = lost_or_duplicated(client, self.acked)
        assert problems == [], problems

    # -- the suite's own Jobs ---------------------------------------------------------

    def ensure_workload_script(self) -> None:
        """The workload script as a ConfigMap, for the Jobs (idempotent)."""
        manifest = self.kube.kubectl_run(
            "create", "configmap", WORKLOAD_CONFIGMAP, "-n", self.namespace,
            f"--from-file=workload.py={WORKLOAD_SCRIPT}", "--dry-run=client", "-o", "yaml").stdout
        self.kube.kubectl_run("apply", "-f", "-", input=manifest)

    def workload(self, job: str, *args: str) -> WorkloadJob:
        self.ensure_workload_script()
        return WorkloadJob(self, job, list(args))


def release_values(example: Path, store_image: str, pull_policy: str, **spec: Any) -> dict[str, Any]:
    """Helm values of the suites' release: the operator from `store_image` and, in the same
    release, the EventStore of `example` (a manifests/examples file) with `spec` merged in."""
    doc = yaml.safe_load(example.read_text())
    repository, tag = store_image.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": pull_policy},
        "operator": {"resyncSeconds": 10},
        "eventstore": {"create": True, "name": doc["metadata"]["name"], "spec": {**doc["spec"], **spec}},
    }


def attach_diagnostics(item: pytest.Item, report: pytest.TestReport) -> None:
    """On a failed test that uses a `deployment`, add the cluster diagnostics to its report
    (called from the suites' pytest_runtest_makereport hooks)."""
    dep = getattr(item, "funcargs", {}).get("deployment")
    if report.failed and isinstance(dep, Deployment):
        try:
            text = dep.kube.diagnostics(dep.namespace)
        except Exception as exc:  # diagnostics must never hide the failure itself
            text = f"(diagnostics failed: {type(exc).__name__}: {exc})"
        report.sections.append(("cluster diagnostics", text))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def store_image_job(dep: Deployment, name: str, container: str, command: list[str], *,
                    mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """A Job that runs `command` once in a container of the store image, as the store pods
    run (non-root, read-only root file system), with these volumes."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": dep.namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True},
            "containers": [{
                "name": container, "image": dep.store_image, "imagePullPolicy": "IfNotPresent",
                "command": command,
                "securityContext": RESTRICTED,
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                              "limits": {"memory": "256Mi"}},
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        }}},
    }


class WorkloadJob:
    """tests/e2e_shared/workload.py as a Job on the store image, talking to the store's
    Service by its cluster DNS name, with the API token from the Secret."""

    def __init__(self, dep: Deployment, name: str, args: list[str]) -> None:
        self.dep = dep
        self.name = name
        self.args = args

    def manifest(self) -> dict[str, Any]:
        dep = self.dep
        return store_image_job(
            dep, self.name, "workload",
            # The image's entrypoint is `eventstore`; its interpreter runs the script.
            ["python3", "/workload/workload.py",
             "--url", f"http://{names.store(dep.name)}:{names.HTTP_PORT}",
             "--token-file", f"/token/{names.TOKEN_KEY}", *self.args],
            mounts=[{"name": "workload", "mountPath": "/workload", "readOnly": True},
                    {"name": "token", "mountPath": "/token", "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"}],
            volumes=[{"name": "workload", "configMap": {"name": WORKLOAD_CONFIGMAP}},
                     {"name": "token", "secret": {"secretName": names.api_token(dep.name)}},
                     {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}])

    def start(self) -> WorkloadJob:
        self.dep.kube.kubectl_run("delete", "job", self.name, "-n", self.dep.namespace, "--ignore-not-found",
                                  "--wait=true", "--cascade=foreground", timeout=120)
        self.dep.kube.kubectl_run("apply", "-f", "-", input=json.dumps(self.manifest()))
        return self

    def pod(self) -> str | None:
        items = self.dep.kube.kubectl_json("get", "pods", "-n", self.dep.namespace, "-l",
                                           f"batch.kubernetes.io/job-name={self.name}")["items"]
        return str(items[0]["metadata"]["name"]) if items else None

    def logs(self) -> str:
        return self.dep.kube.kubectl_run("logs", "-n", self.dep.namespace, f"job/{self.name}",
                                         check=False).stdout

    def acked(self) -> int:
        """Appends acknowledged so far (the workload's last `ACKED n` line)."""
        counts = re.findall(r"^ACKED (\d+)$", self.logs(), re.M)
        return int(counts[-1]) if counts else 0

    def statuses(self) -> dict[str, int]:
        """HTTP statuses (and transport errors) the workload has seen so far."""
        lines = re.findall(r"^STATUSES (\{.*\})$", self.logs(), re.M)
        counts: dict[str, int] = json.loads(lines[-1]) if lines else {}
        return counts

    def wait_acked(self, at_least: int, timeout: float, what: str) -> int:
        return assertions.poll(lambda: (n := self.acked()) >= at_least and n, timeout,
                               f"{what}: the workload to have {at_least} acknowledged appends")

    def finished(self) -> str | None:
        """"Complete" or "Failed" once the Job is done, else None."""
        return job_finished(self.dep, self.name)

    def stop(self) -> None:
        """Ask a load workload to finish now (it polls for its --stop-file)."""
        pod = self.pod()
        assert pod is not None, f"the Job {self.name} has no pod"
        self.dep.exec(pod, "sh", "-c", ": > /tmp/stop")

    def result(self, timeout: float = 300) -> dict[str, Any]:
        """The JSON line the workload printed last, once the Job is done."""
        outcome = assertions.poll(self.finished, timeout, f"the Job {self.name} to finish", interval=1)
        lines = [line for line in self.logs().splitlines() if line.startswith("{")]
        assert lines, f"the Job {self.name} ended {outcome} without a report:\n{self.logs()[-3000:]}"
        report: dict[str, Any] = json.loads(lines[-1])
        return report

    def delete(self) -> None:
        self.dep.kube.kubectl_run("delete", "job", self.name, "-n", self.dep.namespace, "--ignore-not-found",
                                  "--wait=false", "--cascade=background", check=False)


class RollWatcher:
    """Samples the store pods while they roll: how many were unavailable at once (missing,
    not Ready, or terminating) and in which order new pods replaced old ones."""

    def __init__(self, dep: Deployment, interval: float = 0.25) -> None:
        self.dep = dep
        self.interval = interval
        self.before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in dep.store_pods()}
        self.max_unavailable = 0
        self.replaced: list[str] = []  # pod names, in the order their new pod first appeared
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="roll-watcher", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> RollWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample(self.dep.store_pods())
            except (subprocess.SubprocessError, AssertionError, ValueError) as exc:
                self.errors.append(str(exc)[:200])
            self._stop.wait(self.interval)

    def sample(self, pods: list[dict[str, Any]]) -> None:
        self.samples += 1
        ready = sum(1 for p in pods if pod_ready(p))
        self.max_unavailable = max(self.max_unavailable, self.dep.replicas - ready)
        for pod in pods:
            name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
            if uid != self.before.get(name) and name not in self.replaced:
                self.replaced.append(name)

    def all_replaced(self) -> bool:
        current = {p["metadata"]["name"]: p["metadata"]["uid"] for p in self.dep.store_pods()}
        return len(current) == self.dep.replicas and all(
            uid != self.before.get(name) for name, uid in current.items())

    def assert_one_at_a_time(self) -> None:
        assert self.samples >= 5, f"only {self.samples} samples of the roll: cannot judge it"
        assert self.max_unavailable <= 1, (
            f"{self.max_unavailable} store pods were unavailable at once during the roll")
        expected = sorted(self.before, key=lambda n: int(n.rsplit("-", 1)[1]), reverse=True)
        assert self.replaced == expected, f"pods replaced in the order {self.replaced}, expected {expected}"


def wait_rolled(dep: Deployment, watcher: RollWatcher, what: str, timeout: float | None = None) -> None:
    assertions.poll(lambda: watcher.all_replaced() and dep.all_ready(), timeout or dep.ready_timeout,
                    f"{what}: every store pod replaced, Ready and rolled out", interval=1)


# --- scenarios --------------------------------------------------------------------------


def check_operator_pod(dep: Deployment) -> None:
    """The chart's operator runs as a pod from the store image, never pulled with Always."""
    selector = f"app.kubernetes.io/instance={dep.release},app.kubernetes.io/component=operator"
    (deployment,) = dep.kube.kubectl_json("get", "deployments", "-n", dep.namespace, "-l", selector)["items"]
    name = deployment["metadata"]["name"]
    dep.kube.kubectl_run("rollout", "status", f"deployment/{name}", "-n", dep.namespace, "--timeout=120s",
                         timeout=150)
    pods = [p for p in dep.kube.kubectl_json("get", "pods", "-n", dep.namespace, "-l", selector)["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    (pod,) = pods
    assert pod_ready(pod), f"operator pod {pod['metadata']['name']} is not Ready"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == dep.store_image, container["image"]
    assert container["imagePullPolicy"] in ("IfNotPresent", "Never"), container["imagePullPolicy"]
    assert container["command"] == ["eventstore-operator"]
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status


def check_store_comes_up(dep: Deployment, images: Mapping[str, str]) -> None:
    """The EventStore reconciled, its store pods and both databases Ready on the `images`
    given (component -> image), every claim Bound, and the shared object assertions."""
    with dep.timings.phase("EventStore reconciled"):
        assertions.wait_reconciled(dep.kube, dep.namespace, dep.name, timeout=180)
    with dep.timings.phase("store pods + databases Ready"):
        dep.wait_all_ready()
    body = assertions.assert_store_objects(dep.kube, dep.namespace, dep.name, replicas=dep.replicas)
    ready = assertions.poll(
        lambda: (c := assertions.condition(dep.get("eventstore", dep.name), names.CONDITION_READY))
        and c["status"] == "True" and c, 60, "Ready=True on the EventStore")
    assert ready["observedGeneration"] == body["metadata"]["generation"]
    assert (dep.get("eventstore", dep.name) or {})["status"]["readyReplicas"] == dep.replicas
    table = dep.kube.kubectl_run("get", "eventstores", "-n", dep.namespace).stdout
    assert dep.name in table and "True" in table, table

    claims = dep.claims()
    assert sorted(claims) == sorted(dep.expected_claims()), sorted(claims)
    for claim_name, claim in claims.items():
        assert claim["status"].get("phase") == "Bound", f"{claim_name}: {claim['status']}"
    for ordinal in range(dep.replicas):
        claim = claims[names.pvc(names.store(dep.name), ordinal)]
        assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"

    for component, image in images.items():
        pods = dep.pods(component)
        assert pods, f"no {component} pods"
        for pod in pods:
            (container,) = pod["spec"]["containers"]
            assert container["image"] == image, f"{pod['metadata']['name']}: {container['image']} != {image}"
    everything = dep.kube.kubectl_json("get", "pods", "-n", dep.namespace)["items"]
    always = [f"{p['metadata']['name']}/{c['name']}" for p in everything
              for c in p["spec"]["containers"] if c.get("imagePullPolicy") == "Always"]
    assert always == [], f"containers that would pull from a registry: {always}"


def check_client_from_the_host(dep: Deployment) -> None:
    """Appends, reads, conflicts, idempotency, the global log, a snapshot that lands in
    MongoDB, the live SSE subscription and /metrics, through the Service from the host."""
    prefix = f"host-{uuid.uuid4().hex[:6]}"
    streams = [f"{prefix}-account-{i}" for i in range(10)]
    with dep.client() as client:
        assert client.ready()
        for stream in streams:
            for version in range(5):
                deposit = NewEvent(type="Deposited", payload={"amount": version + 1})
                result = client.append(stream, [deposit],
                                       expected_version=version if version else ExpectedVersion.NO_STREAM)
                assert result.next_expected_version == version + 1
                dep.record({stream: [str(deposit.id)]})
        for stream in streams:
            events = client.read_stream(stream)
            assert [e.version for e in events] == [1, 2, 3, 4, 5]
            assert sum(e.payload["amount"] for e in events) == 15
        try:
            client.append(streams[0], [NewEvent(type="Deposited", payload={"amount": 1})], expected_version=2)
            raise AssertionError("a stale expected version was accepted")
        except ConcurrencyError as exc:
            assert exc.actual_version == 5
        event = NewEvent(type="Withdrawn", payload={"amount": 3})
        first = client.append(streams[1], [event], expected_version=5)
        again = client.append(streams[1], [event], expected_version=5)
        assert again.idempotent and again.positions == first.positions
        dep.record({streams[1]: [str(event.id)]})
        assert len(client.read_stream(streams[1])) == 6
        log = client.read_all(from_position=0, limit=1000)
        ours = [e for e in log if e.aggregate_id in streams]
        assert len(ours) == 51, len(ours)
        positions = [e.position for e in log]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)

        # A snapshot through the API, and the document in MongoDB itself.
        client.put_snapshot(streams[2], "Account", 5, {"balance": 15})
        snapshot = client.get_snapshot(streams[2], "Account")
        assert snapshot is not None and snapshot["version"] == 5 and snapshot["state"] == {"balance": 15}
        stored = mongo_snapshot(dep, "Account", streams[2])
        assert stored.get("version") == 5, stored

        assert_live_subscription(client, streams[3], dep)
        metrics = client.metrics()
        assert "eventstore_events_appended_total" in metrics
        assert "eventstore_append_duration_seconds_bucket" in metrics


#: Run in a store pod (`python3 -c`, argv: collection, aggregate type, aggregate id): the
#: newest snapshot document as MongoDB holds it, read with the pod's own credentials (the
#: database's NetworkPolicy admits the store pods; the host may not be admitted).
MONGO_LOOKUP = """
import json, os, sys
from urllib.parse import quote
import pymongo
env = os.environ
name = env.get("SNAPSHOT_DB_NAME", "eventstore")
url = "mongodb://%s:%s@%s:%s/%s?authSource=admin" % (
    quote(env["SNAPSHOT_DB_USER"], safe=""),
    quote(open(env["SNAPSHOT_DB_PASSWORD_FILE"]).read().strip(), safe=""),
    env["SNAPSHOT_DB_HOST"], env.get("SNAPSHOT_DB_PORT", "27017"), name)
db = pymongo.MongoClient(url, serverSelectionTimeoutMS=15000)[name]
doc = db[sys.argv[1]].find_one({"aggregate_type": sys.argv[2], "aggregate_id": sys.argv[3]},
                               sort=[("version", -1)], projection={"_id": 0})
print(json.dumps({"doc": doc, "collections": db.list_collection_names()}, default=str))
"""


def mongo_snapshot(dep: Deployment, aggregate_type: str, aggregate_id: str) -> dict[str, Any]:
    """The newest snapshot document of an aggregate, read from MongoDB itself."""
    pod = dep.store_pod_names()[0]
    out = dep.exec(pod, "python3", "-c", MONGO_LOOKUP, SNAPSHOT_COLLECTION, aggregate_type,
                   aggregate_id).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["doc"] is not None, (f"no snapshot of {aggregate_type} {aggregate_id} in MongoDB's "
                                      f"{SNAPSHOT_COLLECTION}; collections: {found['collections']}")
    doc: dict[str, Any] = found["doc"]
    return doc


def assert_live_subscription(client: EventStoreClient, stream: str, dep: Deployment) -> None:
    """GET /subscribe pushes an event appended while the subscription is open: the second
    event is appended only after the first arrived over the same connection."""
    marker = NewEvent(type="Marker", payload={})
    start = client.append(stream, [marker], expected_version=ExpectedVersion.ANY)
    dep.record({stream: [str(marker.id)]})
    received: list[RecordedEvent] = []
    failure: list[BaseException] = []
    done = threading.Event()
    first, second = (NewEvent(type="Deposited", payload={"amount": n}) for n in (1, 2))

    def follow() -> None:
        try:
            for event in client.subscribe(from_position=start.positions[-1] + 1, idle_timeout=60):
                if event.aggregate_id == stream:
                    received.append(event)
                if len(received) == 2:
                    return
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=follow, name="sse", daemon=True)
    thread.start()
    version = start.next_expected_version
    client.append(stream, [first], expected_version=version)
    dep.record({stream: [str(first.id)]})
    assertions.poll(lambda: received or failure, 30, "the first event over the SSE subscription")
    client.append(stream, [second], expected_version=version + 1)
    dep.record({stream: [str(second.id)]})
    assertions.poll(lambda: done.is_set(), 30, "the second event over the same SSE subscription")
    assert not failure, failure
    assert [e.id for e in received] == [first.id, second.id], received
    assert received[1].position > received[0].position


def check_client_from_a_pod(dep: Deployment) -> None:
    """The same client walk-through from a pod in the cluster (a Job on the store image),
    through the Service's cluster DNS name."""
    job = dep.workload("e2e-smoke", "--smoke", "--prefix", f"pod-{uuid.uuid4().hex[:6]}").start()
    try:
        report = job.result(timeout=180)
        assert report.get("ok") is True, report
        assert report["checks"] == ["append", "read", "conflict", "idempotent re-send", "snapshot",
                                    "subscribe", "metrics"], report
        assert job.finished() == "Complete"
    finally:
        job.delete()


#: Run in a pod (argv: URL): exit 0 when the URL answers within 3 s.
FETCH = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)"


def _probe_pod(dep: Deployment, name: str, namespace: str) -> dict[str, Any]:
    """A pod on the store image that serves /tmp on 8080 and can run FETCH."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"e2e": "network-policy"}},
        "spec": {
            "terminationGracePeriodSeconds": 1, "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True},
            "containers": [{
                "name": "probe", "image": dep.store_image, "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-m", "http.server", "8080", "--directory", "/tmp"],
                "securityContext": RESTRICTED,
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Mi"}}],
        },
    }


def _fetches(dep: Deployment, namespace: str, pod: str, url: str) -> bool:
    """Whether `pod` gets an answer from `url` within 3 s."""
    return dep.kube.kubectl_run("exec", "-n", namespace, pod, "--", "python3", "-c", FETCH, url,
                                check=False, timeout=60).returncode == 0


def _patch_network(dep: Deployment, allow_from: list[dict[str, Any]] | None) -> None:
    if allow_from is None:
        body = (dep.get("eventstore", dep.name) or {}).get("spec") or {}
        if "network" in body:
            dep.kube.kubectl_run("patch", "eventstore", dep.name, "-n", dep.namespace, "--type=json",
                                 "-p", json.dumps([{"op": "remove", "path": "/spec/network"}]))
        return
    dep.kube.kubectl_run("patch", "eventstore", dep.name, "-n", dep.namespace, "--type=merge",
                         "-p", json.dumps({"spec": {"network": {"allowFrom": allow_from}}}))


def check_store_network_policy(dep: Deployment, enforced: bool) -> None:
    """The store pods' NetworkPolicy: by default a pod of the release's namespace reaches
    port 8080 (and /readyz is 200, so the store reaches PostgreSQL) while a pod of another
    namespace gets no connection; spec.network.allowFrom widens it to that namespace, and
    unsetting it narrows it again. The store pods cannot open connections to other pods.
    `enforced`: whether the cluster enforces NetworkPolicies; if not, only the policy
    objects and the allowed client are checked."""
    outside = f"{dep.namespace}-outside"
    store_url = f"http://{names.store(dep.name)}.{dep.namespace}.svc:{names.HTTP_PORT}/readyz"
    policy = dep.get("networkpolicy", names.store(dep.name))
    assert policy is not None, "the store pods have no NetworkPolicy"
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"], policy["spec"]
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}], policy["spec"]["ingress"]
    dep.kube.kubectl_run("create", "namespace", outside, check=False)
    try:
        dep.kube.kubectl_run("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "List",
            "items": [_probe_pod(dep, "np-client", dep.namespace), _probe_pod(dep, "np-outsider", outside)]}))
        for namespace, pod in ((dep.namespace, "np-client"), (outside, "np-outsider")):
            dep.kube.kubectl_run("wait", "--for=condition=Ready", f"pod/{pod}", "-n", namespace,
                                 "--timeout=120s", timeout=150)
        assertions.poll(lambda: _fetches(dep, dep.namespace, "np-client", store_url), 60,
                        "the allowed client (a pod of the namespace) to reach the store's /readyz")
        if enforced:
            assert not _fetches(dep, outside, "np-outsider", store_url), \
                "a pod of another namespace reached the store pods' port 8080"
            client = dep.kube.kubectl_json("get", "pod", "np-client", "-n", dep.namespace)
            client_url = f"http://{client['status']['podIP']}:8080/"
            assert _fetches(dep, outside, "np-outsider", client_url), "the probe pod does not serve"
            store_pod = dep.store_pod_names()[0]
            assert not _fetches(dep, dep.namespace, store_pod, client_url), \
                "a store pod opened a connection to a pod that is not its database"

        widened: list[dict[str, Any]] = [
            {"podSelector": {}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": outside}}}]
        _patch_network(dep, widened)

        def admitted() -> list[Any]:
            spec = (dep.get("networkpolicy", names.store(dep.name)) or {}).get("spec") or {}
            return [peer for rule in spec.get("ingress") or [] for peer in rule.get("from") or []]

        assertions.poll(lambda: admitted() == widened, 60,
                        "the widened allowFrom in the store pods' NetworkPolicy")
        if enforced:
            assertions.poll(lambda: _fetches(dep, outside, "np-outsider", store_url), 60,
                            "the pod of the namespace allowFrom added to reach the store")
        _patch_network(dep, None)
        if enforced:
            assertions.poll(lambda: not _fetches(dep, outside, "np-outsider", store_url), 60,
                            "the default again: the other namespace shut out")
        assert _fetches(dep, dep.namespace, "np-client", store_url)
    finally:
        _patch_network(dep, None)
        dep.kube.kubectl_run("delete", "pod", "np-client", "-n", dep.namespace, "--ignore-not-found",
                             "--wait=false", check=False)
        dep.kube.kubectl_run("delete", "namespace", outside, "--ignore-not-found", "--wait=false",
                             check=False)


def local_projection_in_effect(dep: Deployment, pod: str) -> bool:
    with dep.pod_http(pod) as http:
        response = http.get("/projections")
    response.raise_for_status()
    found = [p for p in response.json()["projections"] if p["name"] == LOCAL_PROJECTION]
    return bool(found) and found[0]["scope"] == "local"


def check_configmap_edit_rolls(dep: Deployment, frequency: int = 50) -> None:
    """`kubectl edit configmap <name>-config` (snapshot_frequency, plus the example read
    model as a local projection): the store pods roll one at a time, each new pod carries
    the new config hash and runs the new settings (it serves the local read model)."""
    dep.wait_all_ready()
    for name in dep.store_pod_names():
        assert dep.pod_settings(name)["store"]["snapshot_frequency"] != frequency
        assert not local_projection_in_effect(dep, name)
    old_frequency = dep.pod_settings(dep.store_pod_names()[0])["store"]["snapshot_frequency"]
    with dep.timings.phase(f"snapshots at the seeded cadence ({old_frequency})"):
        check_snapshot_cadence(dep, old_frequency)
    with dep.timings.phase("ConfigMap edit -> store pods rolled"), RollWatcher(dep) as watcher:
        digest = assertions.assert_configmap_edit_rolls(
            dep.kube, dep.namespace, dep.name, frequency=frequency, timeout=120,
            projections={"local_projections": {LOCAL_PROJECTION: LOCAL_PROJECTION_TARGET}})
        wait_rolled(dep, watcher, "after the ConfigMap edit")
    assert not watcher.errors, watcher.errors
    watcher.assert_one_at_a_time()
    for pod in dep.store_pods():
        pod_name = pod["metadata"]["name"]
        assert pod["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == digest
        settings = dep.pod_settings(pod_name)
        assert settings["store"]["snapshot_frequency"] == frequency, settings
        assert settings["projections"]["local_projections"] == {LOCAL_PROJECTION: LOCAL_PROJECTION_TARGET}
        assert local_projection_in_effect(dep, pod_name), f"{pod_name} does not run {LOCAL_PROJECTION}"
    # The next snapshots follow the new cadence (issue 11: the pods take them themselves).
    with dep.timings.phase(f"snapshots at the edited cadence ({frequency})"):
        check_snapshot_cadence(dep, frequency)


def check_snapshot_cadence(dep: Deployment, frequency: int) -> None:
    """The store pods' own snapshots of a registered aggregate (the example's `Account`)
    land every `frequency` events, the cadence of the ConfigMap the pods run: a fresh
    account with 2 * frequency + 1 events gets snapshots at exactly `frequency` and
    2 * frequency, and GET /aggregates loads it from the newest one."""
    stream = f"cadence-{frequency}-{uuid.uuid4().hex[:6]}"
    tag = {AGGREGATE_TYPE_KEY: "Account"}
    deposits = (NewEvent(type="Deposited", payload={"amount": 1}, metadata=tag) for _ in range(2 * frequency))
    events = [NewEvent(type="AccountOpened", payload={"owner": "cadence"}, metadata=tag), *deposits]
    with dep.client() as client:
        assert client.settings()["store"]["snapshot_frequency"] == frequency
        client.append(stream, events, expected_version=ExpectedVersion.NO_STREAM)
        dep.record({stream: [str(e.id) for e in events]})
        newest = assertions.poll(
            lambda: (snap := client.get_snapshot(stream, "Account")) and snap["version"] == 2 * frequency
            and snap, 120, f"the store's snapshot of {stream} at version {2 * frequency}")
        assert newest["state"]["balance"] == 2 * frequency - 1, newest
        middle = client.get_snapshot(stream, "Account", at_or_below_version=2 * frequency - 1)
        assert middle is not None and middle["version"] == frequency, middle
        assert client.get_snapshot(stream, "Account", at_or_below_version=frequency - 1) is None
        loaded = client.load_aggregate("Account", stream)
        assert loaded["version"] == 2 * frequency + 1 and loaded["state"]["balance"] == 2 * frequency, loaded
        assert loaded["snapshot_version"] == 2 * frequency and loaded["events_replayed"] == 1, loaded


def check_invalid_configmap_edit_keeps_last_good(dep: Deployment) -> None:
    """An out-of-range value: reported on the status and as a Warning Event; the pod
    template, the pods and their settings stay what they were; fixing the edit back
    changes nothing either."""
    dep.wait_all_ready()
    sts = dep.get("statefulset", names.store(dep.name))
    assert sts is not None
    generation, digest = sts["metadata"]["generation"], assertions.template_hash(sts)
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in dep.store_pods()}
    good = dep.get("configmap", names.config(dep.name))
    assert good is not None
    good_settings = {pod: dep.pod_settings(pod) for pod in uids}
    with dep.timings.phase("invalid ConfigMap edit -> reported"):
        assertions.edit_snapshot_frequency(dep.kube, dep.namespace, dep.name, 0)

        def refused() -> dict[str, Any] | None:
            cond = assertions.condition(dep.get("eventstore", dep.name), names.CONDITION_CONFIG_VALID)
            return cond if cond and cond["status"] == "False" else None

        cond = assertions.poll(refused, 60, "ConfigValid=False after the invalid edit")
        assert "event-store.yaml" in cond["message"] and "snapshot_frequency" in cond["message"], cond
        events = dep.kube.kubectl_json("get", "events", "-n", dep.namespace, "--field-selector",
                                       f"reason=InvalidConfig,involvedObject.name={dep.name}")["items"]
        assert any(e["type"] == "Warning" and "snapshot_frequency" in e["message"] for e in events), events
    after = dep.get("statefulset", names.store(dep.name))
    assert after is not None
    assert after["metadata"]["generation"] == generation, "the invalid edit changed the StatefulSet"
    assert assertions.template_hash(after) == digest
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in dep.store_pods()} == uids
    assert dep.all_ready()
    for pod, settings in good_settings.items():
        assert dep.pod_settings(pod) == settings, f"{pod} does not run the last good settings"
    with dep.timings.phase("ConfigMap fixed back -> valid, no roll"):
        patch = json.dumps({"data": good["data"]})
        dep.kube.kubectl_run("patch", "configmap", names.config(dep.name), "-n", dep.namespace,
                             "--type=merge", "-p", patch)
        assertions.poll(
            lambda: (c := assertions.condition(dep.get("eventstore", dep.name), names.CONDITION_CONFIG_VALID))
            and c["status"] == "True", 60, "ConfigValid=True after the fix")
    final = dep.get("statefulset", names.store(dep.name))
    assert final is not None and assertions.template_hash(final) == digest
    assert final["metadata"]["generation"] == generation
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in dep.store_pods()} == uids


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition (0 when the series does not exist yet)."""
    series = re.escape(name) + (rf"\{{{re.escape(labels)}\}}" if labels else "")
    match = re.search(rf"^{series} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def serving_pod(dep: Deployment, at_least: int = 20) -> str:
    """The store pod that acknowledges the most of the current load (its own
    eventstore_events_appended_total grows fastest), so a disruption of it hits clients:
    the Service spreads connections, not requests, and a pod may have none."""

    def appended() -> dict[str, float]:
        counts = {}
        for pod in dep.store_pod_names():
            with dep.pod_http(pod) as http:
                counts[pod] = metric_value(http.get("/metrics").text, "eventstore_events_appended_total")
        return counts

    start = appended()

    def grown() -> str | None:
        now = appended()
        pod = max(now, key=lambda p: now[p] - start.get(p, 0.0))
        return pod if now[pod] - start.get(pod, 0.0) >= at_least else None

    return assertions.poll(grown, 60, f"a store pod to acknowledge {at_least} appends of the load")


def check_store_pod_restart_keeps_its_data(dep: Deployment) -> None:
    """A store pod deleted and re-created on its claim keeps /data: its local read model
    file is the same, and the new process goes on from the checkpoint instead of
    replaying the log (its events-handled counter starts near zero, its entries are
    there at once and follow new events)."""
    dep.wait_all_ready()
    pod = f"{names.store(dep.name)}-0"
    assert local_projection_in_effect(dep, pod), "the local projection is not on (run the ConfigMap scenario)"
    account = f"restart-{uuid.uuid4().hex[:8]}"
    opened = NewEvent(type="AccountOpened", payload={"owner": "restart"})
    deposits = [NewEvent(type="Deposited", payload={"amount": n}) for n in (10, 5)]
    with dep.client() as client:
        client.append(account, [opened, *deposits], expected_version=ExpectedVersion.NO_STREAM)
    dep.record({account: [str(e.id) for e in (opened, *deposits)]})
    entry_path = f"/projections/{LOCAL_PROJECTION}/entries/{account}"

    def entry(http: httpx.Client) -> dict[str, Any] | None:
        response = http.get(entry_path)
        return response.json()["entry"] if response.status_code == 200 else None

    def caught_up(http: httpx.Client) -> dict[str, Any] | None:
        statuses = http.get("/projections").json()["projections"]
        (status,) = [s for s in statuses if s["name"] == LOCAL_PROJECTION]
        return status if status["lag_events"] == 0 else None

    with dep.pod_http(pod) as http:
        assertions.poll(lambda: (e := entry(http)) and e["balance"] == 15, 60,
                        f"{account} in {pod}'s read model")
        before_status = assertions.poll(lambda: caught_up(http), 60, f"{pod}'s local projection caught up")
    inode = dep.exec(pod, "stat", "-c", "%i", f"{names.DATA_DIR}/read-models.db").stdout.strip()
    claim_name = names.pvc(names.store(dep.name), 0)
    claim = dep.claims()[claim_name]
    old = dep.get("pod", pod)
    assert old is not None
    with dep.timings.phase("store pod restarted on its claim -> Ready"):
        dep.kube.kubectl_run("delete", "pod", pod, "-n", dep.namespace, "--wait=false")
        assertions.poll(lambda: (p := dep.get("pod", pod)) and p["metadata"]["uid"] != old["metadata"]["uid"],
                        120, f"{pod} to be re-created")
        dep.wait_all_ready()
    again = dep.claims()[claim_name]
    assert again["metadata"]["uid"] == claim["metadata"]["uid"], "the pod got a new claim"
    assert again["spec"]["volumeName"] == claim["spec"]["volumeName"]
    assert dep.exec(pod, "stat", "-c", "%i", f"{names.DATA_DIR}/read-models.db").stdout.strip() == inode, \
        "the read model file on /data is not the one from before the restart"
    with dep.pod_http(pod) as http:
        assert (entry(http) or {}).get("balance") == 15, "the entry is not there at once after the restart"
        after_status = assertions.poll(lambda: caught_up(http), 60, f"{pod}'s local projection caught up")
        metrics = http.get("/metrics").text
        handled = metric_value(metrics, "eventstore_projection_events_total",
                               f'projection="{LOCAL_PROJECTION}"')
        assert handled == 0, (f"{pod} handled {handled} events after its restart: it replayed instead of "
                              f"going on from its checkpoint ({before_status['checkpoints']})")
        assert after_status["checkpoints"] == before_status["checkpoints"], (before_status, after_status)
        assert after_status["events_handled"] == before_status["events_handled"]
        more = NewEvent(type="Deposited", payload={"amount": 7})
        with dep.client() as client:
            client.append(account, [more], expected_version=3)
        dep.record({account: [str(more.id)]})
        assertions.poll(lambda: (e := entry(http)) and e["balance"] == 22, 60,
                        f"{pod}'s read model to follow a new event after the restart")


def run_disruption(dep: Deployment, job_name: str, what: str, disrupt: Callable[[WorkloadJob], None],
                   recovered: Callable[[], bool]) -> dict[str, Any]:
    """A load workload in the cluster; once it runs, `disrupt(job)`, wait for `recovered()`,
    let the workload get acknowledgements again, stop it and return its report (after
    checking that the store holds every acknowledged append, once)."""
    job = dep.workload(job_name, "--seconds", "600", "--stop-file", "/tmp/stop", "--writers", "4",
                       "--prefix", f"{job_name}-{uuid.uuid4().hex[:6]}").start()
    try:
        assertions.poll(lambda: "WORKLOAD STARTED" in job.logs(), 180,
                        "the workload's first acknowledged append")
        base = job.wait_acked(job.acked() + 20, 60, "before the disruption")
        with dep.timings.phase(what):
            disrupt(job)
            assertions.poll(recovered, dep.ready_timeout, f"recovery after: {what}", interval=1)
        job.wait_acked(max(job.acked(), base) + 20, 120, f"after recovery from: {what}")
        job.stop()
        report = job.result(timeout=240)
    except BaseException:
        print(f"workload logs (tail):\n{job.logs()[-2000:]}")
        raise
    finally:
        job.delete()
    acked = report["acked"]
    total = sum(len(ids) for ids in acked.values())
    print(f"{what}: {total} acknowledged appends, {report['retries']} retried attempts, "
          f"statuses {report['statuses']}, slowest request of each (s) {report.get('slowest')}")
    assert report["failures"] == [], report["failures"]
    assert total > 0
    dep.record(acked)
    with dep.client() as client:
        assert lost_or_duplicated(client, acked) == []
    return report


def replaced_and_ready(dep: Deployment, pod: str, old: Mapping[str, Any]) -> bool:
    """Pod `pod` exists again under a new uid, and is Ready itself."""
    current = dep.get("pod", pod)
    return bool(current and current["metadata"]["uid"] != old["metadata"]["uid"] and pod_ready(current))


@contextlib.contextmanager
def cordoned(dep: Deployment) -> Iterator[None]:
    """Every schedulable node cordoned for the block (so a deleted pod cannot come back
    yet), and uncordoned after it, whatever happens."""
    nodes = [n["metadata"]["name"] for n in dep.kube.kubectl_json("get", "nodes")["items"]
             if not n["spec"].get("unschedulable")]
    try:
        for node in nodes:
            dep.kube.kubectl_run("cordon", node)
        yield
    finally:
        for node in nodes:
            dep.kube.kubectl_run("uncordon", node, check=False)


def check_store_pod_deleted_under_load(dep: Deployment) -> None:
    """One store pod deleted while in-cluster clients append: no acknowledged append is
    lost or doubled, and no request ever got a 500."""
    dep.wait_all_ready()
    chosen: dict[str, Any] = {}

    def disrupt(job: WorkloadJob) -> None:
        victim = serving_pod(dep)
        old = dep.get("pod", victim)
        assert old is not None
        chosen.update(name=victim, old=old)
        dep.kube.kubectl_run("delete", "pod", victim, "-n", dep.namespace, "--wait=false")

    def recovered() -> bool:
        return replaced_and_ready(dep, chosen["name"], chosen["old"]) and dep.all_ready()

    report = run_disruption(dep, "e2e-load-store", "store pod deleted under load -> replaced, Ready",
                            disrupt, recovered)
    print(f"deleted {chosen['name']}, which was serving the load")
    assert "500" not in report["statuses"], report["statuses"]


def check_postgres_deleted_under_load(dep: Deployment) -> None:
    """The PostgreSQL pod deleted while in-cluster clients append: the store answers 503
    (never 500) while the database is away, recovers by itself when it is back, and every
    acknowledged append is there."""
    dep.wait_all_ready()
    victim = f"{names.postgres(dep.name)}-0"
    old = dep.get("pod", victim)
    assert old is not None
    restarts_before = {p["metadata"]["name"]: sum(s["restartCount"] for s in p["status"]["containerStatuses"])
                       for p in dep.store_pods()}

    def disrupt(job: WorkloadJob) -> None:
        # The node(s) cordoned, the re-created PostgreSQL pod waits unscheduled: the outage
        # lasts until the clients have seen the store's answer to it (a 503) and every store
        # pod has reported itself NotReady, not a lucky instant. Uncordoned, the pod comes
        # back on its claim, and the store pods must become Ready again by themselves.
        with cordoned(dep):
            dep.kube.kubectl_run("delete", "pod", victim, "-n", dep.namespace, "--wait=false")
            assertions.poll(lambda: job.statuses().get("503"), 120,
                            "a 503 to the workload while PostgreSQL is away")
            assertions.poll(lambda: not any(pod_ready(p) for p in dep.store_pods()), 120,
                            "the store pods to report NotReady while PostgreSQL is away")
            outage.update(job.statuses())

    outage: dict[str, int] = {}
    report = run_disruption(dep, "e2e-load-postgres", "PostgreSQL pod deleted under load -> store recovered",
                            disrupt, lambda: replaced_and_ready(dep, victim, old) and dep.all_ready())
    print(f"statuses while PostgreSQL was away: {outage}")
    statuses = report["statuses"]
    assert "500" not in statuses, f"the store answered 500 while PostgreSQL was away: {statuses}"
    assert "503" in statuses, f"no 503 while PostgreSQL was away (statuses {statuses})"
    hung = {k: v for k, v in statuses.items() if k in ("ReadTimeout", "WriteTimeout", "PoolTimeout")}
    assert not hung, (f"requests hung past the client's timeout instead of a 503: {hung} "
                      f"(slowest: {report.get('slowest')})")
    unexpected = sorted(s for s in statuses if s.isdigit() and s not in ("200", "201", "409", "503"))
    assert unexpected == [], f"unexpected HTTP statuses: {statuses}"
    restarts = {p["metadata"]["name"]: sum(s["restartCount"] for s in p["status"]["containerStatuses"])
                for p in dep.store_pods()}
    print(f"store pod container restarts during the database outage: "
          f"{ {k: restarts[k] - restarts_before.get(k, 0) for k in restarts} }")
    dep.assert_nothing_lost()


def check_helm_upgrade_rolls_the_store(dep: Deployment, new_tag: str) -> None:
    """`helm upgrade` to a new tag of the store image (the same image, tagged again on the
    node): the operator and the store pods move to it, the store one pod at a time, and
    every acknowledged append is still there."""
    dep.wait_all_ready()
    repository = dep.store_image.rsplit(":", 1)[0]
    new_image = f"{repository}:{new_tag}"
    with dep.timings.phase("tag the store image again"):
        dep.kube.tag_image(dep.store_image, new_image)
    values = json.loads(json.dumps(dep.values))
    values.setdefault("image", {})["tag"] = new_tag
    values["eventstore"]["spec"]["image"] = new_image
    with dep.timings.phase("helm upgrade -> store rolled to the new tag"), RollWatcher(dep) as watcher:
        dep.helm("upgrade", dep.release, str(CHART), "--wait", "--timeout", "5m", values=values)
        wait_rolled(dep, watcher, "after helm upgrade")
    dep.values = values
    assert not watcher.errors, watcher.errors
    watcher.assert_one_at_a_time()
    for pod in dep.store_pods():
        (container,) = pod["spec"]["containers"]
        assert container["image"] == new_image, f"{pod['metadata']['name']} runs {container['image']}"
    previous_image, dep.store_image = dep.store_image, new_image
    try:
        check_operator_pod(dep)
    except AssertionError:
        dep.store_image = previous_image
        raise
    dep.assert_nothing_lost()
    with dep.client() as client:
        event = NewEvent(type="Deposited", payload={"amount": 1})
        stream = f"after-upgrade-{uuid.uuid4().hex[:6]}"
        client.append(stream, [event], expected_version=ExpectedVersion.NO_STREAM)
    dep.record({stream: [str(event.id)]})


class CredentialsDropped(AssertionError):
    """The Secrets needed to reuse the kept claims did not survive `helm uninstall`."""


def credentials_secrets(name: str) -> list[str]:
    """What the store needs to start again on kept claims: the databases' credentials (their
    data directories were initialised with them) and the API token its clients hold."""
    return [names.credentials(names.postgres(name)), names.credentials(names.mongodb(name)),
            names.api_token(name)]


def check_helm_uninstall_keeps_the_claims(dep: Deployment) -> dict[str, str]:
    """`helm uninstall`: the EventStore, its pods and workloads go; every claim stays Bound
    (the store's data, PostgreSQL's and MongoDB's). Returns claim name -> uid."""
    before = {n: c["metadata"]["uid"] for n, c in dep.claims().items()}
    assert sorted(before) == sorted(dep.expected_claims()), sorted(before)
    with dep.timings.phase("helm uninstall -> workloads gone"):
        dep.helm("uninstall", dep.release, "--wait", "--timeout", "5m")
        assertions.poll(lambda: dep.get("eventstore", dep.name) is None, 120, "the EventStore to be deleted")
        assertions.poll(
            lambda: not dep.kube.kubectl_json("get", "statefulsets,services,pods", "-n", dep.namespace, "-l",
                                              f"{names.LABEL_INSTANCE}={dep.name}")["items"],
            180, "the store's StatefulSets, Services and pods to be garbage-collected")
    after = dep.claims()
    assert {n: c["metadata"]["uid"] for n, c in after.items()} == before, "claims were deleted or replaced"
    for claim_name, claim in after.items():
        assert claim["status"].get("phase") == "Bound", f"{claim_name}: {claim['status']}"
    return before


def check_reinstall_reuses_the_claims(dep: Deployment) -> None:
    """After `helm uninstall`, what reusing the kept claims needs is still there (the
    credentials the databases were initialised with, the API token), and `helm install`
    again brings the same data back."""
    missing = [s for s in credentials_secrets(dep.name) if dep.get("secret", s) is None]
    if missing:
        raise CredentialsDropped(
            f"helm uninstall deleted {missing}: the kept claims hold databases initialised with "
            "those credentials, so a new install generates new ones and cannot open its own data")
    claims = {n: c["metadata"]["uid"] for n, c in dep.claims().items()}
    with dep.timings.phase("helm install again on the kept claims -> Ready"):
        dep.install()
        assertions.wait_reconciled(dep.kube, dep.namespace, dep.name, timeout=180)
        dep.wait_all_ready()
    assert {n: c["metadata"]["uid"] for n, c in dep.claims().items()} == claims
    dep.assert_nothing_lost()


# -- backup and restore (issue 13: spec.backup, spec.restore.from) ------------------------

BACKUP_CLAIM = "e2e-backups"
BACKUP_SECRET = "e2e-backup-s3"
#: The keys of spec.backup.target (and spec.restore.from): exactly one is set.
BACKUP_TARGET_KINDS = ("pvc", "s3")
#: What `eventstore backup` writes besides its manifest (eventstore/backup.py).
SEGMENT_FILE = re.compile(r"segment-\d+-\d+-\d+(-[0-9a-f]{12})?\.jsonl\.gz")


class BackupTarget(Protocol):
    """Where the backup scenario backs up to and restores from: spec.backup.target and
    spec.restore.from take the same shape."""

    kind: str  #: its key in spec.backup.target: "pvc" or "s3"

    def create(self, dep: Deployment) -> None:
        """What the target needs in the namespace (the claim; the credentials Secret)."""
        ...

    def spec(self) -> dict[str, Any]:
        """spec.backup.target and spec.restore.from: {kind: {...}}."""
        ...

    def location(self) -> str:
        """What the operator's Jobs give `eventstore backup|restore`."""
        ...

    def check_pod(self, pod_spec: Mapping[str, Any]) -> None:
        """How a backup or restore pod reaches the target (mount; endpoint and credentials)."""
        ...

    def secrets(self) -> list[str]:
        """Values that must be in no object of the namespace but a Secret."""
        ...

    def files(self, dep: Deployment) -> dict[str, bytes]:
        """What the location holds, read apart from the operator's Jobs: name -> bytes."""
        ...


def _container_env(pod_spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = pod_spec["containers"]
    return {e["name"]: e for e in container.get("env") or []}


@dataclass
class ClaimBackupTarget:
    """An existing PersistentVolumeClaim; read back by a Job of the store image that mounts
    it read-only and prints every file (base64) as one JSON line."""

    claim: str = BACKUP_CLAIM
    kind: str = "pvc"

    def create(self, dep: Deployment) -> None:
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": self.claim, "namespace": dep.namespace},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        dep.kube.kubectl_run("apply", "-f", "-", input=json.dumps(claim))

    def spec(self) -> dict[str, Any]:
        return {"pvc": {"claimName": self.claim}}

    def location(self) -> str:
        return names.BACKUP_DIR

    def check_pod(self, pod_spec: Mapping[str, Any]) -> None:
        (container,) = pod_spec["containers"]
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == names.BACKUP_DIR]
        assert volumes[mount["name"]].get("persistentVolumeClaim") == {"claimName": self.claim}, volumes

    def secrets(self) -> list[str]:
        return []

    def files(self, dep: Deployment) -> dict[str, bytes]:
        job = f"e2e-backup-files-{uuid.uuid4().hex[:6]}"
        script = ("import base64, json, os\n"
                  "root = '/backup'\n"
                  "out = {}\n"
                  "for d, _, fs in os.walk(root):\n"
                  "    for f in fs:\n"
                  "        p = os.path.join(d, f)\n"
                  "        out[os.path.relpath(p, root)] = base64.b64encode(open(p, 'rb').read()).decode()\n"
                  "print(json.dumps(out))\n")
        manifest = store_image_job(
            dep, job, "list", ["python3", "-c", script],
            mounts=[{"name": "backup", "mountPath": "/backup", "readOnly": True}],
            volumes=[{"name": "backup", "persistentVolumeClaim": {"claimName": self.claim,
                                                                  "readOnly": True}}])
        dep.kube.kubectl_run("apply", "-f", "-", input=json.dumps(manifest))
        try:
            logs = completed_job_logs(dep, job, 120)
            listed: dict[str, str] = json.loads(logs.strip().splitlines()[-1])
            return {name: base64.b64decode(data) for name, data in listed.items()}
        finally:
            dep.kube.kubectl_run("delete", "job", job, "-n", dep.namespace, "--ignore-not-found",
                                 "--wait=false", "--cascade=background", check=False)


@dataclass
class S3BackupTarget:
    """A bucket of an S3-compatible server the pods reach at `endpoint` (and so does this
    process); its root credentials go into the Secret BACKUP_SECRET, nowhere else."""

    endpoint: str
    bucket: str
    prefix: str
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    secret: str = BACKUP_SECRET
    kind: str = "s3"

    def create(self, dep: Deployment) -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": self.secret, "namespace": dep.namespace},
                "stringData": {"AWS_ACCESS_KEY_ID": self.access_key,
                               "AWS_SECRET_ACCESS_KEY": self.secret_key}}
        # Through stdin: never in argv (visible in `ps`).
        dep.kube.kubectl_run("apply", "-f", "-", input=json.dumps(body))

    def spec(self) -> dict[str, Any]:
        return {"s3": {"bucket": self.bucket, "prefix": self.prefix, "endpoint": self.endpoint,
                       "region": self.region, "credentialsSecret": {"name": self.secret}}}

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def check_pod(self, pod_spec: Mapping[str, Any]) -> None:
        env = _container_env(pod_spec)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[key], f"{key} is written into the pod spec"
            assert env[key]["valueFrom"] == {"secretKeyRef": {"name": self.secret, "key": key}}, env[key]
        assert env["AWS_ENDPOINT_URL"].get("value") == self.endpoint, env.get("AWS_ENDPOINT_URL")
        assert env["AWS_DEFAULT_REGION"].get("value") == self.region, env.get("AWS_DEFAULT_REGION")

    def secrets(self) -> list[str]:
        return [self.access_key, self.secret_key]

    def client(self) -> Any:
        from minio import Minio

        parts = urlsplit(self.endpoint)
        return Minio(parts.netloc, access_key=self.access_key, secret_key=self.secret_key,
                     secure=parts.scheme == "https", region=self.region)

    def files(self, dep: Deployment) -> dict[str, bytes]:
        client = self.client()
        out: dict[str, bytes] = {}
        for item in client.list_objects(self.bucket, prefix=f"{self.prefix}/", recursive=True):
            response = client.get_object(self.bucket, item.object_name)
            try:
                out[item.object_name.removeprefix(f"{self.prefix}/")] = response.read()
            finally:
                response.close()
                response.release_conn()
        return out


def whole_log(client: EventStoreClient) -> list[tuple[Any, ...]]:
    """The global log in order: every field of every event but its position value."""
    out: list[tuple[Any, ...]] = []
    position = 0
    while True:
        page = client.read_all(from_position=position, limit=1000)
        if not page:
            return out
        out += [(str(e.id), e.aggregate_id, e.version, e.type, e.payload, e.metadata, e.timestamp,
                 e.schema_version) for e in page]
        position = page[-1].position + 1


def job_finished(dep: Deployment, job: str) -> str | None:
    """"Complete" or "Failed" once Job `job` is done, else None."""
    body = dep.get("job", job) or {}
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return str(c["type"])
    return None


def completed_job_logs(dep: Deployment, job: str, timeout: float) -> str:
    """Job `job`'s output once it has finished, which must be as Complete."""
    state = assertions.poll(lambda: job_finished(dep, job), timeout, f"Job {job} to finish", interval=1)
    logs = dep.kube.kubectl_run("logs", "-n", dep.namespace, f"job/{job}", check=False).stdout
    assert state == "Complete", f"Job {job}: {state}\n{logs}"
    return logs


def run_backup_job(dep: Deployment, job: str) -> None:
    """A Job from the backup CronJob now (as `kubectl create job --from=cronjob`), to Complete."""
    dep.kube.kubectl_run("create", "job", job, f"--from=cronjob/{names.backup(dep.name)}", "-n",
                         dep.namespace)
    completed_job_logs(dep, job, 180)


def last_backup(dep: Deployment, job: str) -> dict[str, Any]:
    """status.lastBackup once the operator reports `job` there, with its position."""
    def reported() -> dict[str, Any] | None:
        status = (dep.get(names.PLURAL, dep.name) or {}).get("status") or {}
        last: dict[str, Any] = status.get("lastBackup") or {}
        return last if last.get("job") == job and "position" in last else None

    return assertions.poll(reported, 90, f"status.lastBackup to show Job {job}", interval=1)


def assert_only_in_secrets(dep: Deployment, values: list[str]) -> None:
    """No object of the namespace but a Secret holds any of `values` (credentials): not the
    EventStore, a ConfigMap, the CronJob, a Job or a pod."""
    if not values:
        return
    dump = dep.kube.kubectl_run("get", "eventstores,configmaps,cronjobs,jobs,pods", "-n", dep.namespace,
                                "-o", "json").stdout
    leaked = [i for i, value in enumerate(values) if value in dump]
    assert not leaked, f"credential(s) #{leaked} of the backup target appear outside its Secret"


def check_backup_files(files: Mapping[str, bytes], first: Mapping[str, Any], second: Mapping[str, Any],
                       log_ids: list[str], incremental_ids: list[str]) -> list[dict[str, Any]]:
    """What the location holds, as read apart from the Jobs: a manifest naming a full and
    an incremental segment that end at the positions status.lastBackup reported, both there
    with the manifest's sha256, no other segment, and between them the whole log's events
    in order (the incremental one exactly the events appended between the two Jobs)."""
    assert "manifest.json" in files, f"no manifest.json among {sorted(files)}"
    segments: list[dict[str, Any]] = json.loads(files["manifest.json"])["segments"]
    assert len(segments) == 2, segments
    full, incremental = segments
    assert full["after_position"] == 0 and full["to_position"] == int(first["position"]), (full, first)
    assert incremental["after_position"] == full["to_position"], segments
    assert incremental["to_position"] == int(second["position"]), (incremental, second)
    stored = sorted(name for name in files if SEGMENT_FILE.fullmatch(name))
    assert stored == sorted(s["file"] for s in segments), (stored, segments)
    ids: list[list[str]] = []
    for segment in segments:
        data = files[segment["file"]]
        assert hashlib.sha256(data).hexdigest() == segment["sha256"], f"{segment['file']}: sha256 differs"
        rows = [json.loads(line) for line in gzip.decompress(data).splitlines()]
        ids.append([str(r["id"]) for r in rows if "id" in r])
        assert len(ids[-1]) == segment["events"], (segment, len(ids[-1]))
    assert ids[1] == incremental_ids, (ids[1], incremental_ids)
    assert ids[0] + ids[1] == log_ids, "the segments do not hold the source's log, in order"
    return segments


def check_backup_then_restore_into_a_new_eventstore(dep: Deployment, target: BackupTarget) -> None:
    """spec.backup onto `target` (a claim, an S3 bucket): a backup Job (from the CronJob),
    more appends, a second (incremental) one, each in status.lastBackup with its time and
    position; what the location then holds, read apart from the Jobs (check_backup_files);
    the target's credentials in its Secret only; then a new EventStore with spec.restore.from
    the same target starts from the backup, and its log is the source's, event for event."""
    target.create(dep)
    backup = {"schedule": "0 0 1 1 *", "fullEvery": 7, "retention": "30d",
              # A merge patch: the other kind of target (an earlier scenario's) set to null.
              "target": {**dict.fromkeys(BACKUP_TARGET_KINDS), **target.spec()}}
    dep.kube.kubectl_run("patch", names.PLURAL, dep.name, "-n", dep.namespace, "--type=merge", "-p",
                         json.dumps({"spec": {"backup": backup}}))

    def cronjob_pod() -> dict[str, Any] | None:
        cronjob = dep.get("cronjob", names.backup(dep.name)) or {}
        pod: dict[str, Any] = (((cronjob.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
                               ).get("template", {}).get("spec") or {}
        args = (pod.get("containers") or [{}])[0].get("args") or []
        return pod if args[1:2] == [target.location()] else None

    target.check_pod(assertions.poll(cronjob_pod, 60, f"the backup CronJob onto {target.location()}"))

    prefix = f"backup-{target.kind}-{uuid.uuid4().hex[:6]}"
    with dep.client() as client:
        for i in range(5):
            events = [NewEvent(type="Deposited", payload={"amount": n}) for n in range(3)]
            client.append(f"{prefix}-account-{i}", events, expected_version=ExpectedVersion.NO_STREAM)
            dep.record({f"{prefix}-account-{i}": [str(e.id) for e in events]})
    with dep.timings.phase("backup Job (full)"):
        run_backup_job(dep, f"e2e-backup-{target.kind}-1")
    first = last_backup(dep, f"e2e-backup-{target.kind}-1")
    incremental_ids: list[str] = []
    with dep.client() as client:
        for i in range(5):
            events = [NewEvent(type="Withdrawn", payload={"amount": 1})]
            client.append(f"{prefix}-account-{i}", events, expected_version=3)
            dep.record({f"{prefix}-account-{i}": [str(e.id) for e in events]})
            incremental_ids += [str(e.id) for e in events]
    with dep.timings.phase("backup Job (incremental)"):
        run_backup_job(dep, f"e2e-backup-{target.kind}-2")
    second = last_backup(dep, f"e2e-backup-{target.kind}-2")
    assert int(second["position"]) > int(first["position"]), (first, second)
    assert second["completionTime"] >= first["completionTime"], (first, second)
    with dep.client() as client:
        expected = whole_log(client)
    assert sum(1 for e in expected if e[1].startswith(prefix)) == 20
    with dep.timings.phase(f"backup files read from the {target.kind} target"):
        segments = check_backup_files(target.files(dep), first, second, [e[0] for e in expected],
                                      incremental_ids)
    print(f"{target.location()}: " + ", ".join(f"{s['file']} ({s['events']} events)" for s in segments))

    # A new EventStore from that target: one small store, restored before it starts.
    name = f"{dep.name}-restored-{target.kind}"
    spec = copy.deepcopy((dep.values.get("eventstore") or {}).get("spec") or {})
    small = {"requests": {"cpu": "50m", "memory": "128Mi"}}
    spec.update(replicas=1, resources=small, restore={"from": target.spec()})
    spec.pop("backup", None)
    for database in ("postgres", "mongodb"):
        spec[database] = {**spec.get(database, {}), "resources": small}
    body = {"apiVersion": names.API_VERSION, "kind": names.KIND,
            "metadata": {"name": name, "namespace": dep.namespace}, "spec": spec}
    restored = dataclasses.replace(dep, name=name, values={"eventstore": {"spec": spec}}, acked={})
    dep.kube.kubectl_run("apply", "-f", "-", input=json.dumps(body))
    try:
        with dep.timings.phase("restore Job and the restored store Ready"):
            restored.wait_all_ready()
        status = (restored.get(names.PLURAL, name) or {}).get("status") or {}
        assert (status.get("restore") or {}).get("job") == names.restore(name), status
        job = restored.get("job", names.restore(name))
        assert job is not None and job_finished(restored, names.restore(name)) == "Complete", job
        pod_spec = job["spec"]["template"]["spec"]
        assert pod_spec["containers"][0]["args"][:2] == ["restore", target.location()], pod_spec
        target.check_pod(pod_spec)
        assert_only_in_secrets(dep, target.secrets())
        with restored.client() as client:
            actual = whole_log(client)
        assert len(actual) == len(expected) and actual == expected, (
            f"{len(actual)} events restored, {len(expected)} in the source; first difference: "
            f"{next(((a, e) for a, e in zip(actual, expected, strict=False) if a != e), None)}")
    finally:
        dep.kube.kubectl_run("delete", names.PLURAL, name, "-n", dep.namespace, "--ignore-not-found",
                             "--wait=true", "--timeout=120s", check=False, timeout=150)
        dep.kube.kubectl_run("delete", "pvc", "-n", dep.namespace, "-l", f"{names.LABEL_INSTANCE}={name}",
                             "--ignore-not-found", "--wait=false", check=False)

"""charts/eventstore with the real helm (v4) against the real control plane.

Complements tests/k8s/test_manifests_chart.py (lint with --set values, schema refusals by
`helm template`, RBAC equal to manifests/, a first install/upgrade/uninstall cycle). Here:
every values file in tests/k8s/chart_values/ is linted, rendered (no null anywhere, the
optional blocks present exactly when switched on) and accepted by a server-side dry run;
schema violations make `helm install` itself fail, naming the key, and leave nothing
behind; and one release goes through install -> the operator run locally *exactly as the
chart's Deployment describes it* (command, args, env; the chart's ServiceAccount token)
-> the shared object assertions (tests/k8s/assertions.py, also used by the kind suite)
-> a ConfigMap edit that rolls -> upgrades that roll what they should and nothing else
-> uninstall with no orphans but the documented ones (PVCs, the CRD).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventstore_operator import names
from tests.harness.controlplane import ControlPlane
from tests.k8s import assertions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "eventstore"
CRD_FILE = CHART / "crds" / "eventstore.yaml"
VALUES_DIR = Path(__file__).resolve().parent / "chart_values"
VALUES_FILES = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))
SCHEMA_ERROR = "values don't meet the specifications of the schema"
#: The seed's four metrics, each of which the Grafana dashboard must chart.
SEED_METRICS = (
    "eventstore_event_processing_seconds",  # event processing latency
    "eventstore_store_bytes",  # store size growth
    "eventstore_snapshot_creation_seconds",  # snapshot creation time
    "eventstore_aggregate_replay_seconds",  # replay performance
)


class Helm:
    """The real helm binary with its own config/cache/data dirs (no state shared with the
    user's helm or between sessions), optionally against a cluster."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.env.pop("KUBECONFIG", None)

    def run(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cluster = ["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []
        proc = subprocess.run(
            [str(self.binary), *args, *cluster],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def template(self, release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
        out = self.run("template", release, str(CHART), "--namespace", namespace, *values).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def offline_helm(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm for lint/template: needs the binary, not a running cluster."""
    return Helm(helm_binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def helm(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(control_plane.helm, tmp_path_factory.mktemp("helm-home"), control_plane.kubeconfig)


@pytest.fixture(scope="module")
def crd_installed(control_plane: ControlPlane) -> None:
    """The chart's CRD (the same bytes as manifests/crd.yaml: client-side apply, as the other
    tests do, so re-applying it is a no-op)."""
    control_plane.kubectl_run("apply", "-f", str(CRD_FILE))
    control_plane.wait_crd_established(names.CRD_NAME)


def values_of(file: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((VALUES_DIR / file).read_text()) or {}
    return loaded


def find_nulls(node: Any, path: str = "") -> list[str]:
    """Paths of every null in a rendered document (a null in a CRD field is a chart bug)."""
    if node is None:
        return [path or "/"]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in find_nulls(v, f"{path}/{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in find_nulls(v, f"{path}/{i}")]
    return []


# --- offline: lint and render ----------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lint_strict_is_clean_for_each_values_file(offline_helm: Helm, values_file: str) -> None:
    proc = offline_helm.run("lint", "--strict", str(CHART), "-f", str(VALUES_DIR / values_file))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values_file", ["values.yaml (chart defaults)", *VALUES_FILES])
def test_each_values_file_renders_without_nulls(offline_helm: Helm, values_file: str) -> None:
    chart_defaults = values_file.startswith("values.yaml")
    args = [] if chart_defaults else ["-f", str(VALUES_DIR / values_file)]
    values = {} if chart_defaults else values_of(values_file)
    docs = offline_helm.template("rel", "ns-render", *args)
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert find_nulls(doc) == [], f"null in {where}: {find_nulls(doc)}"
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("app.kubernetes.io/instance") == "rel", where
        assert labels.get("app.kubernetes.io/part-of") == "eventstore", where
        assert doc["metadata"].get("namespace") == "ns-render", where
    kinds = [d["kind"] for d in docs]
    es = values.get("eventstore") or {}
    metrics = values.get("metrics") or {}
    assert kinds.count("Deployment") == 1
    assert kinds.count("EventStore") == (1 if es.get("create") else 0)
    assert kinds.count("ServiceMonitor") == (1 if (metrics.get("serviceMonitor") or {}).get("enabled") else 0)
    dashboards = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(dashboards) == (1 if (metrics.get("grafanaDashboard") or {}).get("enabled") else 0)
    rbac = (values.get("rbac") or {}).get("create", True)
    assert kinds.count("Role") == kinds.count("RoleBinding") == (1 if rbac else 0)
    sa_create = (values.get("serviceAccount") or {}).get("create", True)
    assert kinds.count("ServiceAccount") == (1 if sa_create else 0)
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds  # least privilege

    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["eventstore-operator"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) >= {"cpu", "memory"}
    image = values.get("image") or {}
    if image.get("repository"):
        assert container["image"] == f"{image['repository']}:{image['tag']}"
    if not sa_create:
        assert pod["serviceAccountName"] == values["serviceAccount"]["name"]


@pytest.mark.parametrize("values_file", [f for f in VALUES_FILES if values_of(f).get("eventstore")])
def test_eventstore_from_values_is_the_spec_given(offline_helm: Helm, values_file: str) -> None:
    """The chart passes eventstore.spec through untouched: nothing added (the CRD's
    defaults fill the rest on the server), nothing null."""
    es_values = values_of(values_file)["eventstore"]
    (es,) = (
        d
        for d in offline_helm.template("rel", "ns", "-f", str(VALUES_DIR / values_file))
        if d["kind"] == names.KIND
    )
    assert es["apiVersion"] == names.API_VERSION
    assert es["metadata"]["name"] == es_values.get("name", "eventstore")
    assert es["spec"] == (es_values.get("spec") or {})


def test_servicemonitor_and_dashboard_blocks(offline_helm: Helm) -> None:
    docs = offline_helm.template("rel", "ns", "-f", str(VALUES_DIR / "full.yaml"))
    (monitor,) = (d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == names.HTTP_PORT_NAME and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["bearerTokenSecret"] == {"name": names.api_token("orders"), "key": names.TOKEN_KEY}
    assert monitor["spec"]["selector"]["matchLabels"][names.LABEL_INSTANCE] == "orders"

    (dashboard_cm,) = (d for d in docs if d["kind"] == "ConfigMap")
    assert dashboard_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = dashboard_cm["data"].values()
    dashboard = json.loads(text)
    exprs = json.dumps([t.get("expr") for p in dashboard["panels"] for t in p.get("targets", [])])
    missing = [m for m in SEED_METRICS if m not in exprs]
    assert not missing, f"the dashboard charts none of {missing}"


def test_servicemonitor_without_an_eventstore_fails_clearly(offline_helm: Helm) -> None:
    proc = offline_helm.run(
        "template", "rel", str(CHART), "--set", "metrics.serviceMonitor.enabled=true", check=False
    )
    assert proc.returncode != 0
    assert "metrics.serviceMonitor.enabled needs eventstore.create=true" in proc.stderr


def test_watch_namespaces_get_one_role_each(offline_helm: Helm) -> None:
    docs = offline_helm.template("rel", "ops", "--set", "operator.watchNamespaces={team-a,team-b}")
    roles = sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert roles == ["team-a", "team-b"]
    assert {b["subjects"][0]["namespace"] for b in bindings} == {"ops"}  # the SA stays home
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == ["--namespace=team-a", "--namespace=team-b"]


# --- against the control plane ---------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_template_passes_a_server_side_dry_run(
    helm: Helm, control_plane: ControlPlane, crd_installed: None, namespace: str, values_file: str
) -> None:
    docs = helm.template("rel", namespace, "--include-crds", "-f", str(VALUES_DIR / values_file))
    # No Prometheus Operator here: its ServiceMonitor kind is unknown to this API server.
    # Its shape is checked above and its selector against a live Service below.
    docs = [d for d in docs if d["kind"] != "ServiceMonitor"]
    text = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    proc = control_plane.kubectl_run("apply", "--dry-run=server", "-f", "-", input=text)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == len(docs), proc.stdout
    assert all("(server dry run)" in line for line in lines), proc.stdout
    created = control_plane.kubectl_json("get", "deployments,roles,eventstores", "-n", namespace)["items"]
    assert created == [], "the dry run created objects"


def releases(helm: Helm, control_plane: ControlPlane, namespace: str) -> list[str]:
    """Releases helm knows in `namespace`, and the release records (Secrets) it stores."""
    listed = helm.run("list", "--namespace", namespace, "-q").stdout.split()
    records = control_plane.kubectl_json("get", "secrets", "-n", namespace, "-l", "owner=helm")["items"]
    return listed + [s["metadata"]["name"] for s in records]


SCHEMA_VIOLATIONS = {
    "replicaCount-three": (["--set", "replicaCount=three"], "at '/replicaCount': got string, want integer"),
    "spec-replicas-three": (
        ["-f", "spec-replicas-three.yaml"],
        "at '/eventstore/spec/replicas': got string, want integer",
    ),
    "unknown-key-set": (["--set", "foo=bar"], "additional properties 'foo' not allowed"),
    "unknown-key-file": (["-f", "unknown-top-level.yaml"], "additional properties 'replicas' not allowed"),
    "spec-typo": (["-f", "spec-typo.yaml"], "additional properties 'snapshotFrequncy' not allowed"),
    "null-block": (["-f", "null-settings.yaml"], "at '/eventstore/spec/settings': got null, want object"),
    "bad-enum": (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    "name-too-long": (["--set", f"eventstore.name={'x' * 41}"], "at '/eventstore/name'"),
}
BAD_VALUE_FILES = {
    "spec-replicas-three.yaml": {"eventstore": {"create": True, "spec": {"replicas": "three"}}},
    "unknown-top-level.yaml": {"replicas": "three"},
    "spec-typo.yaml": {"eventstore": {"create": True, "spec": {"settings": {"snapshotFrequncy": 50}}}},
    "null-settings.yaml": {"eventstore": {"create": True, "spec": {"settings": None}}},
}


@pytest.mark.parametrize("case", sorted(SCHEMA_VIOLATIONS))
def test_schema_violations_fail_helm_install(
    helm: Helm, control_plane: ControlPlane, namespace: str, tmp_path: Path, case: str
) -> None:
    args, message = SCHEMA_VIOLATIONS[case]
    for name, content in BAD_VALUE_FILES.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    args = [str(tmp_path / a) if a in BAD_VALUE_FILES else a for a in args]
    proc = helm.run("install", "bad", str(CHART), "--namespace", namespace, *args, check=False)
    assert proc.returncode != 0, f"helm install accepted {args}"
    assert SCHEMA_ERROR in proc.stderr and message in proc.stderr, proc.stderr
    # Refused before anything was sent: no release record, no objects.
    assert releases(helm, control_plane, namespace) == []
    left = control_plane.kubectl_json(
        "get",
        "deployments,serviceaccounts,roles,secrets",
        "-n",
        namespace,
        "-l",
        "app.kubernetes.io/instance=bad",
    )["items"]
    assert left == []


# --- one release, end to end -------------------------------------------------------------

RELEASE = "es"
STORE = "chart-store"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DeploymentProcess:
    """The operator container of a Deployment run as a local process: its command (from
    this Python's bin dir, where pip put the console script), args and env, authenticated
    with a ServiceAccount kubeconfig. The liveness endpoint moves to a free loopback port."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, log: Path) -> None:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        namespace = deployment["metadata"]["namespace"]
        self.port = free_port()
        self.liveness = f"http://127.0.0.1:{self.port}/healthz"
        args = [
            f"--liveness={self.liveness}" if a.startswith("--liveness=") else a
            for a in container.get("args", [])
        ]
        (command,) = container["command"]
        script = Path(sys.executable).parent / command
        assert script.exists(), f"the console script {command} is not installed next to {sys.executable}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[item["name"]] = namespace
            else:
                raise AssertionError(f"cannot reproduce env {item} locally")
        env.update(KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
        self.argv = [str(script), *args]
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=log.parent,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        assert self.proc.poll() is None, f"the operator exited {self.proc.returncode}:\n{self.logs()}"
        try:
            with urllib.request.urlopen(self.liveness, timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""


@pytest.fixture
def release(helm: Helm, control_plane: ControlPlane, crd_installed: None, namespace: str) -> Iterator[str]:
    """A release of the chart with an EventStore from values; uninstalled at the end
    whatever happens."""
    helm.run(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "eventstore.create=true",
        "--set",
        f"eventstore.name={STORE}",
        "--set",
        "operator.resyncSeconds=3",
        "--set",
        "image.tag=0.1.0",
    )
    try:
        yield RELEASE
    finally:
        helm.run("uninstall", RELEASE, "--namespace", namespace, check=False)


def operator_objects(control_plane: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    items = control_plane.kubectl_json(
        "get",
        "deployments,serviceaccounts,roles,rolebindings",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
    )["items"]
    return {o["kind"]: o for o in items}


def operator_replicasets(
    control_plane: ControlPlane, namespace: str, deployment: str
) -> list[dict[str, Any]]:
    items = control_plane.kubectl_json("get", "replicasets", "-n", namespace)["items"]
    return [
        rs
        for rs in items
        if any(
            r["kind"] == "Deployment" and r["name"] == deployment
            for r in rs["metadata"].get("ownerReferences") or []
        )
    ]


def test_install_reconcile_roll_upgrade_uninstall(
    helm: Helm, control_plane: ControlPlane, namespace: str, release: str, tmp_path: Path
) -> None:
    kube = control_plane
    timings: dict[str, float] = {}
    started = time.monotonic()

    # helm install created the operator's objects and the EventStore.
    objs = operator_objects(kube, namespace)
    assert set(objs) == {"Deployment", "ServiceAccount", "Role", "RoleBinding"}, sorted(objs)
    deployment = objs["Deployment"]
    sa = objs["ServiceAccount"]["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa
    assert objs["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/eventstore-py/eventstore:0.1.0"
    assert f"--namespace={namespace}" in container["args"]
    es = assertions.get(kube, "eventstore", STORE, namespace)
    assert es is not None and es["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # The API server filled the CRD defaults into the empty spec from values.
    assert es["spec"]["replicas"] == 3 and es["spec"]["storage"]["size"] == "100Gi"
    # The deployment controller acted on it (one ReplicaSet; its pod stays Pending here).
    first_rs = assertions.poll(
        lambda: operator_replicasets(kube, namespace, deployment["metadata"]["name"]),
        30,
        "the operator's ReplicaSet",
    )
    assert len(first_rs) == 1

    # The operator, as the Deployment runs it, with the chart's ServiceAccount's permissions.
    op = DeploymentProcess(
        deployment, kube.service_account_kubeconfig(namespace, sa), tmp_path / "operator.log"
    )
    try:
        assertions.poll(op.healthy, 60, "the operator's liveness endpoint")
        try:
            assertions.wait_reconciled(kube, namespace, STORE, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{op.logs()}") from None
        timings["reconciled"] = time.monotonic() - started
        assertions.assert_store_objects(kube, namespace, STORE)

        # The ServiceMonitor the chart would render selects the operator's client Service.
        monitor = next(
            d
            for d in helm.template(
                RELEASE,
                namespace,
                "--set",
                "eventstore.create=true",
                "--set",
                f"eventstore.name={STORE}",
                "--set",
                "metrics.serviceMonitor.enabled=true",
            )
            if d["kind"] == "ServiceMonitor"
        )
        services = kube.kubectl_json("get", "services", "-n", namespace)["items"]
        selected = [
            s
            for s in services
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert [s["metadata"]["name"] for s in selected] == [names.store(STORE)]
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}

        # The user's tuning surface: a ConfigMap edit rolls the store pods' template.
        assertions.assert_configmap_edit_rolls(kube, namespace, STORE, frequency=50)
        timings["configmap-rolled"] = time.monotonic() - started

        # An upgrade that changes nothing rolls nothing.
        generation = deployment["metadata"]["generation"]
        helm.run("upgrade", RELEASE, str(CHART), "--namespace", namespace, "--reuse-values")
        same = assertions.get(kube, "deployment", deployment["metadata"]["name"], namespace)
        assert same is not None and same["metadata"]["generation"] == generation

        # Operator values roll the operator (a new ReplicaSet); EventStore values update the
        # CR, which the running operator rolls into the StatefulSet. The user's ConfigMap
        # edit survives the upgrade.
        helm.run(
            "upgrade",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set",
            "image.tag=0.2.0",
            "--set",
            "operator.verbose=true",
            "--set",
            "eventstore.spec.replicas=5",
        )
        upgraded = assertions.get(kube, "deployment", deployment["metadata"]["name"], namespace)
        assert upgraded is not None
        (new_container,) = upgraded["spec"]["template"]["spec"]["containers"]
        assert new_container["image"] == "ghcr.io/eventstore-py/eventstore:0.2.0"
        assert "--verbose" in new_container["args"]
        operator_name = deployment["metadata"]["name"]
        assertions.poll(
            lambda: len(operator_replicasets(kube, namespace, operator_name)) == 2,
            30,
            "a second ReplicaSet for the new operator pod template",
        )
        es = assertions.get(kube, "eventstore", STORE, namespace)
        assert es is not None and es["spec"]["replicas"] == 5

        def store_scaled() -> bool:
            sts = assertions.get(kube, "statefulset", names.store(STORE), namespace)
            return bool(sts and sts["spec"]["replicas"] == 5)

        assertions.poll(store_scaled, 30, "the operator to scale the store to 5")
        assertions.wait_reconciled(kube, namespace, STORE, timeout=30)
        assertions.assert_store_objects(kube, namespace, STORE, replicas=5)
        cm = assertions.get(kube, "configmap", names.config(STORE), namespace)
        assert cm is not None and "snapshot_frequency: 50" in cm["data"]["event-store.yaml"]
        timings["upgraded"] = time.monotonic() - started

        # The StatefulSet controller made claims for the pods; they must outlive the release.
        claims_before = assertions.poll(
            lambda: {
                c["metadata"]["name"] for c in kube.kubectl_json("get", "pvc", "-n", namespace)["items"]
            },
            30,
            "the store's PersistentVolumeClaims",
        )
    finally:
        # helm uninstall deletes the Deployment, i.e. the operator: stop ours first so it
        # does not run on without its Role.
        op.stop()
    log = op.logs()
    for marker in ("Forbidden", "HTTP 403", "Traceback"):
        assert marker not in log, f"operator log has {marker!r}:\n{log}"

    helm.run("uninstall", RELEASE, "--namespace", namespace)
    assert operator_objects(kube, namespace) == {}
    assert releases(helm, kube, namespace) == []
    claims_after = assertions.assert_no_orphans(kube, namespace, STORE)
    # Kept on purpose (NOTES.txt, README): the volumes, what they need, and the CRD.
    assert {c["metadata"]["name"] for c in claims_after} == claims_before
    assert any(name.startswith(f"data-{names.store(STORE)}-") for name in claims_before)
    # The clean-up command the README and NOTES.txt give selects exactly those claims.
    documented = kube.kubectl_json("get", "pvc", "-n", namespace, "-l", f"{names.LABEL_INSTANCE}={STORE}")
    assert {c["metadata"]["name"] for c in documented["items"]} == claims_before
    kube.kubectl_run("get", "crd", names.CRD_NAME)
    timings["uninstalled"] = time.monotonic() - started
    print(f"chart life cycle timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")

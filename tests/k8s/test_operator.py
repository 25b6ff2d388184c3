"""The operator end to end against a real kube-apiserver, etcd and controller manager.

The operator runs as a subprocess with its ServiceAccount's token (manifests/rbac.yaml
is all it has). No kubelet or scheduler runs here, so pods stay Pending: the tests
assert on the objects, the status and the Events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventstore.settings import (
    EVENT_STORE_FILE,
    Settings,
    config_hash,
    load_settings,
    render_config_data,
)
from eventstore_operator import builders, names
from tests.k8s.test_operator_support import (
    MANIFESTS,
    SERVICE_ACCOUNT,
    Kubectl,
    OperatorProcess,
    condition,
    install_crd,
    manifest,
    service_account_kubeconfig,
    wait_for,
)
from tests.unit.operator.kubelet import kubelet_layout

pytestmark = pytest.mark.k8s

EXAMPLE = MANIFESTS / "examples" / "eventstore.yaml"
NAME = "demo"
CHILDREN = {
    ("StatefulSet", "demo"),
    ("StatefulSet", "demo-postgres"),
    ("StatefulSet", "demo-mongodb"),
    ("Service", "demo"),
    ("Service", "demo-headless"),
    ("Service", "demo-postgres"),
    ("Service", "demo-mongodb"),
    ("PodDisruptionBudget", "demo"),
    ("ConfigMap", "demo-config"),
    ("Secret", "demo-api-token"),
    ("Secret", "demo-postgres-credentials"),
    ("Secret", "demo-mongodb-credentials"),
    ("Secret", "demo-app"),
    ("NetworkPolicy", "demo"),
    ("NetworkPolicy", "demo-postgres"),
    ("NetworkPolicy", "demo-mongodb"),
}
CHILD_KINDS = "statefulsets,services,poddisruptionbudgets,configmaps,secrets,networkpolicies"


@pytest.fixture(scope="module")
def kubectl(control_plane: Any) -> Kubectl:
    k = Kubectl(control_plane.kubectl, control_plane.kubeconfig)
    install_crd(k)
    return k


@pytest.fixture
def operator(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    kubectl.apply(manifest("rbac.yaml", namespace))
    kubeconfig = service_account_kubeconfig(kubectl, namespace, tmp_path)
    op = OperatorProcess(kubeconfig, namespace, tmp_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()
    op.assert_clean_logs()


def owned_children(kubectl: Kubectl, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    items = kubectl.list(CHILD_KINDS, namespace, f"{names.LABEL_INSTANCE}={NAME}")
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


def collectable_children(kubectl: Kubectl, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The children the garbage collector removes with the EventStore (not those kept
    with the data: generated Secrets and the user's ConfigMap)."""
    return {
        key: obj
        for key, obj in owned_children(kubectl, namespace).items()
        if names.LABEL_KEPT_WITH_DATA not in obj["metadata"].get("labels", {})
    }


def eventstore(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    return kubectl.get("eventstore", NAME, namespace)


def converged(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    """The EventStore once every child exists and the status says so, else None."""
    body = eventstore(kubectl, namespace)
    reconciled = condition(body, names.CONDITION_RECONCILED)
    if not body or not reconciled or reconciled["status"] != "True":
        return None
    if not set(owned_children(kubectl, namespace)) >= CHILDREN:
        return None
    return body


def wait_converged(
    kubectl: Kubectl, namespace: str, op: OperatorProcess, timeout: float = 30
) -> dict[str, Any]:
    try:
        return wait_for(lambda: converged(kubectl, namespace), timeout, "the EventStore to converge")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{op.logs()}") from None


def template_hash(kubectl: Kubectl, namespace: str) -> str:
    sts = kubectl.get("statefulset", NAME, namespace)
    assert sts is not None
    value: str = sts["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    return value


def example_config_data() -> dict[str, str]:
    """The ConfigMap the example's spec.settings seed: the defaults plus its aggregates."""
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    return render_config_data(*builders.seed_settings(spec))


def patch_config(kubectl: Kubectl, namespace: str, text: str) -> None:
    patch = json.dumps({"data": {EVENT_STORE_FILE: text}})
    kubectl.run("patch", "configmap", f"{NAME}-config", "-n", namespace, "--type=merge", "-p", patch)


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[dict[str, Any]]:
    proc = kubectl.run(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=EventStore,involvedObject.name={NAME},reason={reason}",
        "-o",
        "json",
    )
    items: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
    return items


def test_example_converges_with_every_child(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    # Enforce the restricted Pod Security Standard: every pod the StatefulSets make must pass.
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    started = time.monotonic()
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    body = wait_converged(kubectl, namespace, operator, timeout=30)
    assert time.monotonic() - started < 30
    uid = body["metadata"]["uid"]
    children = owned_children(kubectl, namespace)
    for key in CHILDREN:
        if names.LABEL_KEPT_WITH_DATA in children[key]["metadata"]["labels"]:
            assert not children[key]["metadata"].get("ownerReferences"), key
            continue
        refs = children[key]["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"], r["controller"]) for r in refs] == [("EventStore", uid, True)]
    kept = {k for k, o in children.items() if names.LABEL_KEPT_WITH_DATA in o["metadata"]["labels"]}
    assert kept == {
        ("ConfigMap", "demo-config"),
        ("Secret", "demo-api-token"),
        ("Secret", "demo-app"),
        ("Secret", "demo-postgres-credentials"),
        ("Secret", "demo-mongodb-credentials"),
    }

    sts = children[("StatefulSet", "demo")]
    assert sts["spec"]["replicas"] == 3
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] + c["args"] == ["eventstore", "serve"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {
        "/data",
        "/etc/eventstore",
        "/var/run/secrets/eventstore",
    }
    env = {e["name"]: e for e in c["env"]}
    assert env["EVENT_DB_HOST"]["value"] == "demo-postgres"
    assert env["SNAPSHOT_DB_HOST"]["value"] == "demo-mongodb"
    assert "EVENT_DB_PASSWORD" not in env  # a mounted file, never the environment
    assert env["EVENT_DB_PASSWORD_FILE"]["value"] == "/var/run/secrets/eventstore-db/event-db/password"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["event-db-password"]["secret"]["secretName"] == "demo-postgres-credentials"
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"

    user_data = children[("ConfigMap", "demo-config")]["data"]
    assert user_data == example_config_data()
    digest = config_hash(user_data)
    assert sts["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == digest
    snapshot = kubectl.get("configmap", f"demo-config-{digest}", namespace)
    assert snapshot is not None and snapshot["immutable"] is True

    # Credentials are in Secrets (and not readable by the operator itself).
    secret = children[("Secret", "demo-postgres-credentials")]
    assert set(secret["data"]) == {"username", "password"}
    assert "password" not in json.dumps(user_data).lower()

    assert not body["metadata"].get("finalizers"), "deletion must not wait for the operator"
    status = body["status"]
    assert status["configHash"] == digest
    assert status["observedGeneration"] == body["metadata"]["generation"]
    for kind in (names.CONDITION_READY, names.CONDITION_CONFIG_VALID, names.CONDITION_RECONCILED):
        cond = condition(body, kind)
        assert cond is not None, kind
        assert cond["observedGeneration"] == body["metadata"]["generation"]
    ready = condition(body, names.CONDITION_READY)
    assert ready and ready["status"] == "False" and ready["message"].startswith("0/3 store pods")

    table = kubectl.run("get", "eventstores", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == [
        "NAME", "READY", "REPLICAS", "READY-REPLICAS", "CONFIG-VALID", "RECONCILED", "CONFIG-HASH", "AGE"
    ]
    assert digest in table

    # The controller manager's StatefulSet controller acts on what the operator wrote.
    # (Admitted under the restricted profile: a refused pod would never appear.)
    def pods() -> dict[str, int]:
        counts: dict[str, int] = {}
        for pod in kubectl.list("pods", namespace, f"{names.LABEL_INSTANCE}={NAME}"):
            component = pod["metadata"]["labels"][names.LABEL_COMPONENT]
            counts[component] = counts.get(component, 0) + 1
        return counts

    wait_for(
        lambda: pods() == {"store": 3, "postgres": 1, "mongodb": 1},
        30,
        "the StatefulSet controller to create 3 store pods and one pod per database",
    )
    claims = kubectl.list("pvc", namespace, "app.kubernetes.io/component=store")
    assert {c["spec"]["resources"]["requests"]["storage"] for c in claims} == {"100Gi"}


def test_spec_change_rolls_through(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    patch = json.dumps({"spec": {"replicas": 5, "image": "registry.local/eventstore:9"}})
    kubectl.run("patch", "eventstore", NAME, "-n", namespace, "--type=merge", "-p", patch)

    def rolled() -> bool:
        sts = kubectl.get("statefulset", NAME, namespace) or {}
        body = eventstore(kubectl, namespace) or {}
        cond = condition(body, names.CONDITION_RECONCILED) or {}
        return bool(
            sts.get("spec", {}).get("replicas") == 5
            and sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/eventstore:9"
            and cond.get("observedGeneration") == body["metadata"]["generation"]
        )

    wait_for(rolled, 30, "the spec change to reach the StatefulSet and the status")


def test_growing_storage_recreates_the_statefulset_and_keeps_the_pods(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    wait_for(
        lambda: len(kubectl.list("pods", namespace, "app.kubernetes.io/component=store")) == 3,
        30,
        "the store pods",
    )
    old = kubectl.get("statefulset", NAME, namespace)
    assert old is not None
    patch = json.dumps({"spec": {"storage": {"size": "200Gi"}}})
    kubectl.run("patch", "eventstore", NAME, "-n", namespace, "--type=merge", "-p", patch)

    def regrown() -> dict[str, Any] | None:
        sts = kubectl.get("statefulset", NAME, namespace)
        if not sts or sts["metadata"]["uid"] == old["metadata"]["uid"]:
            return None
        size = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        return sts if size == "200Gi" else None

    new = wait_for(regrown, 30, "a StatefulSet with 200Gi claims")
    # The pods were orphaned, not deleted, and the new StatefulSet adopted them. The
    # controller adopts them one at a time: wait for all three, not the first.
    def adopted() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in kubectl.list("pods", namespace, "app.kubernetes.io/component=store")
            if [r["uid"] for r in p["metadata"].get("ownerReferences", [])] == [new["metadata"]["uid"]]
        ]
        return pods if len(pods) == 3 else None

    pods = wait_for(adopted, 30, "the new StatefulSet to adopt all three running pods")
    assert len(pods) == 3
    # Unbound claims (no storage provisioner here) cannot be resized: said in an Event.
    warnings = wait_for(lambda: events(kubectl, namespace, "VolumeResizeFailed"), 10, "an Event")
    assert "to 200Gi" in warnings[0]["message"]
    wait_converged(kubectl, namespace, operator)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"replicas": -1}, "should be greater than or equal to 1"),
        ({"replicas": 2}, "replicas must be 1"),
        ({"storage": {"size": "abc"}}, "spec.storage.size"),
        ({"bogus": 1}, 'unknown field "spec.bogus"'),
        ({"settings": {"snapshotFrequency": 0}}, "spec.settings.snapshotFrequency"),
        ({"settings": {"snapshotFrequncy": 5}}, 'unknown field "spec.settings.snapshotFrequncy"'),
        ({"postgres": {"mode": "External"}}, "mode External needs host and credentialsSecret"),
        ({"mongodb": {"mode": "Elsewhere"}}, "supported values"),
        ({"network": {"allowFrom": [{}]}}, "a peer needs podSelector, namespaceSelector or ipBlock"),
        ({"network": {"allowFrom": [{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]}},
         "ipBlock cannot be combined"),
        ({"network": {"allowFrom": [{"podSelector": {"matchExpressions": [
            {"key": "a", "operator": "Near"}]}}]}}, "supported values"),
    ],
    ids=[
        "replicas-negative",
        "replicas-two",
        "storage-abc",
        "unknown-field",
        "snapshot-zero",
        "settings-typo",
        "external-without-host",
        "bad-mode",
        "peer-empty",
        "peer-ipblock-and-selector",
        "peer-bad-operator",
    ],
)
def test_bad_specs_are_refused_by_the_api_server(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    doc = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "bad"}, "spec": spec}
    proc = kubectl.run("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0, f"accepted: {spec}"
    assert expected in proc.stderr, proc.stderr
    assert kubectl.get("eventstore", "bad", namespace) is None


def test_storage_only_grows_and_class_is_immutable(kubectl: Kubectl, namespace: str) -> None:
    def doc(size: str, storage_class: str | None = "standard") -> str:
        storage: dict[str, Any] = {"size": size}
        if storage_class:
            storage["storageClassName"] = storage_class
        return yaml.safe_dump(
            {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "metadata": {"name": "grow"},
                "spec": {"storage": storage},
            }
        )

    kubectl.apply(doc("100Gi"), namespace)
    shrink = kubectl.run("apply", "-n", namespace, "-f", "-", input=doc("50Gi"), check=False)
    assert shrink.returncode != 0
    assert "storage.size can only grow" in shrink.stderr
    # quantity() compares values, not strings: 1Ti > 100Gi although "1Ti" < "100Gi".
    kubectl.apply(doc("1Ti"), namespace)
    back = kubectl.run("apply", "-n", namespace, "-f", "-", input=doc("1000Gi"), check=False)
    assert back.returncode != 0 and "can only grow" in back.stderr
    moved = kubectl.run("apply", "-n", namespace, "-f", "-", input=doc("1Ti", "fast"), check=False)
    assert moved.returncode != 0 and "storageClassName is immutable" in moved.stderr
    body = kubectl.get("eventstore", "grow", namespace)
    assert body and body["spec"]["storage"] == {"size": "1Ti", "storageClassName": "standard"}


def test_config_edits_roll_or_are_reported(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    first = template_hash(kubectl, namespace)

    # A valid edit: the pod template's hash changes, so the StatefulSet rolls.
    patch_config(kubectl, namespace, "snapshot_frequency: 50\n")
    cm = kubectl.get("configmap", f"{NAME}-config", namespace)
    assert cm is not None
    expected = config_hash(cm["data"])
    assert expected != first
    wait_for(
        lambda: template_hash(kubectl, namespace) == expected,
        20,
        "the pod template hash to follow the valid edit",
    )
    sts = kubectl.get("statefulset", NAME, namespace)
    assert sts is not None
    settings = settings_from_pod_template(kubectl, namespace, sts, tmp_path / "valid")
    assert settings.store.snapshot_frequency == 50
    wait_for(lambda: events(kubectl, namespace, "ConfigApplied"), 10, "a ConfigApplied Event")

    # An invalid edit: nothing the pods see changes; the status and an Event say why.
    patch_config(kubectl, namespace, "snapshot_frequency: 0\n")

    def invalid() -> dict[str, Any] | None:
        cond = condition(eventstore(kubectl, namespace), names.CONDITION_CONFIG_VALID)
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(invalid, 20, "ConfigValid=False")
    assert cond["reason"] == "InvalidConfig"
    assert "event-store.yaml: snapshot_frequency: " in cond["message"]
    assert "greater than or equal to 1" in cond["message"]
    warnings = wait_for(lambda: events(kubectl, namespace, "InvalidConfig"), 10, "a Warning Event")
    assert warnings[0]["type"] == "Warning"
    assert "event-store.yaml: snapshot_frequency" in warnings[0]["message"]
    time.sleep(7)  # two resync periods: the timer must not roll the pods either
    assert template_hash(kubectl, namespace) == expected
    body = eventstore(kubectl, namespace)
    assert body and body["status"]["configHash"] == expected
    assert len(events(kubectl, namespace, "InvalidConfig")) == 1  # reported once, not per pass

    # An unknown key is named too; fixing the file clears the condition.
    patch_config(kubectl, namespace, "snapshot_frequncy: 50\n")
    wait_for(
        lambda: (
            "snapshot_frequncy: unknown key"
            in (condition(eventstore(kubectl, namespace), names.CONDITION_CONFIG_VALID) or {}).get(
                "message", ""
            )
        ),
        20,
        "the unknown key to be reported",
    )
    patch_config(kubectl, namespace, "snapshot_frequency: 50\n")
    wait_for(
        lambda: (
            (condition(eventstore(kubectl, namespace), names.CONDITION_CONFIG_VALID) or {}).get("status")
            == "True"
        ),
        20,
        "ConfigValid=True again",
    )
    assert template_hash(kubectl, namespace) == expected


def settings_from_pod_template(kubectl: Kubectl, namespace: str, sts: dict[str, Any], root: Path) -> Settings:
    """Issue 5 item 6: the settings a store pod would load from this exact template.

    The ConfigMap volumes are laid out under `root` as the kubelet would and the
    container's EVENTSTORE_CONFIG_DIR (rebased under `root`) is loaded with the store's
    own loader.
    """
    pod = sts["spec"]["template"]["spec"]
    config_maps = {}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            found = kubectl.get("configmap", name, namespace)
            assert found is not None, f"the pod template mounts a missing ConfigMap {name}"
            config_maps[name] = found
    kubelet_layout(root, sts, config_maps)
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    config_dir = root / str(env["EVENTSTORE_CONFIG_DIR"]).lstrip("/")
    # The store's own CLI check, then the loader `eventstore serve` calls.
    eventstore_cli = Path(sys.executable).parent / "eventstore"
    check = subprocess.run(
        [str(eventstore_cli), "check-config", str(config_dir)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "valid" in check.stdout, check.stderr
    return load_settings(config_dir)


def test_deleted_and_edited_children_are_repaired(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    before = owned_children(kubectl, namespace)

    for kind, name in (
        ("service", "demo"),
        ("configmap", "demo-config"),
        ("networkpolicy", "demo-postgres"),
        ("statefulset", "demo-mongodb"),
    ):
        old_uid = before[(kubectl_kind(kind), name)]["metadata"]["uid"]
        kubectl.run("delete", kind, name, "-n", namespace, "--wait=true")

        def back(kind: str = kind, name: str = name, old_uid: str = old_uid) -> bool:
            obj = kubectl.get(kind, name, namespace)
            return bool(obj and obj["metadata"]["uid"] != old_uid)

        wait_for(back, 15, f"{kind}/{name} to be re-created")
    cm = kubectl.get("configmap", "demo-config", namespace)
    assert cm is not None and cm["data"] == example_config_data()

    # An edited field the operator owns is put back (server-side apply, by the timer).
    kubectl.run("scale", "statefulset", NAME, "-n", namespace, "--replicas=1")
    wait_for(
        lambda: (kubectl.get("statefulset", NAME, namespace) or {})["spec"]["replicas"] == 3,
        20,
        "the edited replicas to be repaired",
    )


def kubectl_kind(resource: str) -> str:
    return {
        "service": "Service",
        "configmap": "ConfigMap",
        "networkpolicy": "NetworkPolicy",
        "statefulset": "StatefulSet",
    }[resource]


def test_deleting_the_eventstore_garbage_collects_children(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    kubectl.run("delete", "eventstore", NAME, "-n", namespace, "--wait=true", timeout=60)

    def gone() -> bool:
        left = collectable_children(kubectl, namespace)
        return not left

    try:
        wait_for(gone, 60, "the garbage collector to delete every child")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: left {sorted(collectable_children(kubectl, namespace))}") from None
    operator.assert_running()


def test_recreated_eventstore_keeps_credentials_and_settings(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Issue 13 #1: delete then re-apply must not lose access to the kept data."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    patch_config(kubectl, namespace, "snapshot_frequency: 7\n")
    wait_for(
        lambda: (eventstore(kubectl, namespace) or {}).get("status", {}).get("configHash")
        != config_hash(example_config_data()),
        20,
        "the edit to be applied",
    )
    secrets = ("demo-postgres-credentials", "demo-mongodb-credentials", "demo-api-token", "demo-app")
    before = {s: (kubectl.get("secret", s, namespace) or {}).get("data") for s in secrets}
    old_uid = (eventstore(kubectl, namespace) or {})["metadata"]["uid"]

    kubectl.run("delete", "eventstore", NAME, "-n", namespace, "--wait=true", timeout=60)
    wait_for(lambda: not collectable_children(kubectl, namespace), 60, "the owned children to go")
    time.sleep(1)  # the garbage collector had its chance at the rest too
    for s in secrets:
        assert kubectl.get("secret", s, namespace) is not None, f"Secret {s} was deleted with the EventStore"

    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    body = wait_converged(kubectl, namespace, operator)
    assert body["metadata"]["uid"] != old_uid
    after = {s: (kubectl.get("secret", s, namespace) or {}).get("data") for s in secrets}
    assert after == before, "credentials were regenerated: the kept databases expect the old ones"
    cm = kubectl.get("configmap", "demo-config", namespace)
    assert cm is not None and cm["data"][EVENT_STORE_FILE] == "snapshot_frequency: 7\n"
    assert template_hash(kubectl, namespace) == config_hash(cm["data"])
    assert not events(kubectl, namespace, "CredentialsRegenerated")


def test_eventstore_deleted_while_the_operator_is_down_is_collected(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    operator.stop()
    kubectl.run("delete", "eventstore", NAME, "-n", namespace, "--wait=true", timeout=30)
    wait_for(lambda: not collectable_children(kubectl, namespace), 60, "children to be collected")


def test_operator_restarted_mid_reconcile_converges(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    # Kill the operator as soon as it has started creating children.
    wait_for(lambda: owned_children(kubectl, namespace), 30, "the first child", interval=0.05)
    operator.kill()
    partial = set(owned_children(kubectl, namespace))
    # While it is down, break something more.
    if ("Service", "demo") in partial:
        kubectl.run("delete", "service", "demo", "-n", namespace)
    operator.start()
    body = wait_converged(kubectl, namespace, operator, timeout=30)
    assert condition(body, names.CONDITION_CONFIG_VALID)
    # Exactly one generated value per Secret: the restart did not regenerate them.
    assert len(kubectl.list("secrets", namespace, f"{names.LABEL_INSTANCE}={NAME}")) == 4
    operator.assert_running()


def test_operator_service_account_permissions(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(manifest("rbac.yaml", namespace))
    who = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    allowed: list[tuple[str, ...]] = [
        ("watch", "eventstores.eventstore.io", namespace),
        ("patch", "eventstores.eventstore.io", namespace),
        ("patch", "eventstores.eventstore.io", namespace, "status"),
        ("create", "statefulsets.apps", namespace),
        ("patch", "statefulsets.apps", namespace),
        ("watch", "configmaps", namespace),
        ("create", "secrets", namespace),
        ("get", "secrets", namespace),  # a referenced Secret's opt-in label (trust.py)
        ("patch", "services", namespace),
        ("create", "poddisruptionbudgets.policy", namespace),
        ("patch", "networkpolicies.networking.k8s.io", namespace),
        ("patch", "persistentvolumeclaims", namespace),
        ("create", "events", namespace),
        ("patch", "cronjobs.batch", namespace),
        ("list", "jobs.batch", namespace),
        ("create", "jobs.batch", namespace),
        ("list", "pods", namespace),  # a backup Job's pod reports the position it reached
        ("patch", "configmaps", namespace),
    ]
    denied: list[tuple[str, str, str | None]] = [
        ("list", "secrets", namespace),  # it never lists or watches Secrets
        ("create", "secrets", "default"),
        ("get", "secrets", "kube-system"),
        ("list", "nodes", None),
        ("create", "pods", namespace),
        ("delete", "eventstores.eventstore.io", namespace),
        ("create", "statefulsets.apps", "default"),
        ("list", "eventstores.eventstore.io", "default"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "roles.rbac.authorization.k8s.io", namespace),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        ("delete", "persistentvolumeclaims", namespace),
    ]
    wrong: list[tuple[str | None, ...]] = []
    for verb, resource, ns, *sub in allowed:
        if not kubectl.can_i(verb, resource, ns, as_user=who, subresource=sub[0] if sub else None):
            wrong.append((verb, resource, ns, *sub))
    for verb, resource, other_ns in denied:
        if kubectl.can_i(verb, resource, other_ns, as_user=who):
            wrong.append(("ALLOWED", verb, resource, other_ns))
    assert not wrong, f"unexpected RBAC answers: {wrong}"


def test_two_eventstores_in_one_namespace_stay_apart(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    second = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "ledger"},
        "spec": {
            "replicas": 1,
            "mongodb": {
                "mode": "External",
                "host": "mongo.example.com",
                "credentialsSecret": {"name": "ledger-mongo"},
            },
        },
    }
    # A Secret an EventStore references must opt in (eventstore_operator/trust.py).
    kubectl.apply(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ledger-mongo", "labels": {"eventstore.io/allow-reference": "true"}},
        "stringData": {"username": "ledger", "password": "not-used-here"}}), namespace)
    kubectl.apply(yaml.safe_dump(second), namespace)
    wait_converged(kubectl, namespace, operator)

    def ledger() -> dict[str, Any] | None:
        items = kubectl.list(CHILD_KINDS, namespace, f"{names.LABEL_INSTANCE}=ledger")
        found = {(o["kind"], o["metadata"]["name"]) for o in items}
        return {o["metadata"]["name"]: o for o in items} if ("StatefulSet", "ledger") in found else None

    objs = wait_for(ledger, 30, "the second EventStore's children")
    sts = kubectl.get("statefulset", "ledger", namespace)
    assert sts is not None and sts["spec"]["replicas"] == 1
    assert "ledger-mongodb" not in objs  # external MongoDB: no in-cluster one
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SNAPSHOT_DB_HOST"]["value"] == "mongo.example.com"
    assert env["EVENT_DB_HOST"]["value"] == "ledger-postgres"

    kubectl.run("delete", "eventstore", NAME, "-n", namespace, "--wait=true", timeout=60)
    wait_for(lambda: not collectable_children(kubectl, namespace), 60, "demo's children to go")
    time.sleep(2)
    assert ledger() is not None, "deleting one EventStore touched the other's children"
    body = kubectl.get("eventstore", "ledger", namespace)
    assert (condition(body, names.CONDITION_RECONCILED) or {}).get("status") == "True"


def test_comment_only_config_edit_does_not_roll(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Issue 13 #7: the pod template's hash is over the parsed settings."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    before = kubectl.get("statefulset", NAME, namespace)
    assert before is not None
    cm = kubectl.get("configmap", f"{NAME}-config", namespace)
    assert cm is not None
    patch_config(kubectl, namespace, "# a comment only\n" + cm["data"][EVENT_STORE_FILE] + "\n# the end\n")
    time.sleep(5)  # more than a resync (3 s) and the ConfigMap watch
    after = kubectl.get("statefulset", NAME, namespace)
    assert after is not None
    assert after["metadata"]["generation"] == before["metadata"]["generation"], "the pods rolled"
    assert not events(kubectl, namespace, "ConfigApplied")

    patch_config(kubectl, namespace, "snapshot_frequency: 0\nretention_days: 0\n")

    def reported() -> str | None:
        cond = condition(eventstore(kubectl, namespace), names.CONDITION_CONFIG_VALID)
        return cond["message"] if cond and cond["status"] == "False" else None

    message = wait_for(reported, 20, "the invalid edit to be reported")
    assert "snapshot_frequency:" in message and "retention_days:" in message, message


def patch_spec(kubectl: Kubectl, namespace: str, spec: dict[str, Any]) -> None:
    kubectl.run(
        "patch", "eventstore", NAME, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def reconciled_reason(kubectl: Kubectl, namespace: str, reason: str) -> dict[str, Any] | None:
    cond = condition(eventstore(kubectl, namespace), names.CONDITION_RECONCILED)
    return cond if cond and cond.get("reason") == reason else None


def test_statefulset_refused_by_the_api_server_is_a_warning_event(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Issue 13 #4: storage.size "0" passes the CRD, the StatefulSet is refused (422)."""
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"]["storage"] = {"size": "0"}
    kubectl.apply(yaml.safe_dump(body), namespace)
    wait_for(lambda: events(kubectl, namespace, "ReconcileFailed"), 30, "a ReconcileFailed Warning Event")
    (event, *_) = events(kubectl, namespace, "ReconcileFailed")
    assert event["type"] == "Warning" and "StatefulSet" in event["message"], event["message"]
    cond = condition(eventstore(kubectl, namespace), names.CONDITION_RECONCILED)
    assert cond and cond["status"] == "False"
    table = kubectl.run("get", "eventstores", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert "RECONCILED" in header.split(), header
    start = header.index("RECONCILED")
    assert row[start:].split()[0] == "False", table


def test_major_database_upgrade_is_refused_unless_asked(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Issue 13 #2: postgres:16 -> 17 is held back with a False condition and an Event."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)

    def image(name: str) -> str:
        sts = kubectl.get("statefulset", name, namespace) or {}
        return str(sts["spec"]["template"]["spec"]["containers"][0]["image"])

    patch_spec(
        kubectl, namespace, {"postgres": {"image": "postgres:17"}, "mongodb": {"image": "mongo:7.0.14"}}
    )
    cond = wait_for(
        lambda: reconciled_reason(kubectl, namespace, "MajorVersionUpgradeRefused"), 20, "the refusal"
    )
    assert cond["status"] == "False" and "PostgreSQL 17" in cond["message"], cond
    (event,) = events(kubectl, namespace, "MajorVersionUpgradeRefused")
    assert event["type"] == "Warning"
    assert "postgres:16" in event["message"] and "allowMajorVersionUpgrade" in event["message"]
    assert image("demo-postgres") == "postgres:16"
    assert image("demo-mongodb") == "mongo:7.0.14"  # a minor update rolls

    patch_spec(kubectl, namespace, {"postgres": {"allowMajorVersionUpgrade": True}})
    wait_for(lambda: image("demo-postgres") == "postgres:17", 20, "the asked-for upgrade")
    wait_converged(kubectl, namespace, operator)
    status = (eventstore(kubectl, namespace) or {})["status"]
    assert status["images"]["postgres"] == "postgres:17"
    assert status["image"] == image(NAME)


def test_spec_settings_change_after_creation_is_reported(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Issue 13 #6: spec.settings only seeds the ConfigMap; changing it later says so."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    patch_spec(kubectl, namespace, {"settings": {"snapshotFrequency": 7}})

    def ignored() -> dict[str, Any] | None:
        cond = condition(eventstore(kubectl, namespace), names.CONDITION_SETTINGS_SEEDED)
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(ignored, 20, "the SettingsSeeded condition to turn False")
    assert "kubectl edit configmap demo-config" in cond["message"]
    assert events(kubectl, namespace, "SpecSettingsIgnored")


def test_operator_started_before_the_crd_watches_once_it_appears(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """Issue 13 #10. The resync is made slow, so only a watch can converge in time."""
    kubectl.apply(manifest("rbac.yaml", namespace))
    kubeconfig = service_account_kubeconfig(kubectl, namespace, tmp_path)
    kubectl.run("delete", "crd", names.CRD_NAME, "--ignore-not-found", "--wait=true", timeout=60)
    op = OperatorProcess(kubeconfig, namespace, tmp_path)
    op.env["EVENTSTORE_OPERATOR_RESYNC_SECONDS"] = "600"
    try:
        op.start()
        wait_for(lambda: "CRD is not installed yet" in op.logs(), 30, "the operator to wait for the CRD")
        op.assert_running()
        install_crd(kubectl)
        kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
        wait_converged(kubectl, namespace, op, timeout=30)
    finally:
        op.stop()
        install_crd(kubectl)  # the rest of the session needs it
    op.assert_clean_logs()


def test_spec_backup_runs_a_cronjob(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    """Issue 13 #3 (operator side): spec.backup becomes a CronJob running `eventstore backup`
    onto the target claim; removing it removes the CronJob."""
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"]["backup"] = {"schedule": "0 3 * * *", "target": {"pvc": {"claimName": "backups"}}}
    kubectl.apply(yaml.safe_dump(body), namespace)
    wait_converged(kubectl, namespace, operator)
    cron = wait_for(lambda: kubectl.get("cronjob", "demo-backup", namespace), 20, "the backup CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] + c["args"] == ["eventstore", "backup", "/backup", "--full-every", "7",
                                        "--lock-timeout", "600"]
    assert {e["name"] for e in c["env"]} >= {"EVENT_DB_HOST", "EVENT_DB_PASSWORD_FILE"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["target"]["persistentVolumeClaim"]["claimName"] == "backups"
    assert volumes["event-db-password"]["secret"]["secretName"] == "demo-postgres-credentials"
    cond = wait_for(
        lambda: condition(eventstore(kubectl, namespace), names.CONDITION_BACKUP), 20, "BackupSucceeded"
    )
    assert cond["reason"] == "NoBackupYet", cond

    # An S3-compatible bucket instead; both targets at once is refused by the API server.
    s3 = {"bucket": "backups", "endpoint": "http://minio:9000", "credentialsSecret": {"name": "s3"}}
    patch_spec(kubectl, namespace, {"backup": {"target": {"pvc": None, "s3": s3}}})
    wait_for(
        lambda: (kubectl.get("cronjob", "demo-backup", namespace) or {})["spec"]["jobTemplate"]["spec"][
            "template"]["spec"]["containers"][0]["args"][:2] == ["backup", "s3://backups/demo"],
        20,
        "the CronJob to back up to the bucket",
    )
    both = kubectl.run(
        "patch", "eventstore", NAME, "-n", namespace, "--type=merge", "-p",
        json.dumps({"spec": {"backup": {"target": {"pvc": {"claimName": "x"}}}}}), check=False,
    )
    assert both.returncode != 0 and "exactly one of pvc and s3" in both.stderr, both.stderr
    bad = kubectl.run(
        "patch", "eventstore", NAME, "-n", namespace, "--type=merge", "-p",
        json.dumps({"spec": {"backup": {"retention": "30 days"}}}), check=False,
    )
    assert bad.returncode != 0 and "spec.backup.retention" in bad.stderr, bad.stderr
    patch_spec(kubectl, namespace, {"backup": {"retention": "30d", "fullEvery": 2}})
    wait_for(
        lambda: (kubectl.get("cronjob", "demo-backup", namespace) or {})["spec"]["jobTemplate"]["spec"][
            "template"]["spec"]["containers"][0]["args"][2:]
        == ["--full-every", "2", "--lock-timeout", "600", "--retention-days", "30"],
        20,
        "the CronJob to keep 30 days",
    )

    patch = json.dumps([{"op": "remove", "path": "/spec/backup"}])
    kubectl.run("patch", "eventstore", NAME, "-n", namespace, "--type=json", "-p", patch)
    wait_for(lambda: kubectl.get("cronjob", "demo-backup", namespace) is None, 20, "the CronJob to go")


def test_spec_restore_runs_a_job_before_the_store(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Issue 13 #3 (operator side): spec.restore.from makes a restore Job, and the store
    StatefulSet waits for it (no kubelet here: the Job never finishes). Restoring from a
    bucket needs the backups' prefix: a backup's defaults to its own EventStore's name,
    which the new one cannot know, so the API server refuses a restore without it."""
    body = yaml.safe_load(EXAMPLE.read_text())
    s3 = {"bucket": "backups", "credentialsSecret": {"name": "s3"}}
    body["spec"]["restore"] = {"from": {"s3": s3}}
    refused = kubectl.run("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                          input=yaml.safe_dump(body), check=False)
    assert refused.returncode != 0 and "spec.restore.from.s3.prefix: Required value" in refused.stderr, \
        refused.stderr
    body["spec"]["restore"] = {"from": {"s3": {**s3, "prefix": "demo-old"}}}
    kubectl.run("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    body["spec"]["restore"] = {"from": {"pvc": {"claimName": "backups"}}}
    kubectl.apply(yaml.safe_dump(body), namespace)
    job = wait_for(lambda: kubectl.get("job", "demo-restore", namespace), 30, "the restore Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] + c["args"] == ["eventstore", "restore", "/backup"]
    cond = wait_for(
        lambda: reconciled_reason(kubectl, namespace, "WaitingForRestore"), 20, "the store to wait"
    )
    assert "demo-restore" in cond["message"]
    assert kubectl.get("statefulset", "demo-postgres", namespace) is not None
    time.sleep(4)  # a resync later, still no store
    assert kubectl.get("statefulset", NAME, namespace) is None
    restored = condition(eventstore(kubectl, namespace), names.CONDITION_RESTORED)
    assert restored and restored["reason"] == "Restoring"


def test_config_map_owned_by_an_older_operator_is_released(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Issue 13 #1 on upgrade: the user's ConfigMap loses the owner reference an older
    operator gave it, so deleting the EventStore no longer deletes it."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    body = wait_converged(kubectl, namespace, operator)
    ref = {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": NAME,
           "uid": body["metadata"]["uid"], "controller": True}
    patch = json.dumps({"metadata": {"ownerReferences": [ref]}})
    kubectl.run("patch", "configmap", f"{NAME}-config", "-n", namespace, "--type=merge", "-p", patch)
    wait_for(
        lambda: not (kubectl.get("configmap", f"{NAME}-config", namespace) or {"metadata": {"x": 1}})[
            "metadata"].get("ownerReferences"),
        20,
        "the owner reference to be removed",
    )


def test_major_upgrade_over_kept_data_is_refused(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Delete, then re-create with postgres:17 over the kept PostgreSQL 16 volumes."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)
    kubectl.run("delete", "eventstore", NAME, "-n", namespace, "--wait=true", timeout=60)
    wait_for(lambda: not collectable_children(kubectl, namespace), 60, "the owned children to go")
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"]["postgres"]["image"] = "postgres:17"
    kubectl.apply(yaml.safe_dump(body), namespace)
    cond = wait_for(
        lambda: reconciled_reason(kubectl, namespace, "MajorVersionUpgradeRefused"), 30, "the refusal"
    )
    assert "postgres:16" in cond["message"], cond
    sts = kubectl.get("statefulset", "demo-postgres", namespace)
    assert sts is not None and sts["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16"


def test_network_policies_follow_spec_network(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """The store pods' policy is created with the default (the namespace may reach 8080),
    follows spec.network.allowFrom when it is set, narrowed to nothing, and unset again;
    every policy also limits egress."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_converged(kubectl, namespace, operator)

    def store_policy() -> dict[str, Any]:
        policy = kubectl.get("networkpolicy", NAME, namespace)
        assert policy is not None
        return policy

    policy = store_policy()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}],
                                          "ports": [{"protocol": "TCP", "port": 8080}]}]
    egress_ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert egress_ports == [53, 53, 5432, 27017], policy["spec"]["egress"]
    for database in ("demo-postgres", "demo-mongodb"):
        db_policy = kubectl.get("networkpolicy", database, namespace)
        assert db_policy is not None and db_policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert [p["port"] for rule in db_policy["spec"]["egress"] for p in rule["ports"]] == [53, 53]

    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    clients = {"podSelector": {"matchExpressions": [{"key": "role", "operator": "In",
                                                      "values": ["client"]}]}}
    patch_spec(kubectl, namespace, {"network": {"allowFrom": [clients, monitoring]}})

    def ingress_from() -> list[dict[str, Any]] | None:
        rules = store_policy()["spec"].get("ingress") or []
        return rules[0]["from"] if rules else None

    wait_for(lambda: ingress_from() == [clients, monitoring], 20, "allowFrom in the store policy")

    patch_spec(kubectl, namespace, {"network": {"allowFrom": []}})
    wait_for(lambda: ingress_from() is None, 20, "an empty allowFrom: no ingress rule at all")
    assert store_policy()["spec"]["policyTypes"] == ["Ingress", "Egress"]

    kubectl.run("patch", "eventstore", NAME, "-n", namespace, "--type=json",
                "-p", json.dumps([{"op": "remove", "path": "/spec/network"}]))
    wait_for(lambda: ingress_from() == [{"podSelector": {}}], 20, "the default again")

"""Assertions on a reconciled EventStore, shared by the control-plane tests (tests/k8s) and
the suites on running pods (tests/e2e_node, tests/e2e_kind, through tests/e2e_shared), so
that what those check about objects also runs on machines that cannot run pods.

Each function takes a `Kube`: anything with `kubectl_run` and `kubectl_json` (the local
ControlPlane, the one-node cluster, the kind cluster wrapper). Checks of running pods live
in tests/e2e_shared/scenarios.py; the object checks here hold everywhere.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import yaml

from eventstore.settings import (
    CONFIG_FILES,
    EVENT_STORE_FILE,
    PROJECTIONS_FILE,
    config_hash,
    validate_config_data,
)
from eventstore_operator import names

T = TypeVar("T")

#: What the operator creates for an EventStore called NAME (kind, name suffix).
CHILD_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("StatefulSet", ""),
    ("StatefulSet", "-postgres"),
    ("StatefulSet", "-mongodb"),
    ("Service", ""),
    ("Service", "-headless"),
    ("Service", "-postgres"),
    ("Service", "-mongodb"),
    ("PodDisruptionBudget", ""),
    ("ConfigMap", "-config"),
    ("Secret", "-api-token"),
    ("Secret", "-postgres-credentials"),
    ("Secret", "-mongodb-credentials"),
    ("NetworkPolicy", ""),
    ("NetworkPolicy", "-postgres"),
    ("NetworkPolicy", "-mongodb"),
)
CHILD_RESOURCES = "statefulsets,services,poddisruptionbudgets,configmaps,secrets,networkpolicies"


class Kube(Protocol):
    """The slice of tests.harness.controlplane.ControlPlane these assertions use."""

    def kubectl_run(
        self, *args: str, check: bool = ..., input: str | None = ..., timeout: float = ...
    ) -> subprocess.CompletedProcess[str]: ...

    def kubectl_json(self, *args: str) -> Any: ...


def poll(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """`condition()` once truthy; an AssertionError naming `what` (and the last value) after
    `timeout` s. A failing kubectl call counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except subprocess.CalledProcessError as exc:
            last = exc.stderr
        else:
            if last:
                result: T = last
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def get(kube: Kube, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """One object as a dict, or None when it does not exist."""
    proc = kube.kubectl_run(
        "get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found", check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl get {kind} {name}: {proc.stderr}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def children(kube: Kube, namespace: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects labelled as belonging to EventStore `name`, by (kind, name)."""
    items = kube.kubectl_json(
        "get", CHILD_RESOURCES, "-n", namespace, "-l", f"{names.LABEL_INSTANCE}={name}"
    )["items"]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


def condition(body: Mapping[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def reconciled(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The EventStore once the operator says Reconciled=True for its current generation and
    every child exists; else None (for polling)."""
    body = get(kube, "eventstore", name, namespace)
    cond = condition(body, names.CONDITION_RECONCILED)
    if not body or not cond or cond.get("status") != "True":
        return None
    if cond.get("observedGeneration") != body["metadata"]["generation"]:
        return None
    expected = {(kind, name + suffix) for kind, suffix in CHILD_SUFFIXES}
    if not set(children(kube, namespace, name)) >= expected:
        return None
    return body


def wait_reconciled(kube: Kube, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    return poll(
        lambda: reconciled(kube, namespace, name),
        timeout,
        f"EventStore {namespace}/{name} to be reconciled with every child",
    )


def template_hash(statefulset: Mapping[str, Any]) -> str | None:
    annotations = statefulset["spec"]["template"]["metadata"].get("annotations") or {}
    value = annotations.get(names.ANNOTATION_CONFIG_HASH)
    return str(value) if value is not None else None


def assert_store_objects(
    kube: Kube, namespace: str, name: str, *, replicas: int = 3, storage: str = "100Gi"
) -> dict[str, Any]:
    """Everything issue 5 promises about a reconciled EventStore's objects; returns the
    EventStore. Call after `wait_reconciled`."""
    body = get(kube, "eventstore", name, namespace)
    assert body is not None, f"EventStore {namespace}/{name} does not exist"
    uid = body["metadata"]["uid"]
    found = children(kube, namespace, name)

    # Every child is owned (controller reference) by the EventStore: the garbage collector
    # removes them with it. Except what the data needs (generated Secrets, the user's
    # ConfigMap): no owner, kept with the volume claims.
    for kind, suffix in CHILD_SUFFIXES:
        key = (kind, name + suffix)
        assert key in found, f"missing {kind} {name + suffix}; have {sorted(found)}"
        refs = found[key]["metadata"].get("ownerReferences") or []
        if names.LABEL_KEPT_WITH_DATA in found[key]["metadata"].get("labels", {}):
            assert not refs, f"{key} is kept with the data but has owner references: {refs}"
            continue
        owners = [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs]
        assert owners == [(names.KIND, name, uid, True)], f"{key} owner references: {owners}"

    sts = found[("StatefulSet", names.store(name))]
    assert sts["spec"]["replicas"] == replicas, f"store replicas {sts['spec']['replicas']} != {replicas}"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == names.data_volume()
    assert claim["spec"]["resources"]["requests"]["storage"] == storage
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(names.DATA_DIR) == names.data_volume(), f"/data mount: {mounts}"
    assert names.CONFIG_DIR in mounts, f"config mount: {mounts}"
    env = {e["name"]: e for e in container["env"]}
    assert env["EVENT_DB_HOST"].get("value") == names.postgres(name)
    assert env["SNAPSHOT_DB_HOST"].get("value") == names.mongodb(name)
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    # The user's ConfigMap holds both files, valid by the store's own validation; its hash
    # is on the pod template (so an edit rolls the pods) and in the status.
    user_cm = found[("ConfigMap", names.config(name))]
    assert set(user_cm["data"]) == set(CONFIG_FILES), f"ConfigMap keys: {sorted(user_cm['data'])}"
    validate_config_data(user_cm["data"])
    digest = config_hash(user_cm["data"])
    assert template_hash(sts) == digest, f"pod template hash {template_hash(sts)} != {digest}"
    assert (body.get("status") or {}).get("configHash") == digest
    mounted = _mounted_config(kube, namespace, sts)
    assert mounted["data"] == user_cm["data"], "the pods mount a different config than the user's"

    # The client Service selects the store pods on the HTTP port.
    svc = found[("Service", names.store(name))]
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports.get(names.HTTP_PORT_NAME) == names.HTTP_PORT, f"client Service ports: {ports}"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    selector = svc["spec"]["selector"]
    assert all(labels.get(k) == v for k, v in selector.items()), f"{selector} does not select {labels}"

    # Status: conditions, each carrying observedGeneration.
    conditions = (body.get("status") or {}).get("conditions") or []
    kinds = {c["type"] for c in conditions}
    assert {names.CONDITION_READY, names.CONDITION_CONFIG_VALID, names.CONDITION_RECONCILED} <= kinds
    for c in conditions:
        assert c.get("observedGeneration") == body["metadata"]["generation"], c
    return body


def _mounted_config(kube: Kube, namespace: str, sts: Mapping[str, Any]) -> dict[str, Any]:
    """The ConfigMap the store pod template mounts at the config dir."""
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volume_name = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == names.CONFIG_DIR)
    volume = next(v for v in pod["volumes"] if v["name"] == volume_name)
    cm_name = volume["configMap"]["name"]
    cm = get(kube, "configmap", cm_name, namespace)
    assert cm is not None, f"the pod template mounts a missing ConfigMap {cm_name}"
    return cm


def edit_snapshot_frequency(
    kube: Kube, namespace: str, name: str, frequency: int, projections: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """What `kubectl edit configmap <name>-config` does to snapshot_frequency (other keys
    kept) and, if given, to keys of projections.yaml; returns the ConfigMap's new data."""
    cm = get(kube, "configmap", names.config(name), namespace)
    assert cm is not None, f"ConfigMap {names.config(name)} does not exist"
    data: dict[str, str] = dict(cm["data"])
    changed = {EVENT_STORE_FILE: {"snapshot_frequency": frequency}, PROJECTIONS_FILE: dict(projections or {})}
    for file, keys in changed.items():
        if keys:
            doc = yaml.safe_load(data.get(file) or "") or {}
            doc.update(keys)
            data[file] = yaml.safe_dump(doc, sort_keys=False)
    patch = json.dumps({"data": {file: data[file] for file, keys in changed.items() if keys}})
    kube.kubectl_run("patch", "configmap", names.config(name), "-n", namespace, "--type=merge", "-p", patch)
    return data


def assert_configmap_edit_rolls(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    frequency: int = 50,
    timeout: float = 60,
    projections: Mapping[str, Any] | None = None,
) -> str:
    """Edit snapshot_frequency (and the `projections` keys of projections.yaml) in the
    user's ConfigMap; assert the pod template (hence a roll of the store pods) and the
    status follow, and that what the pods will mount says `frequency`. Returns the new
    config hash."""
    sts = get(kube, "statefulset", names.store(name), namespace)
    assert sts is not None
    before = template_hash(sts)
    data = edit_snapshot_frequency(kube, namespace, name, frequency, projections)
    expected = config_hash(data)
    assert expected != before, "the edit did not change the config hash"

    def followed() -> dict[str, Any] | None:
        current = get(kube, "statefulset", names.store(name), namespace)
        body = get(kube, "eventstore", name, namespace)
        if current is None or template_hash(current) != expected:
            return None
        if ((body or {}).get("status") or {}).get("configHash") != expected:
            return None
        valid = condition(body, names.CONDITION_CONFIG_VALID)
        return current if valid and valid["status"] == "True" else None

    rolled = poll(followed, timeout, f"the pod template of {name} to carry config hash {expected}")
    mounted = _mounted_config(kube, namespace, rolled)
    settings = validate_config_data(mounted["data"])
    assert settings.store.snapshot_frequency == frequency, settings
    for key, value in (projections or {}).items():
        assert getattr(settings.projections, key) == value, settings
    return expected


def assert_no_orphans(kube: Kube, namespace: str, name: str, timeout: float = 90) -> list[dict[str, Any]]:
    """After the EventStore is gone: every child is garbage-collected except the store's
    PersistentVolumeClaims (kept on purpose: the data) and what the data needs (generated
    Secrets, the user's ConfigMap: labelled kept-with-data). Returns the PVCs left."""

    def deleted() -> bool:
        return get(kube, "eventstore", name, namespace) is None

    try:
        poll(deleted, timeout, f"EventStore {namespace}/{name} to be deleted")
    except AssertionError as exc:
        body = get(kube, "eventstore", name, namespace) or {}
        meta = body.get("metadata", {})
        raise AssertionError(
            f"{exc}; finalizers {meta.get('finalizers')}, deletionTimestamp {meta.get('deletionTimestamp')}"
        ) from None

    def collectable() -> dict[tuple[str, str], dict[str, Any]]:
        return {
            key: obj
            for key, obj in children(kube, namespace, name).items()
            if names.LABEL_KEPT_WITH_DATA not in obj["metadata"].get("labels", {})
        }

    def gone() -> bool:
        return not collectable()

    try:
        poll(gone, timeout, f"the children of {name} to be garbage-collected")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; left: {sorted(collectable())}") from None
    kept = set(children(kube, namespace, name))
    assert ("ConfigMap", names.config(name)) in kept, f"the user's ConfigMap was not kept: {sorted(kept)}"
    assert ("Secret", names.api_token(name)) in kept, f"the API token was not kept: {sorted(kept)}"
    claims: list[dict[str, Any]] = kube.kubectl_json("get", "pvc", "-n", namespace)["items"]
    return claims

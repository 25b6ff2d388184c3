"""Pure functions from an EventStore spec to the Kubernetes objects it needs (as dicts).

No API calls and no randomness here: handlers read the cluster, call these, and
apply the results. Every object carries the recommended labels and a controller
owner reference to the EventStore, so the garbage collector removes it with its
owner; except what the kept data needs (generated Secrets, the user's ConfigMap),
which stays with the volume claims: see `_kept_meta`.

How the settings reach the pods: the user edits the ConfigMap `<name>-config`
(created once from the spec or the defaults). The operator validates each edit and
copies a valid one into an immutable ConfigMap `<name>-config-<hash>`, which is what
the pod template mounts at /etc/eventstore, with the hash also in the pod template's
`eventstore.io/config-hash` annotation. So a valid edit changes the template (the
StatefulSet rolls), and an invalid edit changes nothing the pods can see: even a pod
that restarts later still starts with the last good settings.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventstore import envcontract
from eventstore.settings import (
    CONFIG_FILES,
    ProjectionSettings,
    Settings,
    StoreSettings,
    render_config_data,
    settings_hash,
)
from eventstore_operator import names
from eventstore_operator.crd import SETTINGS_FIELDS, spec_schema

Obj = dict[str, Any]

RUN_AS_USER = 10001  # the store image's non-root user
POSTGRES_MAX_CONNECTIONS = 300
DB_RUN_AS_USER = 999  # the postgres and mongo images' own users


@dataclass(frozen=True)
class Owner:
    """The EventStore that owns the children: enough for owner references and names."""

    name: str
    namespace: str
    uid: str
    api_version: str = names.API_VERSION
    kind: str = names.KIND

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> Obj:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


# --- spec -------------------------------------------------------------------------


def _apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Fill in schema defaults the way the API server does (for objects it never saw)."""
    if value is None and "default" in schema:
        value = copy.deepcopy(schema["default"])
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            filled = _apply_defaults(sub, out.get(key))
            if filled is not None:
                out[key] = filled
        return out
    return value


#: Seconds a store pod keeps serving after SIGTERM with /readyz at 503, before it stops
#: listening (EVENTSTORE_DRAIN_DELAY_SECONDS, see eventstore/server/shutdown.py).
DRAIN_DELAY_SECONDS = 5
#: uvicorn's drain of in-flight requests (`timeout_graceful_shutdown` in eventstore.cli).
DRAIN_SECONDS = 25
#: The store image when spec.image is unset: the operator's own image. The chart sets
#: EVENTSTORE_DEFAULT_IMAGE from image.repository/image.tag, so `helm upgrade --set
#: image.tag=...` rolls the stores that leave spec.image unset, not only the operator.
DEFAULT_STORE_IMAGE = os.environ.get("EVENTSTORE_DEFAULT_IMAGE") or names.DEFAULT_IMAGE


def normalize_spec(spec: Mapping[str, Any] | None) -> Obj:
    """The spec with every CRD default applied; the CRD schema is the one source
    (spec.image aside: `DEFAULT_STORE_IMAGE`)."""
    result: Obj = _apply_defaults(spec_schema(), dict(spec or {}))
    result.setdefault("image", DEFAULT_STORE_IMAGE)
    return result


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        **selector_labels(owner, component),
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_PART_OF: names.APP_NAME,
    }


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        names.LABEL_NAME: names.APP_NAME,
        names.LABEL_INSTANCE: owner.name,
        names.LABEL_COMPONENT: component,
    }


def _meta(owner: Owner, name: str, component: str, **extra: Any) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner.reference()],
    }
    meta.update(extra)
    return meta


def _kept_meta(owner: Owner, name: str, component: str, **extra: Any) -> Obj:
    """Metadata of an object that lives as long as the data, not as the EventStore.

    No owner reference: deleting the EventStore keeps it, like the volume claims, and an
    EventStore re-created with the same name finds it and uses it again (generated
    passwords still match the kept databases; the user's settings are not reset). The
    label says so, and `kubectl delete pvc,secret,configmap -l
    app.kubernetes.io/instance=<name>` removes them together with the data.
    """
    meta = _meta(owner, name, component, **extra)
    del meta["ownerReferences"]
    meta["labels"][names.LABEL_KEPT_WITH_DATA] = "true"
    return meta


def _secret_env(env_name: str, secret: str, key: str) -> Obj:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _value_env(env_name: str, value: str) -> Obj:
    return {"name": env_name, "value": value}


def _restricted_container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security(uid: int) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(spec_resources: Mapping[str, Any]) -> Obj:
    out: Obj = {}
    for section in ("requests", "limits"):
        values = {k: str(v) for k, v in (spec_resources.get(section) or {}).items()}
        if values:
            out[section] = values
    return out


def _claim_template(owner: Owner, component: str, storage: Mapping[str, Any]) -> Obj:
    claim_spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage["size"]}},
    }
    if storage.get("storageClassName"):
        claim_spec["storageClassName"] = storage["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": names.data_volume(), "labels": labels(owner, component)},
        "spec": claim_spec,
    }


# --- configuration ------------------------------------------------------------------


def seed_settings(spec: Mapping[str, Any]) -> tuple[StoreSettings, ProjectionSettings]:
    """Settings for the first ConfigMap: the defaults, overridden by spec.settings."""
    given = normalize_spec(spec).get("settings") or {}
    store: dict[str, Any] = {}
    projections: dict[str, Any] = {}
    for key, (model, field) in SETTINGS_FIELDS.items():
        if key in given:
            (store if model is StoreSettings else projections)[field] = given[key]
    return StoreSettings(**store), ProjectionSettings(**projections)


def seed_hash(spec: Mapping[str, Any]) -> str:
    """A hash of the settings spec.settings seeds (on the ConfigMap it seeded)."""
    store, projections = seed_settings(spec)
    return settings_hash(Settings(store=store, projections=projections))


def user_config_map(owner: Owner, spec: Mapping[str, Any]) -> Obj:
    """The tuning ConfigMap, created once and then owned by the user's edits."""
    store, projections = seed_settings(spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _kept_meta(
            owner,
            names.config(owner.name),
            names.COMPONENT_CONFIG,
            annotations={
                f"{names.GROUP}/usage": (
                    "Tuning settings of this EventStore. Edit freely: the operator validates "
                    "each edit, rolls the store pods on a valid one and reports an invalid "
                    "one on the EventStore's status (kubectl describe eventstore)."
                ),
                names.ANNOTATION_SEED_HASH: seed_hash(spec),
            },
        ),
        "data": render_config_data(store, projections),
    }


def config_snapshot(owner: Owner, data: Mapping[str, str], digest: str) -> Obj:
    """An immutable copy of validated ConfigMap data; what the store pods mount.

    A file missing from the user's ConfigMap means "defaults"; the copy holds an empty
    (comment-only) file for it so the pod's mount has both keys.
    """
    full = {file: data.get(file, "# not set in the ConfigMap: the defaults apply\n") for file in CONFIG_FILES}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            owner,
            names.config_snapshot(owner.name, digest),
            names.COMPONENT_CONFIG_SNAPSHOT,
            annotations={names.ANNOTATION_CONFIG_HASH: digest},
        ),
        "immutable": True,
        "data": full,
    }


# --- secrets ------------------------------------------------------------------------


def credentials_secret(owner: Owner, db_name: str, component: str, password: str) -> Obj:
    """Generated database credentials (the password comes from the caller, once)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _kept_meta(owner, names.credentials(db_name), component),
        "type": "Opaque",
        "stringData": {names.USERNAME_KEY: "eventstore", names.PASSWORD_KEY: password},
    }


def api_token_secret(owner: Owner, token: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _kept_meta(owner, names.api_token(owner.name), names.COMPONENT_API_TOKEN),
        "type": "Opaque",
        "stringData": {names.TOKEN_KEY: token},
    }


def app_secret(owner: Owner, token: str | None) -> Obj:
    """What an application needs to connect: url, host, port and the API token.

    The operator cannot read Secrets, so the token is written only when it is generated
    together with `<name>-api-token`; a connection Secret made later (for a store created
    by an older operator) names the token's Secret in `tokenSecret` instead.
    """
    host = f"{names.store(owner.name)}.{owner.namespace}.svc"
    data = {
        "url": f"http://{host}:{names.HTTP_PORT}",
        "host": host,
        "port": str(names.HTTP_PORT),
        "tokenSecret": names.api_token(owner.name),
    }
    if token is not None:
        data[names.TOKEN_KEY] = token
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _kept_meta(owner, names.app_secret(owner.name), names.COMPONENT_APP),
        "type": "Opaque",
        "stringData": data,
    }


# --- the store ------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Where the store pods find one database: host, port, name, credentials Secret."""

    host: str
    port: int
    database: str
    secret: str
    username_key: str
    password_key: str


def backend(owner: Owner, db_spec: Mapping[str, Any], in_cluster_name: str) -> Backend:
    if db_spec["mode"] == "External":
        ref = db_spec["credentialsSecret"]
        return Backend(
            host=db_spec["host"],
            port=int(db_spec["port"]),
            database=db_spec["database"],
            secret=ref["name"],
            username_key=ref.get("usernameKey", names.USERNAME_KEY),
            password_key=ref.get("passwordKey", names.PASSWORD_KEY),
        )
    return Backend(
        host=in_cluster_name,
        port=int(db_spec["port"]),
        database=db_spec["database"],
        secret=names.credentials(in_cluster_name),
        username_key=names.USERNAME_KEY,
        password_key=names.PASSWORD_KEY,
    )


def _password_dir(prefix: str) -> str:
    return f"{names.CREDENTIALS_DIR}/{prefix.lower().replace('_', '-')}"


def _backend_env(db: envcontract.DatabaseEnv, b: Backend) -> list[Obj]:
    # The password is a mounted file (see password_volumes), not an environment variable:
    # the environment shows in `kubectl describe`, crash dumps and child processes.
    return [
        _value_env(db.host, b.host),
        _value_env(db.port, str(b.port)),
        _value_env(db.name, b.database),
        _secret_env(db.user, b.secret, b.username_key),
        _value_env(db.password_file, f"{_password_dir(db.prefix)}/password"),
    ]


def password_volumes(owner: Owner, spec: Mapping[str, Any],
                     prefixes: tuple[str, ...] = (envcontract.EVENT_DB.prefix,
                                                  envcontract.SNAPSHOT_DB.prefix)
                     ) -> tuple[list[Obj], list[Obj]]:
    """(volumes, volumeMounts) that put each database's password where `<prefix>_PASSWORD_FILE`
    points: only that key of its Secret, readable by the pod's group (fsGroup)."""
    spec = normalize_spec(spec)
    backends = {
        envcontract.EVENT_DB.prefix: backend(owner, spec["postgres"], names.postgres(owner.name)),
        envcontract.SNAPSHOT_DB.prefix: backend(owner, spec["mongodb"],
                                                names.mongodb(owner.name))}
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    for prefix in prefixes:
        b = backends[prefix]
        name = f"{prefix.lower().replace('_', '-')}-password"
        volumes.append({"name": name, "secret": {
            "secretName": b.secret, "items": [{"key": b.password_key, "path": "password"}],
            "defaultMode": 0o440}})
        mounts.append({"name": name, "mountPath": _password_dir(prefix), "readOnly": True})
    return volumes, mounts


def store_env(owner: Owner, spec: Mapping[str, Any]) -> list[Obj]:
    """The store container's environment (the contract with `eventstore serve`)."""
    spec = normalize_spec(spec)
    return [
        _value_env(envcontract.CONFIG_DIR, names.CONFIG_DIR),
        _value_env(envcontract.API_TOKEN_FILE, names.TOKEN_FILE),
        *_backend_env(envcontract.EVENT_DB,
                      backend(owner, spec["postgres"], names.postgres(owner.name))),
        *_backend_env(envcontract.SNAPSHOT_DB,
                      backend(owner, spec["mongodb"], names.mongodb(owner.name))),
        {"name": envcontract.POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        _value_env(envcontract.DRAIN_DELAY_SECONDS, str(DRAIN_DELAY_SECONDS)),
    ]


def store_statefulset(owner: Owner, spec: Mapping[str, Any], config_hash: str, config_map: str) -> Obj:
    """The store pods: `eventstore serve`, settings from `config_map`, data on a PVC."""
    spec = normalize_spec(spec)
    component = names.COMPONENT_STORE
    selector = selector_labels(owner, component)
    container: Obj = {
        "name": "eventstore",
        "image": spec["image"],
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["eventstore"],
        "args": ["serve"],
        "ports": [{"name": names.HTTP_PORT_NAME, "containerPort": names.HTTP_PORT, "protocol": "TCP"}],
        "env": store_env(owner, spec),
        "resources": _resources(spec["resources"]),
        "volumeMounts": [
            {"name": names.data_volume(), "mountPath": names.DATA_DIR},
            {"name": "config", "mountPath": names.CONFIG_DIR, "readOnly": True},
            {"name": "api-token", "mountPath": names.TOKEN_DIR, "readOnly": True},
            *password_volumes(owner, spec)[1],
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": names.HTTP_PORT_NAME},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": names.HTTP_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": names.HTTP_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        # A deleted pod leaves the Service's endpoints while kube-proxies and clients
        # catch up; until then requests still arrive. No preStop pause: on SIGTERM the
        # server itself keeps serving them for DRAIN_DELAY_SECONDS with /readyz at 503,
        # replies closing their connections, and only then stops listening and drains.
        "securityContext": _restricted_container_security(),
    }
    pod_spec: Obj = {
        "automountServiceAccountToken": False,  # the store never calls the Kubernetes API
        "enableServiceLinks": False,
        # The server's drain delay, its drain, and a margin for the app's shutdown.
        "terminationGracePeriodSeconds": DRAIN_DELAY_SECONDS + DRAIN_SECONDS + 5,
        "securityContext": _pod_security(RUN_AS_USER),
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector},
                        },
                    }
                ]
            }
        },
        "containers": [container],
        "volumes": [
            {
                "name": "config",
                "configMap": {
                    "name": config_map,
                    "items": [{"key": f, "path": f} for f in CONFIG_FILES],
                    "defaultMode": 0o444,
                },
            },
            {
                "name": "api-token",
                "secret": {
                    "secretName": names.api_token(owner.name),
                    "items": [{"key": names.TOKEN_KEY, "path": names.TOKEN_KEY}],
                    "defaultMode": 0o440,
                },
            },
            *password_volumes(owner, spec)[0],
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(owner, names.store(owner.name), component),
        "spec": {
            "replicas": int(spec["replicas"]),
            "serviceName": names.headless(owner.name),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels(owner, component),
                    "annotations": {names.ANNOTATION_CONFIG_HASH: config_hash},
                },
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [_claim_template(owner, component, spec["storage"])],
        },
    }


def _service(owner: Owner, name: str, component: str, port: int, port_name: str, headless: bool) -> Obj:
    svc_spec: Obj = {
        "selector": selector_labels(owner, component),
        "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
    }
    if headless:
        svc_spec["clusterIP"] = "None"
        # Peers and StatefulSet DNS need every pod's record, ready or not.
        svc_spec["publishNotReadyAddresses"] = True
    else:
        svc_spec["type"] = "ClusterIP"
    meta = _meta(owner, name, component)
    # Lets a ServiceMonitor pick one of the two store Services (no double scrapes).
    meta["labels"][names.LABEL_SERVICE_ROLE] = "headless" if headless else "client"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": svc_spec}


def headless_service(owner: Owner) -> Obj:
    return _service(
        owner,
        names.headless(owner.name),
        names.COMPONENT_STORE,
        names.HTTP_PORT,
        names.HTTP_PORT_NAME,
        headless=True,
    )


def client_service(owner: Owner) -> Obj:
    return _service(
        owner,
        names.store(owner.name),
        names.COMPONENT_STORE,
        names.HTTP_PORT,
        names.HTTP_PORT_NAME,
        headless=False,
    )


def pod_disruption_budget(owner: Owner) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, names.store(owner.name), names.COMPONENT_STORE),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner, names.COMPONENT_STORE)},
        },
    }


# --- in-cluster databases -------------------------------------------------------------


def _database_statefulset(
    owner: Owner,
    name: str,
    component: str,
    db_spec: Mapping[str, Any],
    container: Obj,
    extra_volumes: list[Obj],
    data_path: str,
) -> Obj:
    selector = selector_labels(owner, component)
    container = {
        **container,
        "image": db_spec["image"],
        "imagePullPolicy": "IfNotPresent",
        "resources": _resources(db_spec["resources"]),
        "securityContext": _restricted_container_security(),
        "volumeMounts": [
            {"name": names.data_volume(), "mountPath": data_path},
            *({"name": v["name"], "mountPath": v["mountPath"]} for v in extra_volumes),
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(owner, name, component),
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels(owner, component)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": _pod_security(DB_RUN_AS_USER),
                    "containers": [container],
                    "volumes": [{"name": v["name"], "emptyDir": {}} for v in extra_volumes],
                },
            },
            "volumeClaimTemplates": [_claim_template(owner, component, db_spec["storage"])],
        },
    }


def postgres_statefulset(owner: Owner, spec: Mapping[str, Any]) -> Obj:
    db = normalize_spec(spec)["postgres"]
    name = names.postgres(owner.name)
    secret = names.credentials(name)
    ready = 'pg_isready -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
    container: Obj = {
        "name": "postgres",
        # Each store pod holds up to eventstore.store.budget.POD_CONNECTIONS (31 with the
        # defaults; the formula is there): three pods need about 100 with PostgreSQL's own
        # reserve, its default. 300 leaves room to scale out and for pool tuning.
        "args": ["postgres", "-c", f"max_connections={POSTGRES_MAX_CONNECTIONS}"],
        "ports": [{"name": "postgres", "containerPort": names.POSTGRES_PORT, "protocol": "TCP"}],
        "env": [
            _secret_env("POSTGRES_USER", secret, names.USERNAME_KEY),
            _secret_env("POSTGRES_PASSWORD", secret, names.PASSWORD_KEY),
            _value_env("POSTGRES_DB", db["database"]),
            _value_env("PGDATA", "/var/lib/postgresql/data/pgdata"),
        ],
        "readinessProbe": {"exec": {"command": ["sh", "-c", ready]}, "periodSeconds": 5},
        "livenessProbe": {
            "exec": {"command": ["sh", "-c", ready]},
            "periodSeconds": 10,
            "failureThreshold": 6,
            "initialDelaySeconds": 30,
        },
    }
    extra = [
        {"name": "run", "mountPath": "/var/run/postgresql"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return _database_statefulset(
        owner,
        name,
        names.COMPONENT_POSTGRES,
        db,
        container,
        extra,
        "/var/lib/postgresql/data",
    )


def mongodb_statefulset(owner: Owner, spec: Mapping[str, Any]) -> Obj:
    db = normalize_spec(spec)["mongodb"]
    name = names.mongodb(owner.name)
    secret = names.credentials(name)
    container: Obj = {
        "name": "mongodb",
        "ports": [{"name": "mongodb", "containerPort": names.MONGODB_PORT, "protocol": "TCP"}],
        "env": [
            _secret_env("MONGO_INITDB_ROOT_USERNAME", secret, names.USERNAME_KEY),
            _secret_env("MONGO_INITDB_ROOT_PASSWORD", secret, names.PASSWORD_KEY),
            _value_env("MONGO_INITDB_DATABASE", db["database"]),
        ],
        # tcpSocket, not mongosh: the shell needs a writable home and costs ~100 MB RSS.
        "readinessProbe": {"tcpSocket": {"port": "mongodb"}, "periodSeconds": 5},
        "livenessProbe": {
            "tcpSocket": {"port": "mongodb"},
            "periodSeconds": 10,
            "failureThreshold": 6,
            "initialDelaySeconds": 30,
        },
    }
    extra = [
        {"name": "configdb", "mountPath": "/data/configdb"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return _database_statefulset(owner, name, names.COMPONENT_MONGODB, db, container, extra, "/data/db")


def postgres_service(owner: Owner) -> Obj:
    return _service(
        owner,
        names.postgres(owner.name),
        names.COMPONENT_POSTGRES,
        names.POSTGRES_PORT,
        "postgres",
        headless=False,
    )


def mongodb_service(owner: Owner) -> Obj:
    return _service(
        owner,
        names.mongodb(owner.name),
        names.COMPONENT_MONGODB,
        names.MONGODB_PORT,
        "mongodb",
        headless=False,
    )


#: Egress to DNS: port 53 on any address. Where the resolver runs differs by cluster
#: (CoreDNS pods in kube-system, a node-local cache on a link-local address, a process on
#: the node as in tests/harness/node.py), so no selector would be right everywhere.
DNS_EGRESS: Obj = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
#: The store pods' clients when spec.network.allowFrom is unset: every pod in the
#: EventStore's namespace. Kubelet probes and other traffic from the pod's own node are
#: always allowed (NetworkPolicy semantics), so the probes never depend on this.
DEFAULT_ALLOW_FROM: list[Obj] = [{"podSelector": {}}]


def _pods(owner: Owner, *components: str) -> list[Obj]:
    return [{"podSelector": {"matchLabels": selector_labels(owner, c)}} for c in components]


def database_network_policy(owner: Owner, component: str, name: str, port: int) -> Obj:
    """Only this EventStore's store pods (and, for PostgreSQL, its backup and restore
    Jobs) may open connections to the database; the database opens none but DNS."""
    clients = [names.COMPONENT_STORE]
    if component == names.COMPONENT_POSTGRES:
        clients += [names.COMPONENT_BACKUP, names.COMPONENT_RESTORE]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, name, component),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, component)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": _pods(owner, *clients), "ports": [{"protocol": "TCP", "port": port}]}],
            "egress": [DNS_EGRESS],
        },
    }


def _database_egress(owner: Owner, db_spec: Mapping[str, Any], component: str, port: int) -> Obj:
    """In-cluster: the database's pods on its port. External: the configured port on any
    address. A host name cannot go into a NetworkPolicy, and an ipBlock guessed from one
    DNS answer would break when the address moves; narrow it with a policy of your own
    (see the README's Security section)."""
    if db_spec["mode"] == "InCluster":
        return {"to": _pods(owner, component), "ports": [{"protocol": "TCP", "port": port}]}
    return {"ports": [{"protocol": "TCP", "port": int(db_spec["port"])}]}


def store_network_policy(owner: Owner, spec: Mapping[str, Any]) -> Obj:
    """Who may reach the store pods' port 8080 (the API and /metrics): spec.network.
    allowFrom, a list of NetworkPolicy peers, else every pod of the namespace; an empty
    list admits no pod. What the store pods may reach: DNS and their two databases."""
    spec = normalize_spec(spec)
    allow_from = (spec.get("network") or {}).get("allowFrom")
    peers = DEFAULT_ALLOW_FROM if allow_from is None else list(allow_from)
    # A rule with an empty `from` would admit everyone: no peers means no rule at all.
    ingress = [{"from": peers, "ports": [{"protocol": "TCP", "port": names.HTTP_PORT}]}] if peers else []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, names.store(owner.name), names.COMPONENT_STORE),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, names.COMPONENT_STORE)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [
                DNS_EGRESS,
                _database_egress(owner, spec["postgres"], names.COMPONENT_POSTGRES, names.POSTGRES_PORT),
                _database_egress(owner, spec["mongodb"], names.COMPONENT_MONGODB, names.MONGODB_PORT),
            ],
        },
    }


def in_cluster_databases(owner: Owner, spec: Mapping[str, Any]) -> list[Obj]:
    """StatefulSet, Service and NetworkPolicy of each database the spec runs in-cluster."""
    spec = normalize_spec(spec)
    out: list[Obj] = []
    if spec["postgres"]["mode"] == "InCluster":
        out += [
            postgres_service(owner),
            database_network_policy(
                owner, names.COMPONENT_POSTGRES, names.postgres(owner.name), names.POSTGRES_PORT
            ),
            postgres_statefulset(owner, spec),
        ]
    if spec["mongodb"]["mode"] == "InCluster":
        out += [
            mongodb_service(owner),
            database_network_policy(
                owner, names.COMPONENT_MONGODB, names.mongodb(owner.name), names.MONGODB_PORT
            ),
            mongodb_statefulset(owner, spec),
        ]
    return out


def generated_secret_names(owner: Owner, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(Secret name, component) of every Secret whose content the operator generates."""
    spec = normalize_spec(spec)
    out = [(names.api_token(owner.name), names.COMPONENT_API_TOKEN)]
    if spec["postgres"]["mode"] == "InCluster":
        out.append((names.credentials(names.postgres(owner.name)), names.COMPONENT_POSTGRES))
    if spec["mongodb"]["mode"] == "InCluster":
        out.append((names.credentials(names.mongodb(owner.name)), names.COMPONENT_MONGODB))
    return out


def store_objects(owner: Owner, spec: Mapping[str, Any], config_hash: str, config_map: str) -> list[Obj]:
    """The store's NetworkPolicy, Services, PodDisruptionBudget and StatefulSet, in apply
    order (the policy first: no pod runs unguarded)."""
    return [
        store_network_policy(owner, spec),
        headless_service(owner),
        client_service(owner),
        pod_disruption_budget(owner),
        store_statefulset(owner, spec, config_hash, config_map),
    ]


def image_of(statefulset: Mapping[str, Any] | None) -> str | None:
    """The image of a StatefulSet's first container (None: no StatefulSet)."""
    containers = (((statefulset or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []
    return str(containers[0]["image"]) if containers else None


def image_major(image: str) -> int | None:
    """The major version in an image's tag: postgres:16.4-bookworm -> 16, mongo:7 -> 7.

    None when the tag says no version (latest, a digest only, a name without a tag):
    then no upgrade guard can apply.
    """
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    tag = last.split(":", 1)[1]
    digits = ""
    for ch in tag:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def major_upgrade_refusal(component: str, old: str | None, new: str, allowed: bool) -> str | None:
    """Why an in-cluster database image change is held back, or None if it may roll.

    A different major version is refused unless `allowMajorVersionUpgrade` is set:
    PostgreSQL will not start on another major's data directory, and MongoDB upgrades
    one major at a time after featureCompatibilityVersion is raised.
    """
    if old is None or allowed or old == new:
        return None
    old_major, new_major = image_major(old), image_major(new)
    if old_major is None or new_major is None or old_major == new_major:
        return None
    if component == names.COMPONENT_POSTGRES:
        what = "PostgreSQL"
        path = (
            "PostgreSQL does not start on a data directory of another major version. Upgrade "
            "path (README, 'Upgrading PostgreSQL or MongoDB'): back up the events (`eventstore "
            "backup`), restore them into a new EventStore running the new image, switch the "
            "clients; or upgrade the data directory yourself (pg_upgrade) and then set "
            "spec.postgres.allowMajorVersionUpgrade: true"
        )
    else:
        what = "MongoDB"
        path = (
            "MongoDB upgrades one major version at a time, after `db.adminCommand({"
            f"setFeatureCompatibilityVersion: '{old_major}.0'}})` on the old version. Upgrade "
            "path (README, 'Upgrading PostgreSQL or MongoDB'): check that, then set "
            "spec.mongodb.allowMajorVersionUpgrade: true (snapshots can also be rebuilt "
            "from the events on an empty volume)"
        )
    return (
        f"spec.{component}.image {new} is {what} {new_major}, but {names.KIND} keeps running "
        f"{old} ({what} {old_major}): a major-version change is refused. {path}"
    )


#: How long a scheduled backup waits for a backup or expiry someone runs by hand.
BACKUP_LOCK_TIMEOUT_SECONDS = 600


def _backup_pod(owner: Owner, spec: Obj, command: str, where: Mapping[str, Any]) -> Obj:
    """A pod that runs `eventstore backup|restore LOCATION` against the event store's
    PostgreSQL; LOCATION is /backup (the claim `where.pvc` mounted there) or
    s3://bucket/prefix (`where.s3`, credentials from its Secret). Neither needs scratch
    space: a backup streams its segment to the target, a restore streams each segment
    from it (twice: to check it, then to import it)."""
    env = [e for e in store_env(owner, spec) if e["name"] in envcontract.EVENT_DB.variables()]
    volumes, mounts = password_volumes(owner, spec, (envcontract.EVENT_DB.prefix,))
    if where.get("s3"):
        s3 = where["s3"]
        # A backup's prefix defaults to its EventStore's name. A restore's is required by
        # the schema (the new EventStore's name is not where the source's backups are);
        # the default stays for EventStores stored before the schema required it.
        location = f"s3://{s3['bucket']}/{s3.get('prefix') or owner.name}"
        secret = s3["credentialsSecret"]["name"]
        env += [_secret_env(k, secret, k)
                for k in (envcontract.AWS_ACCESS_KEY_ID, envcontract.AWS_SECRET_ACCESS_KEY)]
        if s3.get("endpoint"):
            env.append(_value_env(envcontract.AWS_ENDPOINT_URL, s3["endpoint"]))
        env.append(_value_env(envcontract.AWS_DEFAULT_REGION, s3.get("region") or "us-east-1"))
    else:
        location = names.BACKUP_DIR
        mounts.append({"name": "target", "mountPath": names.BACKUP_DIR})
        volumes.append({"name": "target", "persistentVolumeClaim": {"claimName": where["pvc"]["claimName"]}})
    container: Obj = {
        "name": command,
        "image": spec["image"],
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["eventstore"],
        "args": [command, location],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": _restricted_container_security(),
    }
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(RUN_AS_USER),
        "containers": [container],
        "volumes": volumes,
    }


def restore_job(owner: Owner, spec: Mapping[str, Any]) -> Obj | None:
    """The Job that restores spec.restore.from into the new, empty PostgreSQL (None: unset).

    Retried (backoffLimit) while PostgreSQL is still starting; `eventstore restore`
    refuses a database that is not empty, so a retry after a partial failure says so.
    """
    spec = normalize_spec(spec)
    restore = spec.get("restore")
    if not restore:
        return None
    component = names.COMPONENT_RESTORE
    pod = _backup_pod(owner, spec, "restore", restore["from"])
    if restore.get("asOf"):
        pod["containers"][0]["args"] += ["--as-of", str(restore["asOf"])]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(owner, names.restore(owner.name), component),
        "spec": {
            "backoffLimit": 10,
            "template": {"metadata": {"labels": labels(owner, component)}, "spec": pod},
        },
    }


def job_finished(job: Mapping[str, Any] | None) -> tuple[bool, str] | None:
    """(succeeded, time) once a Job is Complete or Failed, else None."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return c["type"] == "Complete", str(c.get("lastTransitionTime") or "")
    return None


def backup_cronjob(owner: Owner, spec: Mapping[str, Any]) -> Obj | None:
    """The CronJob that runs `eventstore backup` on spec.backup's schedule (None: unset).

    Each run adds one segment (the events since the last one, or a full backup every
    `fullEvery` segments) to the target, then expires what `retention` no longer needs
    (eventstore/backup.py); concurrencyPolicy Forbid keeps two runs from overlapping, and
    the location's lock a run from writing beside a backup started by hand.
    """
    spec = normalize_spec(spec)
    backup = spec.get("backup")
    if not backup:
        return None
    component = names.COMPONENT_BACKUP
    pod_spec = _backup_pod(owner, spec, "backup", backup["target"])
    args = pod_spec["containers"][0]["args"]
    args += ["--full-every", str(int(backup.get("fullEvery") or 7))]
    # Wait for a backup someone runs by hand (`eventstore backup` holds the location's
    # lock; concurrencyPolicy Forbid covers only this CronJob's own runs) rather than fail.
    args += ["--lock-timeout", str(BACKUP_LOCK_TIMEOUT_SECONDS)]
    if backup.get("retention"):
        args += ["--retention-days", str(retention_days(str(backup["retention"])))]
    # The backed-up position, for status.lastBackup: the Job's termination message.
    result = _value_env(envcontract.BACKUP_RESULT_FILE, "/dev/termination-log")
    pod_spec["containers"][0]["env"].append(result)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _meta(owner, names.backup(owner.name), component),
        "spec": {
            "schedule": backup["schedule"],
            "suspend": bool(backup.get("suspend")),
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels(owner, component)},
                "spec": {
                    "backoffLimit": 2,
                    "template": {"metadata": {"labels": labels(owner, component)}, "spec": pod_spec},
                },
            },
        },
    }


def retention_days(retention: str) -> int:
    """spec.backup.retention ('30d', '4w') in days."""
    match = re.fullmatch(r"([1-9][0-9]{0,4})([dw])", retention)
    if not match:
        raise ValueError(f"spec.backup.retention {retention!r}: expected a number of days or "
                         "weeks such as '30d' or '4w'")
    return int(match[1]) * (7 if match[2] == "w" else 1)


def backup_status(jobs: Sequence[Mapping[str, Any]]) -> tuple[Obj | None, bool | None, str]:
    """(lastBackup, succeeded, message) from the backup Jobs: the newest finished Job
    decides the condition; the newest successful one is the last backup."""

    def finished(job: Mapping[str, Any]) -> tuple[str, bool] | None:
        done = job_finished(job)
        return (done[1], done[0]) if done else None

    done = sorted(
        ((f, job) for job in jobs if (f := finished(job)) is not None), key=lambda item: item[0][0]
    )
    last_ok = next(((f, j) for f, j in reversed(done) if f[1]), None)
    last = {"job": last_ok[1]["metadata"]["name"], "completionTime": last_ok[0][0]} if last_ok else None
    if not done:
        return last, None, "no backup has finished yet"
    (when, ok), job = done[-1]
    name = job["metadata"]["name"]
    if ok:
        return last, True, f"backup Job {name} succeeded at {when}"
    namespace = job["metadata"].get("namespace", "")
    return last, False, f"backup Job {name} failed at {when}: kubectl logs -n {namespace} job/{name}"


def backup_position(pods: Sequence[Mapping[str, Any]]) -> int | None:
    """The position a backup Job's pod reported in its termination message, if any."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((status.get("state") or {}).get("terminated") or {}).get("message")
            try:
                return int(json.loads(message or "")["position"])
            except (ValueError, KeyError, TypeError):
                continue
    return None


def claim_size(statefulset: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(size, storageClassName) of a StatefulSet's data volume claim template."""
    for tpl in statefulset.get("spec", {}).get("volumeClaimTemplates") or []:
        if tpl.get("metadata", {}).get("name") == names.data_volume():
            spec = tpl.get("spec", {})
            size = spec.get("resources", {}).get("requests", {}).get("storage")
            return size, spec.get("storageClassName")
    return None, None

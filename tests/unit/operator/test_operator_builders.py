"""The builders as pure functions: spec in, Kubernetes objects out, no cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from eventstore.settings import (
    EVENT_STORE_FILE,
    PROJECTIONS_FILE,
    config_hash,
    load_settings,
    render_defaults,
    validate_config_data,
)
from eventstore_operator import builders, names
from eventstore_operator.builders import Owner
from tests.unit.operator.kubelet import kubelet_layout

OWNER = Owner(name="demo", namespace="team-a", uid="0000-1111")
REPO = Path(__file__).resolve().parents[3]


def example_spec() -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "manifests/examples/eventstore.yaml").read_text())
    spec: dict[str, Any] = doc["spec"]
    return spec


def container(sts: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = sts["spec"]["template"]["spec"]["containers"][0]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def all_objects(spec: dict[str, Any]) -> list[dict[str, Any]]:
    objs = [
        *builders.store_objects(OWNER, spec, "h", "demo-config-h"),
        *builders.in_cluster_databases(OWNER, spec),
        builders.user_config_map(OWNER, spec),
        builders.config_snapshot(OWNER, render_defaults(), "h"),
        builders.api_token_secret(OWNER, "t"),
        builders.credentials_secret(OWNER, "demo-postgres", names.COMPONENT_POSTGRES, "p"),
        builders.app_secret(OWNER, "t"),
    ]
    return objs


def test_store_statefulset_defaults() -> None:
    sts = builders.store_statefulset(OWNER, {}, "abc123", "demo-config-abc123")
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "demo-headless"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]
    c = container(sts)
    assert c["command"] + c["args"] == ["eventstore", "serve"]
    assert c["image"] == names.DEFAULT_IMAGE
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert mounts["config"] == "/etc/eventstore"
    assert mounts["api-token"] == "/var/run/secrets/eventstore"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    tpl = spec["template"]
    assert tpl["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == "abc123"
    assert set(spec["selector"]["matchLabels"].items()) <= set(tpl["metadata"]["labels"].items())


def test_store_env_and_secrets() -> None:
    env = env_of(container(builders.store_statefulset(OWNER, {}, "h", "cm")))
    assert env["EVENTSTORE_CONFIG_DIR"] == "/etc/eventstore"
    assert env["EVENTSTORE_API_TOKEN_FILE"] == "/var/run/secrets/eventstore/token"
    assert env["EVENT_DB_HOST"] == "demo-postgres"
    assert env["EVENT_DB_PORT"] == "5432"
    assert env["EVENT_DB_NAME"] == "eventstore"
    assert env["SNAPSHOT_DB_HOST"] == "demo-mongodb"
    assert env["SNAPSHOT_DB_PORT"] == "27017"
    for prefix, secret in (("EVENT_DB", "demo-postgres"), ("SNAPSHOT_DB", "demo-mongodb")):
        assert env[f"{prefix}_USER"]["secretKeyRef"] == {"name": f"{secret}-credentials",
                                                        "key": "username"}
        # The password is a mounted file (issue 12), never an environment variable.
        assert f"{prefix}_PASSWORD" not in env
        assert env[f"{prefix}_PASSWORD_FILE"].endswith("/password")


def test_store_volumes_point_at_snapshot_and_token() -> None:
    pod = builders.store_statefulset(OWNER, {}, "h", "demo-config-h")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["config"]["configMap"]["name"] == "demo-config-h"
    keys = [i["key"] for i in vols["config"]["configMap"]["items"]]
    assert keys == [EVENT_STORE_FILE, PROJECTIONS_FILE]
    assert vols["api-token"]["secret"]["secretName"] == "demo-api-token"
    assert vols["api-token"]["secret"]["items"] == [{"key": "token", "path": "token"}]


def test_restricted_security_and_anti_affinity() -> None:
    sts = builders.store_statefulset(OWNER, {}, "h", "cm")
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(sts)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    for db in builders.in_cluster_databases(OWNER, {}):
        if db["kind"] == "StatefulSet":
            dbc = db["spec"]["template"]["spec"]["containers"][0]
            assert dbc["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert db["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_spec_values_flow_through() -> None:
    spec = {
        "replicas": 5,
        "image": "registry.local/es:1",
        "storage": {"size": "1Ti", "storageClassName": "fast"},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
    }
    sts = builders.store_statefulset(OWNER, spec, "h", "cm")
    assert sts["spec"]["replicas"] == 5
    assert container(sts)["image"] == "registry.local/es:1"
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "1Ti"
    assert claim["storageClassName"] == "fast"
    # A given section replaces the schema default (as the API server does), limits keep theirs.
    assert container(sts)["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"memory": "1Gi"},
    }


def test_external_databases() -> None:
    spec = {
        "postgres": {
            "mode": "External",
            "host": "pg.example.com",
            "port": 6432,
            "database": "events",
            "credentialsSecret": {"name": "pg-creds", "usernameKey": "user", "passwordKey": "pw"},
        },
        "mongodb": {
            "mode": "External",
            "host": "mongo.example.com",
            "credentialsSecret": {"name": "mongo-creds"},
        },
    }
    env = env_of(container(builders.store_statefulset(OWNER, spec, "h", "cm")))
    assert env["EVENT_DB_HOST"] == "pg.example.com"
    assert env["EVENT_DB_PORT"] == "6432"
    assert env["EVENT_DB_NAME"] == "events"
    assert env["EVENT_DB_USER"]["secretKeyRef"] == {"name": "pg-creds", "key": "user"}
    assert env["SNAPSHOT_DB_HOST"] == "mongo.example.com"
    # Passwords are mounted files: only the password key of each Secret, group-readable.
    assert "EVENT_DB_PASSWORD" not in env and "SNAPSHOT_DB_PASSWORD" not in env
    sts = builders.store_statefulset(OWNER, spec, "h", "cm")
    volumes = {v["name"]: v["secret"] for v in sts["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    assert volumes["event-db-password"] == {"secretName": "pg-creds", "defaultMode": 0o440,
                                            "items": [{"key": "pw", "path": "password"}]}
    assert volumes["snapshot-db-password"]["items"] == [{"key": "password", "path": "password"}]
    assert env["EVENT_DB_PASSWORD_FILE"] == mounts["event-db-password"] + "/password"
    assert env["SNAPSHOT_DB_PASSWORD_FILE"] == mounts["snapshot-db-password"] + "/password"
    assert builders.in_cluster_databases(OWNER, spec) == []
    assert builders.generated_secret_names(OWNER, spec) == [("demo-api-token", "api-token")]


def test_in_cluster_databases() -> None:
    objs = {(o["kind"], o["metadata"]["name"]): o for o in builders.in_cluster_databases(OWNER, {})}
    pg = objs[("StatefulSet", "demo-postgres")]
    assert container(pg)["image"] == "postgres:16"
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    pg_env = env_of(container(pg))
    assert pg_env["POSTGRES_PASSWORD"]["secretKeyRef"]["name"] == "demo-postgres-credentials"
    mongo = objs[("StatefulSet", "demo-mongodb")]
    assert container(mongo)["image"] == "mongo:7"
    assert env_of(container(mongo))["MONGO_INITDB_ROOT_PASSWORD"]["secretKeyRef"]["name"] == (
        "demo-mongodb-credentials"
    )
    assert objs[("Service", "demo-postgres")]["spec"]["ports"][0]["port"] == 5432
    assert objs[("Service", "demo-mongodb")]["spec"]["ports"][0]["port"] == 27017


def _peers(*components: str) -> list[dict[str, Any]]:
    return [{"podSelector": {"matchLabels": builders.selector_labels(OWNER, c)}} for c in components]


DNS_ONLY = [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]


def test_database_policies_admit_only_store_pods_and_allow_only_dns_out() -> None:
    policies = {o["metadata"]["name"]: o for o in builders.in_cluster_databases(OWNER, {})
                if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {"demo-postgres", "demo-mongodb"}
    clients = {"demo-postgres": _peers(names.COMPONENT_STORE, names.COMPONENT_BACKUP,
                                       names.COMPONENT_RESTORE),
               "demo-mongodb": _peers(names.COMPONENT_STORE)}
    for name, p in policies.items():
        component = p["metadata"]["labels"][names.LABEL_COMPONENT]
        assert p["spec"]["podSelector"]["matchLabels"][names.LABEL_COMPONENT] == component
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
        (rule,) = p["spec"]["ingress"]
        assert rule["from"] == clients[name]
        assert rule["ports"] == [{"protocol": "TCP",
                                  "port": 5432 if component == "postgres" else 27017}]
        assert p["spec"]["egress"] == DNS_ONLY
    # The Jobs' pods carry the labels admitted.
    jobs = [builders.selector_labels(OWNER, c) for c in (names.COMPONENT_BACKUP, names.COMPONENT_RESTORE)]
    spec = {"backup": {"schedule": "0 * * * *", "target": {"pvc": {"claimName": "b"}}},
            "restore": {"from": {"pvc": {"claimName": "b"}}}}
    cron, restore = builders.backup_cronjob(OWNER, spec), builders.restore_job(OWNER, spec)
    assert cron is not None and restore is not None
    pod_labels = [cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
                  restore["spec"]["template"]["metadata"]["labels"]]
    assert all(m.items() <= labels.items() for m, labels in zip(jobs, pod_labels, strict=True))


def _store_policy(spec: dict[str, Any]) -> dict[str, Any]:
    (policy,) = [o for o in builders.store_objects(OWNER, spec, "h", "cm")
                 if o["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["name"] == "demo"
    assert policy["spec"]["podSelector"] == {
        "matchLabels": builders.selector_labels(OWNER, names.COMPONENT_STORE)}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    return policy["spec"]  # type: ignore[no-any-return]


def test_store_policy_admits_the_namespace_to_8080_by_default() -> None:
    assert _store_policy({})["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}]


def test_store_policy_takes_allow_from_as_given() -> None:
    peers = [{"podSelector": {"matchLabels": {"role": "client"}}},
             {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {}},
             {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]
    assert _store_policy({"network": {"allowFrom": peers}})["ingress"] == [
        {"from": peers, "ports": [{"protocol": "TCP", "port": 8080}]}]


def test_store_policy_with_an_empty_allow_from_admits_no_pod() -> None:
    """A rule with an empty `from` would admit every source: no rule at all instead."""
    assert _store_policy({"network": {"allowFrom": []}})["ingress"] == []


def test_store_pods_reach_only_dns_and_their_in_cluster_databases() -> None:
    assert _store_policy({})["egress"] == [
        *DNS_ONLY,
        {"to": _peers(names.COMPONENT_POSTGRES), "ports": [{"protocol": "TCP", "port": 5432}]},
        {"to": _peers(names.COMPONENT_MONGODB), "ports": [{"protocol": "TCP", "port": 27017}]},
    ]


def test_store_pods_reach_external_databases_on_their_port_only() -> None:
    spec = {"postgres": {"mode": "External", "host": "pg.example.com", "port": 6432,
                         "credentialsSecret": {"name": "pg"}},
            "mongodb": {"mode": "External", "host": "10.9.8.7", "port": 27018,
                        "credentialsSecret": {"name": "mongo"}}}
    # No ipBlock guessed from the host: any address, on the configured port.
    assert _store_policy(spec)["egress"] == [
        *DNS_ONLY,
        {"ports": [{"protocol": "TCP", "port": 6432}]},
        {"ports": [{"protocol": "TCP", "port": 27018}]},
    ]


def test_services_and_pdb() -> None:
    _, headless, client, pdb, _ = builders.store_objects(OWNER, {}, "h", "cm")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["metadata"]["name"] == "demo-headless"
    assert client["metadata"]["name"] == "demo"
    assert client["spec"]["ports"][0] == {
        "name": "http",
        "port": 8080,
        "targetPort": "http",
        "protocol": "TCP",
    }
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == builders.selector_labels(OWNER, "store")


KEPT_WITH_DATA = {"demo-config", "demo-api-token", "demo-postgres-credentials", "demo-app"}


def test_what_the_data_needs_is_kept_with_it() -> None:
    """Generated Secrets and the user's ConfigMap have no owner: deleting the EventStore
    keeps them with the volume claims, so a re-created EventStore finds them (issue 13)."""
    kept = [o for o in all_objects({}) if o["metadata"]["name"] in KEPT_WITH_DATA]
    assert {o["metadata"]["name"] for o in kept} == KEPT_WITH_DATA
    for obj in kept:
        assert "ownerReferences" not in obj["metadata"], obj["metadata"]["name"]
        assert obj["metadata"]["labels"][names.LABEL_KEPT_WITH_DATA] == "true"
        assert obj["metadata"]["labels"][names.LABEL_INSTANCE] == "demo"


def test_app_secret_says_how_to_connect() -> None:
    data = builders.app_secret(OWNER, "tok")["stringData"]
    assert data == {
        "url": "http://demo.team-a.svc:8080",
        "host": "demo.team-a.svc",
        "port": "8080",
        "token": "tok",
        "tokenSecret": "demo-api-token",
    }
    assert "token" not in builders.app_secret(OWNER, None)["stringData"]


def test_every_object_is_owned_and_labelled() -> None:
    for obj in all_objects({}):
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"][names.LABEL_MANAGED_BY] == "eventstore-operator"
        if meta["name"] in KEPT_WITH_DATA:
            continue
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "eventstore.io/v1alpha1",
                "kind": "EventStore",
                "name": "demo",
                "uid": "0000-1111",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"][names.LABEL_MANAGED_BY] == "eventstore-operator"
        assert meta["labels"][names.LABEL_INSTANCE] == "demo"
        assert len(meta["name"]) <= 63


def test_no_credentials_in_config_maps() -> None:
    for obj in all_objects({}):
        if obj["kind"] == "ConfigMap":
            text = yaml.safe_dump(obj["data"]).lower()
            assert "password" not in text and "token" not in text


def test_seed_config_map_uses_spec_settings() -> None:
    cm = builders.user_config_map(OWNER, {"settings": {"snapshotFrequency": 50, "projectionWorkers": 2}})
    assert cm["metadata"]["name"] == "demo-config"
    settings = validate_config_data(cm["data"])
    assert settings.store.snapshot_frequency == 50
    assert settings.store.retention_days == 365
    assert settings.projections.workers == 2
    assert builders.user_config_map(OWNER, {})["data"] == render_defaults()


def test_config_snapshot_is_immutable_and_complete() -> None:
    data = {EVENT_STORE_FILE: "snapshot_frequency: 50\n"}
    snap = builders.config_snapshot(OWNER, data, config_hash(data))
    assert snap["immutable"] is True
    assert snap["metadata"]["name"] == f"demo-config-{config_hash(data)}"
    assert set(snap["data"]) == {EVENT_STORE_FILE, PROJECTIONS_FILE}
    settings = validate_config_data(snap["data"])
    assert settings.store.snapshot_frequency == 50
    assert settings.projections.workers == 5


def test_generated_secrets() -> None:
    secret = builders.credentials_secret(OWNER, "demo-postgres", "postgres", "pw")
    assert secret["metadata"]["name"] == "demo-postgres-credentials"
    assert secret["stringData"] == {"username": "eventstore", "password": "pw"}
    token = builders.api_token_secret(OWNER, "tok")
    assert token["stringData"] == {"token": "tok"}
    assert [n for n, _ in builders.generated_secret_names(OWNER, {})] == [
        "demo-api-token",
        "demo-postgres-credentials",
        "demo-mongodb-credentials",
    ]


def test_normalize_spec_applies_crd_defaults() -> None:
    spec = builders.normalize_spec({"storage": {"storageClassName": "x"}})
    assert spec["replicas"] == 3
    assert spec["storage"] == {"size": "100Gi", "storageClassName": "x"}
    assert spec["postgres"]["mode"] == "InCluster"
    assert spec["postgres"]["port"] == 5432
    assert spec["mongodb"]["image"] == "mongo:7"
    assert "settings" not in spec or spec["settings"] == {}
    assert builders.normalize_spec(example_spec())["replicas"] == 3


def test_claim_size() -> None:
    sts = builders.store_statefulset(OWNER, {"storage": {"size": "200Gi"}}, "h", "cm")
    assert builders.claim_size(sts) == ("200Gi", None)
    assert builders.claim_size({}) == (None, None)


def test_pod_template_settings_as_the_kubelet_lays_them_out(tmp_path: Path) -> None:
    """Issue 5 item 6, without a cluster: mount the snapshot where the template says."""
    data = {EVENT_STORE_FILE: "snapshot_frequency: 50\n", PROJECTIONS_FILE: "workers: 2\n"}
    digest = config_hash(data)
    snap = builders.config_snapshot(OWNER, data, digest)
    sts = builders.store_statefulset(OWNER, {}, digest, snap["metadata"]["name"])
    root = kubelet_layout(tmp_path, sts, {snap["metadata"]["name"]: snap})
    env = env_of(container(sts))
    settings = load_settings(root / env["EVENTSTORE_CONFIG_DIR"].lstrip("/"))
    assert settings.store.snapshot_frequency == 50
    assert settings.projections.workers == 2


@pytest.mark.parametrize("replicas", [1, 3, 7])
def test_pdb_allows_one_disruption(replicas: int) -> None:
    pdb = builders.pod_disruption_budget(OWNER)
    sts = builders.store_statefulset(OWNER, {"replicas": replicas}, "h", "cm")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert sts["spec"]["replicas"] == replicas


def test_store_pods_keep_serving_after_sigterm_and_have_time_to_drain() -> None:
    """Endpoints lag a pod's deletion: the server keeps serving for its drain delay after
    SIGTERM (readiness 503), then drains (uvicorn's 25 s), all within the grace period.
    No preStop pause on top: it would only delay SIGTERM."""
    sts = builders.store_statefulset(OWNER, {}, "h", "cm")
    pod = sts["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container(sts)["env"]}
    delay = int(env["EVENTSTORE_DRAIN_DELAY_SECONDS"])
    assert delay >= 5
    assert "lifecycle" not in container(sts)
    assert pod["terminationGracePeriodSeconds"] >= delay + 25 + 5
@pytest.mark.parametrize(("image", "major"), [
    ("postgres:16", 16),
    ("postgres:16.4-bookworm", 16),
    ("docker.io/library/mongo:7.0.12", 7),
    ("registry:5000/team/postgres:17@sha256:abc", 17),
    ("postgres", None),
    ("postgres:latest", None),
    ("registry:5000/postgres", None),
])
def test_image_major(image: str, major: int | None) -> None:
    assert builders.image_major(image) == major


def test_major_upgrade_refusal() -> None:
    refuse = builders.major_upgrade_refusal
    message = refuse("postgres", "postgres:16", "postgres:17", False)
    assert message and "postgres:17 is PostgreSQL 17" in message and "postgres:16 (PostgreSQL 16)" in message
    assert "allowMajorVersionUpgrade: true" in message and "Upgrading PostgreSQL or MongoDB" in message
    mongo = refuse("mongodb", "mongo:7", "mongo:8", False)
    assert mongo and "MongoDB 8" in mongo and "setFeatureCompatibilityVersion: '7.0'" in mongo
    assert refuse("postgres", "postgres:16", "postgres:17", True) is None  # asked for
    assert refuse("postgres", "postgres:16.2", "postgres:16.4", False) is None  # minor rolls
    assert refuse("postgres", None, "postgres:17", False) is None  # a new database
    assert refuse("postgres", "postgres:17", "postgres:16", False)  # a downgrade neither


def test_backup_to_an_s3_bucket() -> None:
    spec = {"backup": {"schedule": "0 * * * *", "target": {"s3": {
        "bucket": "b", "endpoint": "http://minio:9000", "credentialsSecret": {"name": "s3-creds"}}}}}
    cron = builders.backup_cronjob(OWNER, spec)
    assert cron is not None
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["backup", "s3://b/demo", "--full-every", "7", "--lock-timeout", "600"]
    # No target volume, and no /tmp: the backup streams its segment to the bucket.
    assert [v["name"] for v in pod["volumes"]] == ["event-db-password"]
    assert all(m["mountPath"] != "/tmp" for m in c["volumeMounts"])
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["EVENT_DB_HOST"]["value"] == "demo-postgres"
    restore = builders.restore_job(OWNER, {"restore": {"from": spec["backup"]["target"]}})
    assert restore is not None
    assert restore["spec"]["template"]["spec"]["containers"][0]["args"] == ["restore", "s3://b/demo"]
    # Nor has a restore: it streams each segment from the bucket, to check it, then to import it.
    restore_pod = restore["spec"]["template"]["spec"]
    assert [v["name"] for v in restore_pod["volumes"]] == ["event-db-password"]
    assert all(m["mountPath"] != "/tmp" for m in restore_pod["containers"][0]["volumeMounts"])


def test_backup_retention_and_full_backups_reach_the_job() -> None:
    """spec.backup.retention / fullEvery become `eventstore backup` options; a restore
    point (spec.restore.asOf) becomes --as-of."""
    spec = {"backup": {"schedule": "0 * * * *", "fullEvery": 3, "retention": "2w",
                       "target": {"pvc": {"claimName": "backups"}}}}
    cron = builders.backup_cronjob(OWNER, spec)
    assert cron is not None
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["backup", "/backup", "--full-every", "3", "--lock-timeout", "600",
                         "--retention-days", "14"]
    assert builders.retention_days("30d") == 30
    with pytest.raises(ValueError, match="'30x'"):
        builders.retention_days("30x")
    restore = builders.restore_job(OWNER, {"restore": {"from": spec["backup"]["target"],
                                                       "asOf": "2026-01-31T12:00:00Z"}})
    assert restore is not None
    assert restore["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "restore", "/backup", "--as-of", "2026-01-31T12:00:00Z"]

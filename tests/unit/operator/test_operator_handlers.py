"""reconcile() against an in-memory API (a fake `kube` module): the control flow only.

The real API server behaviour is covered by tests/k8s; here the fake checks what the
operator decides: create-once Secrets and ConfigMap, hash on valid edits, last good
hash and one Warning Event on invalid ones, volume growth by orphan-recreate.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from eventstore.settings import EVENT_STORE_FILE, config_hash, render_defaults
from eventstore_operator import handlers, kube, names


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.calls: list[tuple[str, str, str]] = []

    def key(self, obj: dict[str, Any]) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return obj["kind"], meta["namespace"], meta["name"]

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, ns, name))
        return copy.deepcopy(obj) if obj else None

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append(("create", *self.key(obj)[::2]))
        if self.key(obj) in self.objects:
            return None
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("creationTimestamp", f"2026-01-01T00:00:{len(self.objects):02d}Z")
        self.objects[self.key(obj)] = stored
        return copy.deepcopy(stored)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", *self.key(obj)[::2]))
        old = self.objects.get(self.key(obj), {})
        stored = copy.deepcopy(obj)
        if "status" in old:
            stored["status"] = old["status"]
        self.objects[self.key(obj)] = stored
        return copy.deepcopy(stored)

    def merge_patch(
        self, kind: str, ns: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("patch", kind, name))
        if (kind, ns, name) not in self.objects:
            raise kopf.TemporaryError("404", delay=2)
        target = self.objects[(kind, ns, name)]
        _merge(target, patch)
        return copy.deepcopy(target)

    def delete(self, kind: str, ns: str, name: str, propagation: str | None = None) -> None:
        self.calls.append(("delete", kind, name))
        self.objects.pop((kind, ns, name), None)

    def list_objects(
        self, kind: str, ns: str | None, selector: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, n, _), o in self.objects.items()
            if k == kind
            and ns in (None, n)
            and all(o["metadata"].get("labels", {}).get(a) == b for a, b in (selector or {}).items())
        ]

    def post_event(self, involved: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    f = FakeKube()
    for name in ("get", "create", "apply", "merge_patch", "delete", "list_objects", "post_event"):
        monkeypatch.setattr(kube, name, getattr(f, name))
    f.objects[(names.KIND, "ns", "demo")] = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"settings": {"snapshotFrequency": 100}},
    }
    return f


def es(fake: FakeKube) -> dict[str, Any]:
    return fake.objects[(names.KIND, "ns", "demo")]


def conditions(fake: FakeKube) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in es(fake)["status"]["conditions"]}


def template_hash(fake: FakeKube) -> str:
    sts = fake.objects[("StatefulSet", "ns", "demo")]
    value: str = sts["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    return value


def edit_config(fake: FakeKube, text: str) -> None:
    fake.objects[("ConfigMap", "ns", "demo-config")]["data"][EVENT_STORE_FILE] = text


def test_first_reconcile_creates_everything(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    kinds = {(k, n) for k, _, n in fake.objects}
    assert {
        ("StatefulSet", "demo"),
        ("Service", "demo"),
        ("Service", "demo-headless"),
        ("PodDisruptionBudget", "demo"),
        ("ConfigMap", "demo-config"),
        ("Secret", "demo-api-token"),
        ("Secret", "demo-postgres-credentials"),
        ("Secret", "demo-mongodb-credentials"),
        ("Secret", "demo-app"),
        ("StatefulSet", "demo-postgres"),
        ("StatefulSet", "demo-mongodb"),
        ("Service", "demo-postgres"),
        ("Service", "demo-mongodb"),
        ("NetworkPolicy", "demo"),
        ("NetworkPolicy", "demo-postgres"),
        ("NetworkPolicy", "demo-mongodb"),
    } <= kinds
    digest = config_hash(render_defaults())
    assert template_hash(fake) == digest
    assert ("ConfigMap", f"demo-config-{digest}") in kinds
    conds = conditions(fake)
    assert conds["ConfigValid"]["status"] == "True"
    assert conds["Reconciled"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["message"].startswith("0/3 store pods ready")
    assert all(c["observedGeneration"] == 1 for c in conds.values())
    assert es(fake)["status"]["configHash"] == digest


def test_secrets_and_config_map_are_created_once(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    password = fake.objects[("Secret", "ns", "demo-postgres-credentials")]["stringData"]
    edit_config(fake, "snapshot_frequency: 50\n")
    handlers.reconcile("ns", "demo")
    assert fake.objects[("Secret", "ns", "demo-postgres-credentials")]["stringData"] == password
    cm = fake.objects[("ConfigMap", "ns", "demo-config")]
    assert cm["data"][EVENT_STORE_FILE] == "snapshot_frequency: 50\n"


def test_valid_edit_changes_hash_invalid_edit_keeps_last_good(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    first = template_hash(fake)
    edit_config(fake, "snapshot_frequency: 50\n")
    handlers.reconcile("ns", "demo")
    second = template_hash(fake)
    assert second != first
    assert ("Normal", "ConfigApplied") in [(k, r) for k, r, _ in fake.events]
    mounted = fake.objects[("StatefulSet", "ns", "demo")]["spec"]["template"]["spec"]["volumes"][0]
    assert mounted["configMap"]["name"] == f"demo-config-{second}"

    edit_config(fake, "snapshot_frequency: 0\n")
    handlers.reconcile("ns", "demo")
    handlers.reconcile("ns", "demo")  # a second pass must not repeat the Event
    assert template_hash(fake) == second
    cond = conditions(fake)["ConfigValid"]
    assert cond["status"] == "False" and cond["reason"] == "InvalidConfig"
    assert "event-store.yaml: snapshot_frequency:" in cond["message"]
    warnings = [m for k, r, m in fake.events if k == "Warning"]
    assert len(warnings) == 1 and "snapshot_frequency" in warnings[0]
    assert es(fake)["status"]["configHash"] == second

    edit_config(fake, "snapshot_frequency: 50\n")
    handlers.reconcile("ns", "demo")
    assert conditions(fake)["ConfigValid"]["status"] == "True"
    assert template_hash(fake) == second


@pytest.mark.parametrize(("registration", "reason"), [
    ('"nowhere_xyz.domain:Account"', "cannot import 'nowhere_xyz.domain'"),
    ('"eventstore.examples.bank:InsufficientFunds"', "not a subclass of eventstore.Aggregate"),
    ('"eventstore.examples.bank"', "must be 'module:object'"),
])
def test_a_bad_aggregate_registration_is_refused_naming_the_key(
        fake: FakeKube, registration: str, reason: str) -> None:
    handlers.reconcile("ns", "demo")
    good = template_hash(fake)
    edit_config(fake, f"aggregates:\n  Account: {registration}\n")
    handlers.reconcile("ns", "demo")
    assert template_hash(fake) == good  # the pods keep the last good settings
    cond = conditions(fake)["ConfigValid"]
    assert cond["status"] == "False"
    assert "event-store.yaml: aggregates.Account: " in cond["message"] and reason in cond["message"]
    edit_config(fake, 'aggregates:\n  Account: "eventstore.examples.bank:Account"\n')
    handlers.reconcile("ns", "demo")
    assert conditions(fake)["ConfigValid"]["status"] == "True" and template_hash(fake) != good


def test_old_snapshots_are_pruned(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    for n in range(1, 6):
        edit_config(fake, f"snapshot_frequency: {n}\n")
        handlers.reconcile("ns", "demo")
    snaps = [n for k, _, n in fake.objects if k == "ConfigMap" and n != "demo-config"]
    assert len(snaps) == 1 + handlers.KEEP_CONFIG_SNAPSHOTS
    assert f"demo-config-{template_hash(fake)}" in snaps


def test_invalid_config_before_any_valid_one_creates_no_store(fake: FakeKube) -> None:
    fake.create(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "demo-config", "namespace": "ns"},
            "data": {"event-store.yaml": "bogus: 1"},
        }
    )
    handlers.reconcile("ns", "demo")
    assert ("StatefulSet", "ns", "demo") not in fake.objects
    conds = conditions(fake)
    assert conds["Reconciled"]["reason"] == "WaitingForValidConfig"
    assert "bogus" in conds["ConfigValid"]["message"]


def test_deleted_children_come_back(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    fake.delete("Service", "ns", "demo")
    fake.delete("ConfigMap", "ns", "demo-config")
    handlers.reconcile("ns", "demo")
    assert ("Service", "ns", "demo") in fake.objects
    assert fake.objects[("ConfigMap", "ns", "demo-config")]["data"] == render_defaults()


def test_storage_growth_resizes_claims_and_recreates_statefulset(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    for i in range(3):
        fake.create(
            {
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"data-demo-{i}", "namespace": "ns"},
                "spec": {"resources": {"requests": {"storage": "100Gi"}}},
            }
        )
    es(fake)["spec"]["storage"] = {"size": "200Gi"}
    with pytest.raises(kopf.TemporaryError, match="100Gi -> 200Gi"):
        handlers.reconcile("ns", "demo")
    assert ("StatefulSet", "ns", "demo") not in fake.objects
    for i in range(3):
        claim = fake.objects[("PersistentVolumeClaim", "ns", f"data-demo-{i}")]
        assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert conditions(fake)["Reconciled"]["reason"] == "ReconcileFailed"
    handlers.reconcile("ns", "demo")
    sts = fake.objects[("StatefulSet", "ns", "demo")]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "200Gi"


def test_equal_quantities_in_other_units_do_not_recreate(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    sts = fake.objects[("StatefulSet", "ns", "demo")]
    sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "102400Mi"
    handlers.reconcile("ns", "demo")
    assert ("delete", "StatefulSet", "demo") not in fake.calls


def test_gone_eventstore_is_a_no_op(fake: FakeKube) -> None:
    fake.objects.clear()
    handlers.reconcile("ns", "demo")
    assert fake.objects == {}
    fake.objects[(names.KIND, "ns", "x")] = {
        "kind": names.KIND,
        "metadata": {"name": "x", "namespace": "ns", "uid": "u", "deletionTimestamp": "now"},
    }
    handlers.reconcile("ns", "x")
    assert len(fake.objects) == 1


def test_refresh_status_tracks_ready_replicas(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    for name, ready in (("demo", 3), ("demo-postgres", 1), ("demo-mongodb", 1)):
        fake.objects[("StatefulSet", "ns", name)]["status"] = {"readyReplicas": ready}
    handlers.refresh_status("ns", "demo")
    assert es(fake)["status"]["readyReplicas"] == 3
    assert conditions(fake)["Ready"]["status"] == "True"
    calls = len(fake.calls)
    handlers.refresh_status("ns", "demo")
    assert len(fake.calls) == calls  # unchanged status: no write


def test_translate_maps_errors() -> None:
    from kubernetes.client.exceptions import ApiException

    def err(status: int) -> Exception:
        return kube.translate(ApiException(status=status, reason="x"), "do")

    assert isinstance(err(422), kopf.PermanentError)
    assert isinstance(err(400), kopf.PermanentError)
    forbidden = err(403)
    assert isinstance(forbidden, kopf.TemporaryError) and forbidden.delay == 60
    assert isinstance(err(409), kopf.TemporaryError)
    assert isinstance(err(500), kopf.TemporaryError)
    assert isinstance(kube.translate(ConnectionRefusedError(), "do"), kopf.TemporaryError)


def test_resync_reconciles_every_watched_eventstore(fake: FakeKube) -> None:
    fake.objects[(names.KIND, "other", "x")] = {
        "kind": names.KIND,
        "metadata": {"name": "x", "namespace": "other", "uid": "u2", "generation": 1},
        "spec": {},
    }
    handlers.Resync(["ns"], 60).run_once()
    assert ("StatefulSet", "ns", "demo") in fake.objects
    assert ("StatefulSet", "other", "x") not in fake.objects
    handlers.Resync(None, 60).run_once()  # --all-namespaces
    assert ("StatefulSet", "other", "x") in fake.objects


def test_no_handler_needs_a_finalizer() -> None:
    """Deleting an EventStore must never wait for the operator (it may be gone)."""
    resource = kopf.Resource(names.GROUP, names.VERSION, names.PLURAL)
    for handler in handlers.registry._changing.get_all_handlers():
        assert not handler.requires_finalizer, handler.id
    for spawning in handlers.registry._spawning.get_all_handlers():
        raise AssertionError(f"timers/daemons add finalizers: {spawning.id} ({resource})")


def test_regenerated_database_credentials_are_reported(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    fake.delete("Secret", "ns", "demo-postgres-credentials")
    fake.delete("Secret", "ns", "demo-api-token")
    handlers.reconcile("ns", "demo")
    warnings = [(r, m) for k, r, m in fake.events if k == "Warning"]
    assert [r for r, _ in warnings] == ["CredentialsRegenerated"]
    assert "demo-postgres-credentials" in warnings[0][1]


def test_claims_that_cannot_grow_are_reported(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    es(fake)["spec"]["storage"] = {"size": "200Gi"}
    with pytest.raises(kopf.TemporaryError):
        handlers.reconcile("ns", "demo")  # no claim exists: every patch fails
    (warning,) = [m for k, r, m in fake.events if r == "VolumeResizeFailed"]
    assert "3 volume claim(s) to 200Gi" in warning


def _external_postgres(fake: FakeKube, secret: str) -> None:
    es(fake)["spec"]["postgres"] = {"mode": "External", "host": "pg.example.com",
                                    "database": "events", "credentialsSecret": {"name": secret}}


def test_a_referenced_secret_without_the_opt_in_label_is_not_used(fake: FakeKube) -> None:
    """Before: any Secret of the namespace named as credentialsSecret was mounted into the
    store pods (whose image the EventStore's author chooses)."""
    fake.objects[("Secret", "ns", "someone-elses")] = {
        "kind": "Secret", "metadata": {"name": "someone-elses", "namespace": "ns"}}
    _external_postgres(fake, "someone-elses")
    with pytest.raises(kopf.TemporaryError, match="allow-reference"):
        handlers.reconcile("ns", "demo")
    assert ("StatefulSet", "ns", "demo") not in fake.objects
    assert any(reason == "SecretNotAllowed" for _, reason, _ in fake.events)
    assert conditions(fake)[names.CONDITION_RECONCILED]["status"] == "False"

    _external_postgres(fake, "absent")
    with pytest.raises(kopf.TemporaryError, match="does not exist"):
        handlers.reconcile("ns", "demo")

    fake.objects[("Secret", "ns", "someone-elses")]["metadata"]["labels"] = {
        "eventstore.io/allow-reference": "true"}
    _external_postgres(fake, "someone-elses")
    handlers.reconcile("ns", "demo")
    sts = fake.objects[("StatefulSet", "ns", "demo")]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["event-db-password"]["secret"]["secretName"] == "someone-elses"


def test_images_outside_the_allow_list_are_refused(fake: FakeKube,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "STATE", handlers.OperatorState(
        allowed_image_prefixes=("registry.example.com/",)))
    es(fake)["spec"]["image"] = "evil.example.org/exfiltrate:latest"
    with pytest.raises(kopf.PermanentError, match=r"spec\.image 'evil\.example\.org"):
        handlers.reconcile("ns", "demo")
    assert ("StatefulSet", "ns", "demo") not in fake.objects
    assert any(reason == "ImageNotAllowed" for _, reason, _ in fake.events)
    es(fake)["spec"]["image"] = "registry.example.com/eventstore:1"
    es(fake)["spec"]["postgres"] = {"image": "registry.example.com/postgres:16"}
    es(fake)["spec"]["mongodb"] = {"image": "registry.example.com/mongo:7"}
    handlers.reconcile("ns", "demo")
    assert ("StatefulSet", "ns", "demo") in fake.objects


def test_operator_flag_sets_the_image_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventstore_operator import __main__ as cli

    monkeypatch.setattr(cli.kopf, "run", lambda **_: None)
    monkeypatch.setattr(cli.kopf, "configure", lambda **_: None)
    monkeypatch.setattr(handlers, "STATE", handlers.OperatorState())
    cli.main(["-n", "ns", "--allowed-image-prefix", "a/", "--allowed-image-prefix", "b/"])
    assert handlers.STATE.allowed_image_prefixes == ("a/", "b/")
    assert handlers.STATE.watch_namespaces == ["ns"]
def test_app_secret_carries_the_generated_token(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    token = fake.objects[("Secret", "ns", "demo-api-token")]["stringData"]["token"]
    assert fake.objects[("Secret", "ns", "demo-app")]["stringData"]["token"] == token


def test_recreated_eventstore_keeps_credentials_and_settings(fake: FakeKube) -> None:
    """Delete (the garbage collector removes owned children only) then re-create."""
    handlers.reconcile("ns", "demo")
    edit_config(fake, "snapshot_frequency: 7\n")
    handlers.reconcile("ns", "demo")
    before = {k: copy.deepcopy(v) for k, v in fake.objects.items() if k[0] in ("Secret", "ConfigMap")}
    for key, obj in list(fake.objects.items()):  # what the garbage collector does
        if any(r.get("uid") == "u1" for r in obj["metadata"].get("ownerReferences") or []):
            del fake.objects[key]
    kept = {k for k in before if k in fake.objects}
    assert {n for _, _, n in kept} >= {
        "demo-config", "demo-api-token", "demo-app", "demo-postgres-credentials", "demo-mongodb-credentials"
    }
    es(fake)["metadata"]["uid"] = "u2"  # the re-created EventStore
    del es(fake)["status"]
    handlers.reconcile("ns", "demo")
    for key in kept:
        assert fake.objects[key] == before[key], key
    assert es(fake)["status"]["configHash"] == config_hash(before[("ConfigMap", "ns", "demo-config")]["data"])
    assert not [e for e in fake.events if e[1] == "CredentialsRegenerated"]


def test_an_owned_config_map_from_an_older_operator_is_released(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    cm = fake.objects[("ConfigMap", "ns", "demo-config")]
    cm["metadata"]["ownerReferences"] = [{"kind": "EventStore", "uid": "u1", "name": "demo"}]
    handlers.reconcile("ns", "demo")
    meta = fake.objects[("ConfigMap", "ns", "demo-config")]["metadata"]
    assert "ownerReferences" not in meta and meta["labels"][names.LABEL_KEPT_WITH_DATA] == "true"


def test_comment_only_edit_does_not_roll(fake: FakeKube) -> None:
    """Issue 13 #7: the hash is over the parsed settings, not the text."""
    edit = "snapshot_frequency: 50\n"
    handlers.reconcile("ns", "demo")
    edit_config(fake, edit)
    handlers.reconcile("ns", "demo")
    rolled = template_hash(fake)
    edit_config(fake, "# tuned for the ledger\nsnapshot_frequency:   50   # was 100\n")
    handlers.reconcile("ns", "demo")
    assert template_hash(fake) == rolled
    assert [r for _, r, _ in fake.events].count("ConfigApplied") == 1


def test_invalid_edit_reports_every_error(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    edit_config(fake, "snapshot_frequency: 0\nretention_days: 0\n")
    handlers.reconcile("ns", "demo")
    message = conditions(fake)["ConfigValid"]["message"]
    assert "snapshot_frequency:" in message and "retention_days:" in message


def db_image(fake: FakeKube, name: str) -> str:
    pod = fake.objects[("StatefulSet", "ns", name)]["spec"]["template"]["spec"]
    image: str = pod["containers"][0]["image"]
    return image


def test_major_database_upgrade_is_refused_unless_asked(fake: FakeKube) -> None:
    """Issue 13 #2."""
    handlers.reconcile("ns", "demo")
    es(fake)["spec"]["postgres"] = {"image": "postgres:17"}
    es(fake)["spec"]["mongodb"] = {"image": "mongo:7.0.14"}  # a minor update rolls
    handlers.reconcile("ns", "demo")
    handlers.reconcile("ns", "demo")  # the resync must not repeat the Event
    assert db_image(fake, "demo-postgres") == "postgres:16"
    assert db_image(fake, "demo-mongodb") == "mongo:7.0.14"
    cond = conditions(fake)["Reconciled"]
    assert cond["status"] == "False" and cond["reason"] == "MajorVersionUpgradeRefused"
    assert "PostgreSQL 17" in cond["message"] and "PostgreSQL 16" in cond["message"]
    warnings = [m for k, r, m in fake.events if r == "MajorVersionUpgradeRefused"]
    assert len(warnings) == 1 and "allowMajorVersionUpgrade" in warnings[0]
    assert es(fake)["status"]["images"]["postgres"] == "postgres:16"

    es(fake)["spec"]["postgres"] = {"image": "postgres:17", "allowMajorVersionUpgrade": True}
    handlers.reconcile("ns", "demo")
    assert db_image(fake, "demo-postgres") == "postgres:17"
    rolled = [m for _, r, m in fake.events if r == "ImageUpdated"]
    assert rolled == [
        "StatefulSet demo-mongodb: image mongo:7 -> mongo:7.0.14; rolling its pods",
        "StatefulSet demo-postgres: image postgres:16 -> postgres:17; rolling its pods",
    ]
    assert conditions(fake)["Reconciled"]["status"] == "True"


def test_status_shows_the_images(fake: FakeKube) -> None:
    handlers.reconcile("ns", "demo")
    status = es(fake)["status"]
    assert status["image"] == names.DEFAULT_IMAGE
    assert status["images"] == {
        "store": names.DEFAULT_IMAGE,
        "postgres": names.DEFAULT_POSTGRES_IMAGE,
        "mongodb": names.DEFAULT_MONGODB_IMAGE,
    }


def test_every_reconcile_failure_is_a_warning_event(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13 #4: a StatefulSet the API server refuses (422) is a Warning Event too."""
    real_apply = fake.apply

    def refuse(obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "StatefulSet" and obj["metadata"]["name"] == "demo":
            raise kopf.PermanentError("apply StatefulSet ns/demo: HTTP 422: storage must be positive")
        return real_apply(obj)

    monkeypatch.setattr(kube, "apply", refuse)
    for _ in range(2):
        with pytest.raises(kopf.PermanentError):
            handlers.reconcile("ns", "demo")
    (warning,) = [m for k, r, m in fake.events if r == "ReconcileFailed"]
    assert "HTTP 422" in warning
    assert conditions(fake)["Reconciled"]["reason"] == "ReconcileFailed"


def test_spec_settings_changed_after_creation_is_reported(fake: FakeKube) -> None:
    """Issue 13 #6: spec.settings only seeds the ConfigMap; a later change says so."""
    handlers.reconcile("ns", "demo")
    assert conditions(fake)["SettingsSeeded"]["status"] == "True"
    es(fake)["spec"]["settings"] = {"snapshotFrequency": 10}
    handlers.reconcile("ns", "demo")
    handlers.reconcile("ns", "demo")
    cond = conditions(fake)["SettingsSeeded"]
    assert cond["status"] == "False" and "kubectl edit configmap demo-config" in cond["message"]
    assert [r for _, r, _ in fake.events].count("SpecSettingsIgnored") == 1
    es(fake)["spec"]["settings"] = {"snapshotFrequency": 100}
    handlers.reconcile("ns", "demo")
    assert conditions(fake)["SettingsSeeded"]["status"] == "True"


def _job(name: str, kind: str, when: str) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"app.kubernetes.io/name": "eventstore", "app.kubernetes.io/instance": "demo",
                       "app.kubernetes.io/component": "backup"},
        },
        "status": {"conditions": [{"type": kind, "status": "True", "lastTransitionTime": when}]},
    }


def test_spec_backup_runs_a_cronjob_and_reports_the_last_backup(fake: FakeKube) -> None:
    es(fake)["spec"]["backup"] = {"schedule": "0 * * * *", "target": {"pvc": {"claimName": "backups"}}}
    handlers.reconcile("ns", "demo")
    cron = fake.objects[("CronJob", "ns", "demo-backup")]
    assert cron["spec"]["schedule"] == "0 * * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["backup", "/backup", "--full-every", "7",
                                             "--lock-timeout", "600"]
    target = {v["name"]: v for v in pod["volumes"]}["target"]
    assert target["persistentVolumeClaim"]["claimName"] == "backups"
    assert conditions(fake)["BackupSucceeded"]["reason"] == "NoBackupYet"

    fake.objects[("Job", "ns", "demo-backup-1")] = _job("demo-backup-1", "Complete", "2026-01-01T01:00:00Z")
    fake.objects[("Job", "ns", "demo-backup-2")] = _job("demo-backup-2", "Failed", "2026-01-01T02:00:00Z")
    fake.objects[("Pod", "ns", "demo-backup-1-x")] = {
        "kind": "Pod",
        "metadata": {"name": "demo-backup-1-x", "namespace": "ns",
                     "labels": {"batch.kubernetes.io/job-name": "demo-backup-1"}},
        "status": {"containerStatuses": [{"state": {"terminated": {
            "exitCode": 0, "message": '{"position": 4194305, "segment": "segment-000001.jsonl.gz"}'}}}]},
    }
    handlers.reconcile("ns", "demo")
    handlers.reconcile("ns", "demo")
    last = es(fake)["status"]["lastBackup"]
    assert last == {"job": "demo-backup-1", "completionTime": "2026-01-01T01:00:00Z", "position": 4194305}
    cond = conditions(fake)["BackupSucceeded"]
    assert cond["status"] == "False" and "demo-backup-2 failed" in cond["message"]
    assert [r for _, r, _ in fake.events].count("BackupFailed") == 1

    del es(fake)["spec"]["backup"]
    handlers.reconcile("ns", "demo")
    assert ("CronJob", "ns", "demo-backup") not in fake.objects
    assert "BackupSucceeded" not in conditions(fake)


def test_spec_restore_runs_a_job_before_any_store_pod(fake: FakeKube) -> None:
    es(fake)["spec"]["restore"] = {"from": {"pvc": {"claimName": "backups"}}}
    handlers.reconcile("ns", "demo")
    job = fake.objects[("Job", "ns", "demo-restore")]
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["restore", "/backup"]
    target = {v["name"]: v for v in pod["volumes"]}["target"]
    assert target["persistentVolumeClaim"]["claimName"] == "backups"
    assert ("StatefulSet", "ns", "demo-postgres") in fake.objects  # the database first
    assert ("StatefulSet", "ns", "demo") not in fake.objects  # no store pod yet
    assert conditions(fake)["Reconciled"]["reason"] == "WaitingForRestore"
    assert conditions(fake)["Restored"]["reason"] == "Restoring"

    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": "t1"}]}
    handlers.reconcile("ns", "demo")
    handlers.reconcile("ns", "demo")
    assert conditions(fake)["Restored"]["reason"] == "RestoreFailed"
    assert [r for _, r, _ in fake.events].count("RestoreFailed") == 1
    assert ("StatefulSet", "ns", "demo") not in fake.objects

    job["status"] = {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "t2"}]}
    handlers.reconcile("ns", "demo")
    assert ("StatefulSet", "ns", "demo") in fake.objects
    assert es(fake)["status"]["restore"] == {"job": "demo-restore", "completionTime": "t2"}
    del fake.objects[("Job", "ns", "demo-restore")]  # e.g. cleaned up: the status remembers
    handlers.reconcile("ns", "demo")
    assert ("Job", "ns", "demo-restore") not in fake.objects
    assert conditions(fake)["Restored"]["status"] == "True"
    assert conditions(fake)["Reconciled"]["status"] == "True"


def test_major_upgrade_is_refused_over_kept_data_too(fake: FakeKube) -> None:
    """Delete (the database StatefulSet goes), then re-create with postgres:17 over the
    kept PostgreSQL 16 volume: still refused (the kept ConfigMap remembers the image)."""
    handlers.reconcile("ns", "demo")
    annotations = fake.objects[("ConfigMap", "ns", "demo-config")]["metadata"]["annotations"]
    assert annotations["eventstore.io/postgres-image"] == "postgres:16"
    for key, obj in list(fake.objects.items()):
        if obj["metadata"].get("ownerReferences"):
            del fake.objects[key]
    es(fake)["metadata"]["uid"] = "u2"
    del es(fake)["status"]
    es(fake)["spec"]["postgres"] = {"image": "postgres:17"}
    handlers.reconcile("ns", "demo")
    assert db_image(fake, "demo-postgres") == "postgres:16"
    assert conditions(fake)["Reconciled"]["reason"] == "MajorVersionUpgradeRefused"

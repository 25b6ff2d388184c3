"""kopf handlers: turn each EventStore into its children and keep them that way.

Every trigger runs the same idempotent `reconcile`: create/update/resume of the
EventStore, a periodic resync thread (drift repair for edits and for kinds the
operator does not watch, such as Secrets), an edit of the user's ConfigMap, and the
deletion of any owned child (which is re-created at once). No handler needs a
finalizer, so deleting an EventStore never waits for the operator. A restart
mid-reconcile is harmless: the resume handler runs `reconcile` again and every step
converges.

Drift repair, precisely: a deleted Service, ConfigMap (the user's or a snapshot),
StatefulSet, PodDisruptionBudget or NetworkPolicy comes back at once (watch events on
the operator's label); an edited field the operator owns, or a deleted Secret, is
repaired by the next resync (EVENTSTORE_OPERATOR_RESYNC_SECONDS, default 30).

Children are written with server-side apply (field manager `eventstore-operator`,
forced), so an edited field the operator owns is put back, and a no-op apply costs
no write. Generated Secrets and the user's ConfigMap are created once (409 is
tolerated) and never overwritten.

Handlers are registered in an explicit `registry` (not kopf's global one) so that
importing this module twice, or running it in tests, never doubles handlers. The rest of
the process's state (watched namespaces, image allow-list, locks, the resync thread) is
one `OperatorState`, `STATE`.

A reconcile is a list of named steps (`_reconcile`); each acts on the cluster and returns
what it observed, and the status is `desired_status(observed, ...)`, a pure function
tested like the builders, written with one patch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import kopf
from kubernetes.utils import parse_quantity

from eventstore.registry import check_store_settings
from eventstore.settings import SettingsError, settings_hash, validate_config_data
from eventstore_operator import builders, kube, names, trust
from eventstore_operator.builders import Obj, Owner

registry = kopf.OperatorRegistry()

#: Seconds between drift-repair passes over each EventStore (the default of
#: OperatorState.resync_seconds).
RESYNC_SECONDS = float(os.environ.get("EVENTSTORE_OPERATOR_RESYNC_SECONDS", "30"))
#: Older config snapshots kept besides the one in use, for rollbacks of the StatefulSet.
KEEP_CONFIG_SNAPSHOTS = 2

_EVENTSTORES = (names.GROUP, names.VERSION, names.PLURAL)
_OWNED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}

log = logging.getLogger(__name__)


@dataclass
class OperatorState:
    """All the state the operator process keeps besides kopf's registry, in one place.

    `__main__` replaces `STATE` with one built from its flags before kopf starts; tests
    build their own. Nothing else in this module is mutable at module level.
    """

    #: Namespaces to watch (None: all), for the resync.
    watch_namespaces: list[str] | None = None
    #: Image prefixes EventStores may use (empty: any); see trust.py.
    allowed_image_prefixes: tuple[str, ...] = ()
    resync_seconds: float = RESYNC_SECONDS
    #: The running drift-repair thread, between startup and cleanup.
    resync: Resync | None = None
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, namespace: str, name: str) -> threading.Lock:
        """One reconcile at a time per EventStore (resync, events and handlers overlap)."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: list[Obj], kind: str, status: bool, reason: str, message: str, generation: int,
    now: str | None = None,
) -> Obj:
    """A status condition; lastTransitionTime (`now`, default the clock) only moves when
    the status changes."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else (now or _now())
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _merge_conditions(previous: list[Obj], updates: list[Obj]) -> list[Obj]:
    by_type = {c["type"]: c for c in previous if "type" in c}
    for c in updates:
        by_type[c["type"]] = c
    order = [
        names.CONDITION_READY,
        names.CONDITION_CONFIG_VALID,
        names.CONDITION_RECONCILED,
        names.CONDITION_SETTINGS_SEEDED,
        names.CONDITION_BACKUP,
        names.CONDITION_RESTORED,
    ]
    return sorted(by_type.values(), key=lambda c: order.index(c["type"]) if c["type"] in order else 9)


def _patch_status(body: Obj, status: Obj) -> None:
    meta = body["metadata"]
    kube.merge_patch(names.KIND, meta["namespace"], meta["name"], {"status": status}, "status")


def _quantity(text: str) -> Decimal:
    value: Decimal = parse_quantity(text)  # type: ignore[no-untyped-call]
    return value


def _apply_statefulset(
    obj: Obj, logger: logging.Logger | logging.LoggerAdapter[Any], owner_body: Obj | None = None
) -> Obj:
    """Apply a StatefulSet; grow its volumes first if the claim size changed.

    volumeClaimTemplates are immutable, so growing storage means: patch each existing
    PVC (the StorageClass must allow expansion), delete the StatefulSet with
    propagation Orphan (the pods keep running), and create it again with the new
    template on the next pass; the new StatefulSet adopts the running pods.
    """
    meta = obj["metadata"]
    existing = kube.get("StatefulSet", meta["namespace"], meta["name"])
    if existing is not None:
        if existing["metadata"].get("deletionTimestamp"):
            raise kopf.TemporaryError(f"waiting for StatefulSet {meta['name']} to go", delay=2)
        old_size, _ = builders.claim_size(existing)
        new_size, _ = builders.claim_size(obj)
        if old_size and new_size and _quantity(old_size) != _quantity(new_size):
            replicas = int(existing["spec"].get("replicas") or 0)
            failed = []
            for ordinal in range(replicas):
                claim = names.pvc(meta["name"], ordinal)
                try:
                    kube.merge_patch(
                        "PersistentVolumeClaim",
                        meta["namespace"],
                        claim,
                        {"spec": {"resources": {"requests": {"storage": new_size}}}},
                    )
                except (kopf.TemporaryError, kopf.PermanentError) as exc:
                    # 404: not created yet (it will be, at the new size). 403/422: the
                    # StorageClass cannot expand, or the claim is not bound yet. The new
                    # template still applies to every claim created from now on.
                    logger.warning("volume claim %s not resized: %s", claim, exc)
                    failed.append(f"{claim} ({exc})")
            if failed and owner_body is not None:
                kube.post_event(
                    owner_body,
                    "Warning",
                    "VolumeResizeFailed",
                    f"could not grow {len(failed)} volume claim(s) to {new_size}: " + "; ".join(failed)[:800],
                )
            kube.delete("StatefulSet", meta["namespace"], meta["name"], propagation="Orphan")
            raise kopf.TemporaryError(
                f"StatefulSet {meta['name']}: volumes resized {old_size} -> {new_size}; "
                "re-creating the StatefulSet with the new claim template",
                delay=2,
            )
        old_image, new_image = builders.image_of(existing), builders.image_of(obj)
        if owner_body is not None and old_image != new_image:
            kube.post_event(
                owner_body,
                "Normal",
                "ImageUpdated",
                f"StatefulSet {meta['name']}: image {old_image} -> {new_image}; rolling its pods",
            )
    return kube.apply(obj)


def _check_trust(body: Obj, owner: Owner, spec: Obj, allowed_image_prefixes: tuple[str, ...]) -> None:
    """Refuse (before creating anything) a spec that would make the operator hand a Secret
    that did not opt in, or run an image outside the allow-list: see trust.py."""
    images = trust.image_problems(spec, allowed_image_prefixes)
    if images:
        kube.post_event(body, "Warning", "ImageNotAllowed", "; ".join(images))
        raise kopf.PermanentError("; ".join(images))
    secrets_read = {name: kube.get("Secret", owner.namespace, name)
                    for name in trust.referenced_secrets(spec)}
    problems = trust.secret_problems(spec, secrets_read)
    if problems:
        kube.post_event(body, "Warning", "SecretNotAllowed", "; ".join(problems))
        # Temporary: labelling the Secret later is the fix, and it changes no EventStore.
        raise kopf.TemporaryError("; ".join(problems), delay=60)


def _ensure_secrets(body: Obj, owner: Owner, spec: Obj, logger: Any) -> None:
    for secret_name, component in builders.generated_secret_names(owner, spec):
        db = ""
        if component == names.COMPONENT_API_TOKEN:
            token = secrets.token_urlsafe(32)
            created = kube.create(builders.api_token_secret(owner, token)) is not None
            # Create only (409 keeps the existing one): with the token when it is new.
            if kube.create(builders.app_secret(owner, token if created else None)) is not None:
                logger.info("created Secret %s", names.app_secret(owner.name))
            if not created:
                continue
        else:
            db = secret_name.removesuffix("-credentials")
            obj = builders.credentials_secret(owner, db, component, secrets.token_urlsafe(24))
            # Create only: an existing Secret (409) keeps its generated value forever,
            # also across a delete and re-create of the EventStore (no owner reference).
            if kube.create(obj) is None:
                continue
        logger.info("created Secret %s", secret_name)
        if db and kube.get("StatefulSet", owner.namespace, db) is not None:
            # The database was initialised with the lost password; a new one cannot match.
            kube.post_event(
                body,
                "Warning",
                "CredentialsRegenerated",
                f"Secret {secret_name} was missing and has been generated again, but the "
                f"database {db} keeps the password it was initialised with: restore the "
                f"Secret from a backup, or set the new password in the database",
            )


def _user_config(body: Obj, owner: Owner, spec: Obj) -> Obj:
    found = kube.get("ConfigMap", owner.namespace, names.config(owner.name))
    if found is not None:
        if found["metadata"].get("ownerReferences"):
            # Made by an older operator, owned by the EventStore: release it so it is
            # kept with the data when the EventStore is deleted.
            found = kube.merge_patch(
                "ConfigMap",
                owner.namespace,
                names.config(owner.name),
                {"metadata": {"ownerReferences": None, "labels": {names.LABEL_KEPT_WITH_DATA: "true"}}},
            )
        return found
    seed = builders.user_config_map(owner, spec)
    created = kube.create(seed)
    if created is None:  # created concurrently
        return kube.get("ConfigMap", owner.namespace, names.config(owner.name)) or seed
    kube.post_event(body, "Normal", "ConfigMapCreated", f"created ConfigMap {names.config(owner.name)}")
    return created


def _prune_snapshots(owner: Owner, in_use: str | None) -> None:
    selector = builders.selector_labels(owner, names.COMPONENT_CONFIG_SNAPSHOT)
    items = kube.list_objects("ConfigMap", owner.namespace, selector)
    items.sort(key=lambda o: o["metadata"].get("creationTimestamp", ""), reverse=True)
    kept = 0
    for item in items:
        name = item["metadata"]["name"]
        if name == in_use:
            continue
        if kept < KEEP_CONFIG_SNAPSHOTS:
            kept += 1
            continue
        kube.delete("ConfigMap", owner.namespace, name)


def _ready_replicas(sts: Obj | None) -> int:
    return int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)


def readiness(spec: Obj, store: Obj | None, databases: Mapping[str, Obj | None]) -> tuple[bool, str]:
    """(ready, message): all store pods ready and every in-cluster database ready."""
    want = int(spec["replicas"])
    ready = _ready_replicas(store)
    parts = [f"{ready}/{want} store pods ready"]
    ok = store is not None and ready >= want
    for label, sts in databases.items():
        db_ready = _ready_replicas(sts)
        parts.append(f"{label} {db_ready}/1 ready")
        ok = ok and db_ready >= 1
    return ok, "; ".join(parts)


def _database_statefulsets(owner: Owner, spec: Obj) -> dict[str, Obj | None]:
    out: dict[str, Obj | None] = {}
    if spec["postgres"]["mode"] == "InCluster":
        out["postgres"] = kube.get("StatefulSet", owner.namespace, names.postgres(owner.name))
    if spec["mongodb"]["mode"] == "InCluster":
        out["mongodb"] = kube.get("StatefulSet", owner.namespace, names.mongodb(owner.name))
    return out


# --- one reconcile: steps that act and observe, then a pure status --------------------


@dataclass(frozen=True)
class ConfigCheck:
    """What the config step found in the user's ConfigMap."""

    #: The settings hash of a valid ConfigMap; None when it was refused.
    digest: str | None
    #: The refusal (file, key, reason), when refused.
    error: str | None
    #: The settings the store runs after this pass: this valid one, else the last valid one.
    applied_hash: str | None
    applied_config_map: str | None

    @property
    def applies(self) -> bool:
        """There are settings to run the store on."""
        return bool(self.applied_hash and self.applied_config_map)


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile pass saw and did that the status reports."""

    name: str
    generation: int
    replicas: int
    config: ConfigCheck
    #: spec.settings still matches what seeded the ConfigMap.
    settings_seeded: bool
    #: Major-version upgrades of a database that were held back.
    refusals: tuple[str, ...]
    #: The store waits for the restore Job.
    waiting_for_restore: bool
    #: The store StatefulSet as applied (None: not applied this pass).
    store: Obj | None
    #: The in-cluster databases' StatefulSets, by component.
    databases: Mapping[str, Obj | None]
    #: Conditions the backup and restore steps report (see their functions).
    backup_conditions: tuple[Obj, ...] = ()
    restore_conditions: tuple[Obj, ...] = ()
    last_backup: Obj | None = None
    restored: Obj | None = None


def config_message(name: str, config: ConfigCheck) -> str:
    """The ConfigValid message (also the InvalidConfig Event's, posted once per message)."""
    cm = names.config(name)
    if config.error is None:
        return f"{cm} is valid (hash {config.digest})"
    keeping = (f"the store pods keep the last valid settings (hash {config.applied_hash})"
               if config.applied_hash
               else "no valid settings yet: the store StatefulSet is not created")
    return f"{cm}: {config.error}; {keeping}"


def _config_condition(observed: Observed, previous: list[Obj], now: str) -> Obj:
    valid = observed.config.error is None
    return condition(previous, names.CONDITION_CONFIG_VALID, valid,
                     "Valid" if valid else "InvalidConfig",
                     config_message(observed.name, observed.config), observed.generation, now)


def _reconciled_condition(observed: Observed, previous: list[Obj], now: str) -> Obj:
    name, generation = observed.name, observed.generation
    if observed.waiting_for_restore:
        return condition(previous, names.CONDITION_RECONCILED, False, "WaitingForRestore",
                         f"the store pods start once Job {names.restore(name)} has restored "
                         "the backup", generation, now)
    if not observed.config.applies:
        return condition(previous, names.CONDITION_RECONCILED, False, "WaitingForValidConfig",
                         f"fix {names.config(name)}: the store needs one valid configuration",
                         generation, now)
    if observed.refusals:
        return condition(previous, names.CONDITION_RECONCILED, False,
                         "MajorVersionUpgradeRefused", " ".join(observed.refusals),
                         generation, now)
    return condition(previous, names.CONDITION_RECONCILED, True, "Applied",
                     "all child objects are up to date", generation, now)


def _seed_condition(observed: Observed, previous: list[Obj], now: str) -> Obj:
    cm = names.config(observed.name)
    if observed.settings_seeded:
        return condition(previous, names.CONDITION_SETTINGS_SEEDED, True, "Seeded",
                         f"spec.settings seeded {cm}; edit {cm} to tune the store",
                         observed.generation, now)
    return condition(previous, names.CONDITION_SETTINGS_SEEDED, False, "SpecSettingsIgnored",
                     seed_mismatch_message(cm), observed.generation, now)


def seed_mismatch_message(cm: str) -> str:
    """The SettingsSeeded=False message (also the SpecSettingsIgnored Event's)."""
    return (f"spec.settings differs from what seeded {cm}, and only seeds it when the "
            f"ConfigMap is created: the store runs {cm}. Edit it instead (kubectl edit "
            f"configmap {cm})")


def desired_status(observed: Observed, status: Obj, now: str) -> Obj:
    """The EventStore's status from what one reconcile observed: a pure function (`now`
    stamps conditions whose status changed), tested like the builders."""
    previous: list[Obj] = status.get("conditions") or []
    ok, ready_message = readiness({"replicas": observed.replicas}, observed.store,
                                  observed.databases)
    ready = condition(previous, names.CONDITION_READY, ok,
                      "AllReplicasReady" if ok else "Waiting", ready_message,
                      observed.generation, now)
    updates = [ready, _config_condition(observed, previous, now),
               _reconciled_condition(observed, previous, now),
               _seed_condition(observed, previous, now),
               *observed.backup_conditions, *observed.restore_conditions]
    new_status: Obj = {
        "observedGeneration": observed.generation,
        "replicas": observed.replicas,
        "readyReplicas": _ready_replicas(observed.store),
        "conditions": [
            c for c in _merge_conditions(previous, updates)
            # spec.backup removed: its condition goes too.
            if observed.backup_conditions or c.get("type") != names.CONDITION_BACKUP
        ],
    }
    if observed.last_backup:
        new_status["lastBackup"] = observed.last_backup
    if observed.restored:
        new_status["restore"] = observed.restored
    images = {label: image
              for label, sts in {names.COMPONENT_STORE: observed.store,
                                 **observed.databases}.items()
              if (image := builders.image_of(sts))}
    if images:
        new_status["images"] = images
    if observed.store is not None:
        new_status["image"] = builders.image_of(observed.store)
    if observed.config.applied_hash:
        new_status["configHash"] = observed.config.applied_hash
    if observed.config.applied_config_map:
        new_status["configMapName"] = observed.config.applied_config_map
    return new_status


def failed_status(status: Obj, message: str, generation: int, now: str) -> Obj:
    """The status patch that reports a failed pass (Reconciled False, ReconcileFailed)."""
    previous: list[Obj] = status.get("conditions") or []
    failed = condition(previous, names.CONDITION_RECONCILED, False, "ReconcileFailed", message,
                       generation, now)
    return {"conditions": _merge_conditions(previous, [failed])}


def _check_config(body: Obj, owner: Owner, user_cm: Obj, logger: Any) -> ConfigCheck:
    """Validate the user's ConfigMap as the pods will load it (registered aggregates
    imported: the operator runs the store's image); a valid one gets its immutable
    snapshot, an invalid one a Warning Event (once per new message)."""
    status: Obj = body.get("status") or {}
    applied_hash: str | None = status.get("configHash")
    applied_cm: str | None = status.get("configMapName")
    data = user_cm.get("data") or {}
    try:
        parsed = validate_config_data(data)
        check_store_settings(parsed.store)
    except SettingsError as exc:
        check = ConfigCheck(None, str(exc), applied_hash, applied_cm)
        previous: list[Obj] = status.get("conditions") or []
        old = next((c for c in previous if c.get("type") == names.CONDITION_CONFIG_VALID), None)
        message = config_message(owner.name, check)
        if not old or old.get("status") != "False" or old.get("message") != message:
            kube.post_event(body, "Warning", "InvalidConfig", message)
            logger.warning("invalid ConfigMap: %s", message)
        return check
    # Over the parsed settings: a comment-only edit keeps the hash (no roll).
    digest = settings_hash(parsed)
    kube.create(builders.config_snapshot(owner, data, digest))  # 409: already there
    if applied_hash and applied_hash != digest:
        kube.post_event(body, "Normal", "ConfigApplied",
                        f"{names.config(owner.name)} changed (hash {digest}); rolling the "
                        "store pods")
    return ConfigCheck(digest, None, digest, names.config_snapshot(owner.name, digest))


def _apply_databases(body: Obj, owner: Owner, spec: Obj, user_cm: Obj,
                     logger: Any) -> tuple[dict[str, Obj | None], tuple[str, ...]]:
    """Databases first (the store pods need them): (their StatefulSets, refused major
    upgrades)."""
    applied: dict[str, Obj | None] = {}
    refusals: list[str] = []
    for obj in builders.in_cluster_databases(owner, spec):
        if obj["kind"] != "StatefulSet":
            kube.apply(obj)
            continue
        component = obj["metadata"]["labels"][names.LABEL_COMPONENT]
        refusal = _hold_major_upgrade(obj, spec[component], user_cm)
        if refusal:
            refusals.append(refusal)
        applied[component] = _apply_statefulset(obj, logger, body)
        _record_data_image(owner, user_cm, component, builders.image_of(applied[component]))
    previous: list[Obj] = (body.get("status") or {}).get("conditions") or []
    _report_refusals(body, previous, refusals, logger)
    return applied, tuple(refusals)


def _apply_store(body: Obj, owner: Owner, spec: Obj, config: ConfigCheck,
                 logger: Any) -> Obj | None:
    """The store's objects on the applied settings, then old config snapshots pruned."""
    assert config.applied_hash and config.applied_config_map
    store: Obj | None = None
    for obj in builders.store_objects(owner, spec, config.applied_hash,
                                      config.applied_config_map):
        if obj["kind"] == "StatefulSet":
            store = _apply_statefulset(obj, logger, body)
        else:
            kube.apply(obj)
    _prune_snapshots(owner, config.applied_config_map)
    return store


def _reconcile(body: Obj, logger: Any) -> None:
    """One pass: each step acts on the cluster and says what it saw; the status is then
    computed from that alone (`desired_status`) and written once."""
    owner = Owner.from_body(body)
    spec = builders.normalize_spec(body.get("spec"))
    status: Obj = body.get("status") or {}
    previous: list[Obj] = status.get("conditions") or []
    generation = int(body["metadata"].get("generation") or 0)

    _check_trust(body, owner, spec, STATE.allowed_image_prefixes)
    _ensure_secrets(body, owner, spec, logger)
    user_cm = _user_config(body, owner, spec)
    config = _check_config(body, owner, user_cm, logger)
    databases, refusals = _apply_databases(body, owner, spec, user_cm, logger)
    seeded = _check_seed(body, owner, spec, user_cm)
    restore_conditions, restored, hold = _reconcile_restore(
        owner, spec, status, previous, generation, body)
    store = None
    if not hold and config.applies:
        store = _apply_store(body, owner, spec, config, logger)
    backup_conditions, last_backup = _reconcile_backup(owner, spec, previous, generation, body)

    observed = Observed(
        name=owner.name, generation=generation, replicas=int(spec["replicas"]), config=config,
        settings_seeded=seeded, refusals=refusals, waiting_for_restore=hold, store=store,
        databases=databases, backup_conditions=tuple(backup_conditions),
        restore_conditions=tuple(restore_conditions), last_backup=last_backup,
        restored=restored)
    _patch_status(body, desired_status(observed, status, _now()))


def _reconcile_backup(
    owner: Owner, spec: Obj, previous: list[Obj], generation: int, body: Obj
) -> tuple[list[Obj], Obj | None]:
    """Apply (or remove) the backup CronJob; the BackupSucceeded condition from its Jobs."""
    cronjob = builders.backup_cronjob(owner, spec)
    if cronjob is None:
        if any(c.get("type") == names.CONDITION_BACKUP for c in previous):
            kube.delete("CronJob", owner.namespace, names.backup(owner.name))
        return [], None
    kube.apply(cronjob)
    jobs = kube.list_objects("Job", owner.namespace, builders.selector_labels(owner, names.COMPONENT_BACKUP))
    last, succeeded, message = builders.backup_status(jobs)
    if last:
        pods = kube.list_objects("Pod", owner.namespace, {"batch.kubernetes.io/job-name": last["job"]})
        position = builders.backup_position(pods)
        if position is not None:
            last["position"] = position
    old = next((c for c in previous if c.get("type") == names.CONDITION_BACKUP), None)
    if succeeded is False and not (old and old.get("status") == "False" and old.get("message") == message):
        kube.post_event(body, "Warning", "BackupFailed", message)
    cond = condition(
        previous,
        names.CONDITION_BACKUP,
        succeeded is not False,
        {None: "NoBackupYet", True: "Succeeded", False: "BackupFailed"}[succeeded],
        message,
        generation,
    )
    return [cond], last


def _reconcile_restore(
    owner: Owner, spec: Obj, status: Obj, previous: list[Obj], generation: int, body: Obj
) -> tuple[list[Obj], Obj | None, bool]:
    """spec.restore: run the restore Job once, before any store pod; (conditions, the
    status.restore record, whether the store must wait)."""
    job = builders.restore_job(owner, spec)
    if job is None:
        return [], None, False
    name = names.restore(owner.name)

    def result(ok: bool, reason: str, message: str) -> list[Obj]:
        return [condition(previous, names.CONDITION_RESTORED, ok, reason, message, generation)]

    done: Obj | None = status.get("restore")
    if done:
        message = f"restored by Job {done.get('job')} at {done.get('completionTime')}"
        return result(True, "Restored", message), done, False
    if kube.get("StatefulSet", owner.namespace, names.store(owner.name)) is not None:
        message = "spec.restore only applies when the EventStore is created: the store exists already"
        return result(False, "NotApplicable", message), None, False
    kube.create(job)  # 409: running or finished already
    selector = builders.selector_labels(owner, names.COMPONENT_RESTORE)
    jobs = kube.list_objects("Job", owner.namespace, selector)
    finished = builders.job_finished(next((j for j in jobs if j["metadata"]["name"] == name), None))
    if finished is None:
        message = f"Job {name} is restoring the backup; the store pods wait for it"
        return result(False, "Restoring", message), None, True
    ok, when = finished
    if ok:
        record = {"job": name, "completionTime": when}
        message = f"restored by Job {name} at {when}"
        return result(True, "Restored", message), record, False
    message = (
        f"Job {name} failed at {when} (kubectl logs -n {owner.namespace} job/{name}); fix the cause, "
        f"then delete the Job to retry"
    )
    old = next((c for c in previous if c.get("type") == names.CONDITION_RESTORED), None)
    if not old or old.get("reason") != "RestoreFailed":
        kube.post_event(body, "Warning", "RestoreFailed", message)
    return result(False, "RestoreFailed", message), None, True


def _data_image_annotation(component: str) -> str:
    return f"{names.GROUP}/{component}-image"


def _hold_major_upgrade(obj: Obj, db_spec: Obj, user_cm: Obj) -> str | None:
    """Keep a database StatefulSet on its running image when the spec changes the major
    version without `allowMajorVersionUpgrade`; returns the refusal, if any.

    "Running" is the StatefulSet's image, or, when there is none (an EventStore deleted
    and re-created over its kept volumes), the image the data last ran with, recorded on
    the kept ConfigMap by `_record_data_image`."""
    meta = obj["metadata"]
    component = meta["labels"][names.LABEL_COMPONENT]
    recorded = (user_cm.get("metadata", {}).get("annotations") or {}).get(_data_image_annotation(component))
    running = builders.image_of(kube.get("StatefulSet", meta["namespace"], meta["name"])) or recorded
    wanted = builders.image_of(obj) or ""
    refusal = builders.major_upgrade_refusal(
        component,
        running,
        wanted,
        bool(db_spec.get("allowMajorVersionUpgrade")),
    )
    if refusal and running:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = running
    return refusal


def _record_data_image(owner: Owner, user_cm: Obj, component: str, image: str | None) -> None:
    """Note on the kept ConfigMap which image the database's data runs with (see above)."""
    key = _data_image_annotation(component)
    if image and (user_cm.get("metadata", {}).get("annotations") or {}).get(key) != image:
        patch = {"metadata": {"annotations": {key: image}}}
        kube.merge_patch("ConfigMap", owner.namespace, names.config(owner.name), patch)


def _report_refusals(body: Obj, previous: list[Obj], refusals: list[str], logger: Any) -> None:
    """One Warning Event per new refusal (the resync must not repeat it every pass)."""
    old = next((c for c in previous if c.get("type") == names.CONDITION_RECONCILED), None)
    message = " ".join(refusals)
    repeated = old and old.get("reason") == "MajorVersionUpgradeRefused" and old.get("message") == message
    if refusals and not repeated:
        kube.post_event(body, "Warning", "MajorVersionUpgradeRefused", message)
        logger.warning("%s", message)


def _check_seed(body: Obj, owner: Owner, spec: Obj, user_cm: Obj) -> bool:
    """Whether spec.settings still matches what seeded the ConfigMap (issue 13 #6).

    spec.settings only seeds `<name>-config` when it is created; after that the
    ConfigMap is the tuning surface. A later change of spec.settings (or a re-created
    EventStore finding the kept ConfigMap) is said so, once, rather than ignored silently.
    """
    seeded = (user_cm.get("metadata", {}).get("annotations") or {}).get(names.ANNOTATION_SEED_HASH)
    if seeded is None or seeded == builders.seed_hash(spec):
        return True
    previous: list[Obj] = (body.get("status") or {}).get("conditions") or []
    old = next((c for c in previous if c.get("type") == names.CONDITION_SETTINGS_SEEDED), None)
    if not old or old.get("status") != "False":
        kube.post_event(body, "Warning", "SpecSettingsIgnored",
                        seed_mismatch_message(names.config(owner.name)))
    return False


def reconcile(namespace: str, name: str, logger: Any = log) -> None:
    """Bring every child of EventStore namespace/name to its desired state."""
    with STATE.lock(namespace, name):
        body = kube.get(names.KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # gone or going: the garbage collector removes the children
        try:
            _reconcile(body, logger)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            _report_failure(body, exc)
            raise


def _report_failure(body: Obj, exc: Exception) -> None:
    status: Obj = body.get("status") or {}
    previous: list[Obj] = status.get("conditions") or []
    generation = int(body["metadata"].get("generation") or 0)
    old = next((c for c in previous if c.get("type") == names.CONDITION_RECONCILED), None)
    if not old or old.get("reason") != "ReconcileFailed" or old.get("message") != str(exc):
        # The operator's own Event: kopf posts none for failures of the resync thread or of
        # the watch-event handlers, and the condition alone is easy to miss (issue 13 #4).
        kube.post_event(body, "Warning", "ReconcileFailed", str(exc))
    try:
        _patch_status(body, failed_status(status, str(exc), generation, _now()))
    except (kopf.TemporaryError, kopf.PermanentError) as patch_exc:
        log.warning("could not report the failure on the status: %s", patch_exc)


def refresh_status(namespace: str, name: str) -> None:
    """Update only readyReplicas and the Ready condition (on StatefulSet status changes)."""
    with STATE.lock(namespace, name):
        body = kube.get(names.KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        owner = Owner.from_body(body)
        spec = builders.normalize_spec(body.get("spec"))
        status: Obj = body.get("status") or {}
        previous: list[Obj] = status.get("conditions") or []
        store = kube.get("StatefulSet", namespace, names.store(name))
        ok, message = readiness(spec, store, _database_statefulsets(owner, spec))
        generation = int(body["metadata"].get("generation") or 0)
        ready = condition(
            previous,
            names.CONDITION_READY,
            ok,
            "AllReplicasReady" if ok else "Waiting",
            message,
            generation,
        )
        old = next((c for c in previous if c.get("type") == names.CONDITION_READY), None)
        if (
            old
            and {k: old.get(k) for k in ready} == ready
            and status.get("readyReplicas") == _ready_replicas(store)
        ):
            return
        _patch_status(
            body,
            {
                "readyReplicas": _ready_replicas(store),
                "conditions": _merge_conditions(previous, [ready]),
            },
        )


# --- kopf wiring ----------------------------------------------------------------------


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping in annotations under our prefix, not in .status."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{names.GROUP}/operator"
    # No CRD/namespace observation: needs no cluster-wide read access (least privilege).
    # A missing EventStore CRD is waited for by `wait_for_crd` instead.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING  # handler failures become Warning Events


#: Seconds between checks for the EventStore CRD while the operator waits for it.
CRD_POLL_SECONDS = 2.0


@kopf.on.startup(registry=registry)
async def wait_for_crd(logger: Any, **_: Any) -> None:
    """Start watching only once the EventStore CRD is served (issue 13 #10).

    With scanning disabled (least privilege: no cluster-wide read of CRDs), kopf looks
    up the resources to watch once, when its watchers start; an operator started
    before the CRD existed would never watch EventStores. kopf starts its watchers
    after the startup handlers, so this one waits, asking API discovery (readable by
    every authenticated client) until the group version serves the resource.
    """
    waited = 0.0
    while not await asyncio.to_thread(kube.served, names.API_VERSION, names.PLURAL):
        if waited % 60 == 0:
            logger.warning(
                "the %s CRD is not installed yet: waiting for it (kubectl apply -f manifests/crd.yaml)",
                names.CRD_NAME,
            )
        await asyncio.sleep(CRD_POLL_SECONDS)
        waited += CRD_POLL_SECONDS


@kopf.on.login(registry=registry)
def login(settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the ServiceAccount token; elsewhere: $KUBECONFIG / ~/.kube/config.

    An explicit registry gets none of kopf's default login handlers, so name them here
    (kopf's own, independent of the kubernetes client's version).
    """
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
        settings=settings, **kwargs
    ) or kopf.login_with_kubeconfig(settings=settings, **kwargs)
    return info


@kopf.on.resume(*_EVENTSTORES, registry=registry)
@kopf.on.create(*_EVENTSTORES, registry=registry)
@kopf.on.update(*_EVENTSTORES, registry=registry)
def reconcile_handler(name: str, namespace: str | None, logger: Any, **_: Any) -> None:
    reconcile(namespace or "", name, logger)


class Resync:
    """Periodic drift repair: every interval, reconcile every watched EventStore.

    Catches what no watch reports: edited fields of children, deleted Secrets (not
    watched: the operator may not read Secrets), events missed while disconnected.
    Not a kopf timer on purpose: kopf puts a finalizer on every object with a timer,
    and a finalizer would block deleting an EventStore whenever the operator is down
    (for example after `helm uninstall` removed it first).
    """

    def __init__(self, namespaces: list[str] | None, interval: float) -> None:
        self.namespaces = namespaces  # None: every namespace
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eventstore-resync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def run_once(self) -> None:
        scopes: list[str | None] = list(self.namespaces) if self.namespaces else [None]
        for scope in scopes:
            try:
                items = kube.list_objects(names.KIND, scope)
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.warning("resync: cannot list EventStores: %s", exc)
                continue
            for item in items:
                if self._stop.is_set():
                    return
                meta = item["metadata"]
                try:
                    reconcile(meta["namespace"], meta["name"])
                except (kopf.TemporaryError, kopf.PermanentError) as exc:
                    log.warning("resync of %s/%s: %s", meta["namespace"], meta["name"], exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()


#: The operator process's state (see OperatorState).
STATE = OperatorState()


@kopf.on.startup(registry=registry)
def start_resync(**_: Any) -> None:
    STATE.resync = Resync(STATE.watch_namespaces, STATE.resync_seconds)
    STATE.resync.start()


@kopf.on.cleanup(registry=registry)
def stop_resync(**_: Any) -> None:
    if STATE.resync is not None:
        STATE.resync.stop()


@kopf.on.delete(*_EVENTSTORES, optional=True, registry=registry)
def deleted(name: str, namespace: str | None, logger: Any, **_: Any) -> None:
    """Nothing to clean up: owner references let the garbage collector do it.

    Optional, so no finalizer is added and deletion never waits for the operator. The
    store's PersistentVolumeClaims stay (the StatefulSet's default Retain policy), so
    the data survives an accidental delete; remove them with
    `kubectl delete pvc -l app.kubernetes.io/instance=<name>`.
    """
    logger.info("EventStore %s/%s deleted; children are garbage-collected", namespace, name)


def _owner_of(labels: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    refs = body.get("metadata", {}).get("ownerReferences") or []
    for ref in refs:
        if ref.get("kind") == names.KIND and ref.get("apiVersion", "").startswith(names.GROUP):
            return str(ref["name"])
    return labels.get(names.LABEL_INSTANCE)


@kopf.on.event(
    "v1",
    "configmaps",
    labels={**_OWNED, names.LABEL_COMPONENT: names.COMPONENT_CONFIG},
    registry=registry,
)
def config_map_event(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, logger: Any, **_: Any
) -> None:
    """An edit (or deletion) of the user's ConfigMap: validate and roll, or report."""
    owner = _owner_of(labels, body)
    if owner and namespace:
        reconcile(namespace, owner, logger)


def _on_child_deleted(
    event: kopf.RawEvent,
    namespace: str | None,
    labels: Mapping[str, str],
    body: kopf.Body,
    logger: Any,
) -> None:
    if event.get("type") != "DELETED":
        return
    owner = _owner_of(labels, body)
    if owner and namespace:
        logger.info("owned %s deleted; repairing", body.get("kind", "object"))
        reconcile(namespace, owner, logger)


def _deleted(type: str | None, **_: Any) -> bool:
    """Only deletions of these children need a reaction (edits: the resync)."""
    return type == "DELETED"


@kopf.on.event("v1", "services", labels=_OWNED, when=_deleted, registry=registry)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=_OWNED, when=_deleted, registry=registry)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=_OWNED, when=_deleted, registry=registry)
@kopf.on.event(
    "v1",
    "configmaps",
    labels={**_OWNED, names.LABEL_COMPONENT: names.COMPONENT_CONFIG_SNAPSHOT},
    when=_deleted,
    registry=registry,
)
def child_event(
    event: kopf.RawEvent,
    namespace: str | None,
    labels: Mapping[str, str],
    body: kopf.Body,
    logger: Any,
    **_: Any,
) -> None:
    """A deleted child comes back at once (edits are repaired by the timer)."""
    _on_child_deleted(event, namespace, labels, body, logger)


@kopf.on.event("apps", "v1", "statefulsets", labels=_OWNED, registry=registry)
def statefulset_event(
    event: kopf.RawEvent,
    namespace: str | None,
    labels: Mapping[str, str],
    body: kopf.Body,
    logger: Any,
    **_: Any,
) -> None:
    """Deleted: re-create. Otherwise: its readiness feeds the EventStore's status."""
    if event.get("type") == "DELETED":
        _on_child_deleted(event, namespace, labels, body, logger)
        return
    owner = _owner_of(labels, body)
    if owner and namespace:
        refresh_status(namespace, owner)

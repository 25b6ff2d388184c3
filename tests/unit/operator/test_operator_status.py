"""The EventStore's status as a pure function of what a reconcile pass observed
(`handlers.desired_status`), tested like the builders: no cluster, no fake API."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from eventstore_operator import handlers, names
from eventstore_operator.handlers import ConfigCheck, Observed, desired_status, failed_status

NOW = "2026-12-01T07:00:00Z"
EARLIER = "2026-11-30T07:00:00Z"
VALID = ConfigCheck(digest="abc", error=None, applied_hash="abc",
                    applied_config_map="demo-config-abc")


def sts(image: str, ready: int) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"image": image}]}}},
            "status": {"readyReplicas": ready}}


def observed(**changes: Any) -> Observed:
    base = Observed(name="demo", generation=4, replicas=3, config=VALID, settings_seeded=True,
                    refusals=(), waiting_for_restore=False, store=sts("es:1", 3),
                    databases={"postgres": sts("postgres:17", 1)})
    return dataclasses.replace(base, **changes)


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_applied_and_ready() -> None:
    status = desired_status(observed(), {}, NOW)
    got = conditions(status)
    assert [c["type"] for c in status["conditions"]] == [
        names.CONDITION_READY, names.CONDITION_CONFIG_VALID, names.CONDITION_RECONCILED,
        names.CONDITION_SETTINGS_SEEDED]
    assert got[names.CONDITION_READY]["status"] == "True"
    assert got[names.CONDITION_READY]["message"] == "3/3 store pods ready; postgres 1/1 ready"
    assert got[names.CONDITION_RECONCILED]["reason"] == "Applied"
    assert all(c["observedGeneration"] == 4 and c["lastTransitionTime"] == NOW
               for c in got.values())
    assert status["configHash"] == "abc" and status["configMapName"] == "demo-config-abc"
    assert status["images"] == {"store": "es:1", "postgres": "postgres:17"}
    assert (status["image"], status["replicas"], status["readyReplicas"]) == ("es:1", 3, 3)


def test_an_invalid_edit_keeps_the_last_good_settings() -> None:
    config = ConfigCheck(digest=None, error="event-store.yaml: x: unknown key",
                         applied_hash="abc", applied_config_map="demo-config-abc")
    status = desired_status(observed(config=config), {}, NOW)
    valid = conditions(status)[names.CONDITION_CONFIG_VALID]
    assert (valid["status"], valid["reason"]) == ("False", "InvalidConfig")
    assert valid["message"] == ("demo-config: event-store.yaml: x: unknown key; the store pods "
                                "keep the last valid settings (hash abc)")
    assert conditions(status)[names.CONDITION_RECONCILED]["reason"] == "Applied"
    assert status["configHash"] == "abc"


def test_no_valid_settings_yet() -> None:
    config = ConfigCheck(digest=None, error="bad", applied_hash=None, applied_config_map=None)
    status = desired_status(observed(config=config, store=None), {}, NOW)
    got = conditions(status)
    assert got[names.CONDITION_RECONCILED]["reason"] == "WaitingForValidConfig"
    assert "not created" in got[names.CONDITION_CONFIG_VALID]["message"]
    assert got[names.CONDITION_READY]["status"] == "False"
    assert "configHash" not in status and "image" not in status


def test_restore_and_refusals_decide_reconciled() -> None:
    waiting = desired_status(observed(waiting_for_restore=True, store=None), {}, NOW)
    assert conditions(waiting)[names.CONDITION_RECONCILED]["reason"] == "WaitingForRestore"
    refused = desired_status(observed(refusals=("postgres 16 -> 17 refused.",)), {}, NOW)
    reconciled = conditions(refused)[names.CONDITION_RECONCILED]
    assert (reconciled["reason"], reconciled["message"]) == ("MajorVersionUpgradeRefused",
                                                             "postgres 16 -> 17 refused.")


def test_transition_time_moves_only_when_the_status_changes() -> None:
    previous = desired_status(observed(store=sts("es:1", 1)), {}, EARLIER)
    assert conditions(previous)[names.CONDITION_READY]["status"] == "False"
    before = copy.deepcopy(previous)
    status = desired_status(observed(), previous, NOW)
    assert previous == before  # the input is not modified
    got = conditions(status)
    assert got[names.CONDITION_READY]["lastTransitionTime"] == NOW  # False -> True
    assert got[names.CONDITION_CONFIG_VALID]["lastTransitionTime"] == EARLIER  # still True
    assert desired_status(observed(), previous, NOW) == status  # same input, same status


def test_backup_condition_goes_with_spec_backup() -> None:
    backup = handlers.condition([], names.CONDITION_BACKUP, True, "Succeeded", "ok", 4, NOW)
    with_backup = desired_status(observed(backup_conditions=(backup,),
                                          last_backup={"job": "j"}), {}, NOW)
    assert names.CONDITION_BACKUP in conditions(with_backup)
    assert with_backup["lastBackup"] == {"job": "j"}
    without = desired_status(observed(), with_backup, NOW)
    assert names.CONDITION_BACKUP not in conditions(without) and "lastBackup" not in without


def test_settings_seed_mismatch_and_failure_patch() -> None:
    status = desired_status(observed(settings_seeded=False), {}, NOW)
    seeded = conditions(status)[names.CONDITION_SETTINGS_SEEDED]
    assert (seeded["status"], seeded["reason"]) == ("False", "SpecSettingsIgnored")
    failed = failed_status(status, "boom", 5, NOW)
    reconciled = conditions(failed)[names.CONDITION_RECONCILED]
    assert (reconciled["reason"], reconciled["message"], reconciled["observedGeneration"]) == (
        "ReconcileFailed", "boom", 5)
    assert len(failed["conditions"]) == len(status["conditions"])

"""Snapshots are the store pods' job: running `eventstore serve` processes on real PostgreSQL
and the MongoDB wire server take the snapshots that their event-store.yaml asks for, serve
aggregates at /aggregates (temporal queries included), and keep snapshots coming across a
MongoDB outage and a restart with a new cadence."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from eventstore import EventStore, Repository
from eventstore.examples.bank import Account
from eventstore.server.client import EventStoreClient
from eventstore.snapshots.base import SnapshotStore
from tests.harness.ferretdb import FerretDBServer
from tests.server.conftest import TOKEN, ServerProcess, write_settings

pytestmark = [pytest.mark.postgres, pytest.mark.mongo]

ACCOUNT = "eventstore.examples.bank:Account"


def _config(tmp_path: Path, name: str, store_yaml: str) -> Path:
    return write_settings(tmp_path / name, store=store_yaml,
                          projections="workers: 2\nbatch_size: 50\n")


def _store_yaml(frequency: int, max_events: int = 1000) -> str:
    return (f"snapshot_frequency: {frequency}\nmax_events_per_aggregate: {max_events}\n"
            f'aggregates:\n  Account: "{ACCOUNT}"\n')


def _env(postgres_url: str, mongo_url: str, config_dir: Path) -> dict[str, str]:
    return {"EVENTSTORE_URL": postgres_url, "SNAPSHOT_STORE_URL": mongo_url,
            "EVENTSTORE_CONFIG_DIR": str(config_dir), "EVENTSTORE_SNAPSHOT_KEEP": "100"}


def _snapshotter(server: ServerProcess) -> dict[str, Any]:
    with server.client() as http:
        rows = http.get("/projections").json()["projections"]
    (row,) = [r for r in rows if r["name"] == "snapshotter"]
    return dict(row)


def _wait_balanced(pods: list[ServerProcess], timeout: float = 30) -> None:
    """Until the snapshotter's 16 partitions are split across every pod, none above its
    share (so no partition changes hands while the test appends). Every pod owning some is
    not enough: [8, 7, 1] still releases partitions to the third pod, and a snapshot was
    then taken by two pods."""
    deadline = time.monotonic() + timeout
    owned: list[int] = []
    share = -(-16 // len(pods))
    while time.monotonic() < deadline:
        owned = [len(_snapshotter(p)["owned_here"]) for p in pods]
        if sum(owned) == 16 and all(owned) and max(owned) <= share:
            return
        time.sleep(0.2)
    raise AssertionError(f"partitions never balanced: {owned}")


def _wait_caught_up(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = _snapshotter(server)
        if row["lag_events"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"snapshotter still behind after {timeout}s: {row}")


def _taken(server: ServerProcess) -> float:
    with server.client() as http:
        text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "eventstore_snapshotter_snapshots":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


def _versions(mongo_url: str, account_id: str) -> list[int]:
    with SnapshotStore.connect(mongo_url, keep=100) as snapshots:
        return sorted(s.version for s in snapshots.history("Account", account_id))


def _remote_deposits(pods: list[ServerProcess], account_id: str, up_to: int) -> None:
    """Save deposits through remote repositories, one event per save, round robin over the
    pods, until the account is at version `up_to` (opening it first if new)."""
    clients = [EventStoreClient(p.url, TOKEN) for p in pods]
    try:
        repos = [Repository(c, Account) for c in clients]
        account = repos[0].execute(account_id, lambda a: a.open("ada") if a.owner is None else None,
                                   create=True)
        turn = 0
        while account.version < up_to:
            repo = repos[turn % len(repos)]
            account = repo.load(account_id)
            account.deposit(account.version)
            repo.save(account)
            turn += 1
    finally:
        for client in clients:
            client.close()


def _aggregate(server: ServerProcess, account_id: str, **params: Any) -> dict[str, Any]:
    with server.client() as http:
        reply = http.get(f"/aggregates/Account/{account_id}", params=params)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_three_pods_take_each_snapshot_once_and_follow_a_new_cadence(
        servers: Callable[..., ServerProcess], postgres_url: str, mongo_url: str,
        tmp_path: Path) -> None:
    config = _config(tmp_path, "every-10", _store_yaml(10))
    pods = [servers(_env(postgres_url, mongo_url, config), name=f"pod-{i}") for i in range(3)]
    _wait_balanced(pods)

    _remote_deposits(pods, "acc-1", 95)
    _wait_caught_up(pods[0])
    assert _versions(mongo_url, "acc-1") == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    # Each snapshot was written by exactly one pod: one partition, one owner.
    per_pod = [_taken(p) for p in pods]
    assert sum(per_pod) == 9 and sorted(per_pod)[:2] == [0, 0], per_pod

    state = _aggregate(pods[1], "acc-1")
    assert state["version"] == 95 and state["snapshot_version"] == 90
    assert state["events_replayed"] == 5 <= 9
    assert state["state"]["balance"] == sum(range(1, 95))
    with pods[2].client() as http:
        assert http.get("/settings").json()["store"]["snapshot_frequency"] == 10

    # The ConfigMap changes to 25 and the pods restart onto it.
    for pod in pods:
        assert pod.stop() == 0
    faster = _config(tmp_path, "every-25", _store_yaml(25))
    pods = [servers(_env(postgres_url, mongo_url, faster), name=f"pod-b{i}") for i in range(3)]
    _wait_balanced(pods)
    _remote_deposits(pods, "acc-1", 160)
    _wait_caught_up(pods[0])
    assert _versions(mongo_url, "acc-1") == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150]
    assert sum(_taken(p) for p in pods) == 3
    state = _aggregate(pods[0], "acc-1")
    assert (state["snapshot_version"], state["events_replayed"]) == (150, 10)


def test_max_events_per_aggregate_bounds_every_load_over_http(
        servers: Callable[..., ServerProcess], postgres_url: str, mongo_url: str,
        tmp_path: Path) -> None:
    config = _config(tmp_path, "bounded", _store_yaml(1000, max_events=30))
    pod = servers(_env(postgres_url, mongo_url, config))
    _remote_deposits([pod], "acc-1", 100)
    _wait_caught_up(pod)
    assert _versions(mongo_url, "acc-1") == [31, 62, 93]
    replayed = [_aggregate(pod, "acc-1", at_version=v)["events_replayed"] for v in range(1, 101)]
    assert max(replayed) <= 30
    with pod.client() as http:
        text = http.get("/metrics").text
    assert "eventstore_events_replayed_per_load_bucket" in text
    assert "eventstore_snapshot_creation_seconds_count" in text


def test_mongodb_outage_delays_snapshots_and_loses_nothing(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    with FerretDBServer() as mongo:
        mongo_url = f"{mongo.url}outage"
        config = _config(tmp_path, "every-10", _store_yaml(10))
        pods = [servers(_env(postgres_url, mongo_url, config), name=f"pod-{i}")
                for i in range(2)]
        _remote_deposits(pods, "acc-1", 25)
        _wait_caught_up(pods[0])
        assert _versions(mongo_url, "acc-1") == [10, 20]

        mongo.stop()
        _remote_deposits(pods, "acc-1", 57)        # appends go on while MongoDB is down
        time.sleep(2)
        assert _snapshotter(pods[0])["lag_events"] > 0
        assert all(_snapshotter(p)["dead_letters"] == 0 for p in pods)

        mongo.start()
        _wait_caught_up(pods[0], timeout=90)
        assert _versions(mongo_url, "acc-1") == [10, 20, 30, 40, 50]
        with EventStore.connect(postgres_url) as store, \
                SnapshotStore.connect(mongo_url, keep=100) as snapshots:
            assert store.stream_version("acc-1") == 57
            plain = Repository(store, Account)  # no snapshots: a replay from the first event
            for snapshot in snapshots.history("Account", "acc-1"):
                expected = plain.load("acc-1", at_version=snapshot.version).snapshot_state()
                assert snapshot.state == expected, snapshot.version


@pytest.fixture(scope="module")
def temporal_pod(tmp_path_factory: pytest.TempPathFactory, postgres_server: Any,
                 ferretdb_server: FerretDBServer) -> Iterator[ServerProcess]:
    """One pod snapshotting every 4 events, shared by the property test's examples."""
    from tests.server.conftest import start_server

    tmp = tmp_path_factory.mktemp("temporal")
    url = postgres_server.create_database("temporal_http")
    config = _config(tmp, "every-4", _store_yaml(4))
    pod = start_server(tmp, _env(url, f"{ferretdb_server.url}temporal", config))
    try:
        yield pod
    finally:
        pod.stop()


_ids = iter(range(10**6))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(amounts=st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=14))
def test_at_version_and_as_of_over_http_agree_with_a_full_replay_for_every_prefix(
        temporal_pod: ServerProcess, amounts: list[int]) -> None:
    account_id = f"prop-{next(_ids)}"
    with EventStoreClient(temporal_pod.url, TOKEN) as client:
        repo = Repository(client, Account)
        account = Account(account_id)
        account.open("ada")
        repo.save(account)
        for amount in amounts:
            account.deposit(amount)
            repo.save(account)
        events = client.read_stream(account_id)
    _wait_caught_up(temporal_pod)
    for event in events:
        expected = Account(account_id)
        expected.load_from_history([e for e in events if e.version <= event.version])
        by_version = _aggregate(temporal_pod, account_id, at_version=event.version)
        by_time = _aggregate(temporal_pod, account_id, as_of=event.timestamp.isoformat())
        for reply in (by_version, by_time):
            assert reply["version"] == event.version
            assert reply["state"] == expected.snapshot_state()
            assert reply["events_replayed"] < 4 or reply["snapshot_version"] is None


def test_aggregates_route_refusals(servers: Callable[..., ServerProcess], postgres_url: str,
                                   mongo_url: str, tmp_path: Path) -> None:
    config = _config(tmp_path, "every-10", _store_yaml(10))
    pod = servers({**_env(postgres_url, mongo_url, config), "EVENTSTORE_MAX_REPLAY_EVENTS": "2"})
    _remote_deposits([pod], "acc-1", 3)
    with pod.client() as http:
        # Bounded like every other read: no snapshot yet, so version 3 means 3 events.
        assert http.get("/aggregates/Account/acc-1", params={"at_version": 2}).status_code == 200
        too_long = http.get("/aggregates/Account/acc-1")
        assert too_long.status_code == 422 and too_long.json()["error"] == "replay_too_long"
        unknown = http.get("/aggregates/Customer/acc-1")
        assert unknown.status_code == 404 and "registered: Account" in unknown.json()["message"]
        missing = http.get("/aggregates/Account/nobody")
        assert missing.status_code == 404 and missing.json()["error"] == "aggregate_not_found"
        before = http.get("/aggregates/Account/acc-1",
                          params={"as_of": datetime(2000, 1, 1).isoformat()})
        assert before.status_code == 404
        assert http.get("/aggregates/Account/acc-1", params={"at_version": 0}).status_code == 422
        assert httpx.get(f"{pod.url}/aggregates/Account/acc-1").status_code == 401
        assert httpx.get(f"{pod.url}/settings").status_code == 401
        schema = http.get("/openapi.json").json()
    assert "/aggregates/{aggregate_type}/{aggregate_id}" in schema["paths"]
    assert "/settings" in schema["paths"]


def test_an_unimportable_registration_stops_the_server_naming_the_key(
        servers: Callable[..., ServerProcess], postgres_url: str, mongo_url: str,
        tmp_path: Path) -> None:
    config = _config(tmp_path, "bad", 'aggregates:\n  Account: "nowhere_xyz.bank:Account"\n')
    pod = servers(_env(postgres_url, mongo_url, config), wait=False)
    assert pod.process.wait(timeout=60) == 3
    assert "aggregates.Account: cannot import 'nowhere_xyz.bank'" in pod.log()


def test_retention_archives_what_the_pods_own_snapshots_cover(
        servers: Callable[..., ServerProcess], postgres_url: str, mongo_url: str,
        tmp_path: Path) -> None:
    import psycopg

    config = _config(tmp_path, "retained", _store_yaml(10) + "retention_days: 30\n")
    env = {**_env(postgres_url, mongo_url, config), "EVENTSTORE_RETENTION_INTERVAL_SECONDS": "1"}
    pod = servers(env)
    _remote_deposits([pod], "acc-1", 25)
    _wait_caught_up(pod)
    assert _versions(mongo_url, "acc-1") == [10, 20]
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # age the first 15 events
        conn.execute("UPDATE es_events SET recorded_at = recorded_at - interval '40 days' "
                     "WHERE stream_id = 'acc-1' AND version <= 15")
    deadline = time.monotonic() + 30
    archived: list[Any] = []
    while time.monotonic() < deadline and len(archived) < 15:
        with pod.client() as http:
            archived = http.get("/streams/acc-1/archive").json()["events"]
        time.sleep(0.3)
    # Old and covered (<= the snapshot at 20): versions 1..15 move; 16..25 are too young.
    assert [e["version"] for e in archived] == list(range(1, 16))
    state = _aggregate(pod, "acc-1")
    assert state["version"] == 25 and state["state"]["balance"] == sum(range(1, 25))

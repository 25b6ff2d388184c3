"""Snapshots through the Repository, on real PostgreSQL and the MongoDB wire server:
they make loads fast and never make them wrong."""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from typing import Any

import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import ConcurrencyError, EventStore, Repository
from eventstore.examples.bank import Account
from eventstore.snapshots.base import Snapshot, SnapshotStore

pytestmark = [pytest.mark.postgres]
_ids = count()


@pytest.fixture(scope="module")
def event_store(postgres_server: Any) -> Iterator[EventStore]:
    store = EventStore.connect(postgres_server.create_database("snapshots_repo"), pool_max_size=8)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(params=["mongo", "sqlite"])
def snapshot_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/snapshots.db"
    return str(request.getfixturevalue("mongo_url"))


@pytest.fixture
def snapshots(snapshot_url: str) -> Iterator[SnapshotStore]:
    store = SnapshotStore.connect(snapshot_url)
    yield store
    store.close()


def new_id(prefix: str = "acc") -> str:
    return f"{prefix}-{next(_ids)}-{random.randrange(10**9)}"


def replay(store: EventStore, aggregate_id: str, upto: int | None = None) -> Account:
    account = Account(aggregate_id)
    account.load_from_history(store.read_stream(aggregate_id, to_version=upto))
    return account


def state(account: Account) -> tuple[Any, ...]:
    return (account.version, account.owner, account.balance, account.transactions)


def test_100k_event_aggregate_replays_at_most_100_events(
    event_store: EventStore, snapshots: SnapshotStore
) -> None:
    repo = Repository(event_store, Account, snapshots=snapshots, snapshot_frequency=100)
    account_id = new_id()
    account = Account(account_id)
    account.open("Big")
    rng = random.Random(7)
    while account.version < 100_000:
        for _ in range(min(rng.randrange(50, 400), 100_000 - account.version)):
            account.deposit(1)
        repo.save(account)
    loaded, info = repo.load_with_info(account_id)
    assert loaded.version == 100_000 and loaded.balance == 99_999
    assert info.snapshot_version is not None
    assert info.events_replayed <= 100, info
    # Loading at an earlier version starts from an older kept snapshot, not from event 1.
    _, earlier = repo.load_with_info(account_id, at_version=99_990)
    assert earlier.events_replayed < 1_000 and earlier.snapshot_version is not None


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(st.integers(min_value=-50, max_value=100), min_size=1, max_size=12),
                     min_size=1, max_size=10),
    frequency=st.integers(min_value=1, max_value=15),
)
def test_snapshot_plus_tail_equals_full_replay_for_every_prefix(
    event_store: EventStore, snapshots: SnapshotStore, batches: list[list[int]], frequency: int
) -> None:
    repo = Repository(event_store, Account, snapshots=snapshots, snapshot_frequency=frequency)
    plain = Repository(event_store, Account)
    account_id = new_id("prop")
    account = Account(account_id)
    account.open("P")
    for batch in batches:
        for amount in batch:
            if amount > 0:
                account.deposit(amount)
            elif amount < 0 and account.balance >= -amount:
                account.withdraw(-amount)
        repo.save(account)
        if random.random() < 0.3:  # sometimes work from a freshly loaded copy
            account = repo.load(account_id)
    events = event_store.read_stream(account_id)
    assert state(repo.load(account_id)) == state(replay(event_store, account_id))
    for event in events:
        expected = state(replay(event_store, account_id, event.version))
        assert state(repo.load(account_id, at_version=event.version)) == expected
        assert state(plain.load(account_id, at_version=event.version)) == expected
        later = [e for e in events if e.version > event.version]
        if not later or later[0].timestamp > event.timestamp:
            assert state(repo.load(account_id, as_of=event.timestamp)) == expected


def test_snapshot_is_taken_only_after_a_successful_save(
    event_store: EventStore, snapshots: SnapshotStore
) -> None:
    repo = Repository(event_store, Account, snapshots=snapshots, snapshot_frequency=2)
    account_id = new_id()
    first = Account(account_id)
    first.open("A")
    repo.save(first)
    stale, fresh = repo.load(account_id), repo.load(account_id)
    fresh.deposit(1)
    repo.save(fresh)
    assert [s.version for s in snapshots.history("Account", account_id)] == [2]
    stale.deposit(5)
    stale.deposit(5)
    with pytest.raises(ConcurrencyError):
        repo.save(stale)
    assert [s.version for s in snapshots.history("Account", account_id)] == [2]


def test_corrupt_or_outdated_snapshots_are_ignored_with_a_log_line(
    event_store: EventStore, snapshots: SnapshotStore, snapshot_url: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    class AccountV2(Account):
        """The same account after its state's shape changed (and no upcast_state)."""

        aggregate_type = "Account"
        state_schema_version = 2

    repo = Repository(event_store, AccountV2, snapshots=snapshots, snapshot_frequency=1000)
    account_id = new_id()
    account = AccountV2(account_id)
    account.open("A")
    for _ in range(9):
        account.deposit(10)
    repo.save(account)
    now = datetime.now(UTC)
    # A snapshot in the older state schema (and with a lie in it): it must not be trusted.
    snapshots.save(Snapshot("Account", account_id, 10, {"owner": "Mallory", "balance": 10**9,
                                                        "transactions": 0}, 1, now))
    with caplog.at_level(logging.WARNING):
        loaded, info = repo.load_with_info(account_id)
    assert (loaded.owner, loaded.balance) == ("A", 90)
    assert info.snapshot_version is None and info.snapshot_ignored == "schema"
    assert any("state schema" in r.getMessage() for r in caplog.records)

    # A corrupt document written straight into the backend.
    snapshots.delete("Account", account_id)
    _write_corrupt(snapshot_url, account_id)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loaded, info = repo.load_with_info(account_id)
    assert (loaded.owner, loaded.balance, info.snapshot_version) == ("A", 90, None)
    assert any(account_id in r.getMessage() for r in caplog.records)


def _write_corrupt(snapshot_url: str, account_id: str) -> None:
    """A document the store cannot decode, written straight into its backend."""
    if snapshot_url.startswith("mongodb://"):
        server, database = snapshot_url.rsplit("/", 1)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server)
        client[database]["snapshots"].insert_one(
            {"aggregate_type": "Account", "aggregate_id": account_id, "version": 10,
             "state": "not an object", "state_schema_version": 1})
        client.close()
    else:
        with sqlite3.connect(snapshot_url.removeprefix("sqlite:///")) as conn:
            conn.execute("INSERT INTO es_snapshots VALUES ('Account', ?, 10, '{not json', 1, 0)",
                         (account_id,))


@pytest.mark.mongo
def test_mongo_down_saves_succeed_loads_replay_and_snapshots_resume(
    event_store: EventStore, ferretdb_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    snapshots = SnapshotStore.connect(f"{ferretdb_server.url}outage{next(_ids)}", timeout_s=1.0)
    repo = Repository(event_store, Account, snapshots=snapshots, snapshot_frequency=5)
    account_id = new_id()
    account = Account(account_id)
    account.open("A")
    for _ in range(5):
        account.deposit(1)
    repo.save(account)
    assert [s.version for s in snapshots.history("Account", account_id)] == [6]

    ferretdb_server.stop()
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(5):
                account.deposit(1)
            repo.save(account)  # the snapshot at 11 fails; the save does not
            loaded, info = repo.load_with_info(account_id)
        assert (loaded.version, loaded.balance) == (11, 10)
        assert info.snapshot_ignored == "unavailable" and info.events_replayed == 11
        assert any("snapshot" in r.getMessage() for r in caplog.records)
    finally:
        ferretdb_server.start()
    for _ in range(5):
        account.deposit(1)
    repo.save(account)
    assert snapshots.history("Account", account_id)[0].version == 16
    loaded, info = repo.load_with_info(account_id)
    assert (loaded.balance, info.snapshot_version, info.events_replayed) == (15, 16, 0)
    snapshots.close()


def test_direct_mongo_documents_carry_the_snapshot_fields(ferretdb_server: Any) -> None:
    url = f"{ferretdb_server.url}fields{next(_ids)}"
    store = SnapshotStore.connect(url)
    store.save(Snapshot("Account", "a-1", 3, {"balance": 1}, 2, datetime.now(UTC)))
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(ferretdb_server.url)
    doc = client[url.rsplit("/", 1)[1]]["snapshots"].find_one({"aggregate_id": "a-1"})
    assert doc is not None
    assert {"aggregate_type", "aggregate_id", "version", "state", "state_schema_version",
            "taken_at"} <= set(doc)
    client.close()
    store.close()


def test_older_snapshot_state_is_upcast_when_the_aggregate_says_how(
    event_store: EventStore, snapshots: SnapshotStore
) -> None:
    class AccountV2(Account):
        """State v2 renamed `transactions` to `operations` and can convert v1 snapshots."""

        aggregate_type = "Account"
        state_schema_version = 2

        @classmethod
        def upcast_state(cls, state: dict[str, Any], from_version: int) -> dict[str, Any] | None:
            return {**state, "transactions": state.pop("ops_v1")} if from_version == 1 else None

    account_id = new_id()
    old = Account(account_id)
    old.open("A")
    old.deposit(5)
    Repository(event_store, Account).save(old)
    snapshots.save(Snapshot("Account", account_id, 2, {"owner": "A", "balance": 5, "ops_v1": 1},
                            1, datetime.now(UTC)))
    loaded, info = Repository(event_store, AccountV2, snapshots=snapshots).load_with_info(account_id)
    assert (loaded.balance, loaded.transactions, info.snapshot_version) == (5, 1, 2)


def test_max_events_per_aggregate_forces_a_snapshot(
    event_store: EventStore, snapshots: SnapshotStore
) -> None:
    """With a frequency too high to ever trigger, a load may still replay at most
    max_events_per_aggregate events: passing it forces a snapshot on save."""
    repo = Repository(event_store, Account, snapshots=snapshots, snapshot_frequency=1_000_000,
                      max_events_per_aggregate=50)
    account_id = new_id()
    account = Account(account_id)
    account.open("A")
    for round_ in range(6):
        for _ in range(20):
            account.deposit(1)
        repo.save(account)
        _, info = repo.load_with_info(account_id)
        assert info.events_replayed <= 50, (round_, info)
    assert snapshots.history("Account", account_id)

"""Retention on real PostgreSQL with both snapshot stores (MongoDB wire server and SQLite):
archived events leave the hot table, stay in the archive, and loads give the same state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from eventstore import EventStore, Repository
from eventstore.examples.bank import Account
from eventstore.projections.backends import RETENTION_LOCK
from eventstore.projections.bank import AccountBalances
from eventstore.projections.runner import ProjectionRunner
from eventstore.retention import run_retention
from eventstore.server.client import EventStoreClient
from eventstore.settings import ProjectionSettings
from eventstore.snapshots.base import SnapshotStore
from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["mongo", "sqlite"])
def snapshots(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SnapshotStore]:
    if request.param == "mongo":
        url = str(request.getfixturevalue("mongo_url"))
    else:
        url = f"sqlite:///{tmp_path}/snapshots.db"
    store = SnapshotStore.connect(url)
    yield store
    store.close()


@pytest.fixture
def store(postgres_url: str) -> Iterator[EventStore]:
    store = EventStore.connect(postgres_url)
    store.migrate()
    yield store
    store.close()


def _account(repo: Repository[Account], account_id: str, deposits: int) -> None:
    account = Account(account_id)
    account.open("owner")
    repo.save(account)
    for amount in range(1, deposits + 1):
        account.deposit(amount)
        repo.save(account)  # one event per save: a snapshot every snapshot_frequency


def test_retention_archives_covered_events_and_loads_agree(
        store: EventStore, snapshots: SnapshotStore, postgres_url: str,
        servers: Callable[..., ServerProcess]) -> None:
    repo = Repository(store, Account, snapshots=snapshots, snapshot_frequency=10)
    _account(repo, "acc-old", 24)          # versions 1..25, snapshots at 10 and 20
    plain = Repository(store, Account)      # no snapshots: nothing may be archived
    _account(plain, "acc-nosnap", 5)
    before = repo.load("acc-old")
    before_v5 = repo.load("acc-old", at_version=5)
    log_before = store.read_stream("acc-old")

    # Nothing is old enough yet.
    assert run_retention(store, snapshots, 1, ["Account"]).events_archived == 0

    report = run_retention(store, snapshots, 1, ["Account"],
                           now=datetime.now(UTC) + timedelta(days=2))
    assert report.ran and report.events_archived == 20 and report.streams_archived == 1
    assert report.streams_without_snapshot == 1

    hot = store.read_stream("acc-old")
    archived = store.read_archived_stream("acc-old")
    assert [e.version for e in hot] == list(range(21, 26))
    assert [e.version for e in archived] == list(range(1, 21))
    assert archived + hot == log_before                       # nothing lost, nothing changed
    assert [e.version for e in store.read_stream("acc-nosnap")] == list(range(1, 7))
    assert all(e.aggregate_id != "acc-old" or e.version > 20 for e in store.read_all())

    after = repo.load("acc-old")
    assert (after.balance, after.version, after.owner) == (before.balance, before.version,
                                                            before.owner)
    assert repo.load("acc-old", at_version=5).balance == before_v5.balance  # via the archive
    assert Repository(store, Account).load("acc-old").balance == before.balance  # no snapshots

    # The archive read over HTTP, from a server process on the same database.
    server = servers({"EVENTSTORE_URL": postgres_url})
    with EventStoreClient(server.url, server.token) as client:
        assert [e.version for e in client.read_archived_stream("acc-old")] == list(range(1, 21))
        assert [e.version for e in client.read_archived_stream("acc-old", 18, 2)] == [18, 19]
        assert [e.version for e in client.read_stream("acc-old")] == list(range(21, 26))

    # A projection rebuilt after retention still sees every event (it reads the archive).
    runner = ProjectionRunner(store, {"balances": AccountBalances()},
                              ProjectionSettings(workers=2, batch_size=7))
    runner.start()
    try:
        runner.rebuild("balances")
        assert runner.wait_caught_up("balances", 30)
    finally:
        runner.stop()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT balance, events_applied FROM proj_account_balances "
                           "WHERE account_id = 'acc-old'").fetchone()
    assert row == (before.balance, 25)


def test_retention_runs_on_one_replica_at_a_time(store: EventStore, snapshots: SnapshotStore,
                                                 postgres_url: str) -> None:
    repo = Repository(store, Account, snapshots=snapshots, snapshot_frequency=2)
    _account(repo, "acc-1", 3)
    later = datetime.now(UTC) + timedelta(days=3)
    with psycopg.connect(postgres_url, autocommit=True) as other_replica:
        other_replica.execute("SELECT pg_advisory_lock(%s)", (RETENTION_LOCK,))
        assert run_retention(store, snapshots, 1, ["Account"], now=later).ran is False
        assert len(store.read_stream("acc-1")) == 4
    assert run_retention(store, snapshots, 1, ["Account"], now=later).events_archived == 4


def test_max_events_per_aggregate_forces_a_snapshot(store: EventStore,
                                                    snapshots: SnapshotStore) -> None:
    """max_events_per_aggregate: the most events a load replays after the newest snapshot.
    With snapshots every 1000 events, a cap of 5 still snapshots after 6 unsnapshotted events,
    so every load replays at most 5 events."""
    repo: Repository[Any] = Repository(store, Account, snapshots=snapshots,
                                       snapshot_frequency=1000, max_events_per_aggregate=5)
    account = Account("acc-cap")
    account.open("cap")
    repo.save(account)
    replayed = []
    for amount in range(1, 20):
        account = repo.load("acc-cap")
        account.deposit(amount)
        repo.save(account)
        replayed.append(repo.load_with_info("acc-cap")[1].events_replayed)
    assert max(replayed) <= 5
    latest = snapshots.latest("Account", "acc-cap")
    assert latest is not None and latest.version >= 15
    uncapped = Repository(store, Account, snapshots=None, snapshot_frequency=1000)
    assert uncapped.load_with_info("acc-cap")[1].events_replayed == 20

"""The HTTP client stands where a library store stands: `Repository(EventStoreClient(...),
Account)` passes the library repository's own aggregate tests against a running server, and
two remote clients racing on one account lose no deposit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from eventstore import EventStore, NewEvent, Repository
from eventstore.events import AGGREGATE_TYPE_KEY
from eventstore.examples.bank import Account
from eventstore.server.client import EventStoreClient
from eventstore.server.remote_snapshots import HTTPSnapshotStore
from tests.server.conftest import TOKEN, ServerProcess

# The library repository's tests, collected here a second time with `store` below: the
# HTTP client in place of the embedded store.
from tests.unit.test_aggregate_and_upcasting import (  # noqa: F401
    test_load_missing_and_temporal_loads,
    test_repository_loads_through_upcasters,
    test_save_and_load_round_trip,
    test_second_writer_gets_concurrency_error,
    test_two_new_aggregates_with_one_id_conflict,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(server: ServerProcess) -> Iterator[EventStoreClient]:
    with EventStoreClient(server.url, TOKEN) as client:
        yield client


def test_a_remote_repository_loads_from_the_servers_snapshots(store: EventStoreClient) -> None:
    repo = Repository(store, Account)
    assert isinstance(repo.snapshots, HTTPSnapshotStore) and not repo.takes_snapshots
    account = Account("acc-1")
    account.open("ada")
    for amount in range(1, 13):
        account.deposit(amount)
    repo.save(account)
    assert all(e.metadata[AGGREGATE_TYPE_KEY] == "Account" for e in store.read_stream("acc-1"))
    assert store.get_snapshot("acc-1", "Account") is None  # the pods' job, not the client's
    # A planted state (balance 55; the events say 45) proves the load started from it.
    store.put_snapshot("acc-1", "Account", 10, Account("x").snapshot_state()
                       | {"owner": "ada", "balance": 55, "transactions": 9})
    loaded, info = repo.load_with_info("acc-1")
    assert (info.snapshot_version, info.events_replayed) == (10, 3)
    assert (loaded.balance, loaded.version) == (55 + 10 + 11 + 12, 13)


def test_two_remote_clients_racing_on_one_account_lose_no_deposit(
        server: ServerProcess) -> None:
    with EventStoreClient(server.url, TOKEN) as setup:
        Repository(setup, Account).execute("acc", lambda a: a.open("ada"), create=True)

    def deposit_many() -> None:
        with EventStoreClient(server.url, TOKEN) as client:
            repo = Repository(client, Account)
            for _ in range(30):
                repo.execute("acc", lambda a: a.deposit(1), attempts=100)

    threads = [threading.Thread(target=deposit_many) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with EventStoreClient(server.url, TOKEN) as client:
        account = Repository(client, Account).load("acc")
        assert (account.balance, account.version) == (60, 61)
        assert client.stream_version("acc") == 61
        # The conflicts really happened: the server counted 409s.
        assert "eventstore_append_conflicts_total" in client.metrics()


def test_client_reads_page_through_long_streams(store: EventStoreClient) -> None:
    repo = Repository(store, Account)
    account = Account("long")
    account.open("ada")
    for _ in range(2_400):
        account.deposit(1)
    for start in range(0, 2_401, 1_000):  # the server takes at most 1,000 events per append
        chunk = account.get_uncommitted_changes()[start:start + 1_000]
        store.append("long", chunk, expected_version=start if start else 0)
    assert [e.version for e in store.read_stream("long")] == list(range(1, 2_402))
    assert len(store.read_stream("long", from_version=5, limit=1_500)) == 1_500
    back = store.read_stream("long", backwards=True, limit=1_200)
    assert [e.version for e in back] == list(range(2_401, 1_201, -1))
    assert repo.load("long").balance == 2_400


def test_numbers_survive_the_http_round_trip(store: EventStoreClient) -> None:
    """Integers past 64 bits stay exact through every JSON step: the server's decoding of
    jsonb, its page encoding and the client's decoding (each takes orjson's fast path only
    where it is exact); floats of 1e16 and more stay floats."""
    numbers = {"past_u64": 2**64 + 1, "big": 10**30 + 7, "negative": -(2**63) - 1,
               "int": 1250, "float": 0.1, "small": 2.5e-8, "text": "ünïcødé \u2603",
               "float_1e16": 1e16, "float_big": -1.5e300, "floats": [1e22, 2.5e19]}
    store.append("numbers", [NewEvent("Measured", numbers, metadata={"trace": 10**20}),
                             NewEvent("Measured", {"n": 1})])
    first = store.read_stream("numbers")[0]
    logged = next(e for e in store.read_all() if e.aggregate_id == "numbers")
    subscription = store.subscribe(logged.position)
    try:
        followed = next(iter(subscription))
    finally:
        subscription.close()
    for read in (first, logged, followed):
        assert read.metadata == {"trace": 10**20}
        assert sorted((k, repr(v)) for k, v in read.payload.items()) == sorted(
            (k, repr(v)) for k, v in numbers.items())


def test_a_wholly_archived_stream_loads_over_http(store: EventStoreClient, postgres_url: str
                                                  ) -> None:
    """Retention archived every event of the stream: the client still finds them (its
    stream_version counted only live events, so such a load found no aggregate)."""
    repo = Repository(store, Account)
    account = Account("acc-old")
    account.open("ada")
    for amount in range(1, 6):
        account.deposit(amount)
    repo.save(account)
    with EventStore.connect(postgres_url) as library:
        assert library.archive_stream("acc-old", 6, datetime.now(UTC) + timedelta(days=1)) == 6
    assert store.read_stream("acc-old") == [] and store.stream_version("acc-old") == 6
    assert store.stream_version("nobody") == 0
    loaded, info = repo.load_with_info("acc-old")  # no snapshot: the server takes them at 100
    assert (loaded.balance, loaded.version, info.snapshot_version) == (15, 6, None)
    assert repo.load("acc-old", at_version=3).balance == 3
    assert [e.version for e in store.read_archived_stream("acc-old", 2, to_version=4)] == [2, 3, 4]

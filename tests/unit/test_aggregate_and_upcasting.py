"""Aggregates, the repository on the embedded store, and upcaster chains."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from eventstore import (
    Aggregate,
    AggregateNotFound,
    ConcurrencyError,
    EventStore,
    NewEvent,
    Repository,
    UpcasterRegistry,
    UpcastError,
    ValidationError,
)
from eventstore.examples.bank import Account, InsufficientFunds


@pytest.fixture
def store() -> Iterator[EventStore]:
    store = EventStore.connect("sqlite://:memory:")
    store.migrate()
    yield store
    store.close()


def test_raise_event_applies_and_records(store: EventStore) -> None:
    account = Account("acc-1")
    account.open("Alice")
    account.deposit(100)
    assert (account.balance, account.version) == (100, 2)
    assert [e.type for e in account.get_uncommitted_changes()] == ["AccountOpened", "Deposited"]
    with pytest.raises(InsufficientFunds):
        account.withdraw(101)
    assert account.version == 2 and len(account.get_uncommitted_changes()) == 2


def test_save_and_load_round_trip(store: EventStore) -> None:
    repo = Repository(store, Account)
    account = Account("acc-1")
    account.open("Alice")
    account.deposit(100)
    repo.save(account)
    assert account.get_uncommitted_changes() == []
    loaded = repo.load("acc-1")
    assert (loaded.owner, loaded.balance, loaded.version) == ("Alice", 100, 2)
    assert repo.save(loaded) is None  # nothing to save


def test_second_writer_gets_concurrency_error(store: EventStore) -> None:
    repo = Repository(store, Account)
    account = Account("acc-1")
    account.open("Alice")
    repo.save(account)
    first, second = repo.load("acc-1"), repo.load("acc-1")
    first.deposit(1)
    repo.save(first)
    second.deposit(2)
    with pytest.raises(ConcurrencyError) as info:
        repo.save(second)
    assert info.value.actual_version == 2
    assert repo.load("acc-1").balance == 1


def test_two_new_aggregates_with_one_id_conflict(store: EventStore) -> None:
    repo = Repository(store, Account)
    a, b = Account("same"), Account("same")
    a.open("A")
    b.open("B")
    repo.save(a)
    with pytest.raises(ConcurrencyError):
        repo.save(b)


def test_execute_retries_until_it_wins(tmp_path: object) -> None:
    store = EventStore.connect(f"sqlite:///{tmp_path}/e.db")
    store.migrate()
    repo = Repository(store, Account)
    account = Account("acc")
    account.open("A")
    repo.save(account)

    def deposit_many() -> None:
        for _ in range(25):
            repo.execute("acc", lambda a: a.deposit(1), attempts=50)

    threads = [threading.Thread(target=deposit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert repo.load("acc").balance == 100
    store.close()


def test_load_missing_and_temporal_loads(store: EventStore) -> None:
    repo = Repository(store, Account)
    with pytest.raises(AggregateNotFound):
        repo.load("nobody")
    account = Account("acc")
    account.open("A")
    account.deposit(10)
    repo.save(account)
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    repo.execute("acc", lambda a: a.deposit(5))
    assert repo.load("acc", at_version=2).balance == 10
    assert repo.load("acc", as_of=between).balance == 10
    assert repo.load("acc").balance == 15
    with pytest.raises(AggregateNotFound):
        repo.load("acc", as_of=datetime(2000, 1, 1, tzinfo=UTC))
    with pytest.raises(AggregateNotFound, match="version 9"):
        repo.load("acc", at_version=9)
    with pytest.raises(ValidationError):
        repo.load("acc", at_version=0)


def test_load_from_history_refuses_gaps() -> None:
    store = EventStore.connect("sqlite://:memory:")
    store.migrate()
    store.append("acc", [NewEvent("AccountOpened", {"owner": "A"}), NewEvent("Deposited", {"amount": 1})])
    events = store.read_stream("acc")
    with pytest.raises(ValidationError, match="gap"):
        Account("acc").load_from_history([events[1]])


def test_missing_apply_method_names_the_fix() -> None:
    class Thing(Aggregate):
        pass

    with pytest.raises(NotImplementedError, match="apply_Happened"):
        Thing("t").raise_event("Happened", {})


def test_snapshot_state_defaults_to_public_attributes() -> None:
    account = Account("acc")
    account.open("Alice")
    account.deposit(3)
    state = account.snapshot_state()
    assert state == {"owner": "Alice", "balance": 3, "transactions": 1}
    fresh = Account("acc")
    fresh.restore_state(state)
    assert (fresh.owner, fresh.balance) == ("Alice", 3)
    with pytest.raises(ValidationError):
        fresh.restore_state({"_private": 1})


def test_unserialisable_state_says_override() -> None:
    class Odd(Aggregate):
        def __init__(self, aggregate_id: str) -> None:
            super().__init__(aggregate_id)
            self.when = datetime.now(UTC)

    with pytest.raises(ValidationError, match="snapshot_state"):
        Odd("x").snapshot_state()


# -- upcasting ---------------------------------------------------------------------------

def make_registry() -> UpcasterRegistry:
    registry = UpcasterRegistry()

    @registry.register("Deposited", 1)
    def cents(payload: dict[str, object]) -> dict[str, object]:  # v1: {"amount": 1.25} euros
        return {"amount": round(float(payload["amount"]) * 100)}  # type: ignore[arg-type]

    @registry.register("Deposited", 2)
    def currency(payload: dict[str, object]) -> dict[str, object]:  # v2 -> v3 adds currency
        return {**payload, "currency": "EUR"}

    return registry


def test_upcaster_chain_v1_v2_to_v3(store: EventStore) -> None:
    registry = make_registry()
    assert registry.current_version("Deposited") == 3
    store.append("acc", [
        NewEvent("Deposited", {"amount": 1.25}, schema_version=1),
        NewEvent("Deposited", {"amount": 300}, schema_version=2),
        NewEvent("Deposited", {"amount": 400, "currency": "USD"}, schema_version=3),
        NewEvent("AccountOpened", {"owner": "x"}),
    ])
    upcast = list(registry.upcast_all(store.read_stream("acc")))
    assert [e.payload for e in upcast[:3]] == [
        {"amount": 125, "currency": "EUR"}, {"amount": 300, "currency": "EUR"},
        {"amount": 400, "currency": "USD"}]
    assert [e.schema_version for e in upcast] == [3, 3, 3, 1]
    # Stored events are never rewritten.
    assert store.read_stream("acc")[0].payload == {"amount": 1.25}


def test_repository_loads_through_upcasters(store: EventStore) -> None:
    store.append("acc", [NewEvent("AccountOpened", {"owner": "A"}),
                         NewEvent("Deposited", {"amount": 2.5}, schema_version=1)])
    repo = Repository(store, Account, upcasters=make_registry())
    assert repo.load("acc").balance == 250


def test_missing_step_and_failing_step_raise_upcast_error(store: EventStore) -> None:
    registry = UpcasterRegistry()
    registry.add("Deposited", 2, lambda p: p)  # no v1 -> v2 step
    store.append("acc", [NewEvent("Deposited", {"amount": 1}, schema_version=1)])
    with pytest.raises(UpcastError, match="no upcaster"):
        registry.upcast(store.read_stream("acc")[0])
    failing = UpcasterRegistry()
    failing.add("Deposited", 1, lambda p: {"amount": p["missing"]})
    with pytest.raises(UpcastError, match="failed"):
        failing.upcast(store.read_stream("acc")[0])
    with pytest.raises(ValidationError, match="already registered"):
        failing.add("Deposited", 1, lambda p: p)

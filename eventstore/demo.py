"""`eventstore demo`: the bank-account domain on the embedded default, narrated.

It shows, in one run: commands turned into events, the audit trail, the state at an
earlier time, a concurrent modification caught by optimistic concurrency, and a replay of
the whole log into a read model that agrees with the aggregates.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TextIO

from eventstore.errors import ConcurrencyError
from eventstore.examples.bank import Account
from eventstore.repository import Repository
from eventstore.store.base import EventStore


def run_demo(url: str, out: TextIO, snapshot_url: str | None = "sqlite://:memory:") -> None:
    store = EventStore.connect(url)
    try:
        _run(store, out, snapshot_url)
    finally:
        store.close()


def _run(store: EventStore, out: TextIO, snapshot_url: str | None) -> None:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    store.migrate()
    snapshots = None
    if snapshot_url:
        from eventstore.snapshots.base import SnapshotStore

        snapshots = SnapshotStore.connect(snapshot_url)
    repo = Repository(store, Account, snapshots=snapshots, snapshot_frequency=25)
    suffix = datetime.now(UTC).strftime("%H%M%S%f")
    alice, bob = f"acc-alice-{suffix}", f"acc-bob-{suffix}"

    say(f"== 1. Commands become events (store: {type(store).__name__})")
    for account_id, owner, deposits in ((alice, "Alice", [100_00, 250_00]), (bob, "Bob", [40_00])):
        account = Account(account_id)
        account.open(owner)
        for amount in deposits:
            account.deposit(amount)
        repo.save(account)
        say(f"   opened {account_id} for {owner}, deposited {_money(sum(deposits))}")
    time.sleep(0.01)
    before_withdrawal = datetime.now(UTC)
    time.sleep(0.01)
    repo.execute(alice, lambda a: a.withdraw(75_00))
    say(f"   withdrew {_money(75_00)} from {alice}")

    say("\n== 2. The audit trail of Alice's account (nothing is ever overwritten)")
    for event in store.read_stream(alice):
        say(f"   v{event.version}  {event.timestamp:%H:%M:%S.%f}  {event.type:<14} "
            f"{event.payload}  position={event.position}")

    say("\n== 3. Time travel: the account as it was before the withdrawal")
    then = repo.load(alice, as_of=before_withdrawal)
    now = repo.load(alice)
    say(f"   at {before_withdrawal:%H:%M:%S.%f}: balance {_money(then.balance)} (version {then.version})")
    say(f"   now:             balance {_money(now.balance)} (version {now.version})")
    v2 = repo.load(alice, at_version=2)
    say(f"   at version 2:    balance {_money(v2.balance)}")

    say("\n== 4. Two clerks change Bob's account at the same time")
    clerk_1 = repo.load(bob)
    clerk_2 = repo.load(bob)
    clerk_1.deposit(10_00)
    repo.save(clerk_1)
    say(f"   clerk 1 deposited {_money(10_00)} (saved at version {clerk_1.version})")
    clerk_2.withdraw(40_00)
    try:
        repo.save(clerk_2)
        say("   clerk 2 saved too -- this should not happen")
    except ConcurrencyError as exc:
        say(f"   clerk 2's save was refused: {exc}")
    retried = repo.execute(bob, lambda a: a.withdraw(40_00))
    say(f"   clerk 2 retried on fresh state: balance {_money(retried.balance)}, "
        f"version {retried.version}")

    if snapshots is not None:
        say("\n== 5. Snapshots: a long-lived account loads without replaying its history")
        busy = f"acc-busy-{suffix}"
        account = Account(busy)
        account.open("Busy Bee")
        for batch in (30, 30, 30, 30, 3):
            for _ in range(batch):
                account.deposit(1_00)
            repo.save(account)
        loaded, info = repo.load_with_info(busy)
        say(f"   {busy}: {loaded.version} events, snapshot every {repo.snapshot_frequency}; "
            f"loaded from the snapshot at version {info.snapshot_version} + "
            f"{info.events_replayed} events -> balance {_money(loaded.balance)}")

    say("\n== 6. Replay: rebuild a balances read model from the global log")
    balances: dict[str, int] = {}
    replayed = 0
    for event in store.subscribe(from_position=0, idle_timeout=0.0):
        if event.aggregate_id not in (alice, bob):
            continue
        replayed += 1
        sign = {"Deposited": 1, "Withdrawn": -1}.get(event.type, 0)
        balances[event.aggregate_id] = (balances.get(event.aggregate_id, 0)
                                        + sign * event.payload.get("amount", 0))
    for account_id, balance in balances.items():
        loaded = repo.load(account_id)
        agree = "agrees" if loaded.balance == balance else "DISAGREES"
        say(f"   {account_id}: {_money(balance)} from {replayed} replayed events "
            f"({agree} with the aggregate)")
    stats = store.stats()
    say(f"\n   store: {stats.events} events in {stats.streams} streams, {stats.bytes} bytes")
    if snapshots is not None:
        snapshots.close()


def _money(cents: int) -> str:
    return f"${cents / 100:,.2f}"

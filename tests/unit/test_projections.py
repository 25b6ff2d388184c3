"""The projection runner on the embedded SQLite store: order, retries, dead letters,
rebuild, upcasting and the checkpoint compare-and-set."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from eventstore import EventStore, NewEvent, RecordedEvent, UpcasterRegistry
from eventstore.errors import ValidationError
from eventstore.projections import Projection, ReadModelTx, load_projection
from eventstore.projections.bank import AccountBalances
from eventstore.projections.runner import ProjectionRunner
from eventstore.settings import ProjectionSettings
from eventstore.store.sqlite_datastore import sqlite_partition

upcasters = UpcasterRegistry()
upcasters.add("Deposited", 1, lambda p: {"amount": p["cents"]})


class Recorder(Projection):
    """Remembers what it saw (in memory and in a table); fails on {"fail": true}."""

    upcasters = upcasters

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def setup(self, tx: ReadModelTx) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS seen (stream text, version integer)")

    def reset(self, tx: ReadModelTx) -> None:
        tx.execute("DELETE FROM seen")

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        self.calls.append((event.aggregate_id, event.version))
        if event.payload.get("fail"):
            raise RuntimeError("boom")
        if event.type == "Deposited":
            assert "amount" in event.payload  # upcast before it reaches us
        tx.execute("INSERT INTO seen VALUES (%s, %s)", (event.aggregate_id, event.version))


class BatchFailer(Recorder):
    """Overrides handle_batch: the runner cannot know which event failed."""

    def handle_batch(self, events: Sequence[RecordedEvent], tx: ReadModelTx) -> None:
        for event in events:
            self.handle(event, tx)


def _seen(store: EventStore) -> list[tuple[str, int]]:
    with sqlite3.connect(store.path) as conn:  # type: ignore[attr-defined]
        return [(r[0], int(r[1])) for r in conn.execute("SELECT stream, version FROM seen "
                                                         "ORDER BY rowid")]


def _run(store: EventStore, projection: Projection, **settings: int) -> ProjectionRunner:
    sleeps: list[float] = []
    runner = ProjectionRunner(store, {"p": projection},
                              ProjectionSettings.model_validate(settings),
                              poll_interval=0.05, sleep=sleeps.append)
    runner.sleeps = sleeps  # type: ignore[attr-defined]
    runner.start()
    assert runner.wait_caught_up("p", 20)
    return runner


def test_streams_in_order_with_upcasting(store: EventStore) -> None:
    for n in range(30):
        store.append(f"s-{n % 7}", [NewEvent("Deposited", {"cents": n}, schema_version=1)])
    projection = Recorder()
    runner = _run(store, projection, workers=3, batch_size=4)
    runner.stop()
    seen = _seen(store)
    assert len(seen) == 30
    for stream in {s for s, _ in seen}:
        versions = [v for s, v in seen if s == stream]
        assert versions == sorted(versions) == list(range(1, len(versions) + 1))


def test_failing_event_is_retried_with_backoff_then_parked(store: EventStore) -> None:
    store.append("a", [NewEvent("T", {}), NewEvent("T", {"fail": True}), NewEvent("T", {})])
    store.append("b", [NewEvent("T", {})])
    projection = Recorder()
    runner = _run(store, projection, workers=1, batch_size=10, retry_attempts=3)
    letters = runner.dead_letters("p")
    runner.stop()
    assert projection.calls.count(("a", 2)) == 4                     # 1 try + 3 retries
    assert runner.sleeps == [0.05, 0.1, 0.2]  # type: ignore[attr-defined]
    assert [(d["stream_id"], d["version"], d["attempts"]) for d in letters] == [("a", 2, 4)]
    assert "RuntimeError: boom" in str(letters[0]["error"])
    assert sorted(_seen(store)) == [("a", 1), ("a", 3), ("b", 1)]


def test_custom_batch_handler_failure_isolates_the_event(store: EventStore) -> None:
    store.append("a", [NewEvent("T", {}), NewEvent("T", {"fail": True}), NewEvent("T", {})])
    projection = BatchFailer()
    runner = _run(store, projection, workers=1, batch_size=10, retry_attempts=0)
    runner.stop()
    assert sorted(_seen(store)) == [("a", 1), ("a", 3)]
    # The batch attempt did not count: alone, the event got 1 + retry_attempts tries.
    assert projection.calls.count(("a", 2)) == 2


def test_rebuild_replays_into_an_empty_read_model(store: EventStore) -> None:
    store.append("acc", [NewEvent("AccountOpened", {"owner": "o"}),
                         NewEvent("Deposited", {"amount": 5})])
    runner = _run(store, AccountBalances(), workers=2, batch_size=1)
    runner.rebuild("p")
    assert runner.wait_caught_up("p", 20)
    (status,) = runner.status()
    runner.stop()
    assert status.events_handled == 2 and status.lag_events == 0
    with sqlite3.connect(store.path) as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT owner, balance, events_applied FROM "
                            "proj_account_balances").fetchall() == [("o", 5, 2)]


def test_a_rebuild_elsewhere_restarts_the_partitions_that_have_nothing_new(
        store: EventStore) -> None:
    """`eventstore replay` in another process resets the checkpoints: this runner's
    partitions must start over too, though no new event reaches them."""
    for n in range(20):
        store.append(f"s-{n}", [NewEvent("T", {"n": n})])
    projection = Recorder()
    runner = _run(store, projection, workers=2, batch_size=5)
    try:
        other = ProjectionRunner(store, {"p": Recorder()}, ProjectionSettings())
        other.setup()
        other.rebuild("p")  # empties `seen` and sets every checkpoint to 0
        other.backend.close()
        assert _seen(store) == []
        assert runner.wait_caught_up("p", 10), runner.status()
        assert sorted(_seen(store)) == sorted((f"s-{n}", 1) for n in range(20))
        assert len(projection.calls) == 40  # every event twice: before and after
    finally:
        runner.stop()


def test_a_rebuild_while_a_partition_is_being_read_starts_that_one_over_too(
        store: EventStore) -> None:
    store.append("s-1", [NewEvent("T", {}), NewEvent("T", {})])
    projection = Recorder()
    runner = _run(store, projection, workers=1, batch_size=10)
    try:
        partition = sqlite_partition("s-1")
        reading, go_on = threading.Event(), threading.Event()
        read = runner.backend.read

        def held_read(part: int, start: int, limit: int) -> list[RecordedEvent]:
            if part == partition and not go_on.is_set():
                reading.set()
                go_on.wait(10)
            return read(part, start, limit)

        runner.backend.read = held_read  # type: ignore[method-assign]
        assert reading.wait(10)  # a worker is reading the partition, past its events
        runner.rebuild("p")
        go_on.set()
        assert runner.wait_caught_up("p", 10), runner.status()
        assert _seen(store) == [("s-1", 1), ("s-1", 2)]
    finally:
        runner.stop()


def test_a_moved_checkpoint_rolls_the_batch_back(store: EventStore) -> None:
    """Compare-and-set: a batch started from a stale checkpoint never commits."""
    store.append("x", [NewEvent("T", {})])
    projection = Recorder()
    runner = ProjectionRunner(store, {"p": projection}, ProjectionSettings(workers=1))
    runner.setup()
    runner._owned[("p", 0)] = __import__(
        "eventstore.projections.runner", fromlist=["_UnitState"])._UnitState(position=0)
    with sqlite3.connect(store.path) as conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE es_projection_checkpoints SET position = 999")
    for partition in range(16):
        runner._owned[("p", partition)] = runner._owned[("p", 0)].__class__(position=0)
        try:
            runner.process_batch(("p", partition))
        except Exception as exc:
            assert type(exc).__name__ == "CheckpointMoved"
    runner.backend.close()
    assert _seen(store) == []


def test_load_projection() -> None:
    assert isinstance(load_projection("eventstore.projections.bank:AccountBalances"),
                      AccountBalances)
    with pytest.raises(ValidationError, match="cannot import"):
        load_projection("no.such.module:X")
    with pytest.raises(ValidationError, match="has no"):
        load_projection("eventstore.projections.bank:Nope")
    with pytest.raises(ValidationError, match="not a Projection"):
        load_projection("eventstore.projections.bank:TABLE")


class Outbox(Projection):
    """Copies each event into a second SQLite file through its own connection (an outbox
    another process reads), with a short busy timeout: while that process holds the file's
    write lock, sqlite3 raises "database is locked"."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.locked = 0

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        with sqlite3.connect(self.path, timeout=0.05, isolation_level=None) as conn:
            try:
                conn.execute("INSERT INTO outbox VALUES (?, ?)", (event.aggregate_id,
                                                                  event.version))
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc):
                    self.locked += 1
                raise
        tx.execute("INSERT INTO seen VALUES (%s, %s)", (event.aggregate_id, event.version))

    def setup(self, tx: ReadModelTx) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS seen (stream text, version integer)")


def test_a_locked_database_is_transient_not_a_dead_letter(store: EventStore,
                                                          tmp_path: Path) -> None:
    """SQLite's "database is locked" is the database's state, not the event's: the batch
    is rolled back and retried once the lock is gone, and no good event is parked (as the
    runner did when it treated only psycopg's OperationalError as transient)."""
    outbox = str(tmp_path / "outbox.db")
    with sqlite3.connect(outbox, isolation_level=None) as conn:
        conn.execute("CREATE TABLE outbox (stream text, version integer)")
    store.append("a", [NewEvent("T", {}), NewEvent("T", {})])
    projection = Outbox(outbox)
    holder = sqlite3.connect(outbox, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing to the outbox
    runner = ProjectionRunner(store, {"p": projection},
                              ProjectionSettings(workers=1, batch_size=10, retry_attempts=2),
                              poll_interval=0.05, sleep=lambda _: None)
    try:
        runner.start()
        deadline = time.monotonic() + 10
        while projection.locked < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert projection.locked >= 3, "the handler never met the lock"  # > 1 + retries
        holder.execute("COMMIT")
        assert runner.wait_caught_up("p", 20)
        letters = runner.dead_letters("p")
    finally:
        holder.close()
        runner.stop()
    assert letters == []
    assert sorted(_seen(store)) == [("a", 1), ("a", 2)]
    with sqlite3.connect(outbox) as conn:
        assert sorted(conn.execute("SELECT stream, version FROM outbox").fetchall()) == \
            [("a", 1), ("a", 2)]

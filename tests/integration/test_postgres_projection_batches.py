"""A projection batch on PostgreSQL: its checkpoint moves (compare-and-set) in the round
trip of its BEGIN, its writes commit with that move or not at all, and a failing batch is
rolled back whole and applied again one event at a time."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from eventstore import EventStore, NewEvent, RecordedEvent
from eventstore.projections.backends import CheckpointMoved
from eventstore.projections.base import Projection, ReadModelTx
from eventstore.projections.runner import ProjectionRunner, _UnitState
from eventstore.settings import ProjectionSettings
from tests.integration.durable_store import durable_single_connection_store, pool_synchronous_commit
from tests.unit.test_projections import BatchFailer, Recorder

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(postgres_url: str) -> Iterator[EventStore]:
    store = EventStore.connect(postgres_url)
    store.migrate()
    yield store
    store.close()


def _seen(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return [(r[0], int(r[1])) for r in conn.execute("SELECT stream, version FROM seen")]


def _handled(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT sum(events_handled) FROM es_projection_checkpoints"
                           " WHERE projection = 'p'").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _run(store: EventStore, projection: Recorder, **settings: int) -> ProjectionRunner:
    runner = ProjectionRunner(store, {"p": projection},
                              ProjectionSettings.model_validate(settings),
                              poll_interval=0.05, sleep=lambda _: None)
    runner.start()
    assert runner.wait_caught_up("p", 30)
    return runner


@pytest.mark.parametrize("projection_class", [Recorder, BatchFailer])
def test_a_failing_batch_is_rolled_back_and_applied_one_event_at_a_time(
        store: EventStore, postgres_url: str, projection_class: type[Recorder]) -> None:
    store.append("a", [NewEvent("T", {}), NewEvent("T", {"fail": True}), NewEvent("T", {})])
    store.append("b", [NewEvent("T", {}), NewEvent("T", {})])
    runner = _run(store, projection_class(), workers=1, batch_size=10, retry_attempts=2)
    letters = runner.dead_letters("p")
    runner.stop()
    assert [(d["stream_id"], d["version"], d["attempts"]) for d in letters] == [("a", 2, 3)]
    # every other event applied exactly once, the checkpoints moved once per event
    assert sorted(_seen(postgres_url)) == [("a", 1), ("a", 3), ("b", 1), ("b", 2)]
    assert _handled(postgres_url) == 5


def test_a_batch_from_a_moved_checkpoint_writes_nothing(store: EventStore,
                                                         postgres_url: str) -> None:
    for n in range(40):
        store.append(f"s-{n}", [NewEvent("T", {})])
    runner = ProjectionRunner(store, {"p": Recorder()}, ProjectionSettings(workers=1))
    runner.setup()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE es_projection_checkpoints SET position = 7 WHERE projection = 'p'")
    refused = 0
    for partition in range(16):
        runner._owned[("p", partition)] = _UnitState(position=0)  # stale: it is at 7
        try:
            runner.process_batch(("p", partition))
        except CheckpointMoved:
            refused += 1
    runner.backend.close()
    assert refused > 0, "no partition had events; the test proves nothing"
    assert _seen(postgres_url) == []
    assert _handled(postgres_url) == 0
    with psycopg.connect(postgres_url) as conn:
        positions = {int(r[0]) for r in conn.execute(
            "SELECT position FROM es_projection_checkpoints WHERE projection = 'p'")}
    assert positions == {7}


def test_batches_move_the_checkpoint_once_each(store: EventStore, postgres_url: str) -> None:
    for n in range(60):
        store.append(f"acc-{n % 9}", [NewEvent("T", {"n": n})])
    runner = _run(store, Recorder(), workers=2, batch_size=4)
    runner.stop()
    assert len(_seen(postgres_url)) == 60
    assert _handled(postgres_url) == 60


class _SettingsSpy(Recorder):
    """Records synchronous_commit as each batch's transaction sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: list[str] = []

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        row = tx.execute("SHOW synchronous_commit").fetchone()
        self.settings.append(str(row[0]) if row else "")
        super().handle(event, tx)


def test_a_batch_commits_without_waiting_for_the_disk_and_appends_still_do(
        postgres_url: str) -> None:
    """Batches are derived state and commit asynchronously (read model and checkpoint
    together); the store's pool is shared with appends, which must stay durable: the
    setting is local to the batch's transaction and never stays on a connection."""
    with durable_single_connection_store(postgres_url) as store:
        for n in range(10):
            store.append(f"s-{n}", [NewEvent("T", {})])
        spy = _SettingsSpy()
        runner = _run(store, spy, workers=1, batch_size=5)
        runner.stop()
        assert spy.settings and set(spy.settings) == {"off"}
        assert _handled(postgres_url) == 10
        store.append("after", [NewEvent("T", {})])
        assert pool_synchronous_commit(store) == ("on",)


class _Checked(Projection):
    """Writes each event's n into a column that refuses negatives: the database, not
    Python, fails the event with n < 0."""

    def setup(self, tx: ReadModelTx) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS checked (stream text, version int, "
                   "n int CHECK (n >= 0))")

    def reset(self, tx: ReadModelTx) -> None:
        tx.execute("DELETE FROM checked")

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        tx.execute("INSERT INTO checked VALUES (%s, %s, %s)",
                   (event.aggregate_id, event.version, event.payload["n"]))


def test_an_event_the_database_refuses_is_parked_and_the_others_applied_once(
        store: EventStore, postgres_url: str) -> None:
    """A refusal of the database is the event's failure, not an outage: the event is
    parked after its tries (not retried for ever), the others applied once."""
    store.append("a", [NewEvent("T", {"n": 1}), NewEvent("T", {"n": -1}),
                       NewEvent("T", {"n": 3}), NewEvent("T", {"n": 4})])
    store.append("b", [NewEvent("T", {"n": 5})])
    runner = ProjectionRunner(store, {"p": _Checked()}, ProjectionSettings(
        workers=1, batch_size=10, retry_attempts=2), poll_interval=0.05, sleep=lambda _: None)
    runner.start()
    try:
        assert runner.wait_caught_up("p", 30), runner.status()
        letters = runner.dead_letters("p")
    finally:
        runner.stop()
    assert [(d["stream_id"], d["version"], d["attempts"]) for d in letters] == [("a", 2, 3)]
    assert "violates check constraint" in str(letters[0]["error"])
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT stream, version FROM checked ORDER BY stream, version")
        assert rows.fetchall() == [("a", 1), ("a", 3), ("a", 4), ("b", 1)]
    assert _handled(postgres_url) == 5


class _Counted(Projection):
    """Counts events per stream the way many projections do: insert, and on a unique
    violation (caught in a savepoint of its own) update instead."""

    def setup(self, tx: ReadModelTx) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS counted (stream text PRIMARY KEY, n int)")

    def reset(self, tx: ReadModelTx) -> None:
        tx.execute("DELETE FROM counted")

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        try:
            with tx.connection.transaction():
                tx.execute("INSERT INTO counted VALUES (%s, 1)", (event.aggregate_id,))
        except psycopg.errors.UniqueViolation:
            tx.execute("UPDATE counted SET n = n + 1 WHERE stream = %s", (event.aggregate_id,))


def test_a_projection_that_catches_its_own_database_error_in_a_savepoint_still_can(
        store: EventStore, postgres_url: str) -> None:
    for n in range(30):
        store.append(f"s-{n % 4}", [NewEvent("T", {})])
    runner = ProjectionRunner(store, {"p": _Counted()}, ProjectionSettings(
        workers=2, batch_size=10, retry_attempts=0), poll_interval=0.05, sleep=lambda _: None)
    runner.start()
    try:
        assert runner.wait_caught_up("p", 30), runner.status()
        assert runner.dead_letters("p") == []
    finally:
        runner.stop()
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT stream, n FROM counted ORDER BY stream").fetchall()
    assert rows == [("s-0", 8), ("s-1", 8), ("s-2", 7), ("s-3", 7)]
    assert _handled(postgres_url) == 30

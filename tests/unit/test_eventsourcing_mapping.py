"""eventstore.integrations.eventsourcing beyond eventsourcing's own test cases: the
lossless mapping, namespaces of several applications in one store, snapshot order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.utils import Environment

from eventstore.events import validate_stream_id
from eventstore.integrations.eventsourcing import (
    Factory,
    originator_id_of,
    stream_id_for,
    type_for,
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/events.db"


@pytest.fixture
def factories(url: str) -> Iterator[Callable[[str], Factory]]:
    made: dict[str, Factory] = {}

    def make(name: str) -> Factory:
        made[name] = Factory(Environment(name, {"EVENTSTORE_URL": url}))
        return made[name]

    yield make
    for factory in made.values():
        factory.close()


@pytest.mark.parametrize("originator_id", [
    uuid4(), "plain-id_1", str(uuid4()), "with space", "slash/and?query", "ünïcødé ☃", "~x",
    "-leading", "x" * 140])
def test_originator_ids_round_trip(originator_id: UUID | str) -> None:
    stream_id = stream_id_for("App", originator_id)
    back = originator_id_of(stream_id)
    assert back == originator_id and type(back) is type(originator_id)
    assert stream_id.startswith("App-")
    validate_stream_id(stream_id)


def test_topics_map_to_distinct_valid_types() -> None:
    topics = ["tests.x:Account.Opened", "tests.x:f.<locals>.Agg.Event", "topic1", "a b",
              "_-not-a-hash", "x" * 300]
    types = [type_for(t) for t in topics]
    assert len(set(types)) == len(topics)
    assert types[0] == topics[0] and types[2] == "topic1"


def test_state_bytes_and_odd_ids_are_stored_losslessly(factories: Callable[[str], Factory]) -> None:
    recorder = factories("App").application_recorder()
    events = [StoredEvent(originator_id=oid, originator_version=1,
                          topic="tests:f.<locals>.Odd Event", state=bytes(range(256)))
              for oid in ("with space ☃", uuid4(), str(uuid4()))]
    recorder.insert_events(events)
    for event in events:
        (read,) = recorder.select_events(event.originator_id)
        assert read == event
    notifications = recorder.select_notifications(None, 10, topics=[events[0].topic])
    assert [(n.originator_id, n.state) for n in notifications] == [
        (e.originator_id, e.state) for e in events]


def test_applications_in_one_store_keep_to_their_namespace(factories: Callable[[str], Factory]) -> None:
    first = factories("Orders").process_recorder()
    second = factories("Invoices").process_recorder()
    oid = uuid4()
    first.insert_events([StoredEvent(oid, 1, "Placed", b"1")])
    second.insert_events([StoredEvent(oid, 1, "Billed", b"2")],
                         tracking=Tracking("Orders", 1))
    assert [n.topic for n in first.select_notifications(None, 10)] == ["Placed"]
    assert [n.topic for n in second.select_notifications(None, 10)] == ["Billed"]
    assert first.max_notification_id() == 1 and second.max_notification_id() == 2
    assert second.max_tracking_id("Orders") == 1 and first.max_tracking_id("Orders") is None
    with second.subscribe(gt=None) as subscription:
        assert next(subscription).topic == "Billed"


def test_snapshots_are_sparse_and_only_move_forward(factories: Callable[[str], Factory]) -> None:
    snapshots = factories("App").aggregate_recorder("snapshots")
    oid = uuid4()
    for version in (5, 10, 20):
        snapshots.insert_events([StoredEvent(oid, version, "Snapshot", b"%d" % version)])
    for version in (10, 7, 1):  # taken, or older than the newest
        with pytest.raises(IntegrityError):
            snapshots.insert_events([StoredEvent(oid, version, "Snapshot", b"x")])
    assert [s.originator_version for s in snapshots.select_events(oid)] == [5, 10, 20]
    assert [s.originator_version for s in snapshots.select_events(
        oid, lte=15, desc=True, limit=1)] == [10]
    assert [s.originator_version for s in snapshots.select_events(oid, gt=5, lte=20)] == [10, 20]


def test_sequences_from_zero_read_every_range(factories: Callable[[str], Factory]) -> None:
    recorder = factories("App").aggregate_recorder()
    oid = uuid4()
    recorder.insert_events([StoredEvent(oid, v, "E", b"") for v in range(0, 4)])
    recorder.insert_events([StoredEvent(oid, 4, "E", b"")])
    with pytest.raises(IntegrityError):
        recorder.insert_events([StoredEvent(oid, 4, "E", b"")])
    versions = lambda **kw: [e.originator_version for e in recorder.select_events(oid, **kw)]  # noqa: E731
    assert versions() == [0, 1, 2, 3, 4]
    assert versions(gt=1, lte=3) == [2, 3]
    assert versions(gt=0) == [1, 2, 3, 4]
    assert versions(lte=0) == [0]
    assert versions(desc=True, limit=2) == [4, 3]

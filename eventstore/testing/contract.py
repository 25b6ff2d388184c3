"""The contract every EventStore backend must pass. Subclass `EventStoreContract` and
provide a `store` fixture that yields a fresh, migrated, empty store."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from eventstore.errors import (
    CheckpointConflict,
    ConcurrencyError,
    SchemaError,
    StoreUnavailable,
    ValidationError,
)
from eventstore.events import (
    AppendResult,
    Checkpoint,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)
from eventstore.store.base import EventStore


def _nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


def ev(n: int = 0, type: str = "Happened", **payload: object) -> NewEvent:
    return NewEvent(type=type, payload={"n": n, **payload})


class EventStoreContract:
    """Behaviour shared by all backends."""

    # -- append ------------------------------------------------------------------------

    def test_append_and_read_back(self, store: EventStore) -> None:
        result = store.append("acc-1", [ev(1), ev(2)], expected_version=ExpectedVersion.NO_STREAM)
        assert (result.first_version, result.next_expected_version) == (1, 2)
        events = store.read_stream("acc-1")
        assert [e.version for e in events] == [1, 2]
        assert [e.payload["n"] for e in events] == [1, 2]
        assert [e.position for e in events] == list(result.positions)
        assert all(e.aggregate_id == "acc-1" and e.type == "Happened" for e in events)
        assert all(e.timestamp.tzinfo is not None for e in events)
        assert events[0].position < events[1].position
        assert store.stream_version("acc-1") == 2
        assert store.stream_version("missing") == 0

    def test_metadata_schema_version_and_id_round_trip(self, store: EventStore) -> None:
        event = NewEvent(type="bank.Deposited", payload={"amount": 5, "nested": {"a": [1, "x"]}},
                         metadata={"correlation_id": "c-1"}, schema_version=3)
        store.append("acc-1", [event])
        (read,) = store.read_stream("acc-1")
        assert read.id == event.id
        assert read.payload == event.payload and read.metadata == event.metadata
        assert read.schema_version == 3 and read.type == "bank.Deposited"

    @pytest.mark.parametrize("expected", [0, ExpectedVersion.NO_STREAM, ExpectedVersion.ANY])
    def test_new_stream_expectations_that_hold(self, store: EventStore, expected: object) -> None:
        store.append("s", [ev()], expected_version=expected)  # type: ignore[arg-type]
        assert store.stream_version("s") == 1

    @pytest.mark.parametrize("expected", [1, 5, ExpectedVersion.STREAM_EXISTS])
    def test_new_stream_expectations_that_fail(self, store: EventStore, expected: object) -> None:
        with pytest.raises(ConcurrencyError) as info:
            store.append("s", [ev()], expected_version=expected)  # type: ignore[arg-type]
        assert info.value.actual_version == 0
        assert store.read_stream("s") == []

    @pytest.mark.parametrize("expected", [0, 1, 3, ExpectedVersion.NO_STREAM])
    def test_existing_stream_conflicts_carry_actual_version(
        self, store: EventStore, expected: object
    ) -> None:
        store.append("s", [ev(), ev()])
        with pytest.raises(ConcurrencyError) as info:
            store.append("s", [ev()], expected_version=expected)  # type: ignore[arg-type]
        assert info.value.actual_version == 2
        assert "version 2" in str(info.value)
        assert store.stream_version("s") == 2

    @pytest.mark.parametrize("expected", [2, ExpectedVersion.ANY, ExpectedVersion.STREAM_EXISTS])
    def test_existing_stream_expectations_that_hold(self, store: EventStore,
                                                    expected: object) -> None:
        store.append("s", [ev(), ev()])
        result = store.append("s", [ev()], expected_version=expected)  # type: ignore[arg-type]
        assert result.first_version == 3

    def test_resending_the_same_events_is_idempotent(self, store: EventStore) -> None:
        batch = [ev(1), ev(2)]
        first = store.append("s", batch, expected_version=0)
        again = store.append("s", batch, expected_version=0)
        assert again.idempotent and not first.idempotent
        assert (again.first_version, again.next_expected_version, again.positions) == (
            first.first_version, first.next_expected_version, first.positions)
        assert len(store.read_stream("s")) == 2
        # Even after the stream moved on, a late retry of the first append is recognised.
        store.append("s", [ev(3)])
        assert store.append("s", batch, expected_version=0).positions == first.positions
        assert len(store.read_stream("s")) == 3

    def test_reused_id_in_another_append_is_refused(self, store: EventStore) -> None:
        event = ev(1)
        store.append("s", [event])
        with pytest.raises(ValidationError, match="already stored"):
            store.append("other", [event])
        with pytest.raises(ValidationError, match="already stored"):
            store.append("s", [event, ev(2)])
        assert store.read_stream("other") == [] and len(store.read_stream("s")) == 1

    def test_append_is_atomic_when_one_event_is_bad(self, store: EventStore) -> None:
        store.append("s", [ev(0)])
        with pytest.raises(ValidationError):
            store.append("s", [ev(1), NewEvent(type="Bad", payload={"x": object()})])
        assert [e.payload["n"] for e in store.read_stream("s")] == [0]

    # -- bad input ---------------------------------------------------------------------

    @pytest.mark.parametrize("stream_id", ["", "x" * 10_000, "a b", "a/b", "x'; DROP TABLE es_events; --",
                                           'a"b', "ß", None, 42, "a\n", "a\r\n", "a\tb"])
    def test_bad_stream_ids_are_refused(self, store: EventStore, stream_id: object) -> None:
        store.append("kept", [ev()])
        with pytest.raises(ValidationError, match="stream id"):
            store.append(stream_id, [ev()])  # type: ignore[arg-type]
        assert len(store.read_stream("kept")) == 1
        assert [e.aggregate_id for e in store.read_all()] == ["kept"]

    @pytest.mark.parametrize("event_type", ["", "Robert'); DROP TABLE es_events;--", "a b",
                                            "x" * 500, "1abc", "Deposited\n", "Deposited\t"])
    def test_bad_event_types_are_refused(self, store: EventStore, event_type: str) -> None:
        store.append("kept", [ev()])
        with pytest.raises(ValidationError, match="type"):
            store.append("s", [NewEvent(type=event_type, payload={})])
        assert len(store.read_all()) == 1

    @pytest.mark.parametrize("event_id", ["not-a-uuid", str(uuid4()), 42, None,
                                          'x\t1\tinjected'])
    def test_event_ids_that_are_not_uuids_are_refused(self, store: EventStore,
                                                       event_id: object) -> None:
        # SQLite stored such an id as text, and the stream could then not be read back.
        store.append("kept", [ev()])
        for count in (1, 100):  # the statement path and the COPY path
            events = [ev(n) for n in range(count - 1)]
            events.append(NewEvent("E", {}, id=event_id))  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match=r"event \d+ .* has id .*uuid\.UUID"):
                store.append("s", events)
        assert store.read_stream("s") == []
        assert [e.aggregate_id for e in store.read_all()] == ["kept"]

    @pytest.mark.parametrize("payload", [{"x": object()}, {"x": float("nan")}, "not a dict",
                                         [1, 2], {"x": {1, 2}}, b"bytes"])
    def test_non_json_payloads_are_refused(self, store: EventStore, payload: object) -> None:
        with pytest.raises(ValidationError, match="payload"):
            store.append("s", [NewEvent(type="T", payload=payload)])  # type: ignore[arg-type]
        assert store.read_all() == []

    @pytest.mark.parametrize("payload,reason", [
        ({"text": "nul\x00inside"}, "NUL"), ({"key\x00": 1}, "NUL"),
        ({"text": "lone \ud800 surrogate"}, "surrogate"), (_nested(5000), "nested")])
    def test_what_a_backend_cannot_store_is_refused_on_every_backend(
            self, store: EventStore, payload: dict[str, Any], reason: str) -> None:
        store.append("kept", [ev()])
        with pytest.raises(ValidationError, match=reason):
            store.append("s", [ev(), NewEvent(type="T", payload=payload)])
        with pytest.raises(ValidationError, match=reason):
            store.append("s", [NewEvent(type="T", payload={}, metadata=payload)])
        assert len(store.read_all()) == 1

    def test_text_that_merely_looks_like_an_escape_is_stored(self, store: EventStore) -> None:
        payload = {"text": "\\u0000 is how JSON writes NUL", "emoji": "\U0001F600"}
        store.append("s", [NewEvent(type="T", payload=payload)])
        assert store.read_stream("s")[0].payload == payload

    def test_non_json_metadata_is_refused(self, store: EventStore) -> None:
        with pytest.raises(ValidationError, match="metadata"):
            store.append("s", [NewEvent(type="T", payload={}, metadata={"t": datetime.now()})])

    @pytest.mark.parametrize("expected", [-1, -5, "3", 1.5, True, None])
    def test_bad_expected_versions_are_refused(self, store: EventStore, expected: object) -> None:
        store.append("s", [ev()])
        with pytest.raises(ValidationError, match="expected_version"):
            store.append("s", [ev()], expected_version=expected)  # type: ignore[arg-type]
        assert store.stream_version("s") == 1

    def test_oversized_payload_is_refused(self, store: EventStore) -> None:
        store.append("s", [ev()])
        big = {"blob": "x" * (store.max_payload_bytes + 1)}
        with pytest.raises(ValidationError, match="limit is"):
            store.append("s", [NewEvent(type="Big", payload=big)])
        assert store.stream_version("s") == 1

    def test_empty_and_non_list_batches_are_refused(self, store: EventStore) -> None:
        with pytest.raises(ValidationError, match="no events"):
            store.append("s", [])
        with pytest.raises(ValidationError):
            store.append("s", ev())  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.append("s", [{"type": "T", "payload": {}}])  # type: ignore[list-item]

    def test_duplicate_ids_within_one_append_are_refused(self, store: EventStore) -> None:
        event = ev()
        with pytest.raises(ValidationError, match="repeats event id"):
            store.append("s", [event, event])

    def test_unicode_and_sql_metacharacters_in_payloads_are_stored_verbatim(
        self, store: EventStore
    ) -> None:
        payload = {"text": "'; DROP TABLE es_events; -- ünïcødé \u2603 \\ \" %s ?"}
        store.append("s", [NewEvent(type="T", payload=payload)])
        assert store.read_stream("s")[0].payload == payload

    def test_numbers_come_back_as_stored(self, store: EventStore) -> None:
        """Integers past 64 bits stay exact integers, in reads of a stream and of the log
        (a fast JSON decoder alone would return them as floats); floats of 1e16 and more
        stay floats (PostgreSQL's jsonb writes `1e+16` back as an integer)."""
        numbers = {"past_u64": 2**64, "big": 10**30 + 7, "negative": -(2**63) - 1,
                   "nineteen_digits": 1234567890123456789, "int": 1250, "float": 0.1,
                   "small": 2.5e-8, "fraction": 123456.789, "deep": [[{"n": -(10**25)}]],
                   "float_1e16": 1e16, "float_big": -1.5e300, "float_max": 1.7976931348623157e308,
                   "float_19": 1.2345678901234567e19, "text": "1e+16 stays text",
                   "floats": [1e22, 9999999999999998.0, 5e-324]}
        store.append("s", [NewEvent(type="T", payload=numbers, metadata={"trace": 10**20})])
        for read in (store.read_stream("s")[0], store.read_all()[0]):
            assert read.payload == numbers and read.metadata == {"trace": 10**20}
            # int stays int, float stays float (repr per key: jsonb orders keys its own way)
            assert sorted((k, repr(v)) for k, v in read.payload.items()) == sorted(
                (k, repr(v)) for k, v in numbers.items())

    # -- reading -----------------------------------------------------------------------

    def test_read_stream_ranges_and_direction(self, store: EventStore) -> None:
        store.append("s", [ev(i) for i in range(1, 11)])
        store.append("other", [ev(99)])
        assert [e.version for e in store.read_stream("s", from_version=3, to_version=5)] == [3, 4, 5]
        assert [e.version for e in store.read_stream("s", backwards=True, limit=3)] == [10, 9, 8]
        assert [e.version for e in store.read_stream("s", to_version=4, backwards=True)] == [4, 3, 2, 1]
        assert [e.version for e in store.read_stream("s", from_version=9)] == [9, 10]
        assert store.read_stream("s", from_version=11) == []
        assert store.read_stream("nothing") == []
        with pytest.raises(ValidationError):
            store.read_stream("s", from_version=-1)
        with pytest.raises(ValidationError):
            store.read_stream("s", limit=0)

    def test_read_stream_as_of(self, store: EventStore) -> None:
        store.append("s", [ev(1)])
        (first,) = store.read_stream("s")
        store.append("s", [ev(2)])
        (second,) = store.read_stream("s", from_version=2)
        assert second.timestamp >= first.timestamp
        assert [e.version for e in store.read_stream("s", as_of=first.timestamp)] == (
            [1] if second.timestamp > first.timestamp else [1, 2])
        assert store.read_stream("s", as_of=first.timestamp - timedelta(seconds=1)) == []
        assert len(store.read_stream("s", as_of=datetime.now(UTC) + timedelta(days=1))) == 2
        with pytest.raises(ValidationError, match="time zone"):
            store.read_stream("s", as_of=datetime.now())

    def test_one_append_is_recorded_at_one_time(self, store: EventStore) -> None:
        """A temporal read sees an append whole or not at all, whatever its size."""
        for count in (3, 100):
            stream = f"one-time-{count}"
            store.append(stream, [ev(i) for i in range(count)])
            (recorded_at,) = {e.timestamp for e in store.read_stream(stream)}
            assert len(store.read_stream(stream, as_of=recorded_at)) == count
            assert store.read_stream(stream, as_of=recorded_at - timedelta(microseconds=1)) \
                == []

    def test_read_all_pages_in_global_order(self, store: EventStore) -> None:
        for i in range(25):
            store.append(f"s-{i % 3}", [ev(i)])
        seen = []
        position = 0
        while page := store.read_all(from_position=position, limit=7):
            assert len(page) <= 7
            seen.extend(page)
            position = page[-1].position + 1
        assert [e.payload["n"] for e in seen] == list(range(25))
        assert [e.position for e in seen] == sorted(e.position for e in seen)
        assert store.read_all(from_position=seen[10].position, limit=1)[0].id == seen[10].id
        with pytest.raises(ValidationError):
            store.read_all(from_position=-1)
        with pytest.raises(ValidationError):
            store.read_all(limit=0)

    def test_subscribe_follows_live_appends(self, store: EventStore) -> None:
        store.append("s", [ev(0)])
        received: list[int] = []
        done = threading.Event()

        def follow() -> None:
            for event in store.subscribe(from_position=0, idle_timeout=20, poll_interval=30):
                received.append(event.payload["n"])
                if len(received) == 3:
                    break
            done.set()

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        store.append("s", [ev(1)])
        store.append("t", [ev(2)])
        # The poll interval is 30 s: arriving sooner proves the subscriber was woken.
        assert done.wait(15), f"subscriber saw only {received}"
        assert received == [0, 1, 2]

    def test_stats_count_events_and_streams(self, store: EventStore) -> None:
        store.append("a", [ev(), ev()])
        store.append("b", [ev()])
        stats = store.stats()
        assert (stats.events, stats.streams, stats.archived_events) == (3, 2, 0)
        assert stats.bytes > 0 and stats.head_position == store.read_all()[-1].position

    def test_migrate_is_idempotent(self, store: EventStore) -> None:
        store.append("s", [ev()])
        version = store.migrate()
        assert store.migrate() == version and store.schema_is_current()
        assert len(store.read_stream("s")) == 1

    def test_many_events_in_one_append(self, store: EventStore) -> None:
        events = [NewEvent(type="T", payload={"i": i}, id=uuid4()) for i in range(2000)]
        result = store.append("big", events)
        assert result.next_expected_version == 2000
        assert [e.payload["i"] for e in store.read_stream("big")] == list(range(2000))


    # -- append_many ---------------------------------------------------------------------

    def test_append_many_writes_every_stream_atomically(self, store: EventStore) -> None:
        store.append("a", [ev(0)])
        results = store.append_many([StreamAppend("a", [ev(1), ev(2)], 1),
                                     StreamAppend("b", [ev(3)], ExpectedVersion.NO_STREAM),
                                     StreamAppend("c", [ev(4)])])
        assert [(r.stream_id, r.first_version, r.next_expected_version) for r in results] == [
            ("a", 2, 3), ("b", 1, 1), ("c", 1, 1)]
        positions = [p for r in results for p in r.positions]
        assert positions == sorted(positions) and len(set(positions)) == 4
        log = store.read_all()
        assert [e.payload["n"] for e in log] == [0, 1, 2, 3, 4]
        assert [e.position for e in log[1:]] == positions
        assert [e.version for e in store.read_stream("a")] == [1, 2, 3]

    def test_append_many_is_all_or_nothing_and_names_the_failing_stream(
            self, store: EventStore) -> None:
        store.append("a", [ev(0)])
        store.append("b", [ev(0), ev(1)])
        with pytest.raises(ConcurrencyError) as info:
            store.append_many([StreamAppend("a", [ev(1)], 1), StreamAppend("new", [ev(2)]),
                               StreamAppend("b", [ev(3)], 1)])
        assert (info.value.stream_id, info.value.actual_version) == ("b", 2)
        assert "'b'" in str(info.value)
        assert len(store.read_all()) == 3
        assert store.stream_version("a") == 1 and store.stream_version("new") == 0
        with pytest.raises(ValidationError):
            store.append_many([StreamAppend("a", [ev(1)]),
                               StreamAppend("x", [NewEvent(type="T", payload={"x": object()})])])
        assert len(store.read_all()) == 3

    def test_append_many_resend_is_idempotent(self, store: EventStore) -> None:
        batch = [StreamAppend("a", [ev(1), ev(2)], 0), StreamAppend("b", [ev(3)], 0)]
        first = store.append_many(batch)
        store.append("a", [ev(4)])
        again = store.append_many(batch)
        assert all(r.idempotent for r in again) and not any(r.idempotent for r in first)
        assert [r.positions for r in again] == [r.positions for r in first]
        assert len(store.read_all()) == 4
        with pytest.raises(ValidationError, match="already stored"):
            store.append_many([batch[0], StreamAppend("c", [ev(5)])])
        assert store.stream_version("c") == 0

    @pytest.mark.parametrize("appends", [
        "not a list", [StreamAppend("a", [ev()]), StreamAppend("a", [ev()])],
        [StreamAppend("bad id", [ev()])], [StreamAppend("a", [])],
        [StreamAppend("a", [ev()], -1)], [("a", [ev()])], []])
    def test_append_many_refuses_bad_input(self, store: EventStore, appends: Any) -> None:
        with pytest.raises(ValidationError):
            store.append_many(appends)
        assert store.read_all() == []

    def test_append_many_refuses_one_event_id_in_two_streams(self, store: EventStore) -> None:
        event = ev()
        with pytest.raises(ValidationError, match="twice"):
            store.append_many([StreamAppend("a", [event]), StreamAppend("b", [event])])

    def test_append_many_races_keep_versions_dense(self, store: EventStore) -> None:
        """Threads append_many to overlapping streams with exact expectations: every
        acknowledged batch is stored whole, every refusal names a stream that moved."""
        streams = ["r0", "r1", "r2"]
        acked: list[list[AppendResult]] = []
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            for i in range(20):
                pair = [streams[(n + i) % 3], streams[(n + i + 1) % 3]]
                try:
                    expected = [store.stream_version(s) for s in pair]
                    acked.append(store.append_many(
                        [StreamAppend(s, [ev(i)], v) for s, v in zip(pair, expected,
                                                                      strict=True)]))
                except ConcurrencyError as exc:
                    assert exc.stream_id in pair
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for stream in streams:
            assert [e.version for e in store.read_stream(stream)] == list(
                range(1, store.stream_version(stream) + 1))
        assert len(store.read_all(limit=10_000)) == 2 * len(acked)

    # -- filtered, bounded and backwards reads of the log --------------------------------

    def _filter_log(self, store: EventStore) -> list[RecordedEvent]:
        for i in range(12):
            stream = ["account-1", "account-2", "order-1", "accounting-9"][i % 4]
            store.append(stream, [ev(i, type=["Opened", "Deposited", "Placed"][i % 3])])
        return store.read_all()

    def test_read_all_filters_by_type(self, store: EventStore) -> None:
        log = self._filter_log(store)
        page = store.read_all(types=["Deposited", "Placed"])
        assert [e.id for e in page] == [e.id for e in log if e.type in ("Deposited", "Placed")]
        assert store.read_all(types=["Nothing"]) == []
        assert store.read_all(types=[]) == log
        paged: list[RecordedEvent] = []
        position = 0
        while chunk := store.read_all(position, limit=3, types=["Opened"]):
            paged.extend(chunk)
            position = chunk[-1].position + 1
        assert [e.id for e in paged] == [e.id for e in log if e.type == "Opened"]

    def test_read_all_filters_by_stream_prefix(self, store: EventStore) -> None:
        log = self._filter_log(store)
        for prefix in ("account-", "account", "acc", "order-1", "a", "account-1"):
            assert [e.id for e in store.read_all(stream_prefix=prefix)] == [
                e.id for e in log if e.aggregate_id.startswith(prefix)], prefix
            assert [e.id for e in store.read_all(stream_prefix=prefix, backwards=True)] == [
                e.id for e in reversed(log) if e.aggregate_id.startswith(prefix)], prefix
        assert [e.id for e in store.read_all(stream_prefix="account-", types=["Opened"])] == [
            e.id for e in log if e.aggregate_id.startswith("account-") and e.type == "Opened"]
        store.append("account", [ev(99)])  # its category is "account", but no "-"
        assert "account" not in {e.aggregate_id for e in store.read_all(stream_prefix="account-")}
        assert "account" in {e.aggregate_id for e in store.read_all(stream_prefix="acc")}
        for bad in ("a b", "x/", "", "é"):
            with pytest.raises(ValidationError, match="stream_prefix"):
                store.read_all(stream_prefix=bad)

    def test_read_all_bounds_and_backwards_paging(self, store: EventStore) -> None:
        log = self._filter_log(store)
        assert store.read_all(to_position=log[4].position) == log[:5]
        assert store.read_all(log[2].position, to_position=log[4].position) == log[2:5]
        assert store.read_all(backwards=True) == log[::-1]
        assert store.read_all(backwards=True, limit=2) == log[:-3:-1]
        back: list[RecordedEvent] = []
        upper: int | None = None
        while chunk := store.read_all(limit=5, backwards=True, to_position=upper):
            back.extend(chunk)
            upper = chunk[-1].position - 1
            if upper < 0:
                break
        assert back == log[::-1]
        assert store.read_all(log[3].position, backwards=True, to_position=log[6].position) == \
            log[6:2:-1]
        assert store.read_all(backwards=True, types=["Placed"], limit=2) == \
            [e for e in reversed(log) if e.type == "Placed"][:2]
        with pytest.raises(ValidationError, match="to_position"):
            store.read_all(to_position=-1)
        with pytest.raises(ValidationError, match="types"):
            store.read_all(types="Opened")
        with pytest.raises(ValidationError, match="types"):
            store.read_all(types=["bad type"])

    def test_head_position(self, store: EventStore) -> None:
        assert store.head_position() == 0
        store.append("s", [ev(), ev()])
        assert store.head_position() == store.read_all()[-1].position
        store.append_many([StreamAppend("a", [ev()]), StreamAppend("b", [ev()])])
        assert store.head_position() == store.read_all(backwards=True, limit=1)[0].position

    # -- subscriptions ---------------------------------------------------------------------

    def test_subscribe_with_filters_and_upper_bound(self, store: EventStore) -> None:
        log = self._filter_log(store)
        wanted = [e for e in log if e.type == "Opened" and e.aggregate_id.startswith("account-")]
        assert len(wanted) == 2
        with store.subscribe(types=["Opened"], stream_prefix="account-", idle_timeout=5) as sub:
            got = []
            for event in sub:
                got.append(event)
                if event.id == wanted[-1].id:
                    break
        assert got == wanted
        bounded = list(store.subscribe(to_position=log[5].position, poll_interval=30))
        assert bounded == log[:6]
        assert list(store.subscribe(log[6].position, to_position=log[5].position)) == []

    def test_subscription_closed_from_another_thread_ends_promptly(
            self, store: EventStore) -> None:
        store.append("s", [ev(0)])
        threads_before = threading.active_count()
        subscription = store.subscribe(poll_interval=60)
        received: list[RecordedEvent] = []
        ended = threading.Event()

        def follow() -> None:
            received.extend(subscription)
            ended.set()

        thread = threading.Thread(target=follow)
        thread.start()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # now waiting for events (the poll interval is 60 s)
        started = time.monotonic()
        subscription.close()
        assert ended.wait(5), "the subscription did not end after close()"
        assert time.monotonic() - started < 2
        thread.join(5)
        assert subscription.closed and len(received) == 1
        assert list(subscription) == []
        # No thread of its own is left (a backend may keep one listener for all).
        assert threading.active_count() <= threads_before + 1

    # -- consumer checkpoints ----------------------------------------------------------------

    def test_checkpoints_move_forward_only(self, store: EventStore) -> None:
        assert store.read_checkpoint("billing") is None
        store.save_checkpoint("billing", 5)
        assert store.read_checkpoint("billing") == 5
        store.save_checkpoint("billing", 9)
        for behind in (9, 3):
            with pytest.raises(CheckpointConflict) as info:
                store.save_checkpoint("billing", behind)
            assert (info.value.stored_position, info.value.position) == (9, behind)
        assert store.read_checkpoint("billing") == 9
        assert store.read_checkpoint("other") is None
        with pytest.raises(ValidationError, match="consumer"):
            store.save_checkpoint("bad name", 1)
        with pytest.raises(ValidationError, match="position"):
            store.save_checkpoint("billing", -1)

    def test_checkpoint_commits_atomically_with_append_many(self, store: EventStore) -> None:
        store.append("in", [ev(1)])
        handled = store.read_all()[0].position
        out = [StreamAppend("out-1", [ev(2)], 0), StreamAppend("out-2", [ev(3)], 0)]
        store.append_many(out, checkpoint=Checkpoint("proc", handled))
        assert store.read_checkpoint("proc") == handled
        assert store.stream_version("out-1") == 1
        # A second instance handling the same event: refused, and its events are not stored.
        with pytest.raises(CheckpointConflict):
            store.append_many([StreamAppend("out-3", [ev(4)])],
                              checkpoint=Checkpoint("proc", handled))
        assert store.stream_version("out-3") == 0
        # A conflict on a stream leaves the checkpoint where it was.
        with pytest.raises(ConcurrencyError):
            store.append_many([StreamAppend("out-1", [ev(5)], 0)],
                              checkpoint=Checkpoint("proc", handled + 1))
        assert store.read_checkpoint("proc") == handled
        # Re-sending the committed unit (a lost reply) is idempotent, checkpoint included.
        again = store.append_many(out, checkpoint=Checkpoint("proc", handled))
        assert all(r.idempotent for r in again)
        assert store.read_checkpoint("proc") == handled
        # Events stored without a checkpoint are not a re-send of a unit that has one:
        # refused, and the checkpoint stays.
        for checkpoint in (Checkpoint("proc", handled + 5), Checkpoint("fresh", 1)):
            with pytest.raises(ValidationError, match="already stored"):
                store.append_many(out, checkpoint=checkpoint)
        assert store.read_checkpoint("proc") == handled
        assert store.read_checkpoint("fresh") is None
        with pytest.raises(ValidationError):
            store.append_many([])

    # -- closing -----------------------------------------------------------------------

    def test_close_under_running_readers_gives_store_unavailable(self, store: EventStore) -> None:
        store.append("s", [ev(i) for i in range(500)])
        errors: list[BaseException] = []
        started = threading.Barrier(4)

        def read() -> None:
            started.wait()
            try:
                while True:
                    store.read_all(limit=500)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(3)]
        for thread in threads:
            thread.start()
        started.wait()
        store.close()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
        assert [type(e) for e in errors] == [StoreUnavailable] * 3, errors
        with pytest.raises(StoreUnavailable):
            store.read_all()
        store.close()  # closing twice is harmless


class UnmigratedContract:
    """A store whose schema was never created says what to do."""

    def test_unmigrated_store_says_run_migrate(self, unmigrated: EventStore) -> None:
        assert not unmigrated.schema_is_current()
        with pytest.raises(SchemaError, match="migrate"):
            unmigrated.append("s", [ev()])

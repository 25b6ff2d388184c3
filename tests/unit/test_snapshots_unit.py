"""Snapshot decoding, encoding and error translation, without servers (mocks stand in for
pymongo where the point is how its errors are translated)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import pymongo.errors
import pytest

from eventstore.errors import EventStoreError, StoreUnavailable, ValidationError
from eventstore.snapshots import CorruptSnapshot, Snapshot, SnapshotStore, SnapshotUnavailable
from eventstore.snapshots.base import (
    decode_or_warn,
    decode_snapshot,
    encode_snapshot,
    select_latest,
    state_to_json,
    to_epoch_ms,
    to_millis,
)
from eventstore.snapshots.mongo import MongoSnapshotStore, _bson_safe, _redact
from eventstore.snapshots.sqlite import SQLiteSnapshotStore

WHEN = datetime(2026, 3, 4, 5, 6, 7, 123_000, tzinfo=UTC)


def doc(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"aggregate_type": "Account", "aggregate_id": "a-1", "version": 3,
                            "state": {"balance": 5}, "state_schema_version": 2, "taken_at": WHEN}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


# -- errors ------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(SnapshotUnavailable, StoreUnavailable)
    assert issubclass(CorruptSnapshot, EventStoreError)
    assert not issubclass(CorruptSnapshot, StoreUnavailable)


# -- decoding ----------------------------------------------------------------------------


def test_decode_a_valid_document() -> None:
    assert decode_snapshot(doc()) == Snapshot("Account", "a-1", 3, {"balance": 5}, 2, WHEN)


@pytest.mark.parametrize(("stored", "expected"), [
    (doc(state='{"balance":5}'), {"balance": 5}),          # the JSON text form
    (doc(version=3.0), {"balance": 5}),                    # integral double from a tool
    (doc(taken_at=to_epoch_ms(WHEN)), {"balance": 5}),     # epoch milliseconds (SQLite)
    (doc(taken_at=WHEN.replace(tzinfo=None)), {"balance": 5}),  # naive: taken as UTC
])
def test_decode_accepts_each_backends_forms(stored: dict[str, Any], expected: dict[str, Any]) -> None:
    snapshot = decode_snapshot(stored)
    assert snapshot.state == expected and snapshot.version == 3 and type(snapshot.version) is int
    assert snapshot.taken_at == WHEN and snapshot.taken_at.tzinfo is UTC


def test_decode_converts_other_timezones_to_utc() -> None:
    plus_one = timezone(timedelta(hours=1))
    assert decode_snapshot(doc(taken_at=WHEN.astimezone(plus_one))).taken_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(("stored", "reason"), [
    (doc(state=_DROP), "missing field(s) state"),
    (doc(version=_DROP, taken_at=_DROP), "missing field(s) version, taken_at"),
    (doc(state=[1, 2]), "state is a list, not a JSON object"),
    (doc(state="[1, 2]"), "state is a list, not a JSON object"),
    (doc(state="{oops"), "state is not valid JSON"),
    (doc(state=None), "state is a NoneType"),
    (doc(state=7), "state is a int"),
    (doc(version="3"), "version is '3', not an integer"),
    (doc(version=True), "version is True"),
    (doc(version=0), "version is 0"),
    (doc(version=3.5), "version is 3.5"),
    (doc(version=float("nan")), "version is nan"),
    (doc(state_schema_version=None), "state_schema_version is None"),
    (doc(state_schema_version=-1), "state_schema_version is -1, not an integer >= 0"),
    (doc(aggregate_id=""), "aggregate_id is ''"),
    (doc(aggregate_type=5), "aggregate_type is 5"),
    (doc(taken_at="2026-01-01"), "taken_at is a str, not a date"),
    (doc(taken_at=10**20), "taken_at 100000000000000000000 is out of range"),
])
def test_decode_refuses_corrupt_documents(stored: dict[str, Any], reason: str) -> None:
    with pytest.raises(CorruptSnapshot) as caught:
        decode_snapshot(stored)
    assert reason in str(caught.value)


def test_decode_reports_every_problem_at_once() -> None:
    with pytest.raises(CorruptSnapshot, match=r"version is 'x'.*state is a list.*taken_at is a str"):
        decode_snapshot(doc(version="x", state=[], taken_at="now"))


def test_decode_or_warn_logs_aggregate_and_version(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="eventstore.snapshots"):
        assert decode_or_warn(doc(state=[]), "Account", "a-1") is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "Account a-1 at version 3" in record.getMessage()
    assert "not a JSON object" in record.getMessage()


def test_select_latest_skips_corrupt_and_out_of_bounds_documents(caplog: pytest.LogCaptureFixture) -> None:
    docs = [doc(version=9, state="nope"), doc(version=8, taken_at=WHEN + timedelta(days=1)),
            doc(version=7), doc(version=6)]
    with caplog.at_level(logging.WARNING):
        got = select_latest(iter(docs), "Account", "a-1", at_or_below_version=None,
                            taken_at_or_before=WHEN)
    assert got is not None and got.version == 7
    assert [r.getMessage() for r in caplog.records if "version 9" in r.getMessage()]
    assert select_latest(iter(docs), "Account", "a-1", at_or_below_version=6) == decode_snapshot(docs[3])
    assert select_latest(iter([doc(state=1)]), "Account", "a-1") is None


def test_select_latest_stops_at_the_first_usable_document() -> None:
    consumed: list[int] = []

    def stream() -> Any:
        for version in (5, 4, 3):
            consumed.append(version)
            yield doc(version=version)

    assert select_latest(stream(), "Account", "a-1").version == 5  # type: ignore[union-attr]
    assert consumed == [5]


# -- encoding ----------------------------------------------------------------------------


def test_encode_normalises_state_and_time() -> None:
    moment = datetime(2026, 1, 1, 12, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=-5)))
    encoded = encode_snapshot(Snapshot("A", "1", 1, {"t": (1, 2), "n": None}, 1, moment))
    assert encoded["state"] == {"t": [1, 2], "n": None}
    assert encoded["taken_at"] == datetime(2026, 1, 1, 17, 0, 0, 999_000, tzinfo=UTC)
    assert decode_snapshot(encoded) == Snapshot("A", "1", 1, {"t": [1, 2], "n": None}, 1,
                                                encoded["taken_at"])


@pytest.mark.parametrize(("snapshot", "match"), [
    (Snapshot("A", "1", 1, {"x": {1, 2}}, 1, WHEN), "not JSON-serializable"),
    (Snapshot("A", "1", 1, {"x": float("inf")}, 1, WHEN), "not JSON-serializable"),
    (Snapshot("A", "1", True, {}, 1, WHEN), "version must be an integer"),
    (Snapshot("A", "1", 2**63, {}, 1, WHEN), "version must be an integer"),
    (Snapshot("A", "1", 1, {}, 1, WHEN.replace(tzinfo=None)), "timezone-aware"),
    (Snapshot("A", "1", 1, {}, 1, "2026-01-01"), "timezone-aware"),  # type: ignore[arg-type]
    (Snapshot("", "1", 1, {}, 1, WHEN), "aggregate_type must be"),
    ("not a snapshot", "expected a Snapshot"),
])
def test_encode_refuses_what_cannot_be_stored(snapshot: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        encode_snapshot(snapshot)


def test_time_helpers_are_exact() -> None:
    # 0.005 s is not exact in binary floating point: timestamp() * 1000 can land low.
    moment = datetime(2026, 11, 27, 0, 20, 46, 5_000, tzinfo=UTC)
    assert to_epoch_ms(moment) % 1000 == 5
    assert to_millis(datetime(2026, 1, 1, 0, 0, 0, 1_999, tzinfo=UTC)).microsecond == 1_000
    for micros in range(0, 1_000_000, 997):
        m = datetime(2030, 5, 6, 7, 8, 9, micros, tzinfo=UTC)
        assert to_epoch_ms(m) % 1000 == micros // 1000


def test_state_to_json_is_compact_and_strict() -> None:
    assert state_to_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    with pytest.raises(ValueError):
        state_to_json({"x": float("nan")})


# -- URLs and construction ---------------------------------------------------------------


def test_connect_picks_the_backend_by_scheme() -> None:
    mongo = SnapshotStore.connect("mongodb://127.0.0.1:1/snaps", keep=2, timeout_s=0.5)
    try:
        assert isinstance(mongo, MongoSnapshotStore) and mongo.keep == 2
        assert mongo._collection.full_name == "snaps.snapshots"
    finally:
        mongo.close()
    memory = SnapshotStore.connect("sqlite://:memory:", keep=4)
    assert isinstance(memory, SQLiteSnapshotStore) and memory.keep == 4
    memory.close()


@pytest.mark.parametrize("url", ["http://x", "mysql://u@h/db", "mongodb:/x", "sqlite:/x.db", "x"])
def test_connect_refuses_unknown_schemes(url: str) -> None:
    with pytest.raises(ValidationError, match="unsupported snapshot store URL"):
        SnapshotStore.connect(url)


@pytest.mark.parametrize("keep", [0, -1, True, 2.5, "3"])
def test_keep_must_be_a_positive_integer(keep: Any) -> None:
    with pytest.raises(ValidationError, match="keep must be an integer >= 1"):
        SnapshotStore.connect("sqlite://:memory:", keep=keep)
    with pytest.raises(ValidationError, match="keep must be an integer >= 1"):
        MongoSnapshotStore("mongodb://127.0.0.1:1/", keep=keep)


def test_mongo_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="timeout_s"):
        MongoSnapshotStore("mongodb://127.0.0.1:1/", timeout_s=0)


def test_password_is_redacted() -> None:
    assert _redact("mongodb://user:s3cret@host:27017/db") == "mongodb://user:***@host:27017/db"
    assert _redact("mongodb://host/db") == "mongodb://host/db"
    with pytest.raises(ValidationError) as caught:
        SnapshotStore.connect("mongodb://user:s3cret@host:notaport/db")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(("value", "safe"), [
    ({"a": {"b": [1, {"c": 2}]}}, True),
    ({"a.b": 1}, False),
    ({"x": [{"$ref": 1}]}, False),
    ({"": 1}, False),
    ({"x": 2**63}, False),
    ({"x": -(2**63)}, True),
    ({"x$": True}, True),
])
def test_bson_safety(value: Any, safe: bool) -> None:
    assert _bson_safe(value) is safe


def test_bson_safety_limits_depth() -> None:
    deep: dict[str, Any] = {}
    for _ in range(95):
        deep = {"d": deep}
    assert _bson_safe(deep) is False


# -- Mongo error translation (mocked driver) ---------------------------------------------


@pytest.fixture
def mongo() -> Any:
    store = MongoSnapshotStore("mongodb://127.0.0.1:1/db", timeout_s=0.5)
    store._indexed = True
    store._collection = mock.MagicMock()
    yield store
    store.close()


@pytest.mark.parametrize(("error", "match"), [
    (pymongo.errors.ServerSelectionTimeoutError("no servers"), "did not answer within 0.5 s"),
    (pymongo.errors.WaitQueueTimeoutError("pool full"), "unreachable"),
    (pymongo.errors.ExecutionTimeout("slow"), "timed out"),
    (pymongo.errors.WTimeoutError("w majority"), "timed out"),
    (pymongo.errors.OperationFailure("Authentication failed", code=18), "refused to"),
    (pymongo.errors.InvalidOperation("closed client"), "refused to"),
])
def test_driver_errors_become_snapshot_unavailable(mongo: Any, error: Exception, match: str) -> None:
    mongo._collection.find.side_effect = error
    with pytest.raises(SnapshotUnavailable, match=match) as caught:
        mongo.latest("Account", "a-1")
    assert caught.value.__cause__ is error
    assert mongo._collection.find.call_count == 1  # not retried


def test_a_dropped_connection_is_retried_once(mongo: Any) -> None:
    cursor = mock.MagicMock()
    cursor.sort.return_value.batch_size.return_value.__enter__.return_value = iter([doc()])
    mongo._collection.find.side_effect = [pymongo.errors.AutoReconnect("reset"), cursor]
    assert mongo.latest("Account", "a-1") == decode_snapshot(doc())
    mongo._collection.find.side_effect = pymongo.errors.AutoReconnect("reset")
    mongo._collection.find.reset_mock()
    with pytest.raises(SnapshotUnavailable, match="unreachable"):
        mongo.latest("Account", "a-1")
    assert mongo._collection.find.call_count == 2


def test_latest_skips_a_corrupt_document_from_the_server(
        mongo: Any, caplog: pytest.LogCaptureFixture) -> None:
    cursor = mock.MagicMock()
    cursor.sort.return_value.batch_size.return_value.__enter__.return_value = iter(
        [doc(version=4, state_schema_version=_DROP), doc(version=3)])
    mongo._collection.find.return_value = cursor
    with caplog.at_level(logging.WARNING, logger="eventstore.snapshots"):
        assert mongo.latest("Account", "a-1", at_or_below_version=4).version == 3
    assert "Account a-1 at version 4: missing field(s) state_schema_version" in caplog.text
    query = mongo._collection.find.call_args.args[0]
    assert query == {"aggregate_type": "Account", "aggregate_id": "a-1", "version": {"$lte": 4}}
    cursor.sort.assert_called_once_with("version", pymongo.DESCENDING)


def test_save_upserts_then_prunes_below_the_kth_version(mongo: Any) -> None:
    mongo.keep = 2
    mongo._collection.find.return_value = [{"version": v} for v in (1, 5, "x", 3, 4)]
    mongo.save(Snapshot("Account", "a-1", 5, {"b": 1}, 1, WHEN))
    key = {"aggregate_type": "Account", "aggregate_id": "a-1", "version": 5}
    ((filter_, document), kwargs) = mongo._collection.replace_one.call_args
    assert filter_ == key and kwargs == {"upsert": True}
    assert document["state"] == {"b": 1} and document["taken_at"] == WHEN
    mongo._collection.delete_many.assert_called_once_with(
        {"aggregate_type": "Account", "aggregate_id": "a-1", "version": {"$lte": 3}})


def test_save_retries_the_upsert_after_losing_a_race(mongo: Any) -> None:
    mongo._collection.find.return_value = []
    mongo._collection.replace_one.side_effect = [pymongo.errors.DuplicateKeyError("E11000"), None]
    mongo.save(Snapshot("Account", "a-1", 1, {}, 1, WHEN))
    assert mongo._collection.replace_one.call_count == 2


def test_save_stores_json_text_when_bson_cannot_hold_the_state(mongo: Any) -> None:
    mongo._collection.find.return_value = []
    mongo.save(Snapshot("Account", "a-1", 1, {"ann@example.com": 1}, 1, WHEN))
    document = mongo._collection.replace_one.call_args.args[1]
    assert document["state"] == '{"ann@example.com":1}'
    assert decode_snapshot(document).state == {"ann@example.com": 1}


def test_ping_never_raises(mongo: Any) -> None:
    with mock.patch.object(mongo._client.admin, "command",
                           side_effect=pymongo.errors.ServerSelectionTimeoutError("down")):
        assert mongo.ping() is False


def test_state_schema_version_zero_is_allowed() -> None:
    """0 can mark state written before an aggregate versioned its schema."""
    encoded = encode_snapshot(Snapshot("A", "1", 1, {}, 0, WHEN))
    assert decode_snapshot(encoded).state_schema_version == 0

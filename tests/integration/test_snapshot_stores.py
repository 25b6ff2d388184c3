"""One snapshot-store contract, run against every backend: SQLite (a temp file) and MongoDB
(the real wire protocol, served by FerretDB)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors
import pytest

from eventstore.errors import StoreUnavailable, ValidationError
from eventstore.snapshots import Snapshot, SnapshotStore, SnapshotUnavailable
from eventstore.snapshots.base import to_epoch_ms, to_millis
from eventstore.snapshots.mongo import INDEX_NAME, MongoSnapshotStore
from eventstore.snapshots.sqlite import SQLiteSnapshotStore
from tests.harness.ferretdb import FerretDBServer

T0 = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)  # sub-millisecond on purpose
KIND, ID = "Account", "acc-1"


def snap(version: int, state: dict[str, Any] | None = None, *, aggregate_id: str = ID,
         aggregate_type: str = KIND, taken_at: datetime | None = None,
         schema: int = 1) -> Snapshot:
    return Snapshot(aggregate_type=aggregate_type, aggregate_id=aggregate_id, version=version,
                    state={"balance": version} if state is None else state,
                    state_schema_version=schema,
                    taken_at=taken_at or T0 + timedelta(seconds=version))


def stored(snapshot: Snapshot) -> Snapshot:
    """What a store gives back for `snapshot`: the same, with taken_at in whole ms."""
    return Snapshot(snapshot.aggregate_type, snapshot.aggregate_id, snapshot.version,
                    snapshot.state, snapshot.state_schema_version, to_millis(snapshot.taken_at))


def versions(snapshots: list[Snapshot]) -> list[int]:
    return [s.version for s in snapshots]


class SnapshotStoreContract:
    """The behaviour every SnapshotStore backend promises. A backend's test class provides
    the `store` fixture (empty, keep=3) and the three hooks below."""

    KEEP = 3

    @pytest.fixture
    def store(self) -> Iterator[SnapshotStore]:
        raise NotImplementedError

    def insert_raw(self, store: SnapshotStore, fields: dict[str, Any]) -> None:
        """Write one stored snapshot directly, bypassing the store's validation."""
        raise NotImplementedError

    def corrupt_documents(self) -> list[dict[str, Any]]:
        """Backend-specific undecodable snapshots of KIND/ID at versions 3, 4, 5 (and one
        whose version is not even a number)."""
        raise NotImplementedError

    def outage(self, store: SnapshotStore) -> AbstractContextManager[None]:
        """While entered, the store cannot write (server down, database locked)."""
        raise NotImplementedError

    # -- save / latest -----------------------------------------------------------------

    def test_latest_of_unknown_aggregate_is_none(self, store: SnapshotStore) -> None:
        assert store.latest(KIND, ID) is None
        assert store.history(KIND, ID) == []

    def test_save_then_latest_round_trips(self, store: SnapshotStore) -> None:
        original = snap(7, {"owner": "Zoë", "nested": {"list": [1, 2.5, None, True, "x"]},
                            "empty": {}})
        store.save(original)
        got = store.latest(KIND, ID)
        assert got == stored(original)
        assert got is not None and got.taken_at.tzinfo is not None
        assert got.taken_at.utcoffset() == timedelta(0)

    def test_latest_is_the_highest_version_whatever_the_save_order(self, store: SnapshotStore) -> None:
        for version in (20, 30, 10):
            store.save(snap(version))
        assert store.latest(KIND, ID) == stored(snap(30))

    def test_aggregates_are_isolated_by_type_and_id(self, store: SnapshotStore) -> None:
        store.save(snap(5))
        store.save(snap(9, aggregate_id="acc-2"))
        store.save(snap(11, aggregate_type="Loan"))
        assert store.latest(KIND, ID) == stored(snap(5))
        assert store.latest(KIND, "acc-2") == stored(snap(9, aggregate_id="acc-2"))
        assert store.latest("Loan", ID) == stored(snap(11, aggregate_type="Loan"))
        assert store.latest("Loan", "acc-2") is None

    def test_at_or_below_version(self, store: SnapshotStore) -> None:
        for version in (10, 20, 30):
            store.save(snap(version))
        assert store.latest(KIND, ID, at_or_below_version=25) == stored(snap(20))
        assert store.latest(KIND, ID, at_or_below_version=30) == stored(snap(30))
        assert store.latest(KIND, ID, at_or_below_version=10) == stored(snap(10))
        assert store.latest(KIND, ID, at_or_below_version=9) is None
        assert store.latest(KIND, ID, at_or_below_version=1000) == stored(snap(30))

    def test_taken_at_or_before(self, store: SnapshotStore) -> None:
        times = {1: T0, 2: T0 + timedelta(hours=1), 3: T0 + timedelta(hours=2)}
        for version, moment in times.items():
            store.save(snap(version, taken_at=moment))
        assert store.latest(KIND, ID, taken_at_or_before=times[2]) == stored(snap(2, taken_at=times[2]))
        # The exact (sub-millisecond) moment a snapshot was taken still finds it.
        assert store.latest(KIND, ID, taken_at_or_before=times[1]).version == 1  # type: ignore[union-attr]
        assert store.latest(KIND, ID, taken_at_or_before=T0 - timedelta(milliseconds=1)) is None
        # Any timezone: 05:04 at +02:00 is 03:04 UTC.
        plus_two = timezone(timedelta(hours=2))
        assert store.latest(KIND, ID, taken_at_or_before=(times[2] + timedelta(minutes=1))
                            .astimezone(plus_two)).version == 2  # type: ignore[union-attr]
        # Both bounds together: the newest snapshot satisfying both.
        assert store.latest(KIND, ID, at_or_below_version=2,
                            taken_at_or_before=times[3]).version == 2  # type: ignore[union-attr]
        assert store.latest(KIND, ID, at_or_below_version=3,
                            taken_at_or_before=times[1]).version == 1  # type: ignore[union-attr]
        with pytest.raises(ValidationError, match="timezone-aware"):
            store.latest(KIND, ID, taken_at_or_before=datetime(2026, 1, 1))

    def test_history_is_newest_first(self, store: SnapshotStore) -> None:
        for version in (2, 3, 1):
            store.save(snap(version))
        assert store.history(KIND, ID) == [stored(snap(v)) for v in (3, 2, 1)]

    # -- bounded history ---------------------------------------------------------------

    def test_saving_prunes_to_the_last_keep(self, store: SnapshotStore) -> None:
        assert store.keep == self.KEEP
        for version in range(1, 8):
            store.save(snap(version * 10))
            assert len(store.history(KIND, ID)) == min(version, self.KEEP)
        assert versions(store.history(KIND, ID)) == [70, 60, 50]
        assert store.latest(KIND, ID, at_or_below_version=45) is None  # 40 was pruned
        # A snapshot older than every kept one is pruned as soon as it is saved.
        store.save(snap(5))
        assert versions(store.history(KIND, ID)) == [70, 60, 50]

    def test_pruning_is_per_aggregate(self, store: SnapshotStore) -> None:
        for version in range(1, 6):
            store.save(snap(version))
        store.save(snap(1, aggregate_id="acc-2"))
        assert versions(store.history(KIND, "acc-2")) == [1]
        assert versions(store.history(KIND, ID)) == [5, 4, 3]

    # -- idempotence -------------------------------------------------------------------

    def test_resaving_a_version_is_an_idempotent_upsert(self, store: SnapshotStore) -> None:
        store.save(snap(4))
        store.save(snap(4))
        assert store.history(KIND, ID) == [stored(snap(4))]
        # Saving the version again with other content replaces it (the last save wins).
        newer = snap(4, {"balance": 99}, taken_at=T0 + timedelta(days=1), schema=2)
        store.save(newer)
        assert store.history(KIND, ID) == [stored(newer)]

    # -- what is stored ----------------------------------------------------------------

    def test_state_survives_exactly_even_where_bson_cannot_hold_it(self, store: SnapshotStore) -> None:
        # Dotted and $-prefixed keys (FerretDB refuses them in documents), an integer
        # beyond int64, deep nesting: all come back exactly as saved.
        deep: dict[str, Any] = {"leaf": 1}
        for _ in range(120):
            deep = {"d": deep}
        state = {"members": {"ann@example.com": {"role": "owner"}}, "$weird": [1, {"a.b": 2}],
                 "big": 2**70, "negative": -(2**65), "deep": deep, "tuple": [1, 2]}
        store.save(snap(1, state))
        assert store.latest(KIND, ID) == stored(snap(1, state))
        store.save(snap(2, {"t": (1, 2)}))  # tuples are stored as JSON arrays
        assert store.latest(KIND, ID).state == {"t": [1, 2]}  # type: ignore[union-attr]

    @pytest.mark.parametrize(("bad", "match"), [
        (snap(1, {"when": datetime(2026, 1, 1)}), "not JSON-serializable"),
        (snap(1, {"nan": float("nan")}), "not JSON-serializable"),
        (snap(0), "version must be an integer >= 1"),
        (snap(1, schema=-1), "state_schema_version must be an integer >= 0"),
        (snap(1, taken_at=datetime(2026, 1, 1)), "timezone-aware"),
        (snap(1, aggregate_id=""), "aggregate_id must be a non-empty string"),
        (snap(1, state=[1, 2]), "must be a dict"),  # type: ignore[arg-type]
    ])
    def test_invalid_snapshots_are_refused_and_nothing_is_stored(
            self, store: SnapshotStore, bad: Snapshot, match: str) -> None:
        with pytest.raises(ValidationError, match=match):
            store.save(bad)
        assert store.history(KIND, ID) == []

    # -- corrupt documents -------------------------------------------------------------

    def test_corrupt_snapshots_are_skipped_with_a_warning(
            self, store: SnapshotStore, caplog: pytest.LogCaptureFixture) -> None:
        store.save(snap(1))
        store.save(snap(2))
        for fields in self.corrupt_documents():
            self.insert_raw(store, fields)
        with caplog.at_level(logging.WARNING, logger="eventstore.snapshots"):
            assert store.latest(KIND, ID) == stored(snap(2))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for version in (3, 4, 5):
            assert any(f"{KIND} {ID} at version {version}" in m for m in warnings), warnings
        # Never trusted anywhere: history skips them too, bounded reads as well.
        assert versions(store.history(KIND, ID)) == [2, 1]
        assert store.latest(KIND, ID, at_or_below_version=4) == stored(snap(2))
        # Pruning counts stored versions, corrupt or not (it never reads states), so
        # the corrupt ones age out like any other; one whose version is not a number
        # cannot be ordered and stays until delete(), which removes everything.
        store.save(snap(6))
        store.save(snap(7))
        assert versions(store.history(KIND, ID)) == [7, 6]  # 5 (corrupt) is the third kept
        assert store.delete(KIND, ID) == 4                  # 7, 6, 5 and "six"
        assert store.latest(KIND, ID) is None

    # -- delete, ping, close -----------------------------------------------------------

    def test_delete_removes_one_aggregate(self, store: SnapshotStore) -> None:
        for version in (1, 2):
            store.save(snap(version))
        store.save(snap(1, aggregate_id="acc-2"))
        assert store.delete(KIND, ID) == 2
        assert store.delete(KIND, ID) == 0
        assert store.latest(KIND, ID) is None
        assert store.latest(KIND, "acc-2") == stored(snap(1, aggregate_id="acc-2"))

    def test_ping(self, store: SnapshotStore) -> None:
        assert store.ping() is True

    def test_concurrent_saves_from_threads(self, store: SnapshotStore) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for version in range(1, 6):
                    store.save(snap(version, aggregate_id=f"t-{n}"))
                    store.latest(KIND, f"t-{n}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for n in range(6):
            assert versions(store.history(KIND, f"t-{n}")) == [5, 4, 3]

    # -- outages -----------------------------------------------------------------------

    def test_unavailable_store_raises_then_recovers(self, store: SnapshotStore) -> None:
        store.save(snap(1))
        with self.outage(store):
            with pytest.raises(SnapshotUnavailable) as caught:
                store.save(snap(2))
            assert isinstance(caught.value, StoreUnavailable)
        store.save(snap(3))
        assert versions(store.history(KIND, ID)) == [3, 1]  # 1 survived the outage

    def test_closed_store_is_unavailable(self, store: SnapshotStore) -> None:
        store.close()
        with pytest.raises(SnapshotUnavailable):
            store.latest(KIND, ID)
        assert store.ping() is False


# -- SQLite ------------------------------------------------------------------------------


class TestSQLiteSnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SnapshotStore]:
        store = SnapshotStore.connect(f"sqlite:///{tmp_path}/snapshots.db", keep=self.KEEP,
                                      timeout_s=0.2)
        assert isinstance(store, SQLiteSnapshotStore)
        try:
            yield store
        finally:
            store.close()

    def insert_raw(self, store: SnapshotStore, fields: dict[str, Any]) -> None:
        assert isinstance(store, SQLiteSnapshotStore)
        with sqlite3.connect(store.path) as conn:
            conn.execute(f"INSERT INTO es_snapshots ({', '.join(fields)}) "
                         f"VALUES ({', '.join('?' * len(fields))})", list(fields.values()))

    def corrupt_documents(self) -> list[dict[str, Any]]:
        good = {"aggregate_type": KIND, "aggregate_id": ID, "state": "{}",
                "state_schema_version": 1, "taken_at": to_epoch_ms(T0)}
        return [
            {**good, "version": 3, "state": "[1, 2]"},           # state not an object
            {**good, "version": 4, "state": "{not json"},        # state not JSON
            {**good, "version": 5, "taken_at": "yesterday"},     # wrong type
            {**good, "version": "six", "state_schema_version": "x"},
        ]

    @contextmanager
    def outage(self, store: SnapshotStore) -> Iterator[None]:
        # Another process holding the write lock longer than the store's busy timeout.
        assert isinstance(store, SQLiteSnapshotStore)
        other = sqlite3.connect(store.path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    def test_memory_url(self) -> None:
        store = SnapshotStore.connect("sqlite://:memory:")
        assert isinstance(store, SQLiteSnapshotStore) and store.keep == 5
        store.save(snap(1))
        assert store.latest(KIND, ID) == stored(snap(1))
        store.close()

    def test_relative_and_absolute_urls(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        for url, path in (("sqlite:///rel/snaps.db", tmp_path / "rel" / "snaps.db"),
                          (f"sqlite:///{tmp_path}/abs/snaps.db", tmp_path / "abs" / "snaps.db")):
            store = SnapshotStore.connect(url)
            store.save(snap(1))
            store.close()
            assert path.exists(), url

    def test_unopenable_path_is_unavailable_not_a_crash(self, tmp_path: Path) -> None:
        (tmp_path / "a-file").write_text("")
        store = SnapshotStore.connect(f"sqlite:///{tmp_path}/a-file/snapshots.db")
        assert store.ping() is False
        with pytest.raises(SnapshotUnavailable, match="a-file"):
            store.latest(KIND, ID)
        with pytest.raises(SnapshotUnavailable):
            store.save(snap(1))

    def test_a_file_that_is_not_a_database_is_unavailable(self, tmp_path: Path) -> None:
        (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
        store = SnapshotStore.connect(f"sqlite:///{tmp_path}/junk.db")
        with pytest.raises(SnapshotUnavailable, match="not a database"):
            store.latest(KIND, ID)

    def test_two_stores_on_one_file_see_each_other(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path}/shared.db"
        first, second = SnapshotStore.connect(url), SnapshotStore.connect(url)
        first.save(snap(1))
        assert second.latest(KIND, ID) == stored(snap(1))
        first.close()
        second.close()


# -- MongoDB (FerretDB) ------------------------------------------------------------------


@pytest.mark.mongo
class TestMongoSnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    def store(self, mongo_url: str, ferretdb_server: FerretDBServer) -> Iterator[SnapshotStore]:
        self._server = ferretdb_server
        store = SnapshotStore.connect(mongo_url, keep=self.KEEP, timeout_s=1.0)
        assert isinstance(store, MongoSnapshotStore)
        try:
            yield store
        finally:
            store.close()

    def raw_collection(self, store: SnapshotStore) -> tuple[Any, Any]:
        """A client of our own and the store's collection: documents written through it
        never pass through the store's code."""
        assert isinstance(store, MongoSnapshotStore)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self._server.url)
        return client, client[store._collection.database.name][store._collection.name]

    def insert_raw(self, store: SnapshotStore, fields: dict[str, Any]) -> None:
        client, coll = self.raw_collection(store)
        try:
            coll.insert_one(dict(fields))
        finally:
            client.close()

    def corrupt_documents(self) -> list[dict[str, Any]]:
        good = {"aggregate_type": KIND, "aggregate_id": ID, "state": {},
                "state_schema_version": 1, "taken_at": T0}
        missing = {k: v for k, v in good.items() if k != "state_schema_version"}
        return [
            {**good, "version": 3, "state": [1, 2]},             # state not an object
            {**missing, "version": 4},                            # missing field
            {**good, "version": 5, "taken_at": "yesterday"},      # wrong type
            {**good, "version": "six"},                           # sorts above numbers
        ]

    @contextmanager
    def outage(self, store: SnapshotStore) -> Iterator[None]:
        server = self._server
        server.stop()
        try:
            yield
        finally:
            server.start()

    def test_server_down_then_back_on_the_same_port_and_data(
            self, store: SnapshotStore, ferretdb_server: FerretDBServer) -> None:
        store.save(snap(1))
        ferretdb_server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(SnapshotUnavailable,
                               match=r"unreachable .* read the latest snapshot of Account acc-1"):
                store.latest(KIND, ID)
            assert time.monotonic() - started < 5, "the server-selection timeout was not applied"
            with pytest.raises(SnapshotUnavailable):
                store.save(snap(2))
            with pytest.raises(SnapshotUnavailable):
                store.history(KIND, ID)
            with pytest.raises(SnapshotUnavailable):
                store.delete(KIND, ID)
            assert store.ping() is False
        finally:
            ferretdb_server.start()
        # Same client, same port, same data dir: it reconnects and finds what it saved.
        assert store.ping() is True
        assert store.latest(KIND, ID) == stored(snap(1))
        store.save(snap(2))
        assert versions(store.history(KIND, ID)) == [2, 1]

    def test_unique_index_and_majority_write_concern(self, store: SnapshotStore) -> None:
        store.save(snap(1))
        assert isinstance(store, MongoSnapshotStore)
        assert store._collection.write_concern.document["w"] == "majority"
        client, coll = self.raw_collection(store)
        try:
            index = {i["name"]: i for i in coll.list_indexes()}[INDEX_NAME]
            assert index["unique"] is True
            assert list(index["key"].items()) == [("aggregate_type", 1), ("aggregate_id", 1),
                                                  ("version", 1)]
            # The server enforces it: a second document for the same version is refused.
            with pytest.raises(pymongo.errors.DuplicateKeyError):
                coll.insert_one({"aggregate_type": KIND, "aggregate_id": ID, "version": 1})
        finally:
            client.close()

    def test_state_is_a_document_when_bson_can_hold_it(self, store: SnapshotStore) -> None:
        store.save(snap(1, {"a": {"b": [1, 2]}}))
        store.save(snap(2, {"a.b": 1}))
        client, coll = self.raw_collection(store)
        try:
            docs = {d["version"]: d for d in coll.find({"aggregate_id": ID})}
        finally:
            client.close()
        assert docs[1]["state"] == {"a": {"b": [1, 2]}}
        assert docs[2]["state"] == '{"a.b":1}'  # kept as JSON text, read back as an object
        assert store.latest(KIND, ID, at_or_below_version=2).state == {"a.b": 1}  # type: ignore[union-attr]

    def test_database_comes_from_the_url(self, ferretdb_server: FerretDBServer) -> None:
        named = SnapshotStore.connect(f"{ferretdb_server.url}custom_db_{time.time_ns()}")
        default = SnapshotStore.connect(ferretdb_server.url)
        explicit = MongoSnapshotStore(ferretdb_server.url, database="explicit_db",
                                      collection="snaps")
        try:
            assert isinstance(named, MongoSnapshotStore)
            assert isinstance(default, MongoSnapshotStore)
            assert named._collection.database.name.startswith("custom_db_")
            assert default._collection.database.name == "eventstore"
            assert explicit._collection.full_name == "explicit_db.snaps"
            named.save(snap(1))
            assert named.latest(KIND, ID) == stored(snap(1))
            assert explicit.latest(KIND, ID) is None
        finally:
            named.delete(KIND, ID)
            for store in (named, default, explicit):
                store.close()


# -- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "postgresql://user@host/db",
    "snapshots.db",
    "",
    "mongodb://",
    "mongodb://127.0.0.1:notaport/db",
    "sqlite://relative.db",
])
def test_bad_urls_are_refused_with_a_clear_message(url: str) -> None:
    with pytest.raises(ValidationError, match=r"mongodb://|sqlite:///"):
        SnapshotStore.connect(url)


def test_non_string_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        SnapshotStore.connect(None)  # type: ignore[arg-type]

"""Snapshots in MongoDB (or any MongoDB wire-protocol server, such as FerretDB in the tests).

One document per (aggregate_type, aggregate_id, version), guarded by a unique index on
those three fields; saves are upserts on that key, so re-saving a version is idempotent.
Writes use majority write concern: a snapshot a load may start from must survive a
primary failover, or a later load could start from a state that never became durable.

Portability (checked against FerretDB 1.24 on its SQLite backend, which the tests use):
everything here -- createIndexes with unique, replaceOne upserts, deleteMany, find with
sort and batchSize, ping -- behaves as on MongoDB. FerretDB accepts but ignores the write
concern (it is a single node; a write is durable once committed) and refuses field names
containing '.' or starting with '$', which MongoDB only restricts; states with such keys
are therefore stored as their JSON text (see `save`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import bson.errors
import pymongo
import pymongo.errors
from pymongo import DESCENDING, MongoClient, WriteConcern
from pymongo.collection import Collection

from eventstore.errors import ValidationError
from eventstore.snapshots.base import (
    DEFAULT_KEEP,
    DEFAULT_TIMEOUT_S,
    Snapshot,
    SnapshotStore,
    SnapshotUnavailable,
    check_keep,
    check_key,
    check_query,
    decode_or_warn,
    encode_snapshot,
    select_latest,
    state_to_json,
)

T = TypeVar("T")
Document = dict[str, Any]

#: Name of the unique index on (aggregate_type, aggregate_id, version).
INDEX_NAME = "aggregate_version_unique"
DEFAULT_DATABASE = "eventstore"
#: MongoDB refuses documents nested deeper than 100 levels; stay clear of that limit.
_MAX_BSON_DEPTH = 90


class MongoSnapshotStore(SnapshotStore):
    """Snapshots in one MongoDB collection; keeps the newest `keep` per aggregate.

    `timeout_s` bounds how long an operation waits to find a server (and to connect)
    before SnapshotUnavailable is raised; it is short because callers can always replay
    events instead. Socket reads and the write-concern wait get a longer bound
    (max(10 s, 5 * timeout_s)) so a slow but healthy server is not reported as down.
    The database is `database`, else the URL's path, else "eventstore".
    """

    def __init__(self, url: str, database: str | None = None, collection: str = "snapshots",
                 keep: int = DEFAULT_KEEP, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.keep = check_keep(keep)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ValidationError(f"timeout_s must be a number of seconds > 0, not {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self._where = _redact(url)
        slow_ms = int(max(10.0, 5 * self.timeout_s) * 1000)
        try:
            self._client: MongoClient[Document] = MongoClient(
                url,
                serverSelectionTimeoutMS=int(self.timeout_s * 1000),
                connectTimeoutMS=int(self.timeout_s * 1000),
                socketTimeoutMS=slow_ms,
                tz_aware=True,
                tzinfo=UTC,
                appname="eventstore-snapshots",
            )
            db = (self._client.get_database(database) if database
                  else self._client.get_default_database(DEFAULT_DATABASE))
        except (pymongo.errors.ConfigurationError, ValueError, TypeError) as exc:
            raise ValidationError(
                f"invalid MongoDB snapshot store URL {self._where}: {exc}. Expected "
                "mongodb://[user:password@]host[:port][/database][?options]") from exc
        self._collection: Collection[Document] = db.get_collection(
            collection, write_concern=WriteConcern(w="majority", wtimeout=slow_ms))
        self._indexed = False

    def __repr__(self) -> str:
        return (f"MongoSnapshotStore({self._where!r}, database={self._collection.database.name!r}, "
                f"collection={self._collection.name!r}, keep={self.keep})")

    # -- the one place driver errors become ours ---------------------------------------

    def _run(self, what: str, operation: Callable[[], T]) -> T:
        """Run `operation`, translating pymongo's errors; retries once after a dropped
        connection (AutoReconnect), which every operation here tolerates: saves are
        upserts, pruning and deletes are idempotent, reads have no side effects."""
        for attempt in (1, 2):
            try:
                return operation()
            except pymongo.errors.ServerSelectionTimeoutError as exc:
                raise SnapshotUnavailable(
                    f"snapshot store {self._where} did not answer within {self.timeout_s:g} s "
                    f"while trying to {what}: {_first_line(exc)}. Is MongoDB running and "
                    "reachable? Loads replay events meanwhile.") from exc
            except pymongo.errors.AutoReconnect as exc:
                if attempt == 1:
                    continue
                raise SnapshotUnavailable(
                    f"snapshot store {self._where} is unreachable (connection refused or "
                    f"dropped twice) while trying to {what}: {_first_line(exc)}") from exc
            except pymongo.errors.ConnectionFailure as exc:  # incl. pool wait-queue timeouts
                raise SnapshotUnavailable(
                    f"snapshot store {self._where} is unreachable while trying to {what}: "
                    f"{_first_line(exc)}") from exc
            except (pymongo.errors.ExecutionTimeout, pymongo.errors.WriteConcernError) as exc:
                raise SnapshotUnavailable(
                    f"snapshot store {self._where} timed out while trying to {what} "
                    f"(a majority of the replica set did not confirm in time): "
                    f"{_first_line(exc)}") from exc
            except bson.errors.BSONError as exc:
                raise ValidationError(f"cannot {what}: the document is not valid BSON: {exc}") from exc
            except pymongo.errors.PyMongoError as exc:
                # Authorisation failures, a closed client, server-side refusals: none of
                # them is fixed by retrying now, but for a caller they all mean "no
                # snapshot from here", which is what SnapshotUnavailable tells it.
                raise SnapshotUnavailable(
                    f"snapshot store {self._where} refused to {what}: {_first_line(exc)}") from exc
        raise AssertionError("unreachable")

    def _coll(self, *, writing: bool = False) -> Collection[Document]:
        """The collection; before the first write, its unique index is created (idempotent,
        so a race between processes is harmless; retried until it succeeds once). Reads
        do not need it, so a read-only user can still load snapshots."""
        if writing and not self._indexed:
            self._collection.create_index(
                [("aggregate_type", 1), ("aggregate_id", 1), ("version", 1)],
                unique=True, name=INDEX_NAME)
            self._indexed = True
        return self._collection

    # -- the contract ------------------------------------------------------------------

    def save(self, snapshot: Snapshot) -> None:
        doc = encode_snapshot(snapshot)
        if not _bson_safe(doc["state"]):
            # Keys with '.' or a leading '$' (FerretDB refuses them, MongoDB restricts
            # them), integers beyond int64 or very deep nesting: keep the state
            # faithfully as its JSON text instead. decode_snapshot reads both forms.
            doc["state"] = state_to_json(doc["state"])
        key = {name: doc[name] for name in ("aggregate_type", "aggregate_id", "version")}

        def upsert_and_prune() -> None:
            coll = self._coll(writing=True)
            try:
                coll.replace_one(key, doc, upsert=True)
            except pymongo.errors.DuplicateKeyError:
                # A concurrent save of the same version inserted first; now it matches.
                coll.replace_one(key, doc, upsert=True)
            self._prune(coll, snapshot.aggregate_type, snapshot.aggregate_id)

        self._run(f"save the snapshot of {snapshot.aggregate_type} {snapshot.aggregate_id} "
                  f"at version {snapshot.version}", upsert_and_prune)

    def _prune(self, coll: Collection[Document], aggregate_type: str, aggregate_id: str) -> None:
        aggregate = {"aggregate_type": aggregate_type, "aggregate_id": aggregate_id}
        # History is bounded by `keep`, so reading every version is a handful of ints;
        # doing the cut in Python keeps documents with a corrupt `version` from counting
        # towards the snapshots kept.
        versions: list[int] = sorted(
            {v for d in coll.find(aggregate, {"version": 1, "_id": 0})
             if isinstance(v := d.get("version"), int) and not isinstance(v, bool)},
            reverse=True)
        if len(versions) > self.keep:
            coll.delete_many({**aggregate, "version": {"$lte": versions[self.keep]}})

    def latest(self, aggregate_type: str, aggregate_id: str,
               at_or_below_version: int | None = None,
               taken_at_or_before: datetime | None = None) -> Snapshot | None:
        check_key(aggregate_type, aggregate_id)
        before = check_query(at_or_below_version, taken_at_or_before)
        query: Document = {"aggregate_type": aggregate_type, "aggregate_id": aggregate_id}
        if at_or_below_version is not None:
            query["version"] = {"$lte": at_or_below_version}
        if before is not None:
            query["taken_at"] = {"$lte": before}

        def find() -> Snapshot | None:
            # Newest first, in small batches: the first document is nearly always the answer.
            with self._coll().find(query, {"_id": 0}).sort("version", DESCENDING).batch_size(4) as cursor:
                return select_latest(cursor, aggregate_type, aggregate_id,
                                     at_or_below_version, before)

        return self._run(f"read the latest snapshot of {aggregate_type} {aggregate_id}", find)

    def history(self, aggregate_type: str, aggregate_id: str) -> list[Snapshot]:
        check_key(aggregate_type, aggregate_id)

        def find() -> list[Document]:
            return list(self._coll().find({"aggregate_type": aggregate_type,
                                           "aggregate_id": aggregate_id}, {"_id": 0}))

        docs = self._run(f"read the snapshots of {aggregate_type} {aggregate_id}", find)
        snapshots = [s for d in docs if (s := decode_or_warn(d, aggregate_type, aggregate_id))]
        return sorted(snapshots, key=lambda s: s.version, reverse=True)

    def delete(self, aggregate_type: str, aggregate_id: str) -> int:
        check_key(aggregate_type, aggregate_id)
        result = self._run(
            f"delete the snapshots of {aggregate_type} {aggregate_id}",
            lambda: self._coll().delete_many({"aggregate_type": aggregate_type,
                                              "aggregate_id": aggregate_id}))
        return int(result.deleted_count)

    def ping(self) -> bool:
        try:
            self._client.admin.command("ping")
        except pymongo.errors.PyMongoError:
            return False
        return True

    def close(self) -> None:
        self._client.close()


# -- helpers -----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bson_safe(value: object, depth: int = 0) -> bool:
    """Whether a JSON value survives a BSON round trip unchanged on MongoDB and FerretDB."""
    if depth > _MAX_BSON_DEPTH:
        return False
    if isinstance(value, dict):
        return all(key and "." not in key and not key.startswith("$") and "\x00" not in key
                   and _bson_safe(item, depth + 1) for key, item in value.items())
    if isinstance(value, list):
        return all(_bson_safe(item, depth + 1) for item in value)
    if _is_int(value):
        return -(2**63) <= value < 2**63  # type: ignore[operator]
    return True


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:@/]*):[^@/]*@", r"\1:***@", url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # Server-selection errors append the whole topology description; the cause is enough.
    text = text.split(", Timeout:", 1)[0]
    return text.splitlines()[0] if text else type(exc).__name__


"""Snapshots in one SQLite file (or in memory): the embedded default, with no server to run.

Same behaviour as the MongoDB store: one row per (aggregate_type, aggregate_id, version)
(the primary key), upserts, the newest `keep` rows kept per aggregate, corrupt rows skipped.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

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
    to_epoch_ms,
)
from eventstore.store.sqlite import immediate_transaction

# Deliberately not a STRICT table: SQLite would then refuse the wrong-typed rows that
# another tool or an old version might write, but we must read past them anyway, and the
# decoder is the one place that decides what a valid snapshot is.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS es_snapshots (
    aggregate_type       TEXT    NOT NULL,
    aggregate_id         TEXT    NOT NULL,
    version              INTEGER NOT NULL,
    state                TEXT    NOT NULL,  -- JSON object
    state_schema_version INTEGER NOT NULL,
    taken_at             INTEGER NOT NULL,  -- UTC, milliseconds since the epoch
    PRIMARY KEY (aggregate_type, aggregate_id, version)
)
"""
_COLUMNS = ("aggregate_type", "aggregate_id", "version", "state", "state_schema_version",
            "taken_at")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM es_snapshots"


class SQLiteSnapshotStore(SnapshotStore):
    """Snapshots in a SQLite file (WAL mode) or in memory (":memory:").

    Thread-safe through one connection behind a lock: snapshot reads and writes are
    short and rare next to event reads, and a single connection is the only way an
    in-memory database is shared at all. Other processes may use the same file; a write
    waits up to `timeout_s` for their locks before raising SnapshotUnavailable.
    The database is opened on first use, so a bad path surfaces as SnapshotUnavailable
    from the operation, as an unreachable MongoDB does.
    """

    def __init__(self, path: str | Path, keep: int = DEFAULT_KEEP,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.keep = check_keep(keep)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s < 0:
            raise ValidationError(f"timeout_s must be a number of seconds >= 0, not {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.path = str(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteSnapshotStore:
        """sqlite:///relative.db, sqlite:////absolute/path.db or sqlite://:memory:."""
        path = url.removeprefix("sqlite://")
        if path in ("", "/:memory:", ":memory:"):
            return cls(":memory:", **options)
        if not path.startswith("/") or path == "/":
            raise ValidationError(f"SQLite snapshot store URL {url!r} needs a path: "
                                  "sqlite:///relative.db or sqlite:////absolute/path.db")
        return cls(path[1:], **options)

    def __repr__(self) -> str:
        return f"SQLiteSnapshotStore({self.path!r}, keep={self.keep})"

    # -- connection and the one place sqlite3 errors become ours -----------------------

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _connection(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise SnapshotUnavailable(f"cannot {what}: the snapshot store is closed")
            try:
                if self._conn is None:
                    self._conn = self._open()
                yield self._conn
            except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
                # Locked past the busy timeout, unreadable or unwritable file, disk full,
                # not a database: the store cannot serve now; loads replay events instead.
                raise SnapshotUnavailable(
                    f"SQLite snapshot store {self.path}: cannot {what}: {exc}") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._connection(what) as conn, immediate_transaction(conn):
            yield conn

    # -- the contract ------------------------------------------------------------------

    def save(self, snapshot: Snapshot) -> None:
        doc = encode_snapshot(snapshot)
        row = (doc["aggregate_type"], doc["aggregate_id"], doc["version"],
               state_to_json(doc["state"]), doc["state_schema_version"], to_epoch_ms(doc["taken_at"]))
        key = (doc["aggregate_type"], doc["aggregate_id"])
        with self._transaction(f"save the snapshot of {key[0]} {key[1]} at version "
                               f"{doc['version']}") as conn:
            conn.execute(
                f"INSERT INTO es_snapshots ({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (aggregate_type, aggregate_id, version) DO UPDATE SET "
                "state = excluded.state, state_schema_version = excluded.state_schema_version, "
                "taken_at = excluded.taken_at", row)
            # Keep the newest `keep` integer versions; rows whose version is not an
            # integer (corrupt) neither count towards them nor get in the way.
            conn.execute(
                "DELETE FROM es_snapshots WHERE aggregate_type = ? AND aggregate_id = ? "
                "AND typeof(version) = 'integer' AND version <= ("
                "  SELECT version FROM es_snapshots WHERE aggregate_type = ? AND aggregate_id = ?"
                "  AND typeof(version) = 'integer' ORDER BY version DESC LIMIT 1 OFFSET ?)",
                (*key, *key, self.keep))

    def latest(self, aggregate_type: str, aggregate_id: str,
               at_or_below_version: int | None = None,
               taken_at_or_before: datetime | None = None) -> Snapshot | None:
        check_key(aggregate_type, aggregate_id)
        before = check_query(at_or_below_version, taken_at_or_before)
        sql = f"{_SELECT} WHERE aggregate_type = ? AND aggregate_id = ?"
        params: list[Any] = [aggregate_type, aggregate_id]
        if at_or_below_version is not None:
            sql += " AND version <= ?"
            params.append(at_or_below_version)
        if before is not None:
            sql += " AND taken_at <= ?"
            params.append(to_epoch_ms(before))
        sql += " ORDER BY version DESC"
        with self._connection(f"read the latest snapshot of {aggregate_type} {aggregate_id}") as conn:
            rows = (dict(zip(_COLUMNS, row, strict=True)) for row in conn.execute(sql, params))
            return select_latest(rows, aggregate_type, aggregate_id, at_or_below_version, before)

    def history(self, aggregate_type: str, aggregate_id: str) -> list[Snapshot]:
        check_key(aggregate_type, aggregate_id)
        with self._connection(f"read the snapshots of {aggregate_type} {aggregate_id}") as conn:
            rows = conn.execute(f"{_SELECT} WHERE aggregate_type = ? AND aggregate_id = ?",
                                (aggregate_type, aggregate_id)).fetchall()
        snapshots = [s for row in rows
                     if (s := decode_or_warn(dict(zip(_COLUMNS, row, strict=True)),
                                             aggregate_type, aggregate_id))]
        return sorted(snapshots, key=lambda s: s.version, reverse=True)

    def delete(self, aggregate_type: str, aggregate_id: str) -> int:
        check_key(aggregate_type, aggregate_id)
        with self._transaction(f"delete the snapshots of {aggregate_type} {aggregate_id}") as conn:
            cursor = conn.execute(
                "DELETE FROM es_snapshots WHERE aggregate_type = ? AND aggregate_id = ?",
                (aggregate_type, aggregate_id))
            return cursor.rowcount

    def ping(self) -> bool:
        try:
            with self._connection("ping") as conn:
                conn.execute("SELECT 1 FROM es_snapshots LIMIT 1").fetchall()
        except SnapshotUnavailable:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

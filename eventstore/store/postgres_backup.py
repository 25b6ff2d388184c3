"""The PostgreSQL side of backups (eventstore/backup.py): a consistent export of one
segment, and the archive moves a restore replays.

Why one REPEATABLE READ transaction per segment: the head position, the rows up to it, the
archive moves and the snapshot's xmin must describe the same moment. An event archived
after that moment was moved by a transaction this snapshot cannot see, so its
`archived_tx` is at least the recorded xmin, and the next incremental backup (which asks
for `archived_tx >= xmin`) lists it. Asking for a little more than the exact set only
repeats a move, and replaying a move twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventstore.store.postgres import PostgresEventStore

_COLUMNS = ("position, id, stream_id, version, type, schema_version, payload, metadata, "
            "recorded_at")
_CUTOFF = ("(position + 0) < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)")
_FETCH = 500


class SegmentExport:
    """One segment being read: the snapshot's head (`to_position`), id and xmin are known
    when it opens, before a row is read, so the segment can be named and streamed out;
    `rows()` yields the archive moves then the events, counting them."""

    def __init__(self, conn: Any, store_id: str, after: int, to_position: int,
                 snapshot_xmin: int, since_xmin: int | None) -> None:
        self._conn = conn
        self.store_id = store_id
        self.after_position = after
        self.to_position = to_position
        self.snapshot_xmin = snapshot_xmin
        self._since = since_xmin
        self.events = 0
        self.archived = 0

    def rows(self) -> Iterator[dict[str, Any]]:
        after, head = self.after_position, self.to_position
        if self._since is not None and after > 0:
            moves = self._conn.cursor(name="es_backup_moves")
            moves.itersize = _FETCH
            moves.execute(
                "SELECT id::text, archived_at FROM es_events_archive WHERE position <= %s"
                " AND archived_tx >= %s::text::xid8 ORDER BY position", (after, str(self._since)))
            for event_id, archived_at in moves:
                self.archived += 1
                yield {"archived": event_id, "archived_at": archived_at.isoformat()}
            moves.close()
        if head > after:
            cur = self._conn.cursor(name="es_backup_events")
            cur.itersize = _FETCH
            cur.execute(
                f"SELECT {_COLUMNS}, NULL::timestamptz AS archived_at FROM es_events"
                " WHERE position > %s AND position <= %s"
                f" UNION ALL SELECT {_COLUMNS}, archived_at FROM es_events_archive"
                " WHERE position > %s AND position <= %s ORDER BY 1",
                (after, head, after, head))
            for r in cur:
                self.events += 1
                yield {"position": r[0], "id": str(r[1]), "stream_id": r[2], "version": r[3],
                       "type": r[4], "schema_version": r[5], "payload": r[6], "metadata": r[7],
                       "recorded_at": r[8].isoformat(),
                       "archived_at": r[9].isoformat() if r[9] is not None else None}
            cur.close()


@contextmanager
def open_export(store: PostgresEventStore, after: int, since_xmin: int | None
                ) -> Iterator[SegmentExport]:
    """A segment's export in one snapshot: the events (log and archive) with
    after < position <= head and, unless `since_xmin` is None (a full backup), the archive
    moves of events at or below `after` made by transactions at or after `since_xmin`.
    The snapshot stays open while the caller streams the rows out."""
    with store._connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL statement_timeout = 0")  # a full export reads everything
        row = conn.execute(
            "SELECT (SELECT id::text FROM es_store_identity),"
            " pg_snapshot_xmin(pg_current_snapshot())::text::bigint,"
            f" greatest((SELECT coalesce(max(position), 0) FROM es_events WHERE {_CUTOFF}),"
            f"  (SELECT coalesce(max(position), 0) FROM es_events_archive WHERE {_CUTOFF}))"
        ).fetchone()
        assert row is not None
        yield SegmentExport(conn, str(row[0]), after, max(int(row[2]), after), int(row[1]),
                            since_xmin)


@contextmanager
def location_lock(store: PostgresEventStore, key: str, wait: float) -> Iterator[bool]:
    """True while this session holds the backup lock of a location (`key`, its normalised
    name), False if another session held it for `wait` seconds. A session advisory lock
    in the source database: it dies with the connection, so a killed backup never leaves
    a stale lock behind."""
    with store.datastore.exclusive(backup_lock_key(key), wait=wait) as mine:
        yield mine


def backup_lock_key(key: str) -> int:
    """A location's advisory-lock key: a signed 64-bit hash, apart from the store's small
    fixed keys (setup, retention) by its size."""
    digest = hashlib.sha256(f"eventstore-backup:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def apply_archive_moves(store: PostgresEventStore, moves: Sequence[dict[str, Any]]) -> int:
    """Move restored events to the archive, as retention did after their segment was
    written (`{"archived": id, "archived_at": ...}` rows); returns how many moved. A move
    whose event is already in the archive does nothing."""
    if not moves:
        return 0
    batch = json.dumps([{"id": m["archived"], "archived_at": m["archived_at"]} for m in moves])
    with store._connection() as conn, conn.transaction():
        cur = conn.execute(
            "WITH m AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS (id uuid, archived_at"
            " timestamptz)), moved AS (DELETE FROM es_events e USING m WHERE e.id = m.id"
            f" RETURNING e.position, e.id, e.stream_id, e.version, e.type, e.schema_version,"
            " e.payload, e.metadata, e.recorded_at, e.tx_id, m.archived_at)"
            f" INSERT INTO es_events_archive ({_COLUMNS}, tx_id, archived_at)"
            " SELECT * FROM moved",
            (batch,))
        return cur.rowcount


def store_identity(store: PostgresEventStore) -> str:
    """This database's random id (schema migration 4)."""
    with store._connection() as conn:
        row = conn.execute("SELECT id::text FROM es_store_identity").fetchone()
    return str(row[0]) if row else ""

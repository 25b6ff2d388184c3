"""The PostgreSQL append statements and what both append executors share.

The synchronous store (postgres.py) and the event-loop appender (postgres_async.py) both
import from here, never from each other.

Every way of writing has one shape. It reads a stream's current version and the time,
and inserts only when the expectation holds on the version it read, every event of an
append with that one time (so a temporal read sees an append whole or not at all); a
concurrent append that read the same version collides on UNIQUE (stream_id, version) and
gets UniqueViolation. Positions are `xid8 << 20 | index`, the index counting the
transaction's events (see postgres_schema).

- APPEND_SQL: one stream, one statement, autocommit: atomic and one round trip.
- APPEND_MANY_SQL: one stream of an append_many; its events are numbered after those of
  the streams before it in the transaction (%(offset)s).
- COPY_HEAD_SQL + COPY_SQL (`copy_append`): an append of COPY_MIN_EVENTS or more, in its
  own transaction: read the transaction id, the stream's version and the time, check the
  expectation here, then COPY the rows with their positions computed here. Same
  collision on UNIQUE (stream_id, version) as the others. COPY skips parsing one large
  JSON document and turning it into rows, which is most of a large append's statement
  time after the index inserts; for a handful of events its extra round trips cost more.
- BATCH_SQL: group commit. Many appends to distinct streams in one statement (so one
  transaction and one commit), each with its own expectation and its own result row: an
  append whose expectation does not hold inserts nothing and gets NULL positions, and
  its neighbours go through. A statement error (a unique violation from a racing writer
  or a re-sent event id) writes nothing at all, and the executors then send each append
  of the batch to the synchronous store's individual path, which decides it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from psycopg.rows import TupleRow

from eventstore.events import AppendResult, Expected, NewEvent
from eventstore.store.encoding import conflicts
from eventstore.store.postgres_datastore import PostgresDatastore
from eventstore.store.postgres_schema import MAX_EVENTS_PER_TRANSACTION
from eventstore.store.prepared import PreparedAppend

#: A batch of the group commit holds at most this many events ...
BATCH_MAX_EVENTS = 1000
#: ... and about this many bytes of encoded events. An append larger than that alone is
#: never batched: it fills its own commit.
BATCH_MAX_BYTES = 1024 * 1024
#: An append of this many events or more is written alone, with COPY (copy_append), and
#: never shares a commit either: it fills one well enough on its own.
COPY_MIN_EVENTS = 64
assert COPY_MIN_EVENTS <= BATCH_MAX_EVENTS < MAX_EVENTS_PER_TRANSACTION

#: The stream's version now, including events retention moved to the archive (COALESCE
#: only looks there when the log holds none of the stream's events).
CURRENT_VERSION = ("coalesce((SELECT max(version) FROM es_events WHERE stream_id = {s}),"
                    " (SELECT max(version) FROM es_events_archive WHERE stream_id = {s}), 0)")
#: Whether expectation code {x} holds on current version {v} (codes: PreparedAppend).
_HOLDS = ("({x} = -2 OR ({x} = -4 AND {v} > 0) OR ({x} = -1 AND {v} = 0) OR {x} = {v})")
_INSERT = ("INSERT INTO es_events (position, id, stream_id, version, type, schema_version,"
           " payload, metadata, recorded_at, tx_id)")
_EVENTS = ("ROWS FROM (jsonb_to_recordset({e}) AS (id uuid, type text, payload jsonb,"
           " metadata jsonb, sv integer)) WITH ORDINALITY AS u(id, type, payload, metadata,"
           " sv, n)")
_POSITION = "(pg_current_xact_id()::text::bigint << 20) | ({offset}u.n - 1)"
_APPEND_TEMPLATE = f"""
WITH cur AS (SELECT {CURRENT_VERSION.format(s="%(stream)s")} AS v, clock_timestamp() AS t),
ins AS (
    {_INSERT}
    SELECT {_POSITION}, u.id, %(stream)s, cur.v + u.n, u.type, u.sv, u.payload, u.metadata,
           cur.t, pg_current_xact_id()
      FROM cur, {_EVENTS.format(e="%(events)s::jsonb")}
     WHERE {_HOLDS.format(x="%(expected)s", v="cur.v")}
    RETURNING position)
SELECT (SELECT v FROM cur), (SELECT array_agg(position ORDER BY position) FROM ins)
"""
APPEND_SQL = _APPEND_TEMPLATE.replace("{offset}", "").encode()
APPEND_MANY_SQL = _APPEND_TEMPLATE.replace("{offset}", "%(offset)s + ").encode()
# One row per append of the batch: (k, its index in the batch, the version read, its
# positions or NULL). No ORDER BY: with the pools' enable_sort=off a Sort node costs
# 1e10, which made PostgreSQL JIT-compile the statement (0.9 s); the caller maps by k.
# `req` is read once (a CTE referenced twice is materialised), so an append's version
# check and its inserts see the same version.
BATCH_SQL = f"""
WITH req AS (
    SELECT r.k, r.stream, r.x, r.off, r.events,
           {CURRENT_VERSION.format(s="r.stream")} AS v, clock_timestamp() AS t
      FROM jsonb_to_recordset(%(batch)s::jsonb)
           AS r(k integer, stream text, x bigint, off bigint, events jsonb)),
ins AS (
    {_INSERT}
    SELECT {_POSITION.replace("{offset}", "req.off + ")}, u.id, req.stream, req.v + u.n,
           u.type, u.sv, u.payload, u.metadata, req.t, pg_current_xact_id()
      FROM req, {_EVENTS.format(e="req.events")}
     WHERE {_HOLDS.format(x="req.x", v="req.v")}
    RETURNING stream_id, position)
SELECT req.k, req.v,
       (SELECT array_agg(position ORDER BY position) FROM ins WHERE ins.stream_id = req.stream)
  FROM req
""".encode()


COPY_HEAD_SQL = (f"SELECT pg_current_xact_id()::text::bigint,"
                 f" {CURRENT_VERSION.format(s='%(stream)s')}, clock_timestamp()").encode()
COPY_SQL = (b"COPY es_events (position, id, stream_id, version, type, schema_version,"
            b" payload, metadata, recorded_at, tx_id) FROM STDIN")


def write_alone(conn: psycopg.Connection[TupleRow], prepared: PreparedAppend
                ) -> tuple[int, list[int] | None]:
    """One append in its own transaction: (the version it read, its positions, or None
    when the expectation did not hold and nothing was written). Raises UniqueViolation
    when it lost a race for a version or its ids are stored (the caller decides)."""
    if prepared.count >= COPY_MIN_EVENTS:
        return copy_append(conn, prepared)
    row = conn.execute(APPEND_SQL, append_params(prepared)).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def copy_append(conn: psycopg.Connection[TupleRow], prepared: PreparedAppend
                ) -> tuple[int, list[int] | None]:
    """A large append with COPY (see the module's doc). Every event of it gets the one
    time read at its start, so a temporal read sees all of it or none of it.

    The rows are written as COPY text here rather than with `write_row`, which dumps
    field by field and took about a quarter of the append's client time (cProfile); they go out in chunks, so
    the server parses and indexes one chunk while the next is formatted."""
    stream_id = prepared.stream_id
    with conn.transaction():
        head = conn.execute(COPY_HEAD_SQL, {"stream": stream_id}).fetchone()
        assert head is not None
        xid, current, recorded_at = int(head[0]), int(head[1]), head[2]
        if conflicts(prepared.expected, current):
            return current, None
        first = xid << 20
        # Ends every row: the time (ISO 8601, read the same under any DateStyle), xid.
        tail = f"\t{recorded_at.isoformat()}\t{xid}\n"
        stream = copy_text(stream_id)
        with conn.cursor().copy(COPY_SQL) as copy:
            rows: list[str] = []
            for n, (event, (payload, metadata)) in enumerate(
                    zip(prepared.events, prepared.encoded, strict=True)):
                rows.append(f"{first | n}\t{event.id}\t{stream}\t{current + n + 1}\t"
                            f"{copy_text(event.type)}\t{event.schema_version}\t"
                            f"{copy_text(payload)}\t{copy_text(metadata)}{tail}")
                if len(rows) == _COPY_CHUNK_ROWS:
                    copy.write("".join(rows))
                    rows.clear()
            if rows:
                copy.write("".join(rows))
    return current, [first | n for n in range(prepared.count)]


#: Rows per write of copy_append: about 32 KiB of typical events.
_COPY_CHUNK_ROWS = 200
_COPY_SPECIAL = re.compile(r"[\\\n\r\t]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def copy_text(value: str) -> str:
    """`value` as a field of COPY's text format: backslash, newline, carriage return and
    tab escaped (the only characters that format gives a meaning). Encoded JSON holds
    backslashes only where it escapes a character, so most fields pass unchanged."""
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


def append_params(prepared: PreparedAppend) -> dict[str, Any]:
    """APPEND_SQL's parameters."""
    return {"stream": prepared.stream_id, "expected": prepared.expected_code,
            "events": prepared.events_json}


def batch_params(batch: Sequence[PreparedAppend]) -> dict[str, Any]:
    """BATCH_SQL's parameter: the batch as one JSON array, each append's events at its
    own offset within the transaction's positions. The streams must be distinct.

    Listed in stream-id order, so that two batches (from two pods, or a batch and an
    append_many) insert their streams in one order and wait for each other's uniqueness
    checks instead of deadlocking; `k` keeps each append's place in `batch`."""
    items = []
    offset = 0
    for k in sorted(range(len(batch)), key=lambda i: batch[i].stream_id):
        prepared = batch[k]
        items.append(f'{{"k":{k},"stream":{json.dumps(prepared.stream_id)},'
                     f'"x":{prepared.expected_code},"off":{offset},'
                     f'"events":{prepared.events_json}}}')
        offset += prepared.count
    return {"batch": f"[{','.join(items)}]"}


def batch_results(batch: Sequence[PreparedAppend], rows: Sequence[TupleRow]
                  ) -> list[AppendResult | None]:
    """Each append's result from BATCH_SQL's rows; None where its expectation did not hold
    (nothing of it was written: the individual path decides what it gets)."""
    results: list[AppendResult | None] = [None] * len(batch)
    for k, version, positions in rows:
        if positions is not None:
            results[k] = appended(batch[k].stream_id, int(version), positions)
    return results


def appended(stream_id: str, version_before: int, positions: Sequence[int]) -> AppendResult:
    return AppendResult(stream_id=stream_id, first_version=version_before + 1,
                        next_expected_version=version_before + len(positions),
                        positions=tuple(positions))


def batchable(prepared: PreparedAppend) -> bool:
    """Whether an append may share a commit (larger ones fill their own)."""
    return prepared.count < COPY_MIN_EVENTS and prepared.size <= BATCH_MAX_BYTES


class AppendHost(Protocol):
    """What the async appender needs from the store it stands next to."""

    url: str
    pool_timeout: float
    statement_timeout: float | None
    datastore: PostgresDatastore

    def prepare_append(self, stream_id: str, events: Sequence[NewEvent],
                       expected_version: Expected) -> PreparedAppend: ...

    def signal_append(self) -> None: ...

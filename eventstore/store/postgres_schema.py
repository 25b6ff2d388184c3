"""Versioned schema of the PostgreSQL backend. Append a migration; never edit a shipped one."""

from __future__ import annotations

# Why positions are built from the transaction id
# -----------------------------------------------
# A sequence hands out numbers when rows are inserted, not when they commit. Writer A can
# take position 8, writer B position 9, and B commit first: a reader that has passed 9
# would never see 8. eventsourcing solves this with a table lock that serialises every
# writer; Marten waits for gaps to fill and then gives up on them.
#
# We order the global log by the writing transaction's 64-bit id (xid8) instead:
#     position = (xid8 << 20) | index of the event within its append
# and a reader only hands out rows whose transaction id is below the xmin of its own
# snapshot (the oldest transaction still running). Every transaction that has not yet
# committed - running now or not started - has an id >= that xmin, so every row a reader
# may still see in future sorts after every row it has already handed out. No lock is
# shared between writers; a long-running write transaction delays readers, never skips.
# Positions are therefore sparse (not 1, 2, 3 ...) but strictly increasing in read order.
# The 20 low bits cap one transaction at 1,048,575 events: MAX_EVENTS_PER_TRANSACTION
# (an append, an append_many, a group commit's batch or a restore's chunk; the library
# caps an append far lower, at base.MAX_EVENTS_PER_APPEND).

MIGRATIONS: list[str] = [
    # 1: the log and its archive
    r"""
CREATE TABLE es_events (
    position        bigint PRIMARY KEY,
    id              uuid NOT NULL,
    stream_id       text NOT NULL,
    version         bigint NOT NULL CHECK (version >= 1),
    type            text NOT NULL,
    schema_version  integer NOT NULL DEFAULT 1,
    payload         jsonb NOT NULL,
    metadata        jsonb NOT NULL,
    recorded_at     timestamptz NOT NULL,
    tx_id           xid8 NOT NULL,
    CONSTRAINT es_events_id_key UNIQUE (id),
    -- Optimistic concurrency: two appends that read the same stream version collide here.
    CONSTRAINT es_events_stream_version_key UNIQUE (stream_id, version)
);

CREATE TABLE es_events_archive (
    position        bigint PRIMARY KEY,
    id              uuid NOT NULL UNIQUE,
    stream_id       text NOT NULL,
    version         bigint NOT NULL,
    type            text NOT NULL,
    schema_version  integer NOT NULL,
    payload         jsonb NOT NULL,
    metadata        jsonb NOT NULL,
    recorded_at     timestamptz NOT NULL,
    tx_id           xid8 NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);

CREATE INDEX es_events_recorded_at ON es_events (recorded_at);
""",
    # 2: projection checkpoints and dead letters; the log split in partitions by stream.
    # A stream's partition is (hashtext(stream_id) & 15): every event of a stream is in one
    # partition, so one projection worker at a time handles that stream, in order. Queries
    # must spell the expression exactly so that the expression indexes serve them.
    r"""
CREATE TABLE es_projection_checkpoints (
    projection      text NOT NULL,
    partition       integer NOT NULL,
    position        bigint NOT NULL DEFAULT 0,
    events_handled  bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, partition)
);

CREATE TABLE es_projection_dead_letters (
    id          bigserial PRIMARY KEY,
    projection  text NOT NULL,
    partition   integer NOT NULL,
    event_id    uuid NOT NULL,
    stream_id   text NOT NULL,
    version     bigint NOT NULL,
    position    bigint NOT NULL,
    event_type  text NOT NULL,
    error       text NOT NULL,
    attempts    integer NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (projection, event_id)
);

CREATE INDEX es_events_partition_position ON es_events ((hashtext(stream_id) & 15), position);
-- Projection rebuilds read the archive too (retention must not shrink a read model).
CREATE INDEX es_events_archive_partition_position
    ON es_events_archive ((hashtext(stream_id) & 15), position);
""",
    # 3: consumer checkpoints (committed with append_many), and the indexes of filtered
    # reads of the global log. A filtered read walks one of these in position order
    # instead of the whole log: by type, or by category (the part of a stream id before
    # its first "-", EventStoreDB's convention: the prefix "account-" reads account-1,
    # account-2, ...; any prefix is a category, or a range of categories, plus a filter).
    # Categories are compared in the "C" collation, where a range of strings is a prefix.
    # The second column is `position + 0`, and filtered reads bound and order by that
    # expression: only these indexes serve it, so the planner cannot prefer walking the
    # primary key (the whole log) with a filter, which it would for a common type, and
    # which is slow when that type is rare past the reader's position.
    r"""
CREATE TABLE es_consumer_checkpoints (
    consumer    text PRIMARY KEY,
    position    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX es_events_type_position ON es_events (type, (position + 0));
CREATE INDEX es_events_category_position
    ON es_events ((split_part(stream_id, '-', 1) COLLATE "C"), (position + 0));
""",
    # 4: backups (eventstore/backup.py). `archived_tx`: the transaction that moved a row to
    # the archive, so an incremental backup finds the events archived since the previous
    # one (those its snapshot could not see: archived_tx >= that snapshot's xmin). Rows
    # archived before this migration get 0: the next backup lists them all, once.
    # `es_store_identity`: one random id per database, so a backup never continues a chain
    # written from another database (a restored copy numbers its positions anew).
    r"""
ALTER TABLE es_events_archive ADD COLUMN archived_tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE es_events_archive ALTER COLUMN archived_tx SET DEFAULT pg_current_xact_id();
CREATE INDEX es_events_archive_archived_tx ON es_events_archive (archived_tx);

CREATE TABLE es_store_identity (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    single      boolean NOT NULL DEFAULT true UNIQUE CHECK (single)
);
INSERT INTO es_store_identity DEFAULT VALUES;
""",
]

#: Partitions of the global log for projection workers (the `& 15` above).
PROJECTION_PARTITIONS = 16

SCHEMA_VERSION = len(MIGRATIONS)

#: The most events one transaction can number: positions keep 20 bits for the index.
MAX_EVENTS_PER_TRANSACTION = (1 << 20) - 1

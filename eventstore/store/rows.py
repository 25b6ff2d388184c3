"""A stored event's columns and the one function that turns such a row into a RecordedEvent.

Every reader of either backend (streams, the global log, projection partitions, the
archive) selects EVENT_COLUMNS and maps rows with `row_to_event`, so a column added to the
log is added in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from eventstore.events import RecordedEvent
from eventstore.store.jsonb import loads

#: The columns of an event row, in the order `row_to_event` reads them.
EVENT_COLUMNS = ("position, id, stream_id, version, type, schema_version, payload, metadata, "
                 "recorded_at")

#: The two tables that hold events: the log, and the archive retention moves them to.
StreamTable = Literal["es_events", "es_events_archive"]


def row_to_event(row: Sequence[Any]) -> RecordedEvent:
    """An EVENT_COLUMNS row as a RecordedEvent. PostgreSQL hands back typed values (uuid,
    jsonb, timestamptz); SQLite stores text, decoded here."""
    position, id_, stream_id, version, type_, schema_version, payload, metadata, ts = row
    if isinstance(payload, str):  # SQLite: text columns
        id_ = UUID(id_)
        payload = loads(payload)
        metadata = loads(metadata)
        ts = datetime.fromisoformat(ts)
    return RecordedEvent(id=id_, type=type_, aggregate_id=stream_id, version=version,
                         payload=payload, metadata=metadata, timestamp=ts, position=position,
                         schema_version=schema_version)

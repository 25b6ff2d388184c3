"""Reading a projection partition to its end, a page at a time, as a worker does."""

from __future__ import annotations

from eventstore import RecordedEvent
from eventstore.store.postgres_datastore import PostgresDatastore
from eventstore.store.sqlite_datastore import SQLiteDatastore


def in_pages(datastore: PostgresDatastore | SQLiteDatastore, partition: int, size: int
             ) -> list[RecordedEvent]:
    """Every event of `partition`, read `size` at a time from position 0."""
    events: list[RecordedEvent] = []
    position = 0
    while page := datastore.read_partition(partition, position, size):
        events.extend(page)
        position = page[-1].position + 1
    return events

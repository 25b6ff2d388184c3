"""The contract every event-store backend fulfils, and URL-based backend selection."""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from eventstore.events import AppendResult, Expected, ExpectedVersion, NewEvent, RecordedEvent

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: The most events one append may carry (PostgreSQL positions reserve 20 bits per batch).
MAX_EVENTS_PER_APPEND = 100_000


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Size of the store, for `eventstore stats` and the store-size metrics."""

    events: int
    streams: int
    archived_events: int
    bytes: int
    head_position: int


class AsyncAppend(Protocol):
    """A backend's append for an asyncio event loop; see postgres_async.AsyncAppender."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def try_append(self, stream_id: str, events: Sequence[NewEvent],
                         expected_version: Expected) -> AppendResult | None:
        """The result of a clean append, or None: the synchronous append must decide."""
        ...


class EventStore(abc.ABC):
    """An append-only log of events grouped in streams, with a global order.

    Use `EventStore.connect(url)` to get the backend named by the URL's scheme.
    """

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    @staticmethod
    def connect(url: str, **options: object) -> EventStore:
        """Open the backend named by `url`: postgresql://... or sqlite:///path (or sqlite://:memory:)."""
        if url.startswith(("postgresql://", "postgres://")):
            from eventstore.store.postgres import PostgresEventStore

            return PostgresEventStore(url, **options)  # type: ignore[arg-type]
        if url.startswith("sqlite://"):
            from eventstore.store.sqlite import SQLiteEventStore

            return SQLiteEventStore.from_url(url, **options)
        from eventstore.errors import ValidationError

        raise ValidationError(
            f"unsupported event store URL scheme in {url.split('://')[0]!r}: "
            "use postgresql://user@host/db or sqlite:///path/to/file.db"
        )

    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema; idempotent. Returns the schema version now in place."""

    @abc.abstractmethod
    def schema_is_current(self) -> bool:
        """True when the database answers and holds this code's schema version."""

    @abc.abstractmethod
    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: Expected = ExpectedVersion.ANY,
    ) -> AppendResult:
        """Append all `events` to the stream atomically, or none.

        Raises ConcurrencyError when `expected_version` does not hold, ValidationError
        for bad input. Re-sending events whose ids are stored returns the first result.
        """

    @abc.abstractmethod
    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        as_of: datetime | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream with from_version <= version <= to_version, recorded at or
        before `as_of`. Backwards reads start at `to_version` (or the end)."""

    @abc.abstractmethod
    def read_all(self, from_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """A page of the global log: events with position >= from_position, in order.

        Never skips: an event not yet returned always has a position greater than every
        position already returned. Continue with `from_position = page[-1].position + 1`.
        """

    @abc.abstractmethod
    def read_archived_stream(self, stream_id: str) -> list[RecordedEvent]:
        """Events of a stream that retention moved to the archive, in version order."""

    @abc.abstractmethod
    def archive_stream(self, stream_id: str, up_to_version: int, older_than: datetime) -> int:
        """Move the stream's events with version <= up_to_version recorded before
        `older_than` from the log to the archive, in one transaction. Returns how many.

        Only call it for versions a snapshot covers (see eventstore.retention): archived
        events leave `read_stream` and `read_all`, and stay readable through
        `read_archived_stream`.
        """

    @abc.abstractmethod
    def wait_for_events(self, after_position: int, timeout: float) -> bool:
        """Block until an event past `after_position` may be readable, or `timeout` passes."""

    @abc.abstractmethod
    def stream_version(self, stream_id: str) -> int:
        """The stream's current version; 0 when it does not exist."""

    @abc.abstractmethod
    def stats(self) -> StoreStats:
        """Counts and sizes for operators and metrics."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    def async_appender(self, pool_size: int) -> AsyncAppend | None:
        """An append that runs on an event loop, when the backend has one (None here:
        callers run `append` on a worker thread)."""
        return None

    def subscribe(
        self,
        from_position: int = 0,
        batch_size: int = 500,
        idle_timeout: float | None = None,
        poll_interval: float = 1.0,
    ) -> Iterator[RecordedEvent]:
        """Follow the global log from `from_position`, live: yields each event once, in order.

        Wakes promptly after a commit (LISTEN/NOTIFY on PostgreSQL) and also polls every
        `poll_interval` seconds. Stops after `idle_timeout` seconds without events, if given.
        """
        position = from_position
        idle_since = time.monotonic()
        while True:
            page = self.read_all(from_position=position, limit=batch_size)
            if page:
                idle_since = time.monotonic()
                yield from page
                position = page[-1].position + 1
                continue
            if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                return
            wait = poll_interval
            if idle_timeout is not None:
                wait = min(wait, max(0.0, idle_timeout - (time.monotonic() - idle_since)))
            self.wait_for_events(position - 1, wait)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

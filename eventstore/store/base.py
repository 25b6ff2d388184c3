"""The contract every event-store backend fulfils, and URL-based backend selection."""

from __future__ import annotations

import abc
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from eventstore.events import (
    AppendResult,
    Checkpoint,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)
from eventstore.store.encoding import check_read_all
from eventstore.store.prepared import PreparedAppend, prepare_append

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: The most events one append (or one append_many, in all) may carry, in the library and
#: over HTTP alike (so the HTTP client can stand where a store stands). A store may be
#: opened with a lower `max_events_per_append`. The database's own bound is far higher
#: (postgres_schema.MAX_EVENTS_PER_TRANSACTION); this one keeps one append's memory and
#: one transaction's duration in reason.
MAX_EVENTS_PER_APPEND = 10_000


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

    async def append(self, prepared: PreparedAppend) -> AppendResult | None:
        """The result of a clean append, or None: the synchronous append must decide
        (`EventStore.append_prepared(prepared, grouped=False)`)."""
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
        Backends implement it as `append_prepared(prepare_append(...))`.
        """

    max_events_per_append: int = MAX_EVENTS_PER_APPEND

    def prepare_append(self, stream_id: str, events: Sequence[NewEvent],
                       expected_version: Expected) -> PreparedAppend:
        """The append checked and encoded once under this store's limits, for
        `append_prepared` (ValidationError for bad input, before any I/O)."""
        return prepare_append(stream_id, events, expected_version, self.max_payload_bytes,
                              self.max_events_per_append)

    def append_prepared(self, prepared: PreparedAppend, *, grouped: bool = True
                        ) -> AppendResult:
        """Append what `prepare_append` returned, as `append` does. `grouped` False: the
        caller already tried a shared commit (postgres_async), so do not try one again.
        Backends override this; the default re-validates through `append`."""
        return self.append(prepared.stream_id, prepared.events, prepared.expected)

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
    def read_all(self, from_position: int = 0, limit: int = 1000, *,
                 to_position: int | None = None, types: Sequence[str] | None = None,
                 stream_prefix: str | None = None, backwards: bool = False
                 ) -> list[RecordedEvent]:
        """A page of the global log: events with from_position <= position <= to_position,
        in order; only events of the given `types`, and only of streams whose id starts
        with `stream_prefix`, when given (both served by indexes on PostgreSQL).

        Never skips: an event not yet returned always has a position greater than every
        position already returned. Continue with `from_position = page[-1].position + 1`.
        Backwards pages start at `to_position` (or the head) and go down: continue with
        `to_position = page[-1].position - 1`.
        """

    @abc.abstractmethod
    def head_position(self) -> int:
        """The highest position a reader of the global log may see now (0: an empty log)."""

    # -- several streams at once, and consumer checkpoints -----------------------------

    @abc.abstractmethod
    def append_many(self, appends: Sequence[StreamAppend], *,
                    checkpoint: Checkpoint | None = None) -> list[AppendResult]:
        """Append to several streams in one transaction, each with its own expected version,
        and optionally move a consumer's checkpoint in the same transaction: all or nothing.

        Raises ConcurrencyError naming a stream whose expectation did not hold, with its
        actual version, and CheckpointConflict when the checkpoint would not move forward.
        Re-sending the same append_many returns the first results (each `idempotent`).
        Results, and the positions of the events, are in the order of `appends`.
        """

    def save_checkpoint(self, consumer: str, position: int) -> None:
        """Record that `consumer` has handled the global log up to `position`. Raises
        CheckpointConflict unless `position` is past the stored one."""
        self.append_many([], checkpoint=Checkpoint(consumer, position))

    @abc.abstractmethod
    def read_checkpoint(self, consumer: str) -> int | None:
        """The consumer's stored position, or None when it has none yet."""

    @abc.abstractmethod
    def read_archived_stream(self, stream_id: str, from_version: int = 1, *,
                             to_version: int | None = None, limit: int | None = None
                             ) -> list[RecordedEvent]:
        """Events of a stream that retention moved to the archive, in version order: those
        from `from_version` to `to_version` (inclusive), at most `limit` of them."""

    @abc.abstractmethod
    def archive_stream(self, stream_id: str, up_to_version: int, older_than: datetime) -> int:
        """Move the stream's events with version <= up_to_version recorded before
        `older_than` from the log to the archive, in one transaction. Returns how many.

        Only call it for versions a snapshot covers (see eventstore.retention): archived
        events leave `read_stream` and `read_all`, and stay readable through
        `read_archived_stream`.
        """

    def retention_candidates(self, older_than: datetime, limit: int, after: str = ""
                             ) -> list[str]:
        """Streams with events in the log recorded before `older_than`: the first `limit`
        after the stream id `after`, in the database's order of stream ids (pass the last
        one back as `after` for the next page; eventstore.retention's query)."""
        raise NotImplementedError(f"retention does not know {type(self).__name__}")

    @contextmanager
    def retention_lock(self) -> Iterator[bool]:
        """True while this process may run retention: one replica at a time where several
        share the database (an advisory lock on PostgreSQL); always True here."""
        yield True

    @abc.abstractmethod
    def wait_for_events(self, after_position: int, timeout: float,
                        interrupt: threading.Event | None = None) -> bool:
        """Block until an event past `after_position` may be readable, `timeout` passes, or
        `interrupt` is set (`wake_waiters()` makes a waiter notice that at once)."""

    @abc.abstractmethod
    def wake_waiters(self) -> None:
        """Wake every `wait_for_events` call, so that each checks its `interrupt`."""

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
        *,
        to_position: int | None = None,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
    ) -> Subscription:
        """Follow the global log from `from_position`, live: yields each event once, in order,
        with the filters of `read_all`. Close the returned Subscription (from any thread, or
        by leaving its `with` block) to end the iteration promptly.

        Wakes promptly after a commit (LISTEN/NOTIFY on PostgreSQL) and also polls every
        `poll_interval` seconds. Ends after `idle_timeout` seconds without events, if given,
        and once the log has passed `to_position`, if given.
        """
        check_read_all(from_position, batch_size, to_position, types, stream_prefix)
        return Subscription(self, from_position, batch_size, idle_timeout, poll_interval,
                            to_position=to_position, types=types, stream_prefix=stream_prefix)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription(Iterator[RecordedEvent]):
    """A live iteration of the global log (see `EventStore.subscribe`).

    `close()` may be called from any thread: the iterating thread stops at once when it is
    waiting for events, or after the one read it is in. A subscription has no thread and
    no connection of its own, so closing it leaves nothing behind.
    """

    def __init__(self, store: EventStore, from_position: int, batch_size: int,
                 idle_timeout: float | None, poll_interval: float, *,
                 to_position: int | None = None, types: Sequence[str] | None = None,
                 stream_prefix: str | None = None) -> None:
        self._store = store
        #: Where the next read starts: one past the last event handed out.
        self.position = from_position
        self._batch_size = batch_size
        self._idle_timeout = idle_timeout
        self._poll_interval = poll_interval
        self._to_position = to_position
        self._types = tuple(types or ())
        self._stream_prefix = stream_prefix
        self._buffer: deque[RecordedEvent] = deque()
        self._stop = threading.Event()
        self._idle_since = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """End the iteration (idempotent; safe from any thread)."""
        self._stop.set()
        self._store.wake_waiters()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> RecordedEvent:
        while not self._stop.is_set():
            if self._buffer:
                event = self._buffer.popleft()
                self.position = event.position + 1
                return event
            if self._to_position is not None and self.position > self._to_position:
                break
            page = self._store.read_all(self.position, self._batch_size,
                                        to_position=self._to_position, types=self._types,
                                        stream_prefix=self._stream_prefix)
            if page:
                self._idle_since = time.monotonic()
                self._buffer.extend(page)
                continue
            if self._to_position is not None and \
                    self._store.head_position() >= self._to_position:
                break  # every event up to to_position is settled, and none is left
            idle = time.monotonic() - self._idle_since
            if self._idle_timeout is not None and idle >= self._idle_timeout:
                break
            wait = self._poll_interval
            if self._idle_timeout is not None:
                wait = min(wait, max(0.0, self._idle_timeout - idle))
            self._store.wait_for_events(self.position - 1, wait, interrupt=self._stop)
        self._stop.set()
        raise StopIteration

"""A persistence module for `eventsourcing` 9.5 applications, on this event store.

    app = BankAccounts(env={"PERSISTENCE_MODULE": "eventstore.integrations.eventsourcing",
                            "EVENTSTORE_URL": "postgresql://user:pw@db/events"})
    # also sqlite:///path.db, or https://store:8080 with EVENTSTORE_TOKEN (the HTTP API)

It speaks only to the store's public API (`EventStore` or `EventStoreClient`: append_many,
read_stream, read_all with filters, subscribe, checkpoints), so the same recorders run in
process on PostgreSQL or SQLite and remotely over HTTP. The mapping, and where it differs
from eventsourcing's own recorders, is in the README ("eventsourcing applications").

Mapping of a stored event (originator_id, originator_version, topic, state):

- stream id: "<namespace>-<originator id>". The namespace is the application's name (the
  snapshot recorder adds ".snapshots"), so several applications share one store and an
  application's notification log is the category "<namespace>-" of the global log (read
  through its index). A UUID is written in canonical form; a string id as itself when it
  is a plain id, else "~" + its UTF-8 bytes in unpadded URL-safe base64 (lossless).
- event type: the topic when it is a valid event type, else "_-" + its SHA-256; the
  metadata always carries the exact topic and originator version.
- payload: {"b64": base64 of the state bytes} (lossless for any bytes, ciphered or
  compressed state included).
- event id: a UUID derived from (stream id, originator version): two inserts of the
  same version of an aggregate collide on the event id in the store itself, atomically,
  whatever the stream's version numbering.
- notification id: the event's position in the global log (dense on SQLite; sparse,
  increasing, on PostgreSQL). Tracking records are consumer checkpoints named
  "<namespace>.<upstream application>", written with the events by append_many.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Protocol
from uuid import UUID, uuid5

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    Notification,
    OperationalError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, resolve_topic, strtobool

from eventstore.errors import (
    CheckpointConflict,
    ConcurrencyError,
    EventStoreError,
    SchemaError,
    StoreUnavailable,
    ValidationError,
)
from eventstore.events import (
    EVENT_TYPE_PATTERN,
    AppendResult,
    Checkpoint,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)

#: Events a read of the log asks for at once (the HTTP API's largest page).
PAGE = 1000
#: Namespace of the event ids derived from (stream id, originator version).
EVENT_ID_NAMESPACE = UUID("3f0b4c1e-7a51-4e8a-9d1c-2b6f0e5a9c47")
_PLAIN_ID = re.compile(r"^[A-Za-z0-9_.:@+=][A-Za-z0-9_.:@+=-]*$")
_UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=~]{0,99}$")
_HASHED_TOPIC = "_-"
_RETRIES = 20


class LogStore(Protocol):
    """What the recorders use of a store: an `EventStore` or an `EventStoreClient`."""

    def append_many(self, appends: Sequence[StreamAppend], *,
                    checkpoint: Checkpoint | None = None) -> list[AppendResult]: ...

    def read_stream(self, stream_id: str, from_version: int = 1,
                    to_version: int | None = None, *args: Any, **kwargs: Any
                    ) -> list[RecordedEvent]: ...

    def read_all(self, from_position: int = 0, limit: int = 1000, *,
                 to_position: int | None = None, types: Sequence[str] | None = None,
                 stream_prefix: str | None = None, backwards: bool = False
                 ) -> list[RecordedEvent]: ...

    def subscribe(self, from_position: int = 0, *args: Any, **kwargs: Any
                  ) -> Iterator[RecordedEvent]: ...

    def save_checkpoint(self, consumer: str, position: int) -> None: ...

    def read_checkpoint(self, consumer: str) -> int | None: ...

    def close(self) -> None: ...


# -- the mapping -----------------------------------------------------------------------

def stream_id_for(namespace: str, originator_id: UUID | str) -> str:
    """The stream of an aggregate sequence (see the module docstring)."""
    if isinstance(originator_id, UUID):
        part = str(originator_id)
    elif isinstance(originator_id, str) and _PLAIN_ID.fullmatch(originator_id) \
            and not _UUID_TEXT.fullmatch(originator_id):
        part = originator_id
    elif isinstance(originator_id, str):
        part = "~" + base64.urlsafe_b64encode(originator_id.encode()).decode().rstrip("=")
    else:
        raise DataError(f"originator id {originator_id!r} is neither a UUID nor a str")
    stream_id = f"{namespace}-{part}"
    if len(stream_id) > 200:
        raise DataError(f"originator id {str(originator_id)[:60]!r}... is too long for this "
                        f"store: its stream id would be {len(stream_id)} characters, the limit "
                        "is 200 (use shorter ids, or UUIDs)")
    return stream_id


def originator_id_of(stream_id: str) -> UUID | str:
    part = stream_id.split("-", 1)[1]
    if part.startswith("~"):
        data = part[1:]
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode()
    if _UUID_TEXT.fullmatch(part):
        return UUID(part)
    return part


def type_for(topic: str) -> str:
    """The event type a topic is stored under: itself when it can be, else a hash."""
    if EVENT_TYPE_PATTERN.fullmatch(topic) and not topic.startswith(_HASHED_TOPIC):
        return topic
    return _HASHED_TOPIC + hashlib.sha256(topic.encode()).hexdigest()


def new_event(stream_id: str, stored: StoredEvent) -> NewEvent:
    if isinstance(stored.originator_version, bool) or \
            not isinstance(stored.originator_version, int):
        raise DataError(f"originator version {stored.originator_version!r} is not an int")
    return NewEvent(
        type=type_for(stored.topic),
        payload={"b64": base64.b64encode(stored.state).decode()},
        metadata={"topic": stored.topic, "originator_version": stored.originator_version},
        id=uuid5(EVENT_ID_NAMESPACE, f"{stream_id}/{stored.originator_version}"))


def _version(event: RecordedEvent) -> int:
    return int(event.metadata["originator_version"])


def stored_event(event: RecordedEvent) -> StoredEvent:
    return StoredEvent(originator_id=originator_id_of(event.aggregate_id),
                       originator_version=_version(event), topic=event.metadata["topic"],
                       state=base64.b64decode(event.payload["b64"]))


def notification(event: RecordedEvent) -> Notification:
    return Notification(id=event.position, originator_id=originator_id_of(event.aggregate_id),
                        originator_version=_version(event), topic=event.metadata["topic"],
                        state=base64.b64decode(event.payload["b64"]))


def _translated(exc: EventStoreError) -> Exception:
    """The eventsourcing exception for a store error (PEP 249 names, as its recorders)."""
    if isinstance(exc, ConcurrencyError | CheckpointConflict):
        return IntegrityError(str(exc))
    if isinstance(exc, ValidationError):
        if "already stored" in str(exc):  # an event id, i.e. (stream, version), is taken
            return IntegrityError(str(exc))
        return DataError(str(exc))
    if isinstance(exc, SchemaError):
        return ProgrammingError(str(exc))
    if isinstance(exc, StoreUnavailable):
        return OperationalError(str(exc))
    return OperationalError(f"{type(exc).__name__}: {exc}")


# -- recorders -------------------------------------------------------------------------

class EventStoreRecorder:
    """The store and the namespace shared by the recorders of one application."""

    def __init__(self, store: LogStore, namespace: str) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ProgrammingError(
                f"namespace {namespace!r} is not usable: use letters, digits and _ . : @ + = ~ "
                "(no '-': it ends the namespace in stream ids), at most 100")
        self.store = store
        self.namespace = namespace
        #: The stream-id prefix of this namespace: a category, served by its own index.
        self.prefix = f"{namespace}-"


class EventStoreAggregateRecorder(EventStoreRecorder, AggregateRecorder):
    #: Guess that a stream's versions are its aggregate's versions (see _insert). False
    #: for sequences with gaps by nature (snapshots): they read their last event first.
    guess_versions = True

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any
                      ) -> Sequence[int] | None:
        self._insert(stored_events, **kwargs)
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None = None,
                **_: Any) -> list[int]:
        """Append the events, one stream per aggregate, in one append_many (with the
        tracking checkpoint); returns their positions in the order given."""
        by_stream: OrderedDict[str, list[StoredEvent]] = OrderedDict()
        for stored in stored_events:
            by_stream.setdefault(stream_id_for(self.namespace, stored.originator_id),
                                 []).append(stored)
        for stream_id, events in by_stream.items():
            versions = [e.originator_version for e in events]
            if len(set(versions)) != len(versions):
                raise IntegrityError(f"stored events repeat a version of {stream_id}: {versions}")
            if versions != sorted(versions):
                raise DataError(f"events of {stream_id} must be inserted in version order, "
                                f"not {versions}")
        if not by_stream and tracking is None:
            return []
        checkpoint = None if tracking is None else Checkpoint(
            self._consumer(tracking.application_name), tracking.notification_id)
        # Guess that the stream's versions are its aggregate's versions (an aggregate starts
        # at 1 and never skips): one round trip. When the guess fails, the stream's last
        # event tells whether the insert repeats a version (IntegrityError) or the stream
        # is numbered otherwise (append after its last event).
        # The guess is exact for sequences without gaps; in a sequence with gaps it could
        # place an older, missing version after the last one, so those read first.
        expected: dict[str, int | ExpectedVersion] = {}
        for s, ev in by_stream.items():
            if self.guess_versions:
                first = ev[0].originator_version
                expected[s] = ExpectedVersion.NO_STREAM if first < 1 else first - 1
            else:
                expected[s] = self._after_last(s, ev[0].originator_version)
        for _attempt in range(_RETRIES + len(by_stream)):
            appends = [StreamAppend(s, [new_event(s, e) for e in ev], expected[s])
                       for s, ev in by_stream.items()]
            try:
                results = self.store.append_many(appends, checkpoint=checkpoint)
            except ConcurrencyError as exc:
                expected[exc.stream_id] = self._after_last(
                    exc.stream_id, by_stream[exc.stream_id][0].originator_version)
                continue
            except EventStoreError as exc:
                raise _translated(exc) from exc
            if any(r.idempotent for r in results):
                raise IntegrityError("these stored events are recorded already")
            return [p for r in results for p in r.positions]
        raise OperationalError("insert_events lost too many races; retry")

    def _after_last(self, stream_id: str, first_new: int) -> int:
        """The stream's version to append after; IntegrityError when its last event is
        at or past the first version to insert."""
        try:
            last = self.store.read_stream(stream_id, backwards=True, limit=1)
        except EventStoreError as exc:
            raise _translated(exc) from exc
        if last and _version(last[0]) >= first_new:
            raise IntegrityError(f"{stream_id} already has version {_version(last[0])}, at or "
                                 f"past {first_new}")
        return last[0].version if last else 0

    def _consumer(self, application_name: str) -> str:
        return f"{self.namespace}.{application_name}"

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False, limit: int | None = None
                      ) -> Sequence[StoredEvent]:
        stream_id = stream_id_for(self.namespace, originator_id)
        try:
            events = self._select(stream_id, gt, lte)
        except EventStoreError as exc:
            raise _translated(exc) from exc
        if desc:
            events.reverse()
        if limit is not None:
            events = events[:limit]
        return [stored_event(e) for e in events]

    def _select(self, stream_id: str, gt: int | None, lte: int | None) -> list[RecordedEvent]:
        """The stream's events with gt < originator version <= lte, in version order.

        Reads the stream versions that hold these originator versions when the stream is
        numbered like its aggregate (one read, with one event either side to prove that
        nothing lies outside it); otherwise the whole stream (a stream numbered otherwise
        is short: snapshots, or sequences that start at 0)."""
        low = 1 if gt is None else max(1, gt)
        high = None if lte is None else lte + 1
        if high is not None and high < low:
            high = low
        found = self.store.read_stream(stream_id, from_version=low, to_version=high)
        complete = (low == 1 or (bool(found) and found[0].version == low
                                 and _version(found[0]) <= (gt if gt is not None else 0)))
        if complete and high is not None and found and found[-1].version == high:
            complete = _version(found[-1]) > (lte if lte is not None else 0)
        if not complete:
            found = self.store.read_stream(stream_id)
        return [e for e in found if (gt is None or _version(e) > gt)
                and (lte is None or _version(e) <= lte)]


class EventStoreApplicationRecorder(EventStoreAggregateRecorder, ApplicationRecorder):
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any
                      ) -> Sequence[int] | None:
        positions = self._insert(stored_events, **kwargs)
        return positions or None

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *, inclusive_of_start: bool = True
                             ) -> Sequence[Notification]:
        position = 0 if start is None else max(0, start if inclusive_of_start else start + 1)
        types = sorted({type_for(t) for t in topics})
        out: list[Notification] = []
        try:
            while len(out) < limit:
                want = min(PAGE, limit - len(out))
                page = self.store.read_all(position, want, to_position=stop, types=types,
                                           stream_prefix=self.prefix)
                out.extend(n for n in map(notification, page)
                           if not topics or n.topic in topics)
                if len(page) < want:
                    break
                position = page[-1].position + 1
        except EventStoreError as exc:
            raise _translated(exc) from exc
        return out

    def max_notification_id(self) -> int | None:
        try:
            last = self.store.read_all(backwards=True, limit=1, stream_prefix=self.prefix)
        except EventStoreError as exc:
            raise _translated(exc) from exc
        return last[0].position if last else None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()
                  ) -> Subscription[ApplicationRecorder]:
        return EventStoreSubscription(self, gt=gt, topics=topics)


class EventStoreSubscription(Subscription[EventStoreApplicationRecorder]):
    """The store's own subscription (closeable from any thread), as Notifications."""

    def __init__(self, recorder: EventStoreApplicationRecorder, gt: int | None = None,
                 topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        types = sorted({type_for(t) for t in topics})
        self._events = recorder.store.subscribe(
            from_position=0 if gt is None else gt + 1, types=types,
            stream_prefix=recorder.prefix)

    def stop(self) -> None:
        super().stop()
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def __next__(self) -> Notification:
        while not self._has_been_stopped:
            try:
                event = next(self._events)
            except EventStoreError as exc:
                raise _translated(exc) from exc
            item = notification(event)
            if not self._topics or item.topic in self._topics:
                return item
        raise StopIteration


class EventStoreTrackingRecorder(EventStoreRecorder, TrackingRecorder):
    def insert_tracking(self, tracking: Tracking) -> None:
        try:
            self.store.save_checkpoint(self._consumer(tracking.application_name),
                                       tracking.notification_id)
        except EventStoreError as exc:
            raise _translated(exc) from exc

    def max_tracking_id(self, application_name: str) -> int | None:
        try:
            return self.store.read_checkpoint(self._consumer(application_name))
        except EventStoreError as exc:
            raise _translated(exc) from exc

    def _consumer(self, application_name: str) -> str:
        return f"{self.namespace}.{application_name}"


class EventStoreProcessRecorder(EventStoreTrackingRecorder, EventStoreApplicationRecorder,
                                ProcessRecorder):
    pass


# -- the factory -----------------------------------------------------------------------

class Factory(InfrastructureFactory[EventStoreTrackingRecorder]):
    """eventsourcing's infrastructure factory for this store.

    Settings (each also under "<APPLICATION NAME>_" as eventsourcing's environment does):
    EVENTSTORE_URL (postgresql://, sqlite:// or http(s):// for the HTTP API),
    EVENTSTORE_TOKEN (the bearer token, for http(s)), EVENTSTORE_NAMESPACE (default: the
    application's name), CREATE_TABLE (default yes: migrate a library store's schema).
    """

    EVENTSTORE_URL = "EVENTSTORE_URL"
    EVENTSTORE_TOKEN = "EVENTSTORE_TOKEN"
    EVENTSTORE_NAMESPACE = "EVENTSTORE_NAMESPACE"
    CREATE_TABLE = "CREATE_TABLE"

    def __init__(self, env: Environment | dict[str, str] | None) -> None:
        super().__init__(env)
        url = self.env.get(self.EVENTSTORE_URL)
        if not url:
            raise OperationalError(
                f"{self.EVENTSTORE_URL} is not set: give the store's URL, e.g. "
                "postgresql://user:pw@host/db, sqlite:///events.db or https://store:8080")
        self.store = open_store(url, self.env.get(self.EVENTSTORE_TOKEN),
                                migrate=strtobool(self.env.get(self.CREATE_TABLE) or "yes"))
        self.namespace = self.env.get(self.EVENTSTORE_NAMESPACE) or self.env.name or "app"

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        recorder = EventStoreAggregateRecorder(self.store, self._namespace(purpose))
        recorder.guess_versions = purpose == "events"
        return recorder

    def application_recorder(self) -> ApplicationRecorder:
        return EventStoreApplicationRecorder(self.store, self.namespace)

    def tracking_recorder(self, tracking_recorder_class: type[EventStoreTrackingRecorder]
                          | None = None) -> EventStoreTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else \
                EventStoreTrackingRecorder
        assert tracking_recorder_class is not None
        if not issubclass(tracking_recorder_class, EventStoreTrackingRecorder):
            raise ProgrammingError(f"{tracking_recorder_class} is not an "
                                   "EventStoreTrackingRecorder")
        return tracking_recorder_class(self.store, self.namespace)

    def process_recorder(self) -> ProcessRecorder:
        return EventStoreProcessRecorder(self.store, self.namespace)

    def _namespace(self, purpose: str) -> str:
        return self.namespace if purpose == "events" else f"{self.namespace}.{purpose}"

    def close(self) -> None:
        self.store.close()


def open_store(url: str, token: str | None = None, *, migrate: bool = True) -> LogStore:
    """The store named by `url`: a library store (migrated when `migrate`), or the HTTP
    client for http(s):// URLs."""
    try:
        if url.startswith(("http://", "https://")):
            from eventstore.server.client import EventStoreClient

            if not token:
                raise ProgrammingError("EVENTSTORE_TOKEN is not set: the HTTP API needs the "
                                       "store's bearer token")
            return EventStoreClient(url, token)
        from eventstore.store.base import EventStore

        store = EventStore.connect(url)
        if migrate:
            store.migrate()
        return store
    except EventStoreError as exc:
        raise _translated(exc) from exc


__all__ = [
    "EventStoreAggregateRecorder", "EventStoreApplicationRecorder", "EventStoreProcessRecorder",
    "EventStoreSubscription", "EventStoreTrackingRecorder", "Factory", "open_store",
]

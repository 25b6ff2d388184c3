"""A small synchronous client for the store's HTTP API (httpx), raising the library's errors.

    client = EventStoreClient("https://store:8080", token=open(token_file).read().strip())
    result = client.append("acc-1", [NewEvent("Deposited", {"amount": 5})], expected_version=0)

It can stand where a library store stands: `Repository(client, Account)` loads from the
server's snapshots (`snapshot_store()`) and saves with optimistic concurrency; the store
pods take the snapshots, at the cadence of their ConfigMap (`settings()`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx

from eventstore.errors import (
    ConcurrencyError,
    NotFound,
    StoreUnavailable,
    error_from_reply,
)
from eventstore.errors import Unauthorized as Unauthorized  # re-exported
from eventstore.events import (
    AppendResult,
    Checkpoint,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)
from eventstore.store.jsonb import loads

if TYPE_CHECKING:
    from eventstore.server.remote_snapshots import HTTPSnapshotStore


#: Events per request when the client pages through a stream (the server's MAX_PAGE).
PAGE = 1000


def event_from_dict(data: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(id=UUID(data["id"]), type=data["type"], aggregate_id=data["stream_id"],
                         version=int(data["version"]), payload=data["payload"],
                         metadata=data["metadata"],
                         timestamp=datetime.fromisoformat(data["timestamp"]),
                         position=int(data["position"]),
                         schema_version=int(data.get("schema_version", 1)))


def iter_sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-sent-event messages (id, event, data) from a stream of text lines."""
    message: dict[str, str] = {}
    for line in lines:
        if not line:
            if message:
                yield message
                message = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        message[key] = f"{message[key]}\n{value}" if key in message else value


class EventStoreClient:
    """Thread-safe (httpx.Client pools connections). Close it, or use it as a context."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 verify: bool | str = True, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, verify=verify,
                                  headers={"Authorization": f"Bearer {token}"},
                                  transport=transport)

    # -- streams -------------------------------------------------------------------------

    def append(self, stream_id: str, events: Sequence[NewEvent],
               expected_version: Expected = ExpectedVersion.ANY) -> AppendResult:
        data = self._call("POST", f"/streams/{stream_id}",
                          json=_append_body(events, expected_version))
        return _append_result(data)

    def append_many(self, appends: Sequence[StreamAppend], *,
                    checkpoint: Checkpoint | None = None) -> list[AppendResult]:
        """As `EventStore.append_many` (`POST /append-many`): all streams or none."""
        body: dict[str, Any] = {"appends": [
            {"stream_id": a.stream_id, **_append_body(a.events, a.expected_version)}
            for a in appends]}
        if checkpoint is not None:
            body["checkpoint"] = {"consumer": checkpoint.consumer,
                                  "position": checkpoint.position}
        data = self._call("POST", "/append-many", json=body)
        return [_append_result(r) for r in data["results"]]

    def read_stream(self, stream_id: str, from_version: int = 1, to_version: int | None = None,
                    as_of: datetime | None = None, backwards: bool = False,
                    limit: int | None = None) -> list[RecordedEvent]:
        """As `EventStore.read_stream`; without a limit, every matching event. Pages are at
        most PAGE events and the server's byte budget; a cut-short page says where to go on."""
        params: dict[str, Any] = {"from_version": from_version, "backwards": backwards}
        if to_version is not None:
            params["to_version"] = to_version
        if as_of is not None:
            params["as_of"] = as_of.isoformat()
        events: list[RecordedEvent] = []
        while True:
            want = PAGE if limit is None else min(PAGE, limit - len(events))
            params["limit"] = want
            data = self._call("GET", f"/streams/{stream_id}", params=params)
            page = [event_from_dict(e) for e in data["events"]]
            events.extend(page)
            if limit is not None and len(events) >= limit:
                return events
            if data.get("truncated"):
                params["to_version" if backwards else "from_version"] = data["next_version"]
            elif len(page) < want:
                return events
            elif backwards:
                if page[-1].version - 1 < from_version:
                    return events
                params["to_version"] = page[-1].version - 1
            else:
                params["from_version"] = page[-1].version + 1

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version, archived events counted; 0 when it does not
        exist."""
        return int(self._call("GET", f"/streams/{stream_id}/version")["version"])

    def read_archived_stream(self, stream_id: str, from_version: int = 1,
                             limit: int | None = None, *, to_version: int | None = None
                             ) -> list[RecordedEvent]:
        """Events retention moved to the archive, `from_version` to `to_version`; without a
        limit, all of them."""
        out: list[RecordedEvent] = []
        while True:
            page_size = PAGE if limit is None else min(PAGE, limit - len(out))
            params: dict[str, Any] = {"from_version": from_version, "limit": page_size}
            if to_version is not None:
                params["to_version"] = to_version
            data = self._call("GET", f"/streams/{stream_id}/archive", params=params)
            page = [event_from_dict(e) for e in data["events"]]
            out.extend(page)
            if len(page) < page_size or (limit is not None and len(out) >= limit):
                return out
            from_version = page[-1].version + 1

    def read_all(self, from_position: int = 0, limit: int = 1000, *,
                 to_position: int | None = None, types: Sequence[str] | None = None,
                 stream_prefix: str | None = None, backwards: bool = False
                 ) -> list[RecordedEvent]:
        """As `EventStore.read_all`: at most `limit` (and PAGE) events. A page the server's
        byte budget cut short says where to go on, and the client does."""
        limit = min(limit, PAGE)
        params: dict[str, Any] = {"from_position": from_position,
                                  **_log_filters(to_position, types, stream_prefix)}
        if backwards:
            params["backwards"] = True
        events: list[RecordedEvent] = []
        while True:
            params["limit"] = limit - len(events)
            data = self._call("GET", "/all", params=params)
            events.extend(event_from_dict(e) for e in data["events"])
            if not data.get("truncated") or len(events) >= limit:
                return events
            params["to_position" if backwards else "from_position"] = data["next_position"]

    def head_position(self) -> int:
        """The highest position a reader of the global log may see now."""
        return int(self._call("GET", "/all/head")["head_position"])

    def subscribe(self, from_position: int = 0, idle_timeout: float | None = None, *,
                  to_position: int | None = None, types: Sequence[str] | None = None,
                  stream_prefix: str | None = None) -> RemoteSubscription:
        """Follow the global log live (server-sent events), with the filters of `read_all`;
        ends after `idle_timeout`, past `to_position`, or when closed from any thread."""
        params: dict[str, Any] = {"from_position": from_position,
                                  **_log_filters(to_position, types, stream_prefix)}
        if idle_timeout is not None:
            params["idle_timeout"] = idle_timeout
        return RemoteSubscription(self, params)

    # -- consumer checkpoints ------------------------------------------------------------

    def save_checkpoint(self, consumer: str, position: int) -> None:
        """As `EventStore.save_checkpoint`: CheckpointConflict unless it moves forward."""
        self._call("PUT", f"/checkpoints/{consumer}", json={"position": position})

    def read_checkpoint(self, consumer: str) -> int | None:
        position = self._call("GET", f"/checkpoints/{consumer}")["position"]
        return None if position is None else int(position)

    # -- snapshots -----------------------------------------------------------------------

    def get_snapshot(self, stream_id: str, aggregate_type: str,
                     at_or_below_version: int | None = None) -> dict[str, Any] | None:
        params: dict[str, Any] = {"aggregate_type": aggregate_type}
        if at_or_below_version is not None:
            params["at_or_below_version"] = at_or_below_version
        response = self._request("GET", f"/streams/{stream_id}/snapshot", params=params)
        if response.status_code == 404 and _error_code(response) == NotFound.code:
            return None  # the store's "no snapshot"; another server's 404 is raised
        return self._json(response)

    def snapshot_store(self) -> HTTPSnapshotStore:
        """The server's snapshots as a SnapshotStore (what `Repository(client, ...)` loads
        from). Its pods take the snapshots, so a repository over it takes none itself."""
        from eventstore.server.remote_snapshots import HTTPSnapshotStore

        return HTTPSnapshotStore(self)

    def load_aggregate(self, aggregate_type: str, aggregate_id: str, *,
                       at_version: int | None = None,
                       as_of: datetime | None = None) -> dict[str, Any]:
        """`GET /aggregates/{type}/{id}`: state, version, the snapshot it started from and
        the events replayed. NotFound (a LookupError) when the type is not registered,
        AggregateNotFound when it has no such aggregate (at that version or time)."""
        params: dict[str, Any] = {}
        if at_version is not None:
            params["at_version"] = at_version
        if as_of is not None:
            params["as_of"] = as_of.isoformat()
        return self._call("GET", f"/aggregates/{aggregate_type}/{aggregate_id}",
                          params=params)

    def settings(self) -> dict[str, Any]:
        """The settings the server runs (`GET /settings`): `store` holds snapshot_frequency,
        max_events_per_aggregate, retention_days and the registered aggregates."""
        return self._call("GET", "/settings")

    def put_snapshot(self, stream_id: str, aggregate_type: str, version: int,
                     state: dict[str, Any], state_schema_version: int = 1) -> dict[str, Any]:
        return self._call("PUT", f"/streams/{stream_id}/snapshot", json={
            "aggregate_type": aggregate_type, "version": version, "state": state,
            "state_schema_version": state_schema_version})

    # -- projections, probes -------------------------------------------------------------

    def projections(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/projections")["projections"])

    def rebuild(self, name: str) -> None:
        self._call("POST", f"/projections/{name}/rebuild")

    def dead_letters(self, name: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/projections/{name}/dead-letters")["dead_letters"])

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def metrics(self) -> str:
        response = self._http.get("/metrics")
        self._check(response)
        return response.text

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._json(self._request(method, path, **kwargs))

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"the event store at {self._http.base_url} did not answer: "
                                   f"{exc}") from exc

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        self._check(response)
        # The events of a page are most of a reply: decoded as the store decodes its own.
        data: dict[str, Any] = loads(response.content)
        return data

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        self._raise(response)

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        """Raise the library error the reply reports (see `eventstore.errors`)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if body.get("error") == ConcurrencyError.code and "stream_id" not in body:
            # An older server named the stream only in the path of the append.
            body["stream_id"] = str(response.request.url.path).rsplit("/", 1)[-1]
        fallback = response.text if body.get("error") or body.get("detail") else _not_ours(response)
        raise error_from_reply(response.status_code, body, fallback)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EventStoreClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _error_code(response: httpx.Response) -> str | None:
    """The `error` code of a reply in the store's shape, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _not_ours(response: httpx.Response) -> str:
    """The message for an error reply without the store's error shape. Such a reply comes
    from whatever answered in the store's place (a proxy, an ingress, another server on
    that address), so it says who, rather than a bare "NotFound" for an append."""
    server = response.headers.get("server")
    text = response.text.strip()
    said = f"body {text[:200]!r}" if text else "empty body"
    who = f"server {server!r}, " if server else ""
    return (f"not an event store's reply ({who}{said}): is something else answering at "
            f"{response.request.url.scheme}://{response.request.url.netloc.decode()}?")


def _append_body(events: Sequence[NewEvent], expected_version: Expected) -> dict[str, Any]:
    expected = (expected_version.value if isinstance(expected_version, ExpectedVersion)
                else expected_version)
    return {"expected_version": expected, "events": [
        {"id": str(e.id), "type": e.type, "payload": e.payload, "metadata": e.metadata,
         "schema_version": e.schema_version} for e in events]}


def _append_result(data: dict[str, Any]) -> AppendResult:
    return AppendResult(stream_id=data["stream_id"], first_version=data["first_version"],
                        next_expected_version=data["next_expected_version"],
                        positions=tuple(data["positions"]), idempotent=data["idempotent"])


class RemoteSubscription(Iterator[RecordedEvent]):
    """`GET /subscribe` as an iterator that another thread can `close()`.

    Closing shuts the connection's socket down, which wakes a read blocked on it at once
    (closing a socket does not, on Linux), so the iterating thread ends promptly and the
    connection is released; no thread is started.
    """

    def __init__(self, client: EventStoreClient, params: dict[str, Any]) -> None:
        self._client = client
        self._params = params
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None
        self._messages: Iterator[dict[str, str]] | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """End the iteration (idempotent; safe from any thread)."""
        with self._lock:
            self._closed.set()
            response = self._response
        if response is not None:
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> RemoteSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._release()

    def __iter__(self) -> RemoteSubscription:
        return self

    def __del__(self) -> None:
        # Left mid-iteration (a `break`), as the generator it replaced was: let the
        # connection go back to the pool.
        with contextlib.suppress(Exception):
            self._release()

    def __next__(self) -> RecordedEvent:
        try:
            if self._messages is None:
                self._open()
            assert self._messages is not None
            for message in self._messages:
                if self._closed.is_set():
                    break
                if message.get("event") == "event":
                    return event_from_dict(loads(message["data"]))
        except (httpx.TransportError, httpx.StreamError) as exc:
            if not self._closed.is_set():
                self._release()
                raise StoreUnavailable(f"the subscription to the event store was cut: {exc}"
                                       ) from exc
        self._closed.set()
        self._release()
        raise StopIteration

    def _open(self) -> None:
        http = self._client._http
        request = http.build_request("GET", "/subscribe", params=self._params,
                                     timeout=httpx.Timeout(http.timeout.connect, read=None))
        try:
            response = http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"the event store at {http.base_url} did not answer: "
                                   f"{exc}") from exc
        with self._lock:
            self._response = response
            closed = self._closed.is_set()
        if response.status_code != 200:
            response.read()
            self._release()
            self._client._raise(response)
        if closed:
            self.close()
        self._messages = iter_sse(response.iter_lines())

    def _release(self) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()


def _log_filters(to_position: int | None, types: Sequence[str] | None,
                 stream_prefix: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if to_position is not None:
        params["to_position"] = to_position
    if types:
        params["types"] = list(types)
    if stream_prefix is not None:
        params["stream_prefix"] = stream_prefix
    return params

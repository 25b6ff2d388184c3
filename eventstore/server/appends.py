"""What an HTTP append does, from request body to reply, and where it runs.

One pipeline: the body is parsed (`parse_body`, the one parse step of every path),
turned into events and prepared once (`EventStore.prepare_append`: checked and encoded),
and the prepared append goes to an executor:
- small bodies on PostgreSQL: the async group commit on the event loop
  (postgres_async.AsyncAppender), which writes the appends that arrive together in one
  statement; whatever it does not finish cleanly goes, prepared as it is, to the
  store's individual path on a worker thread (`append_prepared(grouped=False)`);
- large bodies, and every append on a backend without an async append: parsed and
  prepared on a worker thread (so a big body never stalls the loop), then appended
  there (`append_prepared`, which threads sharing the store also commit together).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pydantic import ValidationError as PydanticValidationError

from eventstore import metrics
from eventstore.errors import ConcurrencyError, EventStoreError
from eventstore.events import AppendResult, ExpectedVersion, NewEvent
from eventstore.server.wire import AppendIn, check_json, error_reply, has_duplicate_keys
from eventstore.store.base import EventStore
from eventstore.store.budget import DEFAULT_APPEND_POOL_SIZE
from eventstore.store.prepared import PreparedAppend

#: Bodies up to this size are validated and appended on the event loop.
INLINE_BODY_BYTES = 64 * 1024

#: (HTTP status, JSON body)
Reply = tuple[int, bytes]
T = TypeVar("T")


class Appends:
    """The append endpoint's work; `start` and `stop` run on the server's event loop."""

    def __init__(self, store: EventStore, threads: int = 16,
                 async_pool_size: int = DEFAULT_APPEND_POOL_SIZE) -> None:
        self.store = store
        # Appends in flight on threads at once: enough for PostgreSQL to group commits,
        # few enough that threads do not fight over the GIL.
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="append")
        self._async = store.async_appender(async_pool_size)

    async def start(self) -> None:
        if self._async is not None:
            await self._async.open()

    async def stop(self) -> None:
        """After the server has drained its requests: nothing is in flight."""
        self._threads.shutdown(wait=True)
        if self._async is not None:
            await self._async.close()

    async def handle(self, stream_id: str, body: bytes) -> Reply | None:
        """The reply to an append, or None when the body does not validate (the caller
        lets the framework explain why)."""
        if self._async is None or len(body) > INLINE_BODY_BYTES:
            return await self._on_thread(self._handle_sync, stream_id, body)
        request = _parse(body)
        if request is None:
            return None
        started = time.perf_counter()
        try:
            prepared = self.prepare(stream_id, request)
            result = await self._async.append(prepared)
        except EventStoreError as exc:
            return _error(exc)
        if result is None:  # a conflict, a race, a re-send or a failure: decide it there
            return await self._on_thread(self._append_sync, prepared, started, False)
        return _appended(result, prepared.count, started)

    def prepare(self, stream_id: str, request: AppendIn) -> PreparedAppend:
        """The request as the store's prepared append (ValidationError for what the
        store refuses, before any I/O)."""
        events, expected = to_events(request)
        return self.store.prepare_append(stream_id, events, expected)

    def reply(self, stream_id: str, request: AppendIn) -> Reply:
        """The synchronous append, for the framework's route (it runs on a thread)."""
        started = time.perf_counter()
        try:
            prepared = self.prepare(stream_id, request)
        except EventStoreError as exc:
            return _error(exc)
        return self._append_sync(prepared, started, True)

    def _handle_sync(self, stream_id: str, body: bytes) -> Reply | None:
        request = _parse(body)
        return None if request is None else self.reply(stream_id, request)

    def _append_sync(self, prepared: PreparedAppend, started: float, grouped: bool) -> Reply:
        try:
            result = self.store.append_prepared(prepared, grouped=grouped)
        except ConcurrencyError as exc:
            metrics.APPEND_CONFLICTS.inc()
            return _error(exc)
        except EventStoreError as exc:
            return _error(exc)
        return _appended(result, prepared.count, started)

    async def _on_thread(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)


def to_events(request: AppendIn) -> tuple[list[NewEvent], int | ExpectedVersion]:
    """The store's view of an append request; refuses what jsonb cannot hold."""
    events = []
    for index, item in enumerate(request.events):
        check_json(item.payload, f"payload of event {index}")
        check_json(item.metadata, f"metadata of event {index}")
        events.append(NewEvent(type=item.type, payload=item.payload, metadata=item.metadata,
                               schema_version=item.schema_version,
                               **({"id": item.id} if item.id else {})))
    expected = request.expected_version
    return events, expected if isinstance(expected, int) else ExpectedVersion(expected)


def parse_body(body: bytes) -> AppendIn:
    """The one parse step of an append body, for every path (the framework's route
    too, which calls it to explain a refusal); raises pydantic's ValidationError."""
    return AppendIn.model_validate_json(body)


def _parse(body: bytes) -> AppendIn | None:
    if has_duplicate_keys(body):
        return None  # the framework's route names the key (wire.refuse_duplicate_keys)
    try:
        return parse_body(body)
    except PydanticValidationError:
        return None


def _appended(result: AppendResult, count: int, started: float) -> Reply:
    metrics.APPEND_LATENCY.observe(time.perf_counter() - started)
    if not result.idempotent:
        metrics.EVENTS_APPENDED.inc(count)
    # Formatted by hand (a tenth of json.dumps's cost): every field is an int or a bool,
    # and stream ids match STREAM_ID_PATTERN, which has nothing JSON would escape.
    return 201, (f'{{"stream_id":"{result.stream_id}","first_version":{result.first_version},'
                 f'"next_expected_version":{result.next_expected_version},"positions":['
                 f'{",".join(map(str, result.positions))}],'
                 f'"idempotent":{"true" if result.idempotent else "false"}}}').encode()


def _error(exc: EventStoreError) -> Reply:
    status, body = error_reply(exc)
    return status, json.dumps(body).encode()

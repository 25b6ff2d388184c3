"""The global log over HTTP: filtered and backwards pages, the head, the live subscription
(server-sent events), appends to several streams at once and consumer checkpoints.

One APIRouter, included by `create_app`; every handler calls the public API of the store
on the app's state (routing.AppState).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sse_starlette.sse import EventSourceResponse

from eventstore import metrics
from eventstore.errors import (
    ConcurrencyError,
    EventStoreError,
    ValidationError,
)
from eventstore.events import (
    EVENT_TYPE_PATTERN,
    STREAM_ID_PATTERN,
    AppendResult,
    Checkpoint,
    RecordedEvent,
    StreamAppend,
)
from eventstore.server.appends import to_events
from eventstore.server.pages import Page, encode_page
from eventstore.server.routing import ERRORS, State
from eventstore.server.wire import (
    BIGINT,
    MAX_PAGE,
    NO_DUPLICATE_KEYS,
    AppendIn,
    AppendOut,
    CheckpointConflictOut,
    ConflictOut,
    EventOut,
    error_reply,
)
from eventstore.store.base import MAX_EVENTS_PER_APPEND
from eventstore.store.encoding import MAX_FILTER_TYPES

#: Most streams one `POST /append-many` may name.
MAX_STREAMS_PER_REQUEST = 100
_PREFIX = r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=~-]{0,199}$"
_POSITION = re.compile(r"[0-9]{1,19}")

Types = Annotated[list[str] | None, Query(
    max_length=MAX_FILTER_TYPES,
    description="Only events of these types (repeat the parameter for several).")]
StreamPrefix = Annotated[str | None, Query(
    pattern=_PREFIX, max_length=200,
    description="Only events of streams whose id starts with this (a category such as "
                "`account-` is served by its own index on PostgreSQL).")]
ToPosition = Annotated[int | None, Query(ge=0, le=BIGINT, description="Upper bound "
                                                                       "(inclusive).")]
Consumer = Annotated[str, Path(pattern=STREAM_ID_PATTERN.pattern, max_length=200,
                               description="The consumer's name (the rules of stream ids).")]

class StreamAppendIn(AppendIn):
    """One stream's part of an append-many: as the body of `POST /streams/{id}`, plus the
    stream id."""

    stream_id: str = Field(pattern=STREAM_ID_PATTERN.pattern, max_length=200)


class CheckpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consumer: str = Field(pattern=STREAM_ID_PATTERN.pattern, max_length=200)
    position: StrictInt = Field(ge=0, le=BIGINT)


class AppendManyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    appends: list[StreamAppendIn] = Field(max_length=MAX_STREAMS_PER_REQUEST, description=(
        "Each stream once, with its own expected version. All are stored, or none."))
    checkpoint: CheckpointIn | None = Field(None, description=(
        "Move this consumer's checkpoint in the same transaction (only forward)."))


class AppendManyOut(BaseModel):
    results: list[AppendOut]


class CheckpointPositionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: StrictInt = Field(ge=0, le=BIGINT)


class CheckpointOut(BaseModel):
    consumer: str
    position: int | None = Field(description="null when the consumer has none yet.")


class LogPageOut(BaseModel):
    events: list[EventOut]
    next_position: int = Field(description=(
        "Forwards: pass as from_position to read on. Backwards: pass as to_position "
        "(-1 when the page reached position 0)."))
    truncated: bool = Field(description="The byte budget cut the page short of `limit`.")


class HeadOut(BaseModel):
    head_position: int


router = APIRouter(tags=["log"], responses=ERRORS)


@router.get("/all", tags=["streams"], summary="A page of the global log, filtered and "
            "bounded, forwards or backwards", response_model=LogPageOut,
            description="At most `limit` events and about EVENTSTORE_MAX_PAGE_BYTES; "
                        "`truncated`: the byte budget cut the page short. Continue from "
                        "`next_position`.")
def read_all(
    state: State, from_position: Annotated[int, Query(ge=0, le=BIGINT)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    to_position: ToPosition = None,
    types: Types = None,
    stream_prefix: StreamPrefix = None,
    backwards: bool = False,
) -> Response:
    store, max_page_bytes = state.services.store, state.max_page_bytes
    _check_types(types)

    def fetch(last: RecordedEvent | None, count: int) -> list[RecordedEvent]:
        if not backwards:
            start = from_position if last is None else last.position + 1
            return store.read_all(start, count, to_position=to_position, types=types,
                                  stream_prefix=stream_prefix)
        upper = to_position if last is None else last.position - 1
        if upper is not None and upper < from_position:
            return []
        return store.read_all(from_position, count, to_position=upper, types=types,
                              stream_prefix=stream_prefix, backwards=True)

    page = encode_page(fetch, limit, max_page_bytes)
    if backwards:
        upper = to_position if to_position is not None else store.head_position()
        next_position = page.last.position - 1 if page.last is not None else upper
    else:
        next_position = page.last.position + 1 if page.last is not None else from_position
    return Response(b'{"events":' + page.events_json() + b',"next_position":'
                    + str(next_position).encode() + b',"truncated":'
                    + (b"true" if page.truncated else b"false") + b"}",
                    media_type="application/json")

@router.get("/all/head", summary="The highest position a reader may see now")
def head(state: State, ) -> HeadOut:
    return HeadOut(head_position=state.services.store.head_position())

@router.get("/subscribe", tags=["streams"], response_class=EventSourceResponse,
            summary="Live subscription to the global log (server-sent events)",
            description="Each SSE message has `id` = the event's position and `data` = "
                        "the event as JSON. Reconnect with Last-Event-ID to resume. "
                        "Takes the filters of `GET /all`; ends once the log has passed "
                        "`to_position`, if given.",
            responses={200: {"content": {"text/event-stream": {}}}})
async def subscribe(
    state: State, request: Request,
    from_position: Annotated[int, Query(ge=0, le=BIGINT)] = 0,
    idle_timeout: Annotated[float | None, Query(gt=0, le=3600, description="Close after "
                                                "this many seconds without events")] = None,
    to_position: ToPosition = None,
    types: Types = None,
    stream_prefix: StreamPrefix = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    store, max_page_bytes = state.services.store, state.max_page_bytes
    _check_types(types)
    start = from_position
    if last_event_id:
        # ASCII digits only: str.isdigit() also takes superscripts, and int() refuses
        # more than 4300 digits; both were 500s.
        if not _POSITION.fullmatch(last_event_id) or int(last_event_id) >= BIGINT:
            raise ValidationError("Last-Event-ID must be the position of an event (the "
                                  "`id` of an SSE message this server sent)")
        start = max(start, int(last_event_id) + 1)

    def batch(position: int) -> Page:
        return encode_page(lambda last, count: store.read_all(
            position if last is None else last.position + 1, count,
            to_position=to_position, types=types, stream_prefix=stream_prefix),
            500, max_page_bytes)

    async def stream() -> AsyncIterator[dict[str, str]]:
        position = start
        idle_since = time.monotonic()
        while not await request.is_disconnected():
            if to_position is not None and position > to_position:
                return
            page = await anyio.to_thread.run_sync(batch, position,
                                                  limiter=state.subscription_threads)
            if page.events:
                idle_since = time.monotonic()
                for event, data in zip(page.events, page.encoded, strict=True):
                    yield {"id": str(event.position), "event": "event",
                           "data": data.decode()}
                position = page.events[-1].position + 1
                continue
            if to_position is not None and await anyio.to_thread.run_sync(
                    store.head_position, limiter=state.subscription_threads) >= to_position:
                return
            idle = time.monotonic() - idle_since
            if idle_timeout is not None and idle >= idle_timeout:
                return
            wait = 1.0 if idle_timeout is None else min(1.0, idle_timeout - idle)
            await anyio.to_thread.run_sync(store.wait_for_events, position - 1, wait,
                                           limiter=state.subscription_threads)

    return EventSourceResponse(stream(), ping=15)

@router.post("/append-many", status_code=201, summary="Append to several streams "
             "atomically, each with its own expected version",
             description="All or nothing. A 409 names the stream whose expectation "
                         "failed and its actual version, or the consumer whose "
                         "checkpoint would not move forward. Re-sending the same body "
                         "(same event ids) returns the first results, `idempotent`.",
             responses={409: {"model": ConflictOut | CheckpointConflictOut,
                              "description": "A stream's expected version did not hold, "
                                             "or the checkpoint is behind"}},
             dependencies=[NO_DUPLICATE_KEYS])
def append_many(state: State, body: Annotated[AppendManyIn, Body()]) -> Response:
    store = state.services.store
    appends = []
    for item in body.appends:
        events, expected = to_events(item)
        appends.append(StreamAppend(item.stream_id, events, expected))
    if sum(len(a.events) for a in appends) > MAX_EVENTS_PER_APPEND:
        return _error(ValidationError(
            f"an append-many carries at most {MAX_EVENTS_PER_APPEND} events in all"))
    checkpoint = None if body.checkpoint is None else Checkpoint(
        body.checkpoint.consumer, body.checkpoint.position)
    started = time.perf_counter()
    try:
        results = store.append_many(appends, checkpoint=checkpoint)
    except EventStoreError as exc:
        return _error(exc)
    metrics.APPEND_LATENCY.observe(time.perf_counter() - started)
    metrics.EVENTS_APPENDED.inc(sum(len(r.positions) for r in results if not r.idempotent))
    return _reply(201, {"results": [_result(r) for r in results]})

@router.get("/checkpoints/{consumer}", tags=["checkpoints"],
            summary="A consumer's checkpoint (its last handled position)")
def read_checkpoint(state: State, consumer: Consumer) -> CheckpointOut:
    return CheckpointOut(consumer=consumer, position=state.services.store.read_checkpoint(consumer))

@router.put("/checkpoints/{consumer}", tags=["checkpoints"],
            summary="Move a consumer's checkpoint forward",
            responses={409: {"model": CheckpointConflictOut,
                             "description": "The stored checkpoint is at or past it"}},
            dependencies=[NO_DUPLICATE_KEYS])
def save_checkpoint(state: State, consumer: Consumer,
                    body: Annotated[CheckpointPositionIn, Body()]) -> Response:
    try:
        state.services.store.save_checkpoint(consumer, body.position)
    except EventStoreError as exc:
        return _error(exc)
    return _reply(200, {"consumer": consumer, "position": body.position})


def _check_types(types: list[str] | None) -> None:
    for name in types or ():
        if not EVENT_TYPE_PATTERN.fullmatch(name):
            raise ValidationError(f"types has {name[:60]!r}, which is not an event type")


def _result(result: AppendResult) -> dict[str, Any]:
    return {"stream_id": result.stream_id, "first_version": result.first_version,
            "next_expected_version": result.next_expected_version,
            "positions": list(result.positions), "idempotent": result.idempotent}


def _error(exc: EventStoreError) -> Response:
    if isinstance(exc, ConcurrencyError):
        metrics.APPEND_CONFLICTS.inc()
    return _reply(*error_reply(exc))


def _reply(status: int, body: dict[str, Any]) -> Response:
    return JSONResponse(body, status_code=status)

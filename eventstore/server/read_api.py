"""Reads of one stream: `GET /streams/{stream_id}` and its archive. The global log's
reads are in log_api.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from eventstore.events import RecordedEvent
from eventstore.server.pages import encode_page
from eventstore.server.routing import ERRORS, State, StreamId
from eventstore.server.wire import BIGINT, MAX_PAGE, StreamOut, StreamVersionOut, event_to_dict
from eventstore.store.encoding import check_read_stream

router = APIRouter(tags=["streams"])


@router.get("/streams/{stream_id}", summary="Read a stream", response_model=StreamOut,
            responses=ERRORS,
            description="At most `limit` events and about EVENTSTORE_MAX_PAGE_BYTES: when "
                        "the byte budget cuts the page short, `truncated` is true and "
                        "`next_version` is where to continue (as `from_version`, or as "
                        "`to_version` when reading backwards).")
def read_stream(
    stream_id: StreamId,
    state: State,
    from_version: Annotated[int, Query(ge=1, le=BIGINT)] = 1,
    to_version: Annotated[int | None, Query(ge=1, le=BIGINT)] = None,
    as_of: Annotated[datetime | None, Query(description="Events recorded at or before "
                                                        "this time (ISO 8601, with zone)")]
    = None,
    backwards: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    store = state.services.store
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    # Validate once up front, as an unbudgeted read did (400 on bad input).
    check_read_stream(stream_id, from_version, to_version, limit)

    def fetch(last: RecordedEvent | None, count: int) -> list[RecordedEvent]:
        low, high = from_version, to_version
        if last is not None:
            low, high = (low, last.version - 1) if backwards else (last.version + 1, high)
        if high is not None and high < low:
            return []
        return store.read_stream(stream_id, from_version=low, to_version=high,
                                 as_of=as_of, backwards=backwards, limit=count)

    page = encode_page(fetch, limit, state.max_page_bytes)
    next_version = None
    if page.truncated and page.last is not None:
        next_version = page.last.version + (-1 if backwards else 1)
    return Response(b'{"stream_id":' + json.dumps(stream_id).encode() + b',"events":'
                    + page.events_json() + b',"truncated":'
                    + (b"true" if page.truncated else b"false") + b',"next_version":'
                    + json.dumps(next_version).encode() + b"}",
                    media_type="application/json")


@router.get("/streams/{stream_id}/archive",
            summary="Events of a stream that retention moved to the archive",
            responses=ERRORS)
def read_archive(
    stream_id: StreamId,
    state: State,
    from_version: Annotated[int, Query(ge=1, le=BIGINT)] = 1,
    to_version: Annotated[int | None, Query(ge=1, le=BIGINT)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> StreamOut:
    events = state.services.store.read_archived_stream(stream_id, from_version,
                                                       to_version=to_version, limit=limit)
    return StreamOut.model_validate({"stream_id": stream_id,
                                     "events": [event_to_dict(e) for e in events]})


@router.get("/streams/{stream_id}/version", summary="A stream's current version",
            responses=ERRORS)
def stream_version(stream_id: StreamId, state: State) -> StreamVersionOut:
    """Counts events retention archived: a stream whose every event is archived still has
    its version (reading its newest event would find none)."""
    return StreamVersionOut(stream_id=stream_id,
                            version=state.services.store.stream_version(stream_id))

"""`GET`/`PUT /streams/{stream_id}/snapshot`: the newest snapshot of an aggregate, and
storing one (a client that takes its own). `GET /aggregates` is in aggregates.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse, Response

from eventstore import metrics
from eventstore.errors import NotFound, StoreUnavailable, ValidationError
from eventstore.events import EVENT_TYPE_PATTERN
from eventstore.server.routing import ERRORS, AppState, State, StreamId
from eventstore.server.wire import (
    BIGINT,
    NO_DUPLICATE_KEYS,
    ErrorOut,
    SnapshotIn,
    SnapshotOut,
    check_json,
)

if TYPE_CHECKING:
    from eventstore.snapshots.base import SnapshotStore

router = APIRouter(tags=["snapshots"])


def _snapshots(state: AppState) -> SnapshotStore:
    if state.services.snapshots is None:
        raise StoreUnavailable("this server has no snapshot store configured")
    return state.services.snapshots


@router.get("/streams/{stream_id}/snapshot", summary="The newest snapshot of an aggregate",
            responses={404: {"model": ErrorOut}, **ERRORS})
def get_snapshot(
    stream_id: StreamId,
    state: State,
    aggregate_type: Annotated[str, Query(pattern=EVENT_TYPE_PATTERN.pattern, max_length=200)],
    at_or_below_version: Annotated[int | None, Query(ge=1, le=BIGINT)] = None,
) -> Response:
    snapshot = _snapshots(state).latest(aggregate_type, stream_id,
                                        at_or_below_version=at_or_below_version)
    if snapshot is None:
        raise NotFound(f"no snapshot of {aggregate_type} {stream_id}")
    return JSONResponse(SnapshotOut(
        aggregate_type=snapshot.aggregate_type, aggregate_id=snapshot.aggregate_id,
        version=snapshot.version, state=snapshot.state,
        state_schema_version=snapshot.state_schema_version,
        taken_at=snapshot.taken_at).model_dump(mode="json"))


@router.put("/streams/{stream_id}/snapshot", status_code=201,
            summary="Store a snapshot of an aggregate", responses=ERRORS,
            dependencies=[NO_DUPLICATE_KEYS])
def put_snapshot(stream_id: StreamId, body: Annotated[SnapshotIn, Body()],
                 state: State) -> SnapshotOut:
    from eventstore.snapshots.base import Snapshot

    check_json(body.state, "state")
    current = state.services.store.stream_version(stream_id)
    if body.version > current:
        raise ValidationError(f"snapshot version {body.version} is past the stream's "
                              f"version {current}: a snapshot must describe stored events")
    snapshot = Snapshot(aggregate_type=body.aggregate_type, aggregate_id=stream_id,
                        version=body.version, state=body.state,
                        state_schema_version=body.state_schema_version,
                        taken_at=datetime.now(UTC))
    started = time.perf_counter()
    _snapshots(state).save(snapshot)
    metrics.SNAPSHOT_DURATION.observe(time.perf_counter() - started)
    return SnapshotOut(aggregate_type=snapshot.aggregate_type, aggregate_id=stream_id,
                       version=snapshot.version, state=snapshot.state,
                       state_schema_version=snapshot.state_schema_version,
                       taken_at=snapshot.taken_at)

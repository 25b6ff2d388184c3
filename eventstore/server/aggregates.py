"""The routes that serve registered aggregates and the pod's settings.

`GET /aggregates/{type}/{id}` loads an aggregate the way a Repository does (the newest
usable snapshot, then the events after it, upcasters included), so a client can read
state, also as of a version or a time, without the aggregate's code. `GET /settings`
hands clients the snapshot policy the pods run, so an application follows the ConfigMap
rather than a constant of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from eventstore.errors import NotFound
from eventstore.events import STREAM_ID_PATTERN
from eventstore.repository import Repository
from eventstore.server.routing import State
from eventstore.server.wire import BIGINT, ErrorOut

if TYPE_CHECKING:
    from eventstore.server.app import Services


class AggregateOut(BaseModel):
    aggregate_type: str
    aggregate_id: str
    version: int = Field(description="The version the state is at.")
    state: dict[str, Any] = Field(description="The aggregate's snapshot state "
                                              "(Aggregate.snapshot_state()).")
    state_schema_version: int
    snapshot_version: int | None = Field(description="The snapshot the load started from "
                                                     "(null: replayed from the first event).")
    events_replayed: int = Field(description="Events applied after that snapshot.")
    snapshot_ignored: str | None = Field(None, description="Why a newer snapshot was not used "
                                                           "(unavailable, schema), if so.")


class SettingsOut(BaseModel):
    store: dict[str, Any]
    projections: dict[str, Any]


def aggregate_repositories(services: Services) -> dict[str, Repository[Any]]:
    """A Repository per registered aggregate type, as the pods' snapshotter configures it
    (what `GET /aggregates` loads with)."""
    return {name: Repository(services.store, cls, snapshots=services.snapshots,
                             snapshot_frequency=services.settings.store.snapshot_frequency,
                             max_events_per_aggregate=(
                                 services.settings.store.max_events_per_aggregate))
            for name, cls in services.aggregates.items()}


#: `GET /aggregates` replays at most AppState.max_replay_events after its snapshot
#: (memory), as `limit` bounds every other read; past it the reply is 422 `replay_too_long`.
router = APIRouter(tags=["aggregates"])


@router.get("/aggregates/{aggregate_type}/{aggregate_id}", response_model=AggregateOut,
            summary="An aggregate's state from its newest usable snapshot plus replay",
            description="`aggregate_type` is a name registered in event-store.yaml "
                        "(`aggregates:`). `at_version` and `as_of` give the state as it "
                        "was (temporal query); the reply says which snapshot the load "
                        "started from and how many events it replayed.",
            responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut},
                       503: {"model": ErrorOut}})
def load_aggregate(
    state: State,
    aggregate_type: Annotated[str, Path(max_length=100)],
    aggregate_id: Annotated[str, Path(pattern=STREAM_ID_PATTERN.pattern, max_length=200)],
    at_version: Annotated[int | None, Query(ge=1, le=BIGINT)] = None,
    as_of: Annotated[datetime | None, Query(description="ISO 8601; UTC if no zone")] = None,
) -> Response:
    repository = state.repositories.get(aggregate_type)
    if repository is None:
        known = ", ".join(sorted(state.repositories)) or "none"
        raise NotFound(f"no aggregate type {aggregate_type!r} is registered in "
                       f"event-store.yaml (registered: {known})")
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    # AggregateNotFound (404) and ReplayTooLong (422) reach the app's error handler.
    aggregate, info = repository.load_with_info(aggregate_id, at_version=at_version,
                                                as_of=as_of,
                                                max_replay=state.max_replay_events)
    reply = AggregateOut(
        aggregate_type=aggregate_type, aggregate_id=aggregate_id, version=aggregate.version,
        state=aggregate.snapshot_state(),
        state_schema_version=repository.aggregate_cls.state_schema_version,
        snapshot_version=info.snapshot_version, events_replayed=info.events_replayed,
        snapshot_ignored=info.snapshot_ignored)
    return JSONResponse(reply.model_dump(mode="json"))


@router.get("/settings", tags=["settings"], response_model=SettingsOut,
            summary="The settings this pod runs (the ConfigMap as loaded; no secrets)")
def settings(state: State) -> SettingsOut:
    dumped = state.services.settings.model_dump(mode="json")
    return SettingsOut(store=dumped["store"], projections=dumped["projections"])

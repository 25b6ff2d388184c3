"""What the routers share: the app's state (services passed explicitly, not closed over),
the path parameters and the documented error replies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, Path, Request

from eventstore.events import STREAM_ID_PATTERN
from eventstore.server.wire import ErrorOut

if TYPE_CHECKING:
    from eventstore.repository import Repository
    from eventstore.server.app import Services
    from eventstore.server.appends import Appends
    from eventstore.server.deadline import ReadinessCheck
    from eventstore.server.shutdown import Draining


@dataclass(frozen=True)
class AppState:
    """Everything a route serves from; `create_app` puts it on `app.state.eventstore`."""

    services: Services
    appends: Appends
    readiness: ReadinessCheck
    max_page_bytes: int
    #: Threads the live subscriptions may hold at once (their reads wait on the database).
    subscription_threads: anyio.CapacityLimiter
    #: `GET /aggregates`: a Repository per registered type, and the most events one
    #: request replays after its snapshot (memory; past it, 422 replay_too_long).
    repositories: Mapping[str, Repository[Any]]
    max_replay_events: int
    #: Set once SIGTERM arrives (shutdown.py): /readyz answers 503 from then on.
    draining: Draining | None = None


async def _app_state(request: Request) -> AppState:
    # async: a sync dependency would cost every request a hop to the thread pool.
    state: AppState = request.app.state.eventstore
    return state


#: A route parameter that receives the app's state: `state: State`.
State = Annotated[AppState, Depends(_app_state)]

StreamId = Annotated[str, Path(pattern=STREAM_ID_PATTERN.pattern, max_length=200,
                               description="The stream (aggregate) id.")]
ProjectionName = Annotated[str, Path(max_length=63)]

#: The error replies every authenticated route may give, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Refused input"},
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    503: {"model": ErrorOut, "description": "The database is unavailable"},
}

"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from eventstore.errors import NotReady, ShuttingDown
from eventstore.server.error_handlers import error_response
from eventstore.server.routing import State
from eventstore.server.wire import ErrorOut

router = APIRouter(tags=["probes"])


# Both probes are `async def`: they answer from the event loop, never queued behind
# worker threads that wait on a stalled database.
@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers and the schema is current",
            responses={503: {"model": ErrorOut}})
async def readyz(state: State) -> Response:
    if state.draining is not None and state.draining.active:
        return error_response(ShuttingDown("this server is stopping (SIGTERM); it still "
                                           "serves requests until it has drained"))
    if await state.readiness.ready():
        return JSONResponse({"status": "ready"})
    return error_response(NotReady("the event database does not answer or its schema is not "
                                   "current (run `eventstore migrate`)"))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

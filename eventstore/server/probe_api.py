"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from eventstore.errors import error_body
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
        return JSONResponse(error_body("shutting_down", "this server is stopping (SIGTERM); "
                                       "it still serves requests until it has drained"),
                            status_code=503)
    if await state.readiness.ready():
        return JSONResponse({"status": "ready"})
    return JSONResponse(error_body("not_ready", "the event database does not answer or its "
                                   "schema is not current (run `eventstore migrate`)"),
                        status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

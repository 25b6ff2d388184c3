"""Projection status, rebuilds, read-model entries and parked events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from eventstore.errors import LookupsUnsupported, NotFound
from eventstore.server.routing import ERRORS, AppState, ProjectionName, State
from eventstore.server.wire import MAX_PAGE, ErrorOut, ProjectionsOut

if TYPE_CHECKING:
    from eventstore.projections.runner import ProjectionRunner

router = APIRouter(tags=["projections"])


def _runner(state: AppState, name: str) -> ProjectionRunner:
    runner = state.services.runner_for(name)
    if runner is None:
        raise NotFound(f"no projection named {name!r}")
    return runner


@router.get("/projections", summary="Projection status", responses=ERRORS)
def projections(state: State) -> ProjectionsOut:
    return ProjectionsOut(projections=[status.as_dict() for runner in state.services.runners
                                       for status in runner.status()])


@router.get("/projections/{name}/entries/{key}",
            summary="One entry of a projection's read model",
            description="Served from this pod's own copy for local projections, so these "
                        "reads scale with replicas. The projection defines what a key is "
                        "(the example `AccountBalances`: an account id).",
            responses={404: {"model": ErrorOut}, 501: {"model": ErrorOut}, **ERRORS})
def entry(name: ProjectionName, key: Annotated[str, Path(min_length=1, max_length=200)],
          state: State) -> Response:
    runner = _runner(state, name)
    try:
        found = runner.lookup(name, key)
    except NotImplementedError as exc:
        raise LookupsUnsupported(str(exc)) from exc
    if found is None:
        raise NotFound(f"{name} has no entry {key!r}")
    return JSONResponse({"projection": name, "scope": runner.scope, "key": key,
                         "entry": found})


@router.get("/projections/{name}/dead-letters", summary="Events a projection parked",
            responses={404: {"model": ErrorOut}, **ERRORS})
def dead_letters(name: ProjectionName, state: State,
                 limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Response:
    return JSONResponse({"dead_letters": _runner(state, name).dead_letters(name, limit)})


@router.post("/projections/{name}/rebuild", status_code=202,
             summary="Empty a projection's read model and replay it from the start",
             responses={404: {"model": ErrorOut}, **ERRORS})
def rebuild(name: ProjectionName, state: State) -> Response:
    _runner(state, name).rebuild(name)
    return JSONResponse({"name": name, "status": "rebuilding"}, status_code=202)

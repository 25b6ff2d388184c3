"""`POST /streams/{stream_id}` as the framework sees it.

Valid appends are answered by `AppendRoute` (append_route.py) before they reach this
route; it serves the rest (422 for a body or stream id that does not validate) and the
OpenAPI document, which describes AppendIn/AppendOut (see `create_app`'s openapi()).
"""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError as PydanticValidationError

from eventstore.server.appends import parse_body
from eventstore.server.routing import ERRORS, State, StreamId
from eventstore.server.wire import AppendOut, ConflictOut, ErrorOut, refuse_duplicate_keys

router = APIRouter(tags=["streams"])


@router.post("/streams/{stream_id}", status_code=201,
             summary="Append events with optimistic concurrency", response_model=AppendOut,
             responses={409: {"model": ConflictOut, "description": "Expected version did not "
                                                                   "hold"},
                        415: {"model": ErrorOut, "description": "The body is not sent as "
                                                                "application/json"},
                        **ERRORS},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/AppendIn"}}}}})
async def append(stream_id: StreamId, request: Request, state: State) -> Response:
    raw = await request.body()
    try:
        body = parse_body(raw)
    except PydanticValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False,
                                                include_input=False)) from None
    refuse_duplicate_keys(raw)
    status, reply = await anyio.to_thread.run_sync(state.appends.reply, stream_id, body)
    return Response(reply, status_code=status, media_type="application/json")

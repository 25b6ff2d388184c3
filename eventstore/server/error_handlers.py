"""The app's exception handlers: every reply, the framework's own included, in the one
shape `{error, message, ...}` that `eventstore.errors.error_reply` builds."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventstore.errors import EventStoreError, error_body
from eventstore.server.wire import error_reply, invalid_request


def error_response(exc: EventStoreError) -> JSONResponse:
    status, body = error_reply(exc)
    return JSONResponse(body, status_code=status)


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EventStoreError)
    return error_response(exc)


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    # A 422 names where and why, never echoing the input (which may be megabytes).
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_request(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    # The framework's own refusals (404 for an unknown path, 405): the code is the
    # status phrase, so a 404 reads `not_found` like the library's NotFound.
    assert isinstance(exc, StarletteHTTPException)
    kind = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code,
                        headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EventStoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)

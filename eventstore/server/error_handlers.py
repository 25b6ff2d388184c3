"""The app's exception handlers: every reply, the framework's own included, in the one
shape `{error, message, ...}` that `eventstore.errors.error_reply` builds; and that
shape's place in the OpenAPI document (`document_errors`)."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventstore.errors import EventStoreError, MethodNotAllowed, NotFound, error_body
from eventstore.server.wire import InvalidRequestOut, error_reply, invalid_request


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


#: The framework's refusals that a library class reports.
_FRAMEWORK_REFUSALS: dict[int, type[EventStoreError]] = {404: NotFound, 405: MethodNotAllowed}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # The framework's own refusals (404 for an unknown path, 405): answered as the
    # library class of that status (NotFound, MethodNotAllowed); the code of any other
    # is the status phrase, in the same shape.
    assert isinstance(exc, StarletteHTTPException)
    cls = _FRAMEWORK_REFUSALS.get(exc.status_code)
    headers = dict(exc.headers or {})
    if cls is not None:
        status, body = error_reply(cls(str(exc.detail)))
    else:
        kind = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        status, body = exc.status_code, error_body(kind, str(exc.detail))
    if status == 405:  # paths outside the document (/openapi.json): the framework's, sorted
        framework = sorted(m.strip() for m in headers.get("Allow", "").split(",") if m.strip())
        headers["Allow"] = allowed_methods(request) or ", ".join(framework)
    return JSONResponse(body, status_code=status, headers=headers)


def allowed_methods(request: Request) -> str:
    """Every method the request's path takes. Starlette's 405 names only the methods of
    the first route whose path matched (`DELETE /streams/x` said `Allow: POST`, though
    GET is served there too); RFC 9110 asks for all of them. Read from the app's own
    OpenAPI document (every route of ours is in it), so no framework internals."""
    app = request.app
    table: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(
        app.state, "allowed_methods", None)
    if table is None:
        table = _method_table(app.openapi())
        app.state.allowed_methods = table
    path = request.url.path
    methods: set[str] = set()
    for pattern, allowed in table:
        if pattern.fullmatch(path):
            methods |= allowed
    return ", ".join(sorted(methods))


def _method_table(document: dict[str, Any]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path template as a pattern, its methods) for each path of an OpenAPI document; a
    path that takes GET also takes HEAD (Starlette answers it)."""
    table = []
    for template, operations in document.get("paths", {}).items():
        methods = {method.upper() for method in operations if method.upper() in _HTTP_METHODS}
        if "GET" in methods:
            methods.add("HEAD")
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        table.append((re.compile(pattern), frozenset(methods)))
    return table


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EventStoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)


_SCHEMAS = "#/components/schemas/"


def _reply_doc(model: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _SCHEMAS + model}}}}


def document_errors(schema: dict[str, Any], secured: set[tuple[str, str]]) -> None:
    """Make the document's error replies the ones sent: FastAPI documents its 422 as
    `{"detail": [...]}`, but error_handlers answers it as an InvalidRequestOut; every
    `secured` (path, method) may also answer 401 and 413, which GuardMiddleware sends
    before any route runs."""
    models = schema.setdefault("components", {}).setdefault("schemas", {})
    invalid = InvalidRequestOut.model_json_schema(ref_template=_SCHEMAS + "{model}")
    models.update(invalid.pop("$defs", {}))
    models["InvalidRequestOut"] = invalid
    framework_422 = {"$ref": _SCHEMAS + "HTTPValidationError"}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            documented = responses.get("422", {}).get("content", {})
            if documented.get("application/json", {}).get("schema") == framework_422:
                responses["422"] = _reply_doc("InvalidRequestOut",
                                              "The request does not match the schema")
            if (path, method) in secured:
                responses.setdefault("401", _reply_doc("ErrorOut",
                                                       "Missing or wrong bearer token"))
                responses.setdefault("413", _reply_doc(
                    "ErrorOut", "The body is larger than EVENTSTORE_MAX_BODY_BYTES"))
    if framework_422["$ref"] not in str(schema.get("paths")):
        models.pop("HTTPValidationError", None)
        models.pop("ValidationError", None)

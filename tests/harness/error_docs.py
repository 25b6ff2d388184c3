"""Checks that an HTTP error reply is what the library and the API document say: the one
shape of `eventstore.errors.error_reply`, and the schema /openapi.json gives for it."""

from __future__ import annotations

from typing import Any

import jsonschema

from eventstore.errors import EventStoreError, error_from_reply, error_reply


def assert_library_reply(status: int, body: Any) -> EventStoreError:
    """The reply is exactly what `error_reply` sends for the library error it reports
    (so it has a class of its own, and no field added or missing by hand)."""
    assert isinstance(body, dict), body
    error = error_from_reply(status, body)
    assert type(error) is not EventStoreError, f"{status} {body} has no error class"
    assert error_reply(error) == (status, body), (status, body)
    return error


def documented_schema(doc: dict[str, Any], path: str, method: str, status: int
                      ) -> dict[str, Any]:
    """The JSON schema the document gives for `status` of `method path`, resolvable on
    its own (its references point into the document's components)."""
    operation = doc["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, (
        f"{method.upper()} {path} answers {status}, which its documentation does not list "
        f"({sorted(responses)})")
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}


def component_schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def assert_documented(doc: dict[str, Any], path: str, method: str, status: int,
                      body: Any) -> None:
    """`body` validates against the documented reply (whose error models forbid fields
    they do not name, so an undocumented field fails too)."""
    jsonschema.validate(body, documented_schema(doc, path, method, status))

"""Bearer-token authentication and request-body limits, as one pure ASGI middleware.

A middleware rather than per-route dependencies, so nothing can be forgotten: every path
(including /openapi.json, /metrics and unknown paths) needs the token except the probes.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from eventstore.errors import BadRequest, PayloadTooLarge, Unauthorized, error_reply
from eventstore.server.asgi import (
    ASGIApp,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    read_body,
    replaying,
)

#: Paths served without a token: the kubelet's probes carry none.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def token_matches(expected: bytes, header: bytes | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header value."""
    if header is None:
        return False
    scheme, _, presented = header.partition(b" ")
    presented = presented.strip()
    if scheme.lower() != b"bearer" or not presented or not expected:
        return False  # an empty token never matches, whatever the server was given
    # compare_digest takes time independent of where the values differ.
    return hmac.compare_digest(presented, expected)


class GuardMiddleware:
    """Refuses requests without the token (401) and bodies over `max_body_bytes` (413)."""

    def __init__(self, app: ASGIApp, token: str, max_body_bytes: int) -> None:
        self.app = app
        self.token = token.encode()
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the API has none; refuse before any routing
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or []
        headers = dict(raw_headers)
        if sum(name == b"authorization" for name, _ in raw_headers) > 1:
            # Which one would count differs between proxies and servers; refuse both.
            await _reply(send, *error_reply(BadRequest(
                "send one Authorization header, not several")))
            return
        if scope["path"] not in PUBLIC_PATHS and not token_matches(
                self.token, headers.get(b"authorization")):
            await _reply(send, *error_reply(Unauthorized(
                "missing or wrong bearer token: send 'Authorization: Bearer <token>' with "
                "the token from the eventstore Secret")),
                {b"www-authenticate": b'Bearer realm="eventstore"'})
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_body_bytes
            except ValueError:
                await _reply(send, *error_reply(BadRequest("Content-Length is not a number")))
                return
            if too_large:
                await _reply(send, *error_reply(self._too_large()))
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): buffer up to the limit, then hand the body on. The
        # buffer is bounded by the limit, and the app never sees an oversized body.
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            await _reply(send, *error_reply(self._too_large()))
            return
        if body is None:
            return  # the client went away
        await self.app(scope, replaying(body, receive), send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {self.max_body_bytes} bytes; "
                               "split the append (EVENTSTORE_MAX_BODY_BYTES sets the limit)")


async def _reply(send: Send, status: int, body: dict[str, Any],
                 headers: dict[bytes, bytes] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += list((headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})

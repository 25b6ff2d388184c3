"""`POST /streams/{stream_id}` served as a plain ASGI handler, in front of FastAPI.

The append is the server's hot path. Through FastAPI's router, its dependency solving
and a worker-thread hop, the framework cost more CPU per request than the append itself
(0.55 ms a request on the benchmark machine, the server pinned at one core by the GIL).
This layer does only what an append needs: match the path, read the body and hand it to
`Appends.handle` (appends.py).

It declines (hands the request, body replayed, to FastAPI) whatever it does not serve:
other paths and methods, a stream id that does not match, a body that does not validate.
So the FastAPI route stays the one source of 422 replies and of the OpenAPI document.
"""

from __future__ import annotations

from eventstore.errors import UnsupportedMediaType, error_bytes
from eventstore.events import STREAM_ID_PATTERN
from eventstore.server.appends import Appends
from eventstore.server.asgi import ASGIApp, Receive, Scope, Send, read_body, replaying

PREFIX = "/streams/"
_JSON = (b"content-type", b"application/json")
#: The 415 for an append not sent as JSON (the same reply every time: encoded once).
_NOT_JSON = error_bytes(UnsupportedMediaType("send the append as Content-Type: "
                                             "application/json"))


class AppendRoute:
    """ASGI middleware that answers valid appends and passes everything else on."""

    def __init__(self, app: ASGIApp, appends: Appends) -> None:
        self.app = app
        self.appends = appends

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream_id = _stream_id(scope)
        if stream_id is None:
            await self.app(scope, receive, send)
            return
        if not is_json(scope):
            # Refused before the body is read: an HTML form or text/plain post (what a
            # browser may send cross-site without asking first) never reaches the store.
            status, reply = _NOT_JSON
            await send({"type": "http.response.start", "status": status,
                        "headers": [_JSON, (b"content-length", str(len(reply)).encode())]})
            await send({"type": "http.response.body", "body": reply})
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away
        outcome = await self.appends.handle(stream_id, body)
        if outcome is None:
            await self.app(scope, replaying(body, receive), send)
            return
        status, reply = outcome
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON, (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})


def is_json(scope: Scope) -> bool:
    """True when the request says its body is JSON (application/json or a +json type)."""
    for name, value in scope.get("headers") or []:
        if name == b"content-type":
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/")
                                                     and media.endswith(b"+json"))
    return False


def _stream_id(scope: Scope) -> str | None:
    """The stream id when the request is an append this layer serves, else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    stream_id = path[len(PREFIX):]
    return stream_id if STREAM_ID_PATTERN.fullmatch(stream_id) else None

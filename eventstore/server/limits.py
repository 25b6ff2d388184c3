"""A bound on live subscriptions per server, as a plain ASGI layer.

Each `GET /subscribe` holds its connection open for as long as the client stays, and on
SQLite a worker thread and a database connection while it waits for events. Without a
bound, clients could open subscriptions until the server ran out of threads, connections
or memory; past `max_subscribers` they get 503 instead. Counting around the whole
request (not inside the event generator, which may never start when a client leaves
early) means every slot taken is given back.
"""

from __future__ import annotations

from eventstore.errors import TooManySubscribers, error_bytes
from eventstore.server.asgi import ASGIApp, Receive, Scope, Send

SUBSCRIBE_PATH = "/subscribe"


class SubscriberLimit:
    """Answers 503 to a subscription past `max_subscribers` open ones."""

    def __init__(self, app: ASGIApp, max_subscribers: int) -> None:
        self.app = app
        self.max_subscribers = max_subscribers
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SUBSCRIBE_PATH:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_subscribers:
            status, body = error_bytes(TooManySubscribers(
                f"this server serves {self.max_subscribers} subscriptions already "
                "(EVENTSTORE_MAX_SUBSCRIBERS); retry later or on another replica"))
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), (b"retry-after", b"5")]})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

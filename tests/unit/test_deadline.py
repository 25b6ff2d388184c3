"""DeadlineMiddleware: the 503 is sent before the request ends, whatever the app does."""

from __future__ import annotations

import asyncio
from typing import Any

from eventstore.server.deadline import DeadlineMiddleware


def test_the_503_is_sent_before_the_request_ends_even_when_the_app_ends_at_the_deadline(
) -> None:
    """Seen in CI under a stalled PostgreSQL: the app ended (its dropped sends) just as the
    deadline fired; the middleware returned before its 503 task had sent anything, and
    uvicorn answered 500 ("ASGI callable returned without starting response")."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0.02)  # a real server's send can yield (transport, drain)
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await done  # released by the same clock tick as the deadline, after it

        middleware = DeadlineMiddleware(app, timeout=0.05)
        call = asyncio.ensure_future(middleware({"type": "http", "path": "/all"}, receive, send))
        await asyncio.sleep(0)  # the middleware has armed its timer
        loop.call_later(0.05, done.set_result, None)
        await call
        # What the server sees when the ASGI callable returns: the response must be there.
        assert [m["type"] for m in sent][:1] == ["http.response.start"], sent
        assert sent[0]["status"] == 503
        assert middleware.abandoned == 0

    asyncio.run(run())

"""Bounds on what a stalled database can do to requests: a per-request deadline and a
readiness check that answers within the probe's timeout.

The driver's own bounds (the pool's wait, statement_timeout, TCP keepalives; see
PostgresEventStore) cover a database that is slow, down or unreachable. They do not cover
one that is stalled but whose kernel still accepts and acknowledges packets (a SIGSTOPped
or frozen server, a hung storage layer): the query is sent, acknowledged, and never
answered, and libpq has no client-side timeout for that. A synchronous psycopg call
cannot be interrupted from outside its thread either. So the server bounds the wait where
it can: a request whose response has not started within the deadline is answered 503,
and the work behind it is abandoned (left to finish or fail on its thread or connection,
its reply dropped). An abandoned append may still commit once the database resumes; the
503 tells the client the outcome is unknown, and re-sending the same event ids is
idempotent, so nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from eventstore.errors import StoreUnavailable, error_bytes
from eventstore.server.asgi import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class DeadlineMiddleware:
    """Answers 503 when the app has not started a response within `timeout` seconds.

    The app runs in the request's own task, with one timer beside it (no extra task per
    request: this sits on the append hot path). When the timer fires first, a 503 goes
    out from a small task of its own and whatever the app sends later is dropped. At
    most `max_abandoned` requests are left running behind a 503 at once; past that,
    requests are answered 503 straight away, so a database that never resumes cannot
    pile up unbounded work.
    """

    def __init__(self, app: ASGIApp, timeout: float, max_abandoned: int = 1024,
                 exempt: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.timeout = timeout
        self.max_abandoned = max_abandoned
        self.exempt = exempt
        self.abandoned = 0
        self._replies: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.abandoned >= self.max_abandoned:
            await self._unavailable(send, f"{self.abandoned} earlier requests are still "
                                          "waiting on the database")
            return
        state = _Request()

        async def send_unless_abandoned(message: Message) -> None:
            if state.abandoned:
                return  # the client already has its 503
            if message["type"] == "http.response.start":
                state.started = True
            await send(message)

        timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, state, send)
        try:
            await self.app(scope, receive, send_unless_abandoned)
        finally:
            timer.cancel()
            if state.abandoned:
                self.abandoned -= 1
                if state.reply is not None:
                    # The 503 goes out from its own task. If the app ends first (its sends
                    # were dropped), returning now would let the server see a request that
                    # ended without a response and answer 500 before the 503 is sent.
                    await asyncio.shield(state.reply)

    def _expire(self, state: _Request, send: Send) -> None:
        if state.started:
            return  # the response is under way (streams may run long)
        state.abandoned = True
        self.abandoned += 1
        reply = asyncio.ensure_future(self._unavailable(send, f"no answer within "
                                                              f"{self.timeout:g}s"))
        state.reply = reply
        self._replies.add(reply)
        reply.add_done_callback(self._replies.discard)

    @staticmethod
    async def _unavailable(send: Send, why: str) -> None:
        status, body = error_bytes(StoreUnavailable(
            f"the database did not answer in time ({why}; EVENTSTORE_DB_TIMEOUT_SECONDS); "
            "retry later. An append's outcome is unknown: re-send it with the same event ids "
            "(that is idempotent)"))
        try:
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})
        except OSError:  # the client is gone
            log.debug("could not send a 503", exc_info=True)


class _Request:
    """One request's progress, shared by its sends and its timer."""

    __slots__ = ("abandoned", "reply", "started")

    def __init__(self) -> None:
        self.started = False
        self.abandoned = False
        self.reply: asyncio.Task[None] | None = None


class ReadinessCheck:
    """Runs a blocking readiness check on its own thread and answers within `timeout`.

    One check runs at a time: probes arriving while it is stuck wait on that same check
    (up to `timeout` each) instead of queueing more threads behind a stalled database.
    """

    def __init__(self, check: Callable[[], bool], timeout: float) -> None:
        self._check = check
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="readyz")
        self._running: asyncio.Future[bool] | None = None

    async def ready(self) -> bool:
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().run_in_executor(self._executor,
                                                                       self._safe_check)
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except TimeoutError:
            return False

    def _safe_check(self) -> bool:
        try:
            return self._check()
        except Exception:
            log.debug("readiness check failed", exc_info=True)
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

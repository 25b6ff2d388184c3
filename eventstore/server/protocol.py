"""uvicorn's httptools protocol with the limits it lacks: head size, head time, connections.

Why a subclass and not a setting: uvicorn (0.54) feeds the httptools parser whatever
arrives, and httptools accumulates a header line until it ends, so an unfinished 16 MiB
header line costs 16 MiB per connection, before authentication can refuse anything.
uvicorn arms its keep-alive timer only after a response, and any byte cancels it, so a
client that never finishes a request head (silent, or one header line every few
seconds) holds its connection forever. `limit_concurrency` answers 503 but still accepts
and keeps every connection.

uvicorn's h11 protocol bounds the head (`h11_max_incomplete_event_size`, answered with a
400), but has neither of the other two limits and costs more CPU per request than
httptools on the append path, so the server stays on httptools with these three checks,
each a few lines on top of uvicorn's own protocol (pinned in pyproject.toml):

- head bytes: bytes received while a request head is incomplete are counted; past
  `max_head_bytes` the client gets 431 and the connection is closed. httptools holds at
  most that plus one read (256 KiB with uvloop) per connection.
- head time: from the connection's start, and from the end of each response, the next
  request head must be complete within `head_timeout` seconds, however the bytes
  trickle in; otherwise the connection is closed (408).
- connections: a connection past `max_connections` gets 503 and is closed at once.

During the drain delay after SIGTERM (shutdown.py) every reply also closes its
connection, so keep-alive clients reconnect to a pod that is not stopping.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from eventstore.errors import (
    EventStoreError,
    HeadersTooLarge,
    RequestTimeout,
    TooManyConnections,
    error_bytes,
)
from eventstore.server.shutdown import Draining

#: After an error reply, the connection reads and drops what the client still sends for
#: this long before closing: closing with unread data makes the kernel send a reset,
#: which can destroy the reply before the client reads it.
LINGER_SECONDS = 1.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module's doc. Configure with `guarded_protocol`, not by hand."""

    max_head_bytes: ClassVar[int] = 64 * 1024
    head_timeout: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024
    draining: ClassVar[Draining | None] = None

    _head_bytes: int = 0
    #: The last bytes of the head read so far, so that a blank line split across two
    #: reads is found.
    _head_tail: bytes = b""
    _reading_head: bool = True
    _refused: bool = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(TooManyConnections(
                f"this server holds {self.max_connections} connections already "
                "(EVENTSTORE_MAX_CONNECTIONS); retry later"))
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after an error reply: drop what still arrives
        if self._reading_head:
            # Count the head exactly, up to its blank line, before the parser sees it: a
            # whole head can arrive in one read (up to 256 KiB), and counting only heads
            # still unfinished after a read let such a one pass a smaller limit.
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4 - len(self._head_tail)
            self._head_tail = window[-3:]
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self._refuse(HeadersTooLarge(
                    f"the request line and headers passed {self.max_head_bytes} bytes"))
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_head_timer()
        super().on_headers_complete()
        if self.draining is not None and self.draining.active and self.cycle is not None:
            self.cycle.keep_alive = False  # the reply says Connection: close

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever arrives next is the next request's head.
        self._reading_head = True
        self._head_bytes = 0
        self._head_tail = b""

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if self._reading_head and idle and not self.transport.is_closing():
            if self._head_bytes:
                self._refuse(RequestTimeout(
                    f"the request head was not complete within {self.head_timeout}s"))
            else:  # a connection that never sent a byte gets no reply, just a close
                self.transport.close()

    def _refuse(self, error: EventStoreError) -> None:
        """Reply with `error` in the API's error shape, then close after a short linger."""
        self._refused = True
        self._cancel_head_timer()
        status, body = error_bytes(error)
        self.transport.write(
            _STATUS_LINES[status] + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


_STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}


def guarded_protocol(*, max_head_bytes: int, head_timeout: float, max_connections: int,
                     draining: Draining | None = None) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to pass as uvicorn's `http`, with these limits."""
    limits: dict[str, Any] = {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout,
                              "max_connections": max_connections, "draining": draining}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), limits)

"""What an attacker or a stalled database does to a running `eventstore serve` (issue 12):
each test runs against a real server process and states the bound it holds."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.postgres


def _address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _rss_mib(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closed on us: what the tests want
        sock.sendall(data)


def test_oversized_header_is_refused_with_431_before_it_is_read(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    """An 8 MiB Authorization header: 431 at once, not a 401 after reading it all."""
    server = servers({"EVENTSTORE_URL": postgres_url})
    with socket.create_connection(_address(server)) as sock:
        head = b"GET /all HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        sender = threading.Thread(target=_send_quietly,
                                  args=(sock, head + b"a" * (8 << 20) + b"\r\n\r\n"))
        started = time.monotonic()
        sender.start()
        sock.settimeout(10)
        reply = sock.recv(4096)
        elapsed = time.monotonic() - started
        sender.join(timeout=10)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b'"error": "headers_too_large"' in reply
    assert elapsed < 2, elapsed


def test_unfinished_huge_header_lines_neither_grow_memory_nor_stay_open(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    """8 connections each sending an unfinished 16 MiB header line (before: +158 MiB and
    all 8 kept open)."""
    server = servers({"EVENTSTORE_URL": postgres_url})
    before = _rss_mib(server)
    socks = [socket.create_connection(_address(server)) for _ in range(8)]
    try:
        senders = [threading.Thread(target=_send_quietly, args=(
            sock, b"GET /all HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"b" * (16 << 20)))
            for sock in socks]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=30)
        grown = _rss_mib(server) - before
        closed = [_closed_by_server(sock, 5) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    print(f"RSS growth {grown:.1f} MiB, {sum(closed)}/8 closed")
    assert grown < 24, f"the server grew by {grown:.1f} MiB"
    assert all(closed)


def test_connections_past_the_cap_are_refused(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_MAX_CONNECTIONS": "20"})
    socks = [socket.create_connection(_address(server)) for _ in range(30)]
    try:
        time.sleep(0.5)
        refused = 0
        for sock in socks[20:]:
            sock.settimeout(3)
            try:
                reply = sock.recv(4096)
            except (TimeoutError, ConnectionResetError):
                continue
            refused += reply.startswith(b"HTTP/1.1 503 ")
        assert refused == 10
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.5)
    with server.client() as http:
        assert http.get("/all").status_code == 200


def test_idle_and_slow_connections_are_closed(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    """Silent sockets and sockets sending a header line every second are both closed once
    the head timeout passes (before: none closed in 40 s, resp. 60 s)."""
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_HEADER_TIMEOUT_SECONDS": "2"})
    silent = [socket.create_connection(_address(server)) for _ in range(50)]
    slow = [socket.create_connection(_address(server)) for _ in range(20)]
    stop = threading.Event()

    def dribble() -> None:
        for sock in slow:
            _send_quietly(sock, b"GET /all HTTP/1.1\r\n")
        while not stop.wait(0.5):
            for sock in slow:
                _send_quietly(sock, b"X-Slow: 1\r\n")

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        started = time.monotonic()
        closed_silent = [_closed_by_server(sock, 6) for sock in silent]
        closed_slow = [_closed_by_server(sock, 6) for sock in slow]
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        dribbler.join()
        for sock in silent + slow:
            sock.close()
    print(f"closed {sum(closed_silent)}/50 silent, {sum(closed_slow)}/20 slow in {elapsed:.1f}s")
    assert all(closed_silent) and all(closed_slow)
    assert elapsed < 6
    with server.client() as http:  # keep-alive still works for a real client
        assert http.get("/all").status_code == 200
        time.sleep(1)
        assert http.get("/all").status_code == 200

"""What an attacker or a stalled database does to a running `eventstore serve` (issue 12):
each test runs against a real server process and states the bound it holds."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest

from tests.harness.postgres import PostgresServer
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


def test_a_whole_head_over_the_limit_in_one_read_is_refused_too(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    """Before: only heads still unfinished after a read were counted, so a complete 6 KiB
    head (one read) passed a 4 KiB limit. The limit holds however the bytes arrive, and a
    head under it with a body in the same read is served."""
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_MAX_HEADER_BYTES": "4096"})
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    big = (b"GET /all HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Pad: " + b"p" * 6000
           + b"\r\n\r\n")
    body = b'{"events": [{"type": "A", "payload": {"pad": "' + b"b" * 8000 + b'"}}]}'
    small = (b"POST /streams/one-read HTTP/1.1\r\nHost: x\r\n" + auth
             + b"Content-Type: application/json\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    for request, status in ((big, b"431"), (small, b"201")):
        with socket.create_connection(_address(server)) as sock:
            sock.sendall(request)  # one write: on loopback, one read for the server
            sock.settimeout(10)
            reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 " + status + b" "), reply[:300]


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


def _signal_postgres(database: PostgresServer, sig: int) -> None:
    """`sig` to the postmaster and every backend (each backend leads its own process group,
    so killpg would reach the postmaster alone): the whole server stalls, as when its
    container or host freezes."""
    assert database.process is not None
    postmaster = database.process.pid
    # The postmaster first: once it is stopped it forks no new backend, so the scan below
    # sees every child. (Scanning first missed a backend forked for a new connection
    # between the scan and the signal; it went on serving, and /readyz said 200.)
    os.kill(postmaster, sig)
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _append_body(event_id: UUID, n: int) -> dict[str, object]:
    return {"expected_version": "any",
            "events": [{"id": str(event_id), "type": "Tick", "payload": {"n": n}}]}


def test_probes_and_appends_stay_bounded_while_postgresql_is_stopped(
        servers: Callable[..., ServerProcess]) -> None:
    """PostgreSQL SIGSTOPped 30 s under read and append load (before: 3 of 4 /healthz
    probes timed out at 2 s): every /healthz answers 200 within 0.5 s, /readyz 503 within
    1 s, appends 503 within the bound (2 s here); after SIGCONT every acknowledged append
    is stored exactly once, and re-sending the unanswered ones stores them once too."""
    database = PostgresServer().start()
    try:
        server = servers({"EVENTSTORE_URL": database.url, "EVENTSTORE_DB_TIMEOUT_SECONDS": "2"})
        with server.client() as http:
            for n in range(20):
                assert http.post(f"/streams/s-{n}", json=_append_body(uuid4(), n)).status_code \
                    == 201
        stop = threading.Event()
        lock = threading.Lock()
        acknowledged: list[UUID] = []
        unanswered: list[tuple[str, UUID]] = []
        slow_appends: list[float] = []
        append_statuses: set[int] = set()

        def reader() -> None:
            with server.client() as http:
                while not stop.is_set():
                    with contextlib.suppress(httpx.TransportError):
                        http.get("/all", params={"limit": 1})

        def appender(index: int) -> None:
            with server.client() as http:
                n = 0
                while not stop.is_set():
                    event_id, n = uuid4(), n + 1
                    started = time.monotonic()
                    response = http.post(f"/streams/a-{index}", json=_append_body(event_id, n))
                    elapsed = time.monotonic() - started
                    with lock:
                        append_statuses.add(response.status_code)
                        if response.status_code == 201:
                            acknowledged.append(event_id)
                        else:
                            unanswered.append((f"a-{index}", event_id))
                            if elapsed > 3.0:
                                slow_appends.append(elapsed)

        threads = [threading.Thread(target=reader) for _ in range(50)]
        threads += [threading.Thread(target=appender, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        health: list[tuple[int, float]] = []
        ready: list[tuple[int, float]] = []
        try:
            time.sleep(1)
            _signal_postgres(database, signal.SIGSTOP)
            stopped = time.monotonic()
            while time.monotonic() - stopped < 30:
                for path, seen, timeout in (("/healthz", health, 0.5), ("/readyz", ready, 1.0)):
                    started = time.monotonic()
                    try:
                        status = httpx.get(f"{server.url}{path}", timeout=timeout).status_code
                    except httpx.TimeoutException:
                        status = 0
                    seen.append((status, time.monotonic() - started))
                time.sleep(0.5)
        finally:
            _signal_postgres(database, signal.SIGCONT)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        worst_health = max(t for _, t in health)
        worst_ready = max(t for _, t in ready[2:])
        print(f"/healthz: {len(health)} probes, worst {worst_health:.3f}s; /readyz worst "
              f"{worst_ready:.3f}s; appends: {len(acknowledged)} acknowledged, "
              f"{len(unanswered)} answered 503, slower than 3 s: {slow_appends}")
        assert all(status == 200 for status, _ in health), health
        assert all(status == 503 for status, _ in ready[2:]), ready
        assert append_statuses <= {201, 503}, append_statuses
        assert unanswered and not slow_appends
        server.wait_ready(30)
        with server.client() as http:
            for n, (stream, event_id) in enumerate(unanswered):  # re-sends: stored once
                response = http.post(f"/streams/{stream}", json=_append_body(event_id, n))
                assert response.status_code == 201, response.text
        with psycopg.connect(database.url) as conn:
            counts = dict(conn.execute("SELECT id, count(*) FROM es_events GROUP BY id")
                          .fetchall())
        resent = [event_id for _, event_id in unanswered]
        assert all(counts.get(event_id) == 1 for event_id in acknowledged + resent)
    finally:
        database.stop()


def test_appends_are_fast_again_soon_after_postgresql_restarts(
        servers: Callable[..., ServerProcess]) -> None:
    """PostgreSQL killed for 35 s and restarted under append load. Before the fix the
    async append pool, its connections gone and its reconnection attempts backed off to
    32 s apart, had nothing to hand out long after the database was back, and each
    append waited out the 5 s pool timeout before the synchronous path served it. Now:
    appends started from 1.5 s to 10 s after the database is back take under 1 s at the
    99th percentile. Appends start at a fixed rate (open loop), each on its own thread,
    so appends stuck in the outage do not hide what happens after it."""
    database = PostgresServer().start()
    try:
        server = servers({"EVENTSTORE_URL": database.url})
        lock = threading.Lock()
        samples: list[tuple[float, float, int]] = []  # (started, seconds, status)
        reads: list[tuple[float, float, int]] = []
        http = server.client(limits=httpx.Limits(max_connections=1000))

        def append(n: int) -> None:
            started = time.monotonic()
            try:
                if n % 2:
                    status = http.post(f"/streams/r-{n % 8}", json=_append_body(uuid4(), n)
                                       ).status_code
                else:
                    status = http.get("/all", params={"limit": 1}).status_code
            except httpx.TransportError:
                status = 0
            with lock:
                (samples if n % 2 else reads).append(
                    (started, time.monotonic() - started, status))

        stop = threading.Event()

        def load() -> None:
            n = 0
            while not stop.wait(0.05):
                n += 1
                threading.Thread(target=append, args=(n,), daemon=True).start()

        loader = threading.Thread(target=load)
        loader.start()
        try:
            time.sleep(2)
            database.kill()
            time.sleep(35)  # long enough for the pools' reconnect back-off to grow
            database.start()
            back = time.monotonic()
            time.sleep(11)
        finally:
            stop.set()
            loader.join()
        time.sleep(1)
        with lock:
            window = [(seconds, status) for started, seconds, status in samples
                      if back + 1.5 < started < back + 10]
        http.close()
        after = sorted(seconds for seconds, _ in window)
        statuses = {status for _, status in window}
        p99 = after[int(len(after) * 0.99)]
        print(f"1.5-10 s after recovery: {len(after)} appends, p50 {after[len(after) // 2]:.3f}s,"
              f" p99 {p99:.3f}s, max {after[-1]:.3f}s, statuses {statuses}")
        slow_reads = [(round(started - back, 1), round(seconds, 2), status)
                      for started, seconds, status in reads
                      if back + 1.5 < started < back + 10 and (seconds > 1 or status != 200)]
        print(f"reads in that time slower than 1 s or failed: {slow_reads}")
        assert statuses == {201}
        assert p99 < 1.0
        assert not slow_reads
    finally:
        database.stop()


@pytest.mark.parametrize("token", ["   ", "x"])
def test_blank_or_short_environment_token_refuses_to_start(
        servers: Callable[..., ServerProcess], postgres_url: str, token: str) -> None:
    """Before: a whitespace-only EVENTSTORE_API_TOKEN started a server without
    authentication; a 1-character one was accepted."""
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_API_TOKEN": token},
                     wait=False)
    assert server.process.wait(timeout=60) == 3
    assert "shorter than 16 characters" in server.log()


@pytest.mark.parametrize("last_event_id", ["9" * 5000, "\u00b2", "12a", "-1",
                                           str(2**63)])
def test_bad_last_event_id_is_a_400(server: ServerProcess, last_event_id: str) -> None:
    """Before: 5,000 digits or a superscript digit were a ValueError and a 500."""
    with server.client() as http:
        response = http.get("/subscribe", params={"idle_timeout": 0.1},
                            headers={"Last-Event-ID": last_event_id.encode("latin-1")})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "validation_error"


def test_extreme_as_of_on_sqlite(servers: Callable[..., ServerProcess],
                                 tmp_path: Path) -> None:
    """Before: an as_of whose UTC time falls outside years 1..9999 was an OverflowError
    and a 500 on SQLite. Now: the correct answer (nothing before year 1, everything
    before 9999)."""
    server = servers({"EVENTSTORE_URL": f"sqlite:///{tmp_path / 'events.db'}"})
    with server.client() as http:
        assert http.post("/streams/s-1", json=_append_body(uuid4(), 1)).status_code == 201
        early = http.get("/streams/s-1", params={"as_of": "0001-01-01T00:00:00+14:00"})
        late = http.get("/streams/s-1", params={"as_of": "9999-12-31T23:59:59-14:00"})
    assert early.status_code == 200 and early.json()["events"] == []
    assert late.status_code == 200 and len(late.json()["events"]) == 1


def _streaming_client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=None),
                        headers={"Authorization": f"Bearer {server.token}"})


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_subscribers_past_the_bound_get_503(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path,
        backend: str) -> None:
    url = postgres_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'events.db'}"
    server = servers({"EVENTSTORE_URL": url, "EVENTSTORE_MAX_SUBSCRIBERS": "3"})
    with contextlib.ExitStack() as stack:
        http = stack.enter_context(_streaming_client(server))
        for _ in range(3):
            response = stack.enter_context(http.stream("GET", "/subscribe"))
            assert response.status_code == 200
        refused = http.get("/subscribe")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "too_many_subscribers"
    time.sleep(2)  # the server notices the closed streams
    with _streaming_client(server) as http, \
            http.stream("GET", "/subscribe", params={"idle_timeout": 0.5}) as response:
        assert response.status_code == 200


def test_pages_are_bounded_in_bytes_and_say_where_to_go_on(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    """20 events of 10 KiB under a 64 KiB page budget: /all, /streams (both directions)
    and SSE batches stay near the budget and lose nothing; the Python client follows."""
    from eventstore.server.client import EventStoreClient

    budget = 64 * 1024
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_MAX_PAGE_BYTES": str(budget)})
    with server.client() as http:
        for n in range(20):
            body = _append_body(uuid4(), n)
            body["events"][0]["payload"] = {"n": n, "blob": "x" * 10_000}  # type: ignore[index]
            assert http.post("/streams/big", json=body).status_code == 201
        seen: list[int] = []
        position, pages = 0, 0
        while True:
            response = http.get("/all", params={"from_position": position, "limit": 1000})
            assert len(response.content) < budget + 11_000
            page = response.json()
            seen += [e["payload"]["n"] for e in page["events"]]
            pages += 1
            position = page["next_position"]
            if not page["truncated"]:
                break
        assert seen == list(range(20)) and pages >= 4
        for backwards, params in ((False, {}), (True, {"backwards": True})):
            versions: list[int] = []
            while True:
                response = http.get("/streams/big", params={"limit": 1000, **params})
                assert len(response.content) < budget + 11_000
                page = response.json()
                versions += [e["version"] for e in page["events"]]
                if not page["truncated"]:
                    break
                params["to_version" if backwards else "from_version"] = page["next_version"]
            assert versions == (list(range(20, 0, -1)) if backwards else list(range(1, 21)))
    with EventStoreClient(server.url, server.token) as client:
        assert [e.version for e in client.read_stream("big")] == list(range(1, 21))
        assert [e.version for e in client.read_stream("big", backwards=True, limit=15)] == \
            list(range(20, 5, -1))
        assert len(client.read_all(limit=1000)) == 20
        assert [e.version for e in client.subscribe(idle_timeout=1)] == list(range(1, 21))


def test_two_authorization_headers_are_a_400(server: ServerProcess) -> None:
    """Before: the last of two headers counted here, while a proxy may check the first."""
    with socket.create_connection(_address(server)) as sock:
        sock.sendall(f"GET /all HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
                     f"Authorization: Bearer {server.token}\r\nConnection: close\r\n\r\n"
                     .encode())
        sock.settimeout(10)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]


def test_trailing_slash_is_a_404_not_a_redirect(server: ServerProcess) -> None:
    with server.client() as http:
        response = http.get("/all/")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_every_error_has_the_same_shape_and_422s_do_not_echo_the_input(
        server: ServerProcess) -> None:
    secret_blob = "s3cr3t-" * 20_000
    with server.client() as http:
        replies = [
            http.post("/streams/x", json={"events": [{"type": "A", "payload": {},
                                                      "surprise": secret_blob}]}),
            http.get("/all", params={"limit": 100_000}),
            http.post("/streams/x", content=b"{nope", headers={"content-type":
                                                              "application/json"}),
            http.get("/nowhere"),
            http.delete("/all"),
        ]
    assert [r.status_code for r in replies] == [422, 422, 422, 404, 405]
    for reply in replies:
        body = reply.json()
        assert set(body) >= {"error", "message"}, body
        assert "detail" not in body
    assert "s3cr3t-" not in replies[0].text and len(replies[0].content) < 2000


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_appends_that_are_not_json_are_a_415(server: ServerProcess,
                                             content_type: str | None) -> None:
    """Before: a JSON body sent as text/plain (what a browser form may post cross-site)
    was appended."""
    import json

    body = json.dumps(_append_body(uuid4(), 1)).encode()
    headers = {"content-type": content_type} if content_type else {}
    with server.client() as http:
        response = http.post("/streams/s-415", content=body, headers=headers)
        assert response.status_code == 415, response.text
        assert response.json()["error"] == "unsupported_media_type"
        assert http.post("/streams/s-415", content=body, headers={
            "content-type": "application/json; charset=utf-8"}).status_code == 201


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "\\ud800x"])
def test_a_lone_surrogate_is_explained(server: ServerProcess, escape: str) -> None:
    """Before: 'unexpected end of hex escape', or a trailing surrogate called leading."""
    body = ('{"events":[{"type":"A","payload":{"k":"' + escape + '"}}]}').encode()
    with server.client() as http:
        response = http.post("/streams/s", content=body,
                             headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "unpaired UTF-16 surrogate" in response.json()["message"], response.text


@pytest.mark.parametrize(("method", "path", "body", "key", "where"), [
    # The fast path (small body) and the thread path (over 64 KiB) of an append.
    ("POST", "/streams/dup", '{"events":[{"type":"A","payload":{"amount":1,"amount":1000}}]}',
     "amount", "events[0].payload"),
    ("POST", "/streams/dup", '{"events":[{"type":"A","payload":{"pad":"' + "x" * 70_000
     + '"},"metadata":{"m":{"k":1,"\\u006b":2}}}]}', "k", "events[0].metadata.m"),
    ("POST", "/streams/dup", '{"expected_version":"any","expected_version":0,'
     '"events":[{"type":"A","payload":{}}]}', "expected_version", "the top-level object"),
    ("POST", "/append-many", '{"appends":[{"stream_id":"dup","events":[{"type":"A",'
     '"type":"B","payload":{}}]}]}', "type", "appends[0].events[0]"),
    ("PUT", "/checkpoints/c", '{"position":1,"position":2}', "position",
     "the top-level object"),
    ("PUT", "/streams/dup/snapshot", '{"aggregate_type":"A","version":1,"state":{"a":[{"b":1,'
     '"b":2}]}}', "b", "state.a[0]"),
], ids=["append", "large-append", "top-level", "append-many", "checkpoint", "snapshot"])
def test_duplicate_json_keys_are_refused_naming_the_key(
        server: ServerProcess, method: str, path: str, body: str, key: str,
        where: str) -> None:
    """Before: the last value of a repeated key was kept, silently."""
    with server.client() as http:
        response = http.request(method, path, content=body.encode(),
                                headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        reply = response.json()
        assert reply["error"] == "validation_error"
        assert f'duplicate key "{key}" in {where}' in reply["message"], reply
        assert http.get("/streams/dup").json()["events"] == []
        assert http.get("/checkpoints/c").json()["position"] is None
        # The same bodies without the repetition are served as before.
        assert http.post("/streams/dup", json={"events": [{"type": "A", "payload": {
            "amount": 1, "Amount": 2}}]}).status_code == 201

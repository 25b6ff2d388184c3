"""Start-up failures exit 3 with a clear message; SIGTERM drains and loses no acknowledged
append; credentials never reach the log."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest

from tests.harness.postgres import PostgresServer, free_port
from tests.server.conftest import ServerProcess, write_settings

pytestmark = pytest.mark.postgres

SECRET = "s3cret-Passw0rd-that-must-not-leak"


def _exit_code(server: ServerProcess, timeout: float = 60) -> int:
    return server.process.wait(timeout=timeout)


def test_bad_settings_file_exits_3_naming_the_key(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    config = write_settings(tmp_path / "bad", store="snapshot_frequency: 0\n")
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_CONFIG_DIR": str(config)},
                     wait=False)
    assert _exit_code(server) == 3
    assert "event-store.yaml: snapshot_frequency" in server.log()
    assert "greater than or equal to 1" in server.log()

    config = write_settings(tmp_path / "bad2", projections="workers: 5\nwrokers: 3\n")
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_CONFIG_DIR": str(config)},
                     wait=False, name="s2")
    assert _exit_code(server) == 3
    assert "projections.yaml: wrokers: unknown key" in server.log()


def test_unknown_projection_module_exits_3(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    config = write_settings(tmp_path / "c", projections='projections:\n  x: "nosuch.mod:Thing"\n')
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_CONFIG_DIR": str(config)},
                     wait=False)
    assert _exit_code(server) == 3
    assert "nosuch.mod" in server.log()


def test_unreachable_database_exits_3_without_leaking_the_password(
        servers: Callable[..., ServerProcess], tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    server = servers({"EVENT_DB_HOST": "127.0.0.1", "EVENT_DB_PORT": str(free_port()),
                      "EVENT_DB_USER": "eventstore", "EVENT_DB_PASSWORD_FILE": str(secret_file)},
                     wait=False)
    assert _exit_code(server, timeout=120) == 3
    log = server.log()
    assert "cannot start" in log and "PostgreSQL" in log
    assert SECRET not in log


def test_missing_token_in_cluster_mode_exits_3(
        servers: Callable[..., ServerProcess], postgres_server: PostgresServer,
        tmp_path: Path) -> None:
    server = servers({"EVENT_DB_HOST": "127.0.0.1", "EVENT_DB_PORT": str(postgres_server.port),
                      "EVENT_DB_USER": "eventstore", "EVENTSTORE_API_TOKEN": "",
                      "EVENTSTORE_API_TOKEN_FILE": str(tmp_path / "absent")}, wait=False)
    assert _exit_code(server) == 3
    assert "EVENTSTORE_API_TOKEN_FILE" in server.log()


def test_env_backends_with_password_never_logged(
        servers: Callable[..., ServerProcess], postgres_server: PostgresServer,
        tmp_path: Path) -> None:
    """EVENT_DB_* as the operator sets them (trust auth ignores the password here)."""
    name = postgres_server.create_database(f"envdb_{uuid4().hex[:8]}").rsplit("/", 1)[1]
    token_file = tmp_path / "token"
    token_file.write_text("file-token-abcdefghijklmnop\n")
    server = servers({"EVENT_DB_HOST": "127.0.0.1", "EVENT_DB_PORT": str(postgres_server.port),
                      "EVENT_DB_NAME": name, "EVENT_DB_USER": "eventstore",
                      "EVENT_DB_PASSWORD": SECRET, "EVENTSTORE_API_TOKEN": "",
                      "EVENTSTORE_API_TOKEN_FILE": str(token_file)}, args=["--log-level", "debug"])
    ok = httpx.post(f"{server.url}/streams/e-1", json={"events": [{"type": "A", "payload": {}}]},
                    headers={"Authorization": "Bearer file-token-abcdefghijklmnop"})
    assert ok.status_code == 201
    assert server.stop() == 0
    log = server.log()
    assert '"event_store": "postgresql://***@127.0.0.1:' in log
    assert SECRET not in log and "file-token-abcdefghijklmnop" not in log


def test_sigterm_under_append_load_loses_no_acknowledged_append(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    server = servers({"EVENTSTORE_URL": postgres_url})
    acknowledged: list[UUID] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {server.token}"}) as http:
            while not stop.is_set():
                event_id = uuid4()
                body = {"expected_version": "any", "events": [
                    {"id": str(event_id), "type": "Deposited",
                     "payload": {"amount": rng.randrange(1, 100)}}]}
                try:
                    response = http.post(f"/streams/load-{index % 8}", json=body)
                except httpx.TransportError:
                    return  # the server stopped accepting: fine, it was not acknowledged
                if response.status_code == 201:
                    with lock:
                        acknowledged.append(event_id)
                elif response.status_code != 503:
                    errors.append(f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    assert server.stop(signal.SIGTERM) == 0
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(acknowledged) > 50
    with psycopg.connect(postgres_url) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM es_events").fetchall()}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged appends are not stored"
    assert "Shutting down" in server.log() and "Application shutdown complete" in server.log()


def test_tls_is_served_when_a_certificate_is_mounted(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_TLS_CERT_FILE": str(cert),
                      "EVENTSTORE_TLS_KEY_FILE": str(key)}, wait=False)
    https = server.url.replace("http://", "https://")
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.get(f"{https}/readyz", verify=str(cert), timeout=2)
            break
        except httpx.TransportError:
            assert server.process.poll() is None, server.log()
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
    assert response.status_code == 200
    authed = httpx.get(f"{https}/all", verify=str(cert),
                       headers={"Authorization": f"Bearer {server.token}"})
    assert authed.status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=2)   # plain HTTP is not served
    assert '"tls": true' in server.log()


def test_appends_come_back_after_the_database_restarts(
        servers: Callable[..., ServerProcess]) -> None:
    """PostgreSQL killed and restarted under the server: appends answer 503 (never 500)
    while it is down, and 201 again once it is back, through freshly opened connections.
    Every acknowledged append survives the crash (a durable server)."""
    database = PostgresServer(durable=True).start()
    try:
        server = servers({"EVENTSTORE_URL": database.url})
        acknowledged: list[UUID] = []
        statuses: set[int] = set()

        def append(http: httpx.Client, n: int) -> int:
            event_id = uuid4()
            response = http.post(f"/streams/restart-{n % 4}", json={
                "expected_version": "any",
                "events": [{"id": str(event_id), "type": "Tick", "payload": {"n": n}}]})
            if response.status_code == 201:
                acknowledged.append(event_id)
            return response.status_code

        with server.client() as http:
            assert all(append(http, n) == 201 for n in range(40))
            database.kill()
            for n in range(40, 42):
                started = time.monotonic()
                statuses.add(append(http, n))
                assert time.monotonic() - started < 20, "a request hung on the dead database"
            database.start()
            deadline = time.monotonic() + 60
            n = 42
            while time.monotonic() < deadline:
                status = append(http, n)
                statuses.add(status)
                n += 1
                if status == 201:
                    break
                time.sleep(0.2)
            assert all(append(http, n + 1 + i) == 201 for i in range(40))
        assert statuses <= {201, 503}, statuses
        assert 503 in statuses
        with psycopg.connect(database.url) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM es_events").fetchall()}
        assert set(acknowledged) <= stored
    finally:
        database.stop()


def test_sigterm_while_postgresql_is_gone_exits_within_the_grace_period(
        servers: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """Seen on real pods at `helm uninstall`: with PostgreSQL gone (its pod deleted; packets
    to it go unanswered), projection workers hung in their reads, and stopping the runner
    waited 30 s for them, so a store pod overran its 30 s grace period and was SIGKILLed.
    Here PostgreSQL is frozen (SIGSTOP), which hangs the reads the same way. Now the
    runner's stop is bounded (10 s) and its pool's waits are the store's."""
    from tests.server.test_hardening import _signal_postgres

    database = PostgresServer().start()
    try:
        config = write_settings(tmp_path / "with-projection", projections=(
            'projections:\n  balances: "eventstore.projections.bank:AccountBalances"\n'))
        server = servers({"EVENTSTORE_URL": database.url, "EVENTSTORE_CONFIG_DIR": str(config)})
        with server.client() as http:
            for n in range(20):
                assert http.post(f"/streams/acc-{n}", json={"events": [
                    {"type": "AccountOpened", "payload": {"owner": "x"}}]}).status_code == 201
        _signal_postgres(database, signal.SIGSTOP)
        time.sleep(3)  # the workers' next reads now hang
        started = time.monotonic()
        server.stop(signal.SIGTERM, timeout=90)
        took = time.monotonic() - started
        assert took < 25, f"SIGTERM took {took:.1f}s with PostgreSQL frozen:\n{server.log()[-3000:]}"
    finally:
        _signal_postgres(database, signal.SIGCONT)
        database.stop()


def test_sigterm_turns_readiness_false_while_requests_are_still_served(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    """Before: SIGTERM closed the listener at once, and only a preStop sleep in the pod
    covered the seconds in which endpoints still sent requests here."""
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_DRAIN_DELAY_SECONDS": "4"})
    with server.client() as http:
        assert http.get("/readyz").status_code == 200
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        deadline = signalled + 2
        while (ready := http.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "/readyz still 200 two seconds after SIGTERM"
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["error"] == "shutting_down"
        # Other requests are served as usual, on a fresh connection too, and say that
        # the connection closes (clients move on to another pod).
        with server.client() as fresh:
            appended = fresh.post("/streams/draining", json={"events": [
                {"type": "Deposited", "payload": {"amount": 1}}]})
        assert appended.status_code == 201, appended.text
        assert appended.headers.get("connection") == "close"
        assert http.get("/streams/draining").json()["events"][0]["version"] == 1
        assert time.monotonic() - signalled < 4, "the checks took longer than the delay"
    assert server.process.wait(timeout=40) == 0
    took = time.monotonic() - signalled
    assert 4 <= took < 30, f"stopped {took:.1f}s after SIGTERM:\n{server.log()[-3000:]}"
    assert "Application shutdown complete" in server.log()


def test_a_second_sigterm_stops_without_waiting_out_the_delay(
        servers: Callable[..., ServerProcess], postgres_url: str) -> None:
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_DRAIN_DELAY_SECONDS": "60"})
    server.process.send_signal(signal.SIGTERM)
    with server.client() as http:
        deadline = time.monotonic() + 10
        while http.get("/readyz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=40) == 0
    assert time.monotonic() - started < 20

"""Projections across three `eventstore serve` processes on one PostgreSQL database."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.server.conftest import ServerProcess, write_settings

pytestmark = pytest.mark.postgres

BALANCES = 'projections:\n  balances: "eventstore.projections.bank:AccountBalances"\n'


def _owned(server: ServerProcess) -> list[int]:
    with server.client() as http:
        (status,) = http.get("/projections").json()["projections"]
    return list(status["owned_here"])


def _wait_split(alive: list[ServerProcess], timeout: float = 60) -> list[list[int]]:
    """Until the live servers own every partition exactly once, each a fair share."""
    deadline = time.monotonic() + timeout
    owned: list[list[int]] = []
    while time.monotonic() < deadline:
        owned = [_owned(s) for s in alive]
        flat = [p for o in owned for p in o]
        fair = -(-16 // len(alive))
        if sorted(flat) == list(range(16)) and all(len(o) <= fair for o in owned):
            return owned
        time.sleep(0.3)
    raise AssertionError(f"partitions never split cleanly: {owned}")


def _expected(url: str) -> dict[str, tuple[int, int]]:
    """(balance, bank events) per account, computed from the log itself."""
    result: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with psycopg.connect(url) as conn:
        for stream, type_, payload in conn.execute(
                "SELECT stream_id, type, payload FROM es_events ORDER BY position"):
            entry = result[stream]
            entry[1] += 1
            if type_ == "Deposited":
                entry[0] += payload["amount"]
            elif type_ == "Withdrawn":
                entry[0] -= payload["amount"]
    return {k: (v[0], v[1]) for k, v in result.items()}


def _read_model(url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT account_id, balance, events_applied FROM "
                            "proj_account_balances").fetchall()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def test_three_servers_exactly_once_and_takeover_after_sigkill(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    config = write_settings(tmp_path / "config",
                            projections=f"workers: 5\nbatch_size: 20\n{BALANCES}")
    env = {"EVENTSTORE_URL": postgres_url, "EVENTSTORE_CONFIG_DIR": str(config)}
    started = [servers(env, name=f"pod-{i}", wait=False) for i in range(3)]
    for server in started:
        server.wait_ready()
    _wait_split(started)

    alive = list(started)
    lock = threading.Lock()
    appended = 0
    failures: list[str] = []

    def writer(index: int, count: int) -> None:
        nonlocal appended
        rng = random.Random(index)
        clients: dict[str, httpx.Client] = {}
        try:
            for n in range(count):
                with lock:
                    target = alive[(index + n) % len(alive)]
                http = clients.setdefault(target.url, target.client())
                account = f"acc-{index}-{n % 10}"
                events = [{"type": "Deposited", "payload": {"amount": rng.randrange(1, 500)}}
                          for _ in range(rng.randrange(1, 4))]
                if n < 10:
                    events.insert(0, {"type": "AccountOpened", "payload": {"owner": account}})
                try:
                    response = http.post(f"/streams/{account}",
                                         json={"expected_version": "any", "events": events})
                except httpx.TransportError:
                    continue  # that server was just killed; not acknowledged, not counted
                if response.status_code != 201:
                    failures.append(response.text)
                    continue
                with lock:
                    appended += len(events)
        finally:
            for http in clients.values():
                http.close()

    threads = [threading.Thread(target=writer, args=(i, 150)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    victim = started[2]
    with lock:
        alive.remove(victim)
    victim.stop(signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    assert not failures

    owned = _wait_split(alive)
    assert sorted(p for o in owned for p in o) == list(range(16))

    expected = _expected(postgres_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _read_model(postgres_url) != expected:
        time.sleep(0.5)
    model = _read_model(postgres_url)
    assert model == expected, "the read model did not converge to the log"
    # Exactly once in effect: every event counted once, and the checkpoints say the same.
    assert sum(applied for _, applied in model.values()) == sum(
        n for _, n in expected.values()) >= appended
    with alive[0].client() as http:
        (status,) = http.get("/projections").json()["projections"]
    assert status["lag_events"] == 0 and status["dead_letters"] == 0
    assert status["events_handled"] == sum(n for _, n in expected.values())


def test_failing_handler_is_retried_then_parked_and_the_rest_flows(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    attempts_file = tmp_path / "attempts"
    attempts_file.touch()
    config = write_settings(tmp_path / "config", projections=(
        'retry_attempts: 2\nprojections:\n  poisoned: "tests.server.poison_projection:Poisoned"\n'))
    server = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_CONFIG_DIR": str(config),
                      "POISON_ATTEMPTS_FILE": str(attempts_file)})
    with server.client() as http:
        for version in range(1, 6):
            payload = {"poison": True} if version == 3 else {"n": version}
            assert http.post("/streams/p-1", json={"events": [
                {"type": "Tick", "payload": payload}]}).status_code == 201
        for stream in ("p-2", "p-3"):
            assert http.post(f"/streams/{stream}", json={"events": [
                {"type": "Tick", "payload": {}}]}).status_code == 201
        poison_id = http.get("/streams/p-1").json()["events"][2]["id"]

        deadline = time.monotonic() + 30
        letters: list[dict[str, object]] = []
        while time.monotonic() < deadline and not letters:
            letters = http.get("/projections/poisoned/dead-letters").json()["dead_letters"]
            time.sleep(0.2)
        assert len(letters) == 1
        assert letters[0]["event_id"] == poison_id and letters[0]["attempts"] == 3
        assert "cannot digest event 3 of p-1" in str(letters[0]["error"])
        assert attempts_file.read_text().split() == [poison_id] * 3  # 1 try + 2 retries

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (status,) = http.get("/projections").json()["projections"]
            if status["lag_events"] == 0:
                break
            time.sleep(0.2)
        assert status["dead_letters"] == 1
    with psycopg.connect(postgres_url) as conn:
        seen = sorted(conn.execute("SELECT stream_id, version FROM poison_seen").fetchall())
    assert seen == [("p-1", 1), ("p-1", 2), ("p-1", 4), ("p-1", 5), ("p-2", 1), ("p-3", 1)]
    assert "event parked as a dead letter" in server.log()


LOCAL = 'local_projections:\n  local-balances: "eventstore.projections.bank:AccountBalances"\n'


def _local_model(server: ServerProcess) -> dict[str, tuple[int, int]]:
    path = Path(server.env["EVENTSTORE_DATA_DIR"]) / "read-models.db"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as conn:
        try:
            rows = conn.execute("SELECT account_id, balance, events_applied FROM "
                                "proj_account_balances").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return {}
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def test_every_pod_keeps_its_own_read_model_and_resumes_it_after_sigkill(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    """local_projections: each pod follows the whole log into its own file on its data
    volume. A pod killed mid-stream and restarted on the same volume goes on from its
    checkpoint: its read model ends equal to the log, every event applied once."""
    config = write_settings(tmp_path / "config", projections=f"batch_size: 20\n{LOCAL}")
    env = {"EVENTSTORE_URL": postgres_url, "EVENTSTORE_CONFIG_DIR": str(config)}
    pods = [servers(env, name=f"pod-{i}", wait=False) for i in range(3)]
    for pod in pods:
        pod.wait_ready()

    stop = threading.Event()
    failures: list[str] = []

    def writer(index: int) -> None:
        rng = random.Random(index)
        with pods[0].client() as http:
            n = 0
            while not stop.is_set() and n < 400:
                account = f"acc-{index}-{n % 8}"
                events = [{"type": "Deposited", "payload": {"amount": rng.randrange(1, 500)}}]
                if n < 8:
                    events.insert(0, {"type": "AccountOpened", "payload": {"owner": account}})
                response = http.post(f"/streams/{account}",
                                     json={"expected_version": "any", "events": events})
                if response.status_code != 201:
                    failures.append(response.text)
                n += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    victim = pods[2]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_local_model(victim)) < 4:
        time.sleep(0.1)  # kill it once it has applied some batches, mid-stream
    victim.stop(signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    killed_at = _local_model(victim)
    assert killed_at and killed_at != _expected(postgres_url), "not killed mid-stream"
    again = servers(victim.env, name="pod-2-restarted")  # same environment, same volume
    assert again.env["EVENTSTORE_DATA_DIR"] == victim.env["EVENTSTORE_DATA_DIR"]
    expected = _expected(postgres_url)
    for pod in (pods[0], pods[1], again):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _local_model(pod) != expected:
            time.sleep(0.3)
        assert _local_model(pod) == expected, f"{pod.url}: the local read model diverged"
        with pod.client() as http:
            (status,) = [s for s in http.get("/projections").json()["projections"]
                         if s["name"] == "local-balances"]
            assert status["scope"] == "local" and status["lag_events"] == 0
            assert sorted(status["owned_here"]) == list(range(16))
            account = sorted(expected)[0]
            entry = http.get(f"/projections/local-balances/entries/{account}").json()
            assert entry["scope"] == "local"
            assert entry["entry"]["balance"] == expected[account][0]
            assert http.get("/projections/local-balances/entries/nobody").status_code == 404
            assert http.get("/projections/missing/entries/x").status_code == 404
    # The restarted pod went on from its checkpoint: it handled only what it had not.
    with again.client() as http:
        text = http.get("/metrics").text
    handled_after_restart = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith('eventstore_projection_events_total{projection="local-balances"}'))
    total = sum(n for _, n in expected.values())
    before = sum(n for _, n in killed_at.values())
    assert handled_after_restart <= total - before

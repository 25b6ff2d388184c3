"""Server benchmarks: HTTP appends against a real `eventstore serve` subprocess next to the
library's own append rate (same database server, same run), and projection catch-up.

Called by bench/run.py: `run(results, server=PostgresServer, scale=1.0)` appends rows
{name, unit, value, floor_name, floor, ratio, goal} to results["results"].
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from eventstore import EventStore, NewEvent
from eventstore.projections.bank import AccountBalances
from eventstore.projections.runner import ProjectionRunner
from eventstore.settings import ProjectionSettings
from tests.harness.postgres import PostgresServer, free_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
CLIENTS = 16
PAYLOAD = {"amount": 1250, "currency": "EUR", "note": "benchmark deposit"}


def start_server(url: str, tmp: Path, extra_env: dict[str, str] | None = None,
                 store_settings: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """`eventstore serve` on `url` (with `store_settings` as its event-store.yaml), ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "EVENTSTORE_URL": url,
           "EVENTSTORE_API_TOKEN": TOKEN, "EVENTSTORE_DATA_DIR": str(tmp / "data"),
           "EVENTSTORE_CONFIG_DIR": str(tmp / "config"), **(extra_env or {})}
    (tmp / "config").mkdir(exist_ok=True)
    (tmp / "config" / "event-store.yaml").write_text(store_settings)
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "eventstore.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("eventstore serve did not become ready:\n"
                       + (tmp / "server.log").read_text(errors="replace")[-3000:])


async def _http_load(base: str, per_client: int, prefix: str) -> tuple[float, list[float]]:
    """16 concurrent clients, one keep-alive connection each, one event per append.

    The load generator speaks HTTP/1.1 on raw asyncio streams (like wrk): a Python HTTP
    client costs more CPU than the server's own work and would measure itself.
    """
    host, port = base.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in range(per_client):
                body = json.dumps({"expected_version": i, "events": [
                    {"type": "Deposited", "payload": PAYLOAD}]}).encode()
                request = (f"POST /streams/{prefix}-{n} HTTP/1.1\r\nHost: {host}\r\n"
                           f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                started = time.perf_counter()
                writer.write(request)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                reply = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status.split()[1:2] != [b"201"]:
                    raise RuntimeError(f"append failed: {status!r} {reply!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return CLIENTS * per_client / (time.perf_counter() - started), latencies


def _library_load(store: EventStore, per_client: int, prefix: str) -> float:
    def client(n: int) -> None:
        for i in range(per_client):
            store.append(f"{prefix}-{n}", [NewEvent("Deposited", PAYLOAD)], expected_version=i)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return CLIENTS * per_client / (time.perf_counter() - started)


def _catch_up(url: str, events: int, rounds: int = 3) -> tuple[float, float]:
    """(projection catch-up events/s with the seed settings, library read_all events/s):
    medians of `rounds` alternating runs over one log, the projection started afresh
    each time."""
    store = EventStore.connect(url, pool_max_size=8)
    store.migrate()
    streams = max(1, events // 100)
    for s in range(streams):
        batch = [NewEvent("AccountOpened", {"owner": f"o{s}"})]
        batch += [NewEvent("Deposited", {"amount": 1}) for _ in range(99)]
        store.append(f"cu-{s}", batch)
    total = streams * 100
    read_rates, catch_up_rates = [], []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            position = 0
            while page := store.read_all(from_position=position, limit=1000):
                position = page[-1].position + 1
            read_rates.append(total / (time.perf_counter() - started))
            catch_up_rates.append(_one_catch_up(store, url, total))
    finally:
        store.close()
    return statistics.median(catch_up_rates), statistics.median(read_rates)


def _one_catch_up(store: EventStore, url: str, total: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM es_projection_checkpoints WHERE projection = 'balances'")
        conn.execute("DROP TABLE IF EXISTS proj_account_balances")
        runner = ProjectionRunner(store, {"balances": AccountBalances()},
                                  ProjectionSettings(workers=5, batch_size=100,
                                                     retry_attempts=3))
        runner.setup()
        started = time.perf_counter()
        runner.start()
        try:
            while True:
                row = conn.execute("SELECT coalesce(sum(events_handled), 0) FROM "
                                   "es_projection_checkpoints WHERE projection = 'balances'"
                                   ).fetchone()
                if row and int(row[0]) >= total:
                    break
                if time.perf_counter() - started > 600:
                    raise RuntimeError("projection catch-up did not finish in 10 minutes")
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
        finally:
            runner.stop()
        check = conn.execute("SELECT sum(events_applied) FROM proj_account_balances").fetchone()
    assert check is not None and int(check[0]) == total, "the read model missed events"
    return total / elapsed


def run(results: dict[str, Any], server: PostgresServer | None = None,
        scale: float = 1.0, rounds: int = 3) -> None:
    own = server is None
    if server is None:
        server = PostgresServer(durable=True).start()
    rows: list[dict[str, Any]] = results.setdefault("results", [])
    try:
        url = server.create_database("bench_server")
        per_client = max(10, int(150 * scale))
        with tempfile.TemporaryDirectory(prefix="eventstore-bench-") as tmp:
            process, base = start_server(url, Path(tmp))
            store = EventStore.connect(url, pool_max_size=CLIENTS)
            try:
                asyncio.run(_http_load(base, 20, "warm-http"))
                _library_load(store, 20, "warm-lib")
                http_rates, lib_rates, latencies = [], [], []
                for r in range(rounds):   # alternate, so both see the same background load
                    rate, lat = asyncio.run(_http_load(base, per_client, f"http-{r}"))
                    http_rates.append(rate)
                    latencies.append(lat)
                    lib_rates.append(_library_load(store, per_client, f"lib-{r}"))
            finally:
                store.close()
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        best = max(range(rounds), key=lambda i: http_rates[i])
        lat = sorted(latencies[best])
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        http_rate, lib_rate = http_rates[best], max(lib_rates)
        rows.append({"name": f"HTTP append, {CLIENTS} clients, 1 event each",
                     "unit": f"events/s; p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                     "value": round(http_rate, 1),
                     "floor_name": f"library append, {CLIENTS} threads, same database",
                     "floor": round(lib_rate, 1), "ratio": round(http_rate / lib_rate, 3),
                     "goal": 0.5, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)})

        catch_up, read_rate = _catch_up(server.create_database("bench_projection"),
                                        max(10_000, int(100_000 * scale)), rounds)
        rows.append({"name": "projection catch-up (workers 5, batch 100)",
                     "unit": "events/s (goals: 20,000 events/s and 60% of the floor; "
                             f"{'met' if catch_up >= 20_000 else 'NOT met'}: 20,000/s)",
                     "value": round(catch_up, 1),
                     "floor_name": "library read_all of the same log, pages of 1,000",
                     "floor": round(read_rate, 1), "ratio": round(catch_up / read_rate, 3),
                     "goal": 0.6})
    finally:
        if own:
            server.stop()


if __name__ == "__main__":
    out: dict[str, Any] = {}
    run(out, scale=float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
    print(json.dumps(out, indent=2))

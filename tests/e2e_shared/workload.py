"""Client workloads that run *inside* the cluster, as a Job on the store image (which has
`eventstore` installed; this file is mounted from a ConfigMap), so their requests go
through the store's Service and the cluster DNS the way any in-cluster client's do.

Two modes:

    python workload.py --url http://demo:8080 --token-file /token/token --smoke
    python workload.py --url http://demo:8080 --token-file /token/token --seconds 300 \
        --stop-file /tmp/stop

`--smoke`: appends, reads, a conflict, an idempotent re-send, a snapshot round trip, the
SSE subscription and /metrics, each checked; prints one JSON line {"ok": true, ...} (exit 0)
or {"ok": false, "error": ...} (exit 1).

Load (the default) records exactly which appends the store acknowledged, while the test
deletes a store pod or the database under it. Each writer owns one stream and appends one
event at a time with the stream's expected version. An attempt whose outcome is unknown
(connection reset, 5xx while a pod goes away) is retried with the *same event id and
expected version*: if the first attempt committed, the store answers the retry
idempotently (or with a conflict whose stream already holds that id), so an
acknowledgement is never counted twice and never lost silently. Every HTTP status (and
every transport error, by exception name) the writers saw is counted.

Prints `WORKLOAD STARTED` once the first append is acknowledged, `ACKED <n>` and
`STATUSES {"201": n, ...}` (the counts so far) about every second, and at the end one JSON
line: {"acked": {stream: [event ids in version order]},
"retries": n, "statuses": {"201": n, "503": n, "ConnectError": n, ...}, "slowest": {"201":
seconds, ...}, "failures": [...]}.
It stops at `--seconds`, or as soon as `--stop-file` exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from eventstore.errors import ConcurrencyError, EventStoreError, StoreUnavailable
from eventstore.events import ExpectedVersion, NewEvent
from eventstore.server.client import EventStoreClient

RETRY_FOR_SECONDS = 180.0  # longer than a store pod or the database takes to come back


class CountingTransport(httpx.HTTPTransport):
    """Counts every response status, and every transport error by its exception name, and
    keeps the slowest request of each (seconds)."""

    def __init__(self, counts: Counter[str], slowest: dict[str, float], lock: threading.Lock) -> None:
        super().__init__()
        self.counts = counts
        self.slowest = slowest
        self.lock = lock

    def _count(self, key: str, seconds: float) -> None:
        with self.lock:
            self.counts[key] += 1
            self.slowest[key] = round(max(self.slowest.get(key, 0.0), seconds), 3)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        try:
            response = super().handle_request(request)
        except httpx.TransportError as exc:
            self._count(type(exc).__name__, time.monotonic() - started)
            raise
        self._count(str(response.status_code), time.monotonic() - started)
        return response


def retriable(exc: EventStoreError) -> bool:
    """An outcome we cannot know (the store or its database away): retry the same event."""
    if isinstance(exc, ConcurrencyError):
        return False
    return isinstance(exc, StoreUnavailable) or str(exc).startswith("HTTP 5")


class Writer(threading.Thread):
    def __init__(self, client: EventStoreClient, stream: str, until: float, stop: threading.Event,
                 started: threading.Event) -> None:
        super().__init__(name=stream, daemon=True)
        self.client = client
        self.stream = stream
        self.until = until
        self.stop = stop
        self.started = started
        self.acked: list[str] = []
        self.retries = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            while time.monotonic() < self.until and not self.stop.is_set():
                self.append_one()
        except Exception as exc:  # reported, never swallowed: the test fails on it
            self.failures.append(f"{self.stream}: {type(exc).__name__}: {exc}")

    def append_one(self) -> None:
        version = len(self.acked)
        event = NewEvent(type="Deposited", payload={"amount": version + 1, "stream": self.stream})
        give_up = time.monotonic() + RETRY_FOR_SECONDS
        while True:
            try:
                self.attempt(event, version)
            except EventStoreError as exc:
                if not retriable(exc) or time.monotonic() > give_up:
                    raise
                self.retries += 1
                time.sleep(0.2)
                continue
            break
        self.acked.append(str(event.id))
        self.started.set()

    def attempt(self, event: NewEvent, version: int) -> None:
        try:
            self.client.append(self.stream, [event], expected_version=version)
        except ConcurrencyError:
            # An earlier attempt of this very event may have committed before its answer
            # was lost: then the stream holds our id at version + 1.
            stored = self.client.read_stream(self.stream, from_version=version + 1, to_version=version + 1)
            if stored and str(stored[0].id) == str(event.id):
                return
            raise


def read_whole_stream(client: EventStoreClient, stream: str, page: int = 1000) -> list[str]:
    """Every event id of `stream` in version order (the API pages at 1000)."""
    ids: list[str] = []
    while True:
        events = client.read_stream(stream, from_version=len(ids) + 1, limit=page)
        ids.extend(str(e.id) for e in events)
        if len(events) < page:
            return ids


def lost_or_duplicated(client: EventStoreClient, acked: dict[str, list[str]]) -> list[str]:
    """What the store lacks or holds twice compared with the acknowledged appends."""
    problems = []
    for stream, expected in acked.items():
        stored = read_whole_stream(client, stream)
        if stored != expected:
            missing = set(expected) - set(stored)
            problems.append(f"{stream}: {len(expected)} acknowledged, {len(stored)} stored, "
                            f"{len(missing)} acknowledged ids missing, "
                            f"{len(stored) - len(set(stored))} duplicates")
    return problems


def load(args: argparse.Namespace, token: str) -> int:
    until = time.monotonic() + args.seconds
    stop = threading.Event()
    started = threading.Event()
    statuses: Counter[str] = Counter()
    slowest: dict[str, float] = {}
    lock = threading.Lock()
    # One client (connection pool) per writer: a reset connection affects one stream only.
    # The timeout is well above the store's own waits for its database (10 s), so what the
    # store answers during an outage is seen, not the client giving up first.
    writers = [Writer(EventStoreClient(args.url, token, timeout=args.timeout,
                                       transport=CountingTransport(statuses, slowest, lock)),
                      f"{args.prefix}-{i}", until, stop, started)
               for i in range(args.writers)]
    began = time.monotonic()
    for writer in writers:
        writer.start()
    announced = False
    while any(w.is_alive() for w in writers):
        if not announced and started.is_set():
            print("WORKLOAD STARTED", flush=True)
            announced = True
        print(f"ACKED {sum(len(w.acked) for w in writers)}", flush=True)
        with lock:
            print(f"STATUSES {json.dumps(dict(statuses))}", flush=True)
        if args.stop_file is not None and args.stop_file.exists():
            stop.set()
        if time.monotonic() > until + RETRY_FOR_SECONDS + 30:
            break
        time.sleep(1.0)
    report: dict[str, Any] = {
        "acked": {w.stream: w.acked for w in writers},
        "retries": sum(w.retries for w in writers),
        "statuses": dict(statuses),
        "slowest": slowest,
        "seconds": round(time.monotonic() - began, 1),
        "failures": [f for w in writers for f in w.failures]
        + [f"{w.stream}: still running" for w in writers if w.is_alive()],
    }
    print(json.dumps(report), flush=True)
    return 1 if report["failures"] else 0


def smoke(args: argparse.Namespace, token: str) -> int:
    """The client workload from inside the cluster, each step checked."""
    checks: list[str] = []
    stream = f"{args.prefix}-smoke"
    try:
        with EventStoreClient(args.url, token, timeout=30.0) as client:
            # A pod that has just started may be refused until the network plugin has put
            # its address into the store's NetworkPolicy (seen with kube-router: the
            # first /readyz of this Job failed right after the pod started).
            deadline = time.monotonic() + 60
            while not client.ready():
                assert time.monotonic() < deadline, "GET /readyz did not answer 200 in 60 s"
                time.sleep(1)
            first = client.append(stream, [NewEvent(type="Deposited", payload={"amount": i})
                                            for i in (1, 2, 3)], expected_version=ExpectedVersion.NO_STREAM)
            assert first.next_expected_version == 3, first
            checks.append("append")
            events = client.read_stream(stream)
            assert [e.payload["amount"] for e in events] == [1, 2, 3], events
            checks.append("read")
            try:
                client.append(stream, [NewEvent(type="Deposited", payload={"amount": 9})], expected_version=1)
                raise AssertionError("a stale expected version was accepted")
            except ConcurrencyError as exc:
                assert exc.actual_version == 3, exc
            checks.append("conflict")
            again = NewEvent(type="Withdrawn", payload={"amount": 1})
            one = client.append(stream, [again], expected_version=3)
            two = client.append(stream, [again], expected_version=3)
            assert two.idempotent and two.positions == one.positions, (one, two)
            checks.append("idempotent re-send")
            client.put_snapshot(stream, "Account", 4, {"balance": 5})
            snapshot = client.get_snapshot(stream, "Account")
            assert snapshot is not None and snapshot["version"] == 4, snapshot
            assert snapshot["state"] == {"balance": 5}, snapshot
            checks.append("snapshot")
            seen = [e.aggregate_id for e in client.subscribe(from_position=first.positions[0],
                                                              idle_timeout=2)]
            assert seen.count(stream) == 4, seen
            checks.append("subscribe")
            assert "eventstore_events_appended_total" in client.metrics()
            checks.append("metrics")
    except Exception as exc:
        print(json.dumps({"ok": False, "checks": checks, "error": f"{type(exc).__name__}: {exc}"}),
              flush=True)
        return 1
    print(json.dumps({"ok": True, "checks": checks, "stream": stream}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="the checked client walk-through")
    parser.add_argument("--seconds", type=float, default=60.0, help="load: at most this long")
    parser.add_argument("--stop-file", type=Path, help="load: stop once this file exists")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0, help="load: seconds per request")
    parser.add_argument("--prefix", default=f"load-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip()
    return smoke(args, token) if args.smoke else load(args, token)


if __name__ == "__main__":
    sys.exit(main())

"""A write workload that records exactly which appends the store acknowledged.

Run inside the kind cluster as a Job (the store image has `eventstore` installed; this file
is mounted from a ConfigMap) so its requests go through the store's Service the way any
in-cluster client's do, while the test deletes a store pod under it:

    python workload.py --url http://demo:8080 --token-file /token/token --seconds 60

Each writer owns one stream and appends one event at a time with the stream's expected
version. An attempt whose outcome is unknown (connection reset, 5xx while a pod goes away)
is retried with the *same event id and expected version*: if the first attempt committed,
the store answers the retry idempotently (or with a conflict whose stream already holds
that id), so an acknowledgement is never counted twice and never lost silently.

Prints `WORKLOAD STARTED` once the first append is acknowledged, then one JSON line:
{"acked": {stream: [event ids in version order]}, "retries": n, "failures": [...]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from eventstore.errors import ConcurrencyError, EventStoreError, StoreUnavailable
from eventstore.events import NewEvent
from eventstore.server.client import EventStoreClient

RETRY_FOR_SECONDS = 120.0  # longer than a store pod takes to be replaced


class Writer(threading.Thread):
    def __init__(self, client: EventStoreClient, stream: str, until: float, started: threading.Event) -> None:
        super().__init__(name=stream, daemon=True)
        self.client = client
        self.stream = stream
        self.until = until
        self.started = started
        self.acked: list[str] = []
        self.retries = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                self.append_one()
        except Exception as exc:  # reported, never swallowed: the test fails on it
            self.failures.append(f"{self.stream}: {type(exc).__name__}: {exc}")

    def append_one(self) -> None:
        version = len(self.acked)
        event = NewEvent(type="Deposited", payload={"amount": version + 1, "stream": self.stream})
        give_up = time.monotonic() + RETRY_FOR_SECONDS
        while True:
            try:
                self.client.append(self.stream, [event], expected_version=version)
            except ConcurrencyError:
                # An earlier attempt of this very event may have committed before its
                # answer was lost: then the stream holds our id at version + 1.
                stored = self.client.read_stream(self.stream, from_version=version + 1,
                                                 to_version=version + 1)
                if stored and str(stored[0].id) == str(event.id):
                    break
                raise
            except (StoreUnavailable, EventStoreError) as exc:
                if time.monotonic() > give_up:
                    raise
                if not isinstance(exc, StoreUnavailable) and "HTTP 5" not in str(exc):
                    raise
                self.retries += 1
                time.sleep(0.2)
                continue
            break
        self.acked.append(str(event.id))
        self.started.set()


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--prefix", default=f"load-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args(argv)

    token = args.token_file.read_text().strip()
    until = time.monotonic() + args.seconds
    started = threading.Event()
    # One client (connection pool) per writer: a reset connection affects one stream only.
    writers = [Writer(EventStoreClient(args.url, token, timeout=10.0), f"{args.prefix}-{i}", until, started)
               for i in range(args.writers)]
    for writer in writers:
        writer.start()
    if started.wait(timeout=args.seconds):
        print("WORKLOAD STARTED", flush=True)
    for writer in writers:
        writer.join(timeout=args.seconds + RETRY_FOR_SECONDS + 30)
    report: dict[str, Any] = {
        "acked": {w.stream: w.acked for w in writers},
        "retries": sum(w.retries for w in writers),
        "failures": [f for w in writers for f in w.failures]
        + [f"{w.stream}: still running" for w in writers if w.is_alive()],
    }
    print(json.dumps(report), flush=True)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

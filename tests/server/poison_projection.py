"""A projection that fails on events marked {"poison": true}; loaded by server processes."""

from __future__ import annotations

import os

from eventstore.events import RecordedEvent
from eventstore.projections import Projection, ReadModelTx


class Poisoned(Projection):
    """Records every event it handles; each try on a poisoned event is logged to a file
    (outside the transaction, so rolled-back tries are counted too)."""

    def setup(self, tx: ReadModelTx) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS poison_seen (event_id text PRIMARY KEY, "
                   "stream_id text NOT NULL, version bigint NOT NULL)")

    def reset(self, tx: ReadModelTx) -> None:
        tx.execute("DELETE FROM poison_seen")

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        if event.payload.get("poison"):
            with open(os.environ["POISON_ATTEMPTS_FILE"], "a") as attempts:
                attempts.write(f"{event.id}\n")
            raise RuntimeError(f"cannot digest event {event.version} of {event.aggregate_id}")
        tx.execute("INSERT INTO poison_seen VALUES (%s, %s, %s)",
                   (str(event.id), event.aggregate_id, event.version))

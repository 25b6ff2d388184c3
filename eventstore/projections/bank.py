"""The example projection: account balances of the bank demo domain, in a SQL table.

Register it in projections.yaml as `balances: "eventstore.projections.bank:AccountBalances"`
(one read model in PostgreSQL, shared by the pods) or under `local_projections` (one per
pod, on its /data volume). The table `proj_account_balances` lives next to the
projection's checkpoints, so each batch's writes commit with its checkpoint.
`events_applied` counts handled events per account: it equals the account's number of
bank events exactly when every event was applied once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventstore.events import RecordedEvent
from eventstore.projections.base import Projection, ReadModelTx

TABLE = "proj_account_balances"
_UPSERT = (
    f"INSERT INTO {TABLE} AS b (account_id, owner, balance, transactions, events_applied, "
    "version) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (account_id) DO UPDATE SET owner = coalesce(excluded.owner, b.owner), "
    "balance = b.balance + excluded.balance, "
    "transactions = b.transactions + excluded.transactions, "
    "events_applied = b.events_applied + excluded.events_applied, "
    "version = max(b.version, excluded.version)"
)
# One statement for a whole batch on PostgreSQL: arrays in, one round trip.
_UPSERT_PG = (
    f"INSERT INTO {TABLE} AS b (account_id, owner, balance, transactions, events_applied, "
    "version) SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], "
    "%s::bigint[], %s::bigint[]) "
    "ON CONFLICT (account_id) DO UPDATE SET owner = coalesce(excluded.owner, b.owner), "
    "balance = b.balance + excluded.balance, "
    "transactions = b.transactions + excluded.transactions, "
    "events_applied = b.events_applied + excluded.events_applied, "
    "version = greatest(b.version, excluded.version)"
)
BANK_EVENTS = frozenset({"AccountOpened", "Deposited", "Withdrawn"})


@dataclass
class _Change:
    owner: str | None = None
    balance: int = 0
    transactions: int = 0
    events: int = 0
    version: int = 0


class AccountBalances(Projection):
    """Balance, owner and transaction count per account (stream)."""

    def setup(self, tx: ReadModelTx) -> None:
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (account_id text PRIMARY KEY, owner text, "
            "balance bigint NOT NULL DEFAULT 0, transactions bigint NOT NULL DEFAULT 0, "
            "events_applied bigint NOT NULL DEFAULT 0, version bigint NOT NULL DEFAULT 0)")

    def reset(self, tx: ReadModelTx) -> None:
        tx.execute(f"DELETE FROM {TABLE}")

    def lookup(self, key: str, tx: ReadModelTx) -> dict[str, Any] | None:
        row = tx.execute(f"SELECT owner, balance, transactions, version FROM {TABLE} "
                         "WHERE account_id = %s", (key,)).fetchone()
        if row is None:
            return None
        return {"account_id": key, "owner": row[0], "balance": int(row[1]),
                "transactions": int(row[2]), "version": int(row[3])}

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        self.handle_batch([event], tx)

    def handle_batch(self, events: Sequence[RecordedEvent], tx: ReadModelTx) -> None:
        changes: dict[str, _Change] = {}
        for event in events:
            if event.type not in BANK_EVENTS:
                continue
            change = changes.setdefault(event.aggregate_id, _Change())
            if event.type == "AccountOpened":
                change.owner = str(event.payload["owner"])
            else:
                amount = event.payload["amount"]
                if isinstance(amount, bool) or not isinstance(amount, int):
                    raise ValueError(f"{event.type} {event.id} has amount {amount!r}, "
                                     "not whole cents")
                change.balance += amount if event.type == "Deposited" else -amount
                change.transactions += 1
            change.events += 1
            change.version = max(change.version, event.version)
        if not changes:
            return
        rows = [(account, c.owner, c.balance, c.transactions, c.events, c.version)
                for account, c in changes.items()]
        if tx.dialect == "postgresql":
            tx.execute(_UPSERT_PG, [list(column) for column in zip(*rows, strict=True)])
        else:
            tx.executemany(_UPSERT, rows)

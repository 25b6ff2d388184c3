"""The bank-account domain used by the demo, the example projection and the benchmarks."""

from __future__ import annotations

from eventstore.aggregate import Aggregate
from eventstore.errors import EventStoreError
from eventstore.events import RecordedEvent


class InsufficientFunds(EventStoreError):
    """A withdrawal larger than the balance."""


class Account(Aggregate):
    """A bank account: opened once, then deposits and withdrawals in whole cents."""

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.owner: str | None = None
        self.balance = 0
        self.transactions = 0

    # commands

    def open(self, owner: str) -> None:
        if self.owner is not None:
            raise EventStoreError(f"account {self.id} is already open")
        self.raise_event("AccountOpened", {"owner": owner})

    def deposit(self, amount: int) -> None:
        self._require_open()
        if amount <= 0:
            raise ValueError("a deposit must be positive")
        self.raise_event("Deposited", {"amount": amount})

    def withdraw(self, amount: int) -> None:
        self._require_open()
        if amount <= 0:
            raise ValueError("a withdrawal must be positive")
        if amount > self.balance:
            raise InsufficientFunds(f"account {self.id} holds {self.balance}, cannot withdraw {amount}")
        self.raise_event("Withdrawn", {"amount": amount})

    def _require_open(self) -> None:
        if self.owner is None:
            raise EventStoreError(f"account {self.id} is not open")

    # events

    def apply_AccountOpened(self, event: RecordedEvent) -> None:
        self.owner = event.payload["owner"]

    def apply_Deposited(self, event: RecordedEvent) -> None:
        self.balance += event.payload["amount"]
        self.transactions += 1

    def apply_Withdrawn(self, event: RecordedEvent) -> None:
        self.balance -= event.payload["amount"]
        self.transactions += 1

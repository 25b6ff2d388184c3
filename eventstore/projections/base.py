"""What a projection is: handlers that turn events into a read model, inside a transaction.

A projection writes its read model through the `ReadModelTx` it is handed. The runner opens
that transaction on the event store's own database and commits the projection's
checkpoint in it, so a batch's read-model writes and its checkpoint commit together or not
at all: after a crash an event is either fully applied and checkpointed, or neither.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from eventstore.errors import ValidationError
from eventstore.events import RecordedEvent
from eventstore.upcasting import NO_UPCASTERS, UpcasterRegistry

Dialect = Literal["postgresql", "sqlite"]


class ReadModelTx:
    """The open transaction a projection writes in. SQL uses `%s` placeholders on both
    backends (they are rewritten to `?` for SQLite); `dialect` tells them apart.
    `connection` is the driver's own connection (PostgreSQL's or SQLite's), for what `execute`
    does not cover."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect: Dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.dialect == "sqlite":
            return self.connection.execute(sql.replace("%s", "?"), tuple(params))
        return self.connection.execute(sql.encode(), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.dialect == "sqlite":
            self.connection.executemany(sql.replace("%s", "?"), [tuple(r) for r in rows])
        else:
            with self.connection.cursor() as cur:
                cur.executemany(sql.encode(), rows)


class Projection:
    """Subclass and write `handle` (and `setup`/`reset` for your tables).

    The runner calls `handle_batch` with up to `batch_size` events of one partition in
    global order (so each stream's events in version order). If it raises, the batch is
    rolled back and its events are handled one at a time, each failing one retried
    `retry_attempts` times with backoff and then parked as a dead letter. Override
    `handle_batch` to write a batch in fewer statements; it must have the same effect as
    calling `handle` for each event.
    """

    #: Upcasters applied to every event before it reaches the handlers.
    upcasters: ClassVar[UpcasterRegistry] = NO_UPCASTERS

    def setup(self, tx: ReadModelTx) -> None:
        """Create the read model's tables if they do not exist (idempotent)."""

    def reset(self, tx: ReadModelTx) -> None:
        """Empty the read model before a rebuild."""

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define handle(event, tx)")

    def handle_batch(self, events: Sequence[RecordedEvent], tx: ReadModelTx) -> None:
        for event in events:
            self.handle(event, tx)

    def lookup(self, key: str, tx: ReadModelTx) -> dict[str, Any] | None:
        """One entry of the read model by key, for `GET /projections/{name}/entries/{key}`
        (None when there is none). Optional: the default serves no entries."""
        raise NotImplementedError(f"{type(self).__name__} does not serve lookups")


def load_projection(target: str) -> Projection:
    """Import `module:object` (a Projection subclass, an instance, or a factory)."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(f"projection {target!r}: cannot import {module_name}: {exc}") \
            from exc
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValidationError(f"projection {target!r}: {module_name} has no "
                                  f"{attribute}") from None
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "handle_batch")):
        obj = obj()
    if not hasattr(obj, "handle_batch") or not hasattr(obj, "setup"):
        raise ValidationError(f"projection {target!r} is a {type(obj).__name__}, not a "
                              "Projection: subclass eventstore.projections.Projection")
    return obj  # type: ignore[no-any-return]

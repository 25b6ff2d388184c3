"""The projection runner: `workers` threads feeding projections `batch_size` events at a time.

Work is split in units of (projection, partition); see backends.py for how replicas share
them. A worker takes a due unit, reads the next batch of that partition, and in one
transaction moves the checkpoint (compare-and-set) and applies the batch. A failing batch
is rolled back to a savepoint and its events handled one by one: a failing event is
retried `retry_attempts` times with exponential backoff, then parked in the dead-letter
table with its error, and the partition flows on.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventstore import metrics
from eventstore.errors import StoreUnavailable
from eventstore.events import RecordedEvent
from eventstore.projections.backends import (
    Backend,
    CheckpointMoved,
    LocalBackend,
    backend_for,
)
from eventstore.projections.base import Projection, ReadModelTx, load_projection
from eventstore.settings import ProjectionSettings
from eventstore.store.base import EventStore
from eventstore.store.translate import transient

log = logging.getLogger(__name__)

#: A pod's own read models and their checkpoints, in its data directory (/data).
LOCAL_READ_MODELS = "read-models.db"

Unit = tuple[str, int]

# Failures of a database, not of the event, are never retried per event nor parked: the
# batch is rolled back and retried whole. `transient` says which those are, for both
# drivers, whoever raised them (the library, or a projection's own SQL): StoreUnavailable
# (the snapshotter's SnapshotUnavailable is one), a lost PostgreSQL connection, SQLite's
# "database is locked" from another writer.


def _raise_if_transient(exc: Exception) -> None:
    """Raise `exc` as StoreUnavailable when it is a database's transient failure."""
    error = transient(exc)
    if error is exc:
        raise exc
    if error is not None:
        raise error from exc


class _BatchFailed(Exception):
    """The projection's code failed on a batch (at event `index` for per-event handlers;
    None when handle_batch failed as a whole)."""

    def __init__(self, index: int | None) -> None:
        super().__init__(index)
        self.index = index


@dataclass
class _UnitState:
    position: int
    due: float = 0.0
    busy: bool = False
    releasing: bool = False
    #: Bumped whenever a worker takes the unit or its position is set, so that
    #: _follow_checkpoints never applies a checkpoint it read before either happened.
    generation: int = 0


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    partitions: int
    owned_here: list[int]
    events_handled: int
    lag_events: int
    lag_seconds: float
    dead_letters: int
    checkpoints: dict[int, int] = field(default_factory=dict)
    #: "shared": one read model in the event store's database; "local": this pod's own.
    scope: str = "shared"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "partitions": self.partitions,
                "owned_here": self.owned_here,
                "events_handled": self.events_handled, "lag_events": self.lag_events,
                "lag_seconds": self.lag_seconds, "dead_letters": self.dead_letters,
                "checkpoints": {str(k): v for k, v in self.checkpoints.items()}}


class ProjectionRunner:
    """Runs projections against one store. `start()` then `stop()`; thread-safe status."""

    def __init__(
        self,
        store: EventStore,
        projections: Mapping[str, Projection],
        settings: ProjectionSettings | None = None,
        *,
        poll_interval: float = 0.5,
        rebalance_interval: float = 1.0,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        backend: Backend | None = None,
    ) -> None:
        self.store = store
        self.projections = dict(projections)
        self.settings = settings or ProjectionSettings()
        self.poll_interval = poll_interval
        self.rebalance_interval = rebalance_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._sleep = sleep
        self.backend: Backend = backend or backend_for(store)
        self.scope = "local" if isinstance(self.backend, LocalBackend) else "shared"
        self._units: list[Unit] = [(name, p) for name in sorted(self.projections)
                                   for p in range(self.backend.partitions)]
        self._owned: dict[Unit, _UnitState] = {}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    def setup(self) -> None:
        """Create read-model tables and checkpoint rows (idempotent, safe across replicas)."""
        with self.backend.transaction() as tx:
            self.backend.setup_lock(tx)
            for name, projection in self.projections.items():
                projection.setup(tx)
                for partition in range(self.backend.partitions):
                    tx.execute("INSERT INTO es_projection_checkpoints (projection, partition) "
                               "VALUES (%s, %s) ON CONFLICT DO NOTHING", (name, partition))

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.setup()
        if not self.projections:
            return
        self._spawn(self._rebalance_loop, "projection-rebalance")
        self._spawn(self._wake_loop, "projection-wake")
        for index in range(self.settings.workers):
            self._spawn(self._worker_loop, f"projection-worker-{index}")
        log.info("projection runner started", extra={
            "projections": sorted(self.projections), "workers": self.settings.workers,
            "batch_size": self.settings.batch_size,
            "retry_attempts": self.settings.retry_attempts})

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batches in flight, release every partition and the lock connection.

        Bounded (a store pod has 30 s between SIGTERM and SIGKILL, the HTTP drain included):
        a batch still running after `timeout` is left behind; it is cut off when the store
        (whose pool it uses) closes, and rolls back; its checkpoint has not moved, so it is
        done again, by this pod or another."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self.backend.close()

    def owned(self) -> list[Unit]:
        with self._cond:
            return sorted(self._owned)

    # -- ownership -----------------------------------------------------------------------

    def _rebalance_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.backend.join()
                self._rebalance()
                self._follow_checkpoints()
            except StoreUnavailable as exc:
                log.warning("projection lock connection failed; partitions released: %s", exc)
                self.backend.drop_locks()
                with self._cond:
                    self._owned.clear()
            self._stopping.wait(self.rebalance_interval)
        self._release_all()

    def _rebalance(self) -> None:
        members = self.backend.members()
        target = math.ceil(len(self._units) / members)
        with self._cond:
            owned = len(self._owned)
            extras = [u for u, s in self._owned.items() if not s.releasing][target:] \
                if owned > target else []
            for unit in extras:
                self._owned[unit].releasing = True
            done = [u for u, s in self._owned.items() if s.releasing and not s.busy]
            for unit in done:
                del self._owned[unit]
        for unit in done:
            self.backend.release(*unit)
            log.info("released partition", extra={"projection": unit[0], "partition": unit[1]})
        if owned >= target:
            return
        start = random.randrange(len(self._units))
        for unit in self._units[start:] + self._units[:start]:
            with self._cond:
                if len(self._owned) >= target:
                    break
                if unit in self._owned:
                    continue
            if self.backend.try_claim(*unit):
                position = self._load_checkpoint(unit)
                with self._cond:
                    self._owned[unit] = _UnitState(position=position)
                    self._cond.notify_all()
                log.info("claimed partition", extra={"projection": unit[0], "partition": unit[1],
                                                      "position": position})

    def _follow_checkpoints(self) -> None:
        """Adopt a checkpoint that someone else moved: a rebuild or `eventstore replay` in
        another process, or a rebuild here while the unit's batch was in flight, resets it
        in the database. A busy partition finds out at its next batch (the compare-and-set
        fails); an idle one would read nothing from its old position forever and never
        start over. Not while the unit is busy: the owner's own batch moves both."""
        with self._cond:
            seen = {unit: (state.position, state.generation)
                    for unit, state in self._owned.items() if not state.busy}
        if not seen:
            return
        with self.backend.reading() as tx:  # no write lock, no transaction: one query
            rows = tx.execute("SELECT projection, partition, position FROM "
                              "es_projection_checkpoints").fetchall()
        stored = {(str(r[0]), int(r[1])): int(r[2]) for r in rows}
        with self._cond:
            for unit, (position, generation) in seen.items():
                state = self._owned.get(unit)
                moved = stored.get(unit)
                if (state is None or state.busy or state.generation != generation
                        or moved is None or moved == position):
                    continue
                state.position = moved
                state.generation += 1
                state.due = 0.0
                # Back: a rebuild or replay started over (worth a line); forward: another
                # process (say `eventstore replay` next to this pod) handled events.
                (log.info if moved < position else log.debug)(
                    "checkpoint moved by another process; following it", extra={
                        "projection": unit[0], "partition": unit[1], "was": position,
                        "position": moved})
            self._cond.notify_all()

    def _release_all(self) -> None:
        with self._cond:
            units = list(self._owned)
            self._owned.clear()
        for unit in units:
            try:
                self.backend.release(*unit)
            except StoreUnavailable:
                break  # the connection is gone, and its locks with it

    def _load_checkpoint(self, unit: Unit) -> int:
        with self.backend.transaction() as tx:
            row = tx.execute("SELECT position FROM es_projection_checkpoints WHERE projection = %s"
                             " AND partition = %s", unit).fetchone()
        return int(row[0]) if row else 0

    # -- work ----------------------------------------------------------------------------

    def _wake_loop(self) -> None:
        """Make every unit due as soon as the store reports an append."""
        while not self._stopping.is_set():
            try:
                woke = self.store.wait_for_events(0, 1.0)
            except Exception:  # wake-ups are an optimisation over polling
                woke = False
                self._stopping.wait(1.0)
            if woke:
                with self._cond:
                    for state in self._owned.values():
                        state.due = 0.0
                    self._cond.notify_all()

    def _take(self) -> Unit | None:
        with self._cond:
            while not self._stopping.is_set():
                now = time.monotonic()
                ready = [(s.due, u) for u, s in self._owned.items()
                         if not s.busy and not s.releasing]
                due = [item for item in ready if item[0] <= now]
                if due:
                    _, unit = min(due)
                    self._owned[unit].busy = True
                    self._owned[unit].generation += 1
                    return unit
                wait = min((d for d, _ in ready), default=now + self.poll_interval) - now
                self._cond.wait(timeout=max(0.01, min(wait, self.poll_interval)))
        return None

    def _worker_loop(self) -> None:
        while True:
            unit = self._take()
            if unit is None:
                return
            full = False
            try:
                full = self.process_batch(unit)
            except CheckpointMoved:
                full = True
                position = self._load_checkpoint(unit)
                with self._cond:
                    if unit in self._owned:
                        self._owned[unit].position = position
                        self._owned[unit].generation += 1
            except Exception as exc:  # a worker must survive database outages
                log.warning("projection batch failed; will retry", extra={
                    "projection": unit[0], "partition": unit[1], "error": str(exc)})
                self._stopping.wait(1.0)
            finally:
                with self._cond:
                    state = self._owned.get(unit)
                    if state is not None:
                        state.busy = False
                        state.due = 0.0 if full else time.monotonic() + self.poll_interval
                    self._cond.notify_all()

    def process_batch(self, unit: Unit) -> bool:
        """Handle the next batch of one owned unit. True when the batch was full."""
        name, partition = unit
        with self._cond:
            state = self._owned.get(unit)
            if state is None:
                return False
            start = state.position
        projection = self.projections[name]
        batch_size = self.settings.batch_size
        events = self.backend.read(partition, start, batch_size)
        if not events:
            return False
        end = events[-1].position + 1
        try:
            with self.backend.batch(name, partition, start, end, len(events)) as tx:
                self._apply_batch(projection, events, tx)
        except _BatchFailed as failed:
            # Rolled back whole, checkpoint included: again, one event at a time, each in
            # a savepoint of its own, so a failing one is retried and parked alone.
            log.info("projection batch failed; handling its events one by one",
                     extra={"projection": name, "partition": partition},
                     exc_info=failed.__cause__)
            with self.backend.batch(name, partition, start, end, len(events)) as tx:
                for index, event in enumerate(events):
                    # With per-event handlers the batch attempt was the failing event's
                    # first try; the events before it are applied again, once each.
                    tried = 1 if index == failed.index else 0
                    self._apply_one(projection, name, partition, event, tx, tried)
        with self._cond:
            state = self._owned.get(unit)
            if state is not None:
                state.position = end
                state.generation += 1
        metrics.PROJECTION_EVENTS.labels(name).inc(len(events))
        metrics.observe_ages(metrics.EVENT_PROCESSING_LATENCY.labels(name), datetime.now(UTC),
                             (event.timestamp for event in events))
        return len(events) == batch_size

    @staticmethod
    def _apply_batch(projection: Projection, events: Sequence[RecordedEvent],
                     tx: ReadModelTx) -> None:
        """The whole batch, without a savepoint (two round trips a batch saved): a failure
        of the projection's code raises _BatchFailed, and the caller rolls back and goes
        one event at a time; a failure of the database is raised as it is (the batch is
        retried whole later, the checkpoint unmoved)."""
        per_event = type(projection).handle_batch is Projection.handle_batch
        index: int | None = None
        try:
            if per_event:
                for index in range(len(events)):
                    projection.handle(projection.upcasters.upcast(events[index]), tx)
            else:
                projection.handle_batch([projection.upcasters.upcast(e) for e in events], tx)
        except Exception as exc:
            _raise_if_transient(exc)
            raise _BatchFailed(index) from exc

    def _apply_one(self, projection: Projection, name: str, partition: int,
                   event: RecordedEvent, tx: ReadModelTx, tried: int) -> None:
        allowed = 1 + self.settings.retry_attempts
        error: BaseException | None = None
        while tried < allowed:
            if tried:
                self._sleep(min(self.backoff_max, self.backoff_base * 2 ** (tried - 1)))
            try:
                with self.backend.savepoint(tx):
                    projection.handle_batch([projection.upcasters.upcast(event)], tx)
                return
            except Exception as exc:
                _raise_if_transient(exc)
                error = exc  # user code
                tried += 1
        self._park(name, partition, event, tx, error, tried)

    def _park(self, name: str, partition: int, event: RecordedEvent, tx: ReadModelTx,
              error: BaseException | None, attempts: int) -> None:
        message = f"{type(error).__name__}: {error}" if error else "unknown error"
        tx.execute(
            "INSERT INTO es_projection_dead_letters (projection, partition, event_id, stream_id,"
            " version, position, event_type, error, attempts) VALUES (%s, %s, %s, %s, %s, %s, %s,"
            " %s, %s) ON CONFLICT (projection, event_id) DO UPDATE SET error = excluded.error,"
            " attempts = excluded.attempts, parked_at = CURRENT_TIMESTAMP",
            (name, partition, event.id if tx.dialect == "postgresql" else str(event.id),
             event.aggregate_id, event.version, event.position, event.type, message[:4000],
             attempts))
        metrics.PROJECTION_DEAD_LETTERS.labels(name).inc()
        log.warning("event parked as a dead letter", extra={
            "projection": name, "event_id": str(event.id), "stream_id": event.aggregate_id,
            "version": event.version, "error": message[:500], "attempts": attempts})

    # -- status and rebuild --------------------------------------------------------------

    def status(self) -> list[ProjectionStatus]:
        now = datetime.now(UTC)
        result = []
        owned = self.owned()
        for name in sorted(self.projections):
            rows = self.backend.lag(name)
            with self.backend.transaction() as tx:
                dead = tx.execute("SELECT count(*) FROM es_projection_dead_letters WHERE "
                                  "projection = %s", (name,)).fetchone()
            oldest = [r[4] for r in rows if r[4] is not None]
            lag_seconds = max(0.0, (now - min(oldest)).total_seconds()) if oldest else 0.0
            status = ProjectionStatus(
                name=name, partitions=self.backend.partitions,
                owned_here=[p for n, p in owned if n == name],
                events_handled=sum(r[2] for r in rows), lag_events=sum(r[3] for r in rows),
                lag_seconds=lag_seconds, dead_letters=int(dead[0]) if dead else 0,
                checkpoints={r[0]: r[1] for r in rows}, scope=self.scope)
            metrics.PROJECTION_LAG_EVENTS.labels(name).set(status.lag_events)
            metrics.PROJECTION_LAG_SECONDS.labels(name).set(status.lag_seconds)
            result.append(status)
        return result

    def lookup(self, name: str, key: str) -> dict[str, Any] | None:
        """One entry of a projection's read model (see Projection.lookup)."""
        with self.backend.reading() as tx:
            return self.projections[name].lookup(key, tx)

    def dead_letters(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.backend.transaction() as tx:
            rows = tx.execute(
                "SELECT event_id, stream_id, version, position, event_type, error, attempts, "
                "parked_at FROM es_projection_dead_letters WHERE projection = %s ORDER BY id "
                "LIMIT %s", (name, limit)).fetchall()
        keys = ("event_id", "stream_id", "version", "position", "event_type", "error",
                "attempts", "parked_at")
        return [{k: (str(v) if k in ("event_id", "parked_at") else v) for k, v in zip(keys, r,
                                                                                    strict=True)}
                for r in rows]

    def rebuild(self, name: str) -> None:
        """Empty the read model and start the projection over from the first event.

        One transaction: the checkpoints are locked, so a batch in flight on any replica
        either commits before the reset or fails its compare-and-set after it.
        """
        projection = self.projections[name]
        with self.backend.transaction() as tx:
            if tx.dialect == "postgresql":
                tx.execute("SELECT 1 FROM es_projection_checkpoints WHERE projection = %s "
                           "FOR UPDATE", (name,))
            projection.reset(tx)
            tx.execute("UPDATE es_projection_checkpoints SET position = 0, events_handled = 0, "
                       "updated_at = CURRENT_TIMESTAMP WHERE projection = %s", (name,))
            tx.execute("DELETE FROM es_projection_dead_letters WHERE projection = %s", (name,))
        with self._cond:
            for (unit_name, _), state in self._owned.items():
                if unit_name == name and not state.busy:  # busy: see _follow_checkpoints
                    state.position = 0
                    state.generation += 1
                    state.due = 0.0
            self._cond.notify_all()
        log.info("projection rebuild started", extra={"projection": name})

    def wait_caught_up(self, name: str, timeout: float,
                       progress: Callable[[int, int], None] | None = None) -> bool:
        """Block until the projection has no unhandled events (True) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (status,) = [s for s in self.status() if s.name == name]
            if progress is not None:
                progress(status.events_handled, status.lag_events)
            if status.lag_events == 0:
                return True
            time.sleep(0.2)
        return False


def local_projection_runner(store: EventStore, settings: ProjectionSettings, data_dir: Path,
                            names: list[str] | None = None) -> ProjectionRunner | None:
    """The runner of the pod's own read models (all of local_projections, or `names`),
    kept in `data_dir`/LOCAL_READ_MODELS; None when there are none."""
    targets = settings.local_projections
    chosen = {name: load_projection(targets[name]) for name in (names or sorted(targets))}
    if not chosen:
        return None
    source = backend_for(store)
    try:
        backend = LocalBackend(source, data_dir / LOCAL_READ_MODELS)
    except BaseException:
        source.close()
        raise
    return ProjectionRunner(store, chosen, settings, backend=backend)


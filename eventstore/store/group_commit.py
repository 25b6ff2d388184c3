"""Group commit: appends that wait together share one transaction and one statement.

A durable commit waits for the disk; while one does, other appends queue up. The next
commit takes everything queued (up to BATCH_MAX_EVENTS events and BATCH_MAX_BYTES bytes)
in one statement (postgres_append.BATCH_SQL), so many appends pay for one flush. There
is no artificial wait: a batch is what queued while the previous commit ran, and one
writer alone commits at once.

The rules both executors follow (the asyncio one in postgres_async.py, the threads' one
here), so that correctness never depends on the batch:
- Two appends to one stream never share a batch: the later one waits for the next.
- Each append of a batch gets its own result; one whose expectation did not hold gets
  None (nothing of it was written), and so does every append of a batch whose statement
  failed (nothing was written). None means: run the store's individual append path,
  which decides conflicts, races and idempotent re-sends as it always has.
- A result is only handed out after the statement's autocommit returned, i.e. after the
  commit is durable (the pools' connections keep synchronous_commit on).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from eventstore import metrics
from eventstore.events import AppendResult
from eventstore.store.postgres_append import BATCH_MAX_BYTES, BATCH_MAX_EVENTS
from eventstore.store.prepared import PreparedAppend

log = logging.getLogger(__name__)

W = TypeVar("W")  # what waits for a result: a future, or a thread's slot
_BATCH_SIZE = metrics.APPEND_BATCH_SIZE.labels("threads")


def take_batch(queue: deque[tuple[PreparedAppend, W]], busy: set[str] | None = None,
               max_events: int = BATCH_MAX_EVENTS, max_bytes: int = BATCH_MAX_BYTES
               ) -> list[tuple[PreparedAppend, W]]:
    """Take the next batch off `queue`, in arrival order: at most one append per stream
    (none of the streams in `busy`, which another batch is writing), within the bounds.
    The first eligible append is always taken; what is skipped stays queued, in order."""
    batch: list[tuple[PreparedAppend, W]] = []
    streams: set[str] = set(busy or ())
    kept: list[tuple[PreparedAppend, W]] = []
    events = size = 0
    while queue:
        entry = queue.popleft()
        prepared = entry[0]
        if prepared.stream_id in streams:
            kept.append(entry)
            continue
        if batch and (events + prepared.count > max_events or size + prepared.size > max_bytes):
            kept.append(entry)
            break
        batch.append(entry)
        streams.add(prepared.stream_id)
        events += prepared.count
        size += prepared.size
    queue.extendleft(reversed(kept))
    return batch


class _Slot:
    """One thread's append while it waits: woken once its result is in, or once it is
    handed the lead (then `done` is still False)."""

    __slots__ = ("done", "result", "wake")

    def __init__(self) -> None:
        self.done = False
        self.result: AppendResult | None = None
        self.wake = threading.Event()


class ThreadGroupCommit:
    """Leader/follower group commit for threads sharing one store.

    A thread that finds no commit running becomes the leader: it takes the queued batch
    (its own append and those of the threads that queued meanwhile), writes it with
    `write_batch`, wakes exactly the threads of that batch with their results, and hands
    the lead to the first thread still queued (so no herd of threads wakes to find
    nothing to do). A thread whose append is alone in its batch runs `alone` itself (the
    individual path: one round trip, its own errors), so one writer sees no difference.
    """

    def __init__(self, write_batch: Callable[[Sequence[PreparedAppend]],
                                             list[AppendResult | None]]) -> None:
        self._write_batch = write_batch
        self._lock = threading.Lock()
        self._queue: deque[tuple[PreparedAppend, _Slot]] = deque()
        self._leading = False

    def append(self, prepared: PreparedAppend,
               alone: Callable[[PreparedAppend], AppendResult]) -> AppendResult | None:
        """The append's result, or None: it did not go through in a batch, run `alone`."""
        with self._lock:
            lone = not self._leading  # nothing runs, so nothing is queued either
            if lone:
                self._leading = True
            else:
                slot = _Slot()
                self._queue.append((prepared, slot))
        if lone:
            # The batch would be this append alone: no slot, no wake-up (with them a lone
            # writer spent 5.7 µs a call in this class, without them 1.2; timeit).
            try:
                _BATCH_SIZE.observe(1)
                return alone(prepared)
            finally:
                self._hand_on(None)
        leading = False
        while True:
            if not leading:
                slot.wake.wait()
                slot.wake.clear()
                if slot.done:
                    return slot.result
            with self._lock:  # leading: the lead is ours until we hand it on
                batch = take_batch(self._queue)
            following: _Slot | None = None
            try:
                if len(batch) == 1 and batch[0][1] is slot:
                    _BATCH_SIZE.observe(1)
                    return alone(prepared)
                self._write(batch)
            finally:
                following = self._hand_on(slot, batch)
            if slot.done:
                return slot.result
            leading = following is slot

    def _hand_on(self, slot: _Slot | None,
                 batch: Sequence[tuple[PreparedAppend, _Slot]] = ()) -> _Slot | None:
        """End a lead: mark the batch done, wake its threads and hand the lead to the
        first thread still queued (returned; it may be `slot` itself)."""
        with self._lock:
            for _, waiting in batch:
                waiting.done = True
            following = self._queue[0][1] if self._queue else None
            if following is None:
                self._leading = False
            elif following is not slot:
                following.wake.set()
        for _, waiting in batch:
            if waiting is not slot:
                waiting.wake.set()
        return following

    def _write(self, batch: list[tuple[PreparedAppend, _Slot]]) -> None:
        _BATCH_SIZE.observe(len(batch))
        try:
            results = self._write_batch([p for p, _ in batch])
        except Exception:  # `write_batch` hands back expected failures as Nones: a bug
            log.warning("group commit of %d appends failed unexpectedly; handed to the "
                        "individual path", len(batch), exc_info=True)
            return
        for (_, slot), result in zip(batch, results, strict=True):
            slot.result = result

"""A reader that follows the global log while writers run, for the no-skip guarantee tests."""

from __future__ import annotations

import threading

from eventstore import EventStore, RecordedEvent


def follow_log(store: EventStore, done: threading.Event, seen: list[RecordedEvent]) -> None:
    """Read the log from the start into `seen`, page after page, waiting for appends when
    caught up, until `done` is set; then read once more, so nothing committed before
    `done` is missed."""
    position = 0
    while True:
        finished = done.is_set()
        page = store.read_all(from_position=position, limit=500)
        seen.extend(page)
        if page:
            position = page[-1].position + 1
        elif finished:
            return
        else:
            store.wait_for_events(position - 1, 0.05)

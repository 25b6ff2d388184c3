"""Pages of events bounded in bytes as well as in count.

A page of 1,000 events of up to 1 MiB each is a reply of a gigabyte, built in memory;
`limit` alone does not bound what one read costs the server. Pages here stop at a byte
budget (EVENTSTORE_MAX_PAGE_BYTES) and say where to continue, and the store is read in
chunks sized from what the first chunk weighed, so a page of large events never loads
more than a few of them past the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from eventstore.events import RecordedEvent
from eventstore.server.wire import event_json

DEFAULT_MAX_PAGE_BYTES = 4 * 1024 * 1024
#: Events read before their size is known.
FIRST_CHUNK = 16

#: Reads up to `count` events after `last` (None: from the page's start).
Fetch = Callable[[RecordedEvent | None, int], list[RecordedEvent]]


@dataclass
class Page:
    """The events, each encoded as a JSON object, and whether the byte budget cut the
    page short of `limit` events that were there to read."""

    events: list[RecordedEvent]
    encoded: list[bytes]
    truncated: bool

    @property
    def last(self) -> RecordedEvent | None:
        return self.events[-1] if self.events else None

    def events_json(self) -> bytes:
        return b"[" + b",".join(self.encoded) + b"]"


def encode_page(fetch: Fetch, limit: int, budget: int) -> Page:
    """Up to `limit` events and about `budget` bytes (always at least one event)."""
    included: list[RecordedEvent] = []
    encoded: list[bytes] = []
    size = 0
    chunk = min(limit, FIRST_CHUNK)
    while len(encoded) < limit:
        events = fetch(included[-1] if included else None, chunk)
        for event in events:
            data = event_json(event)
            if encoded and size + len(data) > budget:
                return Page(included, encoded, truncated=True)
            included.append(event)
            encoded.append(data)
            size += len(data)
            if len(encoded) == limit:
                break
        if len(events) < chunk:
            break  # nothing more to read
        average = size / len(encoded)
        chunk = max(1, min(limit - len(encoded), int((budget - size) / average) + 1))
    return Page(included, encoded, truncated=False)

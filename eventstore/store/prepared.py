"""An append checked and encoded once, that every executor takes as it is.

`EventStore.append` prepares its input and hands the result to `append_prepared`; the
server prepares each request once (on the event loop, or on a thread for large bodies)
and hands the same object to the async group commit and, when that does not finish it,
to the synchronous append. Nothing validates or encodes an append twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from uuid import UUID

from eventstore.events import Expected, ExpectedVersion, NewEvent, validate_expected
from eventstore.store.encoding import check_append

#: PostgreSQL's code for each symbolic expectation (an int n >= 0 is itself: exact).
EXPECTED_CODES = {ExpectedVersion.NO_STREAM: -1, ExpectedVersion.ANY: -2,
                  ExpectedVersion.STREAM_EXISTS: -4}


@dataclass(frozen=True)
class PreparedAppend:
    """One stream's append: the checked expectation and each event's encoded JSON."""

    stream_id: str
    events: Sequence[NewEvent]
    expected: int | ExpectedVersion
    #: (payload, metadata) JSON text per event, as check_append encoded them.
    encoded: Sequence[tuple[str, str]] = field(repr=False)

    @property
    def ids(self) -> list[UUID]:
        return [e.id for e in self.events]

    @property
    def count(self) -> int:
        return len(self.events)

    @property
    def expected_code(self) -> int:
        """The expectation as the append statements take it: n >= 0 exact, -1 NO_STREAM,
        -2 ANY, -4 STREAM_EXISTS."""
        expected = self.expected
        return expected if isinstance(expected, int) else EXPECTED_CODES[expected]

    @property
    def retries_races(self) -> bool:
        """ANY and STREAM_EXISTS do not care which version they land on: an append that
        lost a race for the version it read may read again and retry."""
        return self.expected in (ExpectedVersion.ANY, ExpectedVersion.STREAM_EXISTS)

    @cached_property
    def events_json(self) -> str:
        """The events as one JSON array (PostgreSQL's jsonb_to_recordset input), built
        from the payloads already encoded for the size check: one text parameter is far
        cheaper to send than five arrays. Stream ids, types and ids need no escaping
        (see STREAM_ID_PATTERN and EVENT_TYPE_PATTERN)."""
        batch = ",".join(
            f'{{"id":"{e.id}","type":"{e.type}","payload":{payload},"metadata":{metadata},'
            f'"sv":{e.schema_version}}}'
            for e, (payload, metadata) in zip(self.events, self.encoded, strict=True))
        return f"[{batch}]"

    @property
    def size(self) -> int:
        """About how many bytes the append sends (its encoded JSON)."""
        return len(self.events_json)


def prepare_append(stream_id: str, events: Sequence[NewEvent], expected_version: Expected,
                   max_payload_bytes: int, max_events: int) -> PreparedAppend:
    """Check and encode an append; raises ValidationError for bad input, before any I/O."""
    expected = validate_expected(expected_version)
    encoded = check_append(stream_id, events, max_payload_bytes, max_events)
    return PreparedAppend(stream_id, tuple(events), expected, encoded)

"""How the group commit forms batches (pure: no database), and the one events-per-append
limit shared by the library and the HTTP API."""

from __future__ import annotations

from collections import deque

import pytest
from pydantic import ValidationError as PydanticValidationError

from eventstore import EventStore, NewEvent, ValidationError
from eventstore.server.appends import parse_body
from eventstore.store.base import MAX_EVENTS_PER_APPEND
from eventstore.store.group_commit import take_batch
from eventstore.store.postgres_append import COPY_MIN_EVENTS, batch_params, batchable
from eventstore.store.prepared import PreparedAppend, prepare_append


def _prepared(stream: str, events: int = 1, pad: int = 0) -> PreparedAppend:
    return prepare_append(stream, [NewEvent("E", {"pad": "x" * pad}) for _ in range(events)],
                          0, 1024 * 1024, MAX_EVENTS_PER_APPEND)


def _queue(*prepared: PreparedAppend) -> deque[tuple[PreparedAppend, int]]:
    return deque((p, n) for n, p in enumerate(prepared))


def test_a_batch_takes_one_append_per_stream_and_leaves_the_rest_in_order() -> None:
    queue = _queue(_prepared("a"), _prepared("b"), _prepared("a"), _prepared("c"),
                   _prepared("b"))
    assert [w for _, w in take_batch(queue)] == [0, 1, 3]
    assert [w for _, w in queue] == [2, 4]
    assert [w for _, w in take_batch(queue)] == [2, 4]
    assert not queue


def test_streams_another_batch_is_writing_wait() -> None:
    queue = _queue(_prepared("a"), _prepared("b"))
    assert [w for _, w in take_batch(queue, busy={"a"})] == [1]
    assert [w for _, w in queue] == [0]
    assert take_batch(queue, busy={"a"}) == []


def test_a_batch_is_bounded_in_events_and_bytes_but_always_takes_one() -> None:
    queue = _queue(*(_prepared(f"s{n}", events=400) for n in range(4)))
    assert [w for _, w in take_batch(queue, max_events=1000)] == [0, 1]
    queue = _queue(*(_prepared(f"s{n}", pad=1000) for n in range(5)))
    assert [w for _, w in take_batch(queue, max_bytes=2500)] == [0, 1]
    queue = _queue(_prepared("big", events=5), _prepared("small"))
    assert [w for _, w in take_batch(queue, max_events=2)] == [0]


def test_large_appends_are_never_batched() -> None:
    """From COPY_MIN_EVENTS events an append is written alone with COPY; over the byte
    bound of a batch it fills its own commit."""
    assert batchable(_prepared("s", events=COPY_MIN_EVENTS - 1))
    assert not batchable(_prepared("s", events=COPY_MIN_EVENTS))
    assert not batchable(_prepared("s", events=1001))
    assert not batchable(_prepared("s", events=2, pad=600 * 1024))


def test_batch_offsets_never_overlap_whatever_the_order() -> None:
    batch = [_prepared("z", events=3), _prepared("a", events=2), _prepared("m")]
    text = batch_params(batch)["batch"]
    # listed by stream id (a lock order), each with its own range of the positions
    assert text.index('"stream":"a"') < text.index('"stream":"m"') < text.index('"stream":"z"')
    assert '"k":1,"stream":"a","x":0,"off":0,' in text
    assert '"k":2,"stream":"m","x":0,"off":2,' in text
    assert '"k":0,"stream":"z","x":0,"off":3,' in text


def test_one_events_per_append_limit_for_the_library_and_http() -> None:
    store = EventStore.connect("sqlite://:memory:")
    try:
        with pytest.raises(ValidationError, match="the limit is 10000 per append"):
            store.prepare_append("s", [NewEvent("E", {})] * (MAX_EVENTS_PER_APPEND + 1), 0)
        one = '{"type":"E","payload":{}}'
        with pytest.raises(PydanticValidationError, match="at most 10000 items"):
            parse_body(f'{{"events":[{",".join([one] * (MAX_EVENTS_PER_APPEND + 1))}]}}'
                       .encode())
        body = parse_body(f'{{"events":[{",".join([one] * MAX_EVENTS_PER_APPEND)}]}}'.encode())
        assert len(body.events) == MAX_EVENTS_PER_APPEND
    finally:
        store.close()

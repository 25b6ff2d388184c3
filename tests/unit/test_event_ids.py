"""NewEvent's default id: a UUIDv7 (RFC 9562), time first, so that new ids land on the
newest pages of the event-id index (see eventstore.events.uuid7)."""

from __future__ import annotations

import time
from unittest import mock
from uuid import UUID

from eventstore.events import NewEvent, uuid7


def unix_ms(event_id: UUID) -> int:
    return event_id.int >> 80


def test_the_default_id_is_a_version_7_uuid_of_the_rfc_variant() -> None:
    event_id = NewEvent("Deposited", {}).id
    assert event_id.version == 7
    assert event_id.variant == "specified in RFC 4122"
    assert UUID(str(event_id)) == event_id


def test_the_id_starts_with_the_unix_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    event_id = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= unix_ms(event_id) <= after


def test_ids_of_later_milliseconds_sort_after_earlier_ones() -> None:
    with mock.patch("eventstore.events.time.time_ns", return_value=1_796_000_000_000_000_000):
        earlier = [uuid7() for _ in range(200)]
    with mock.patch("eventstore.events.time.time_ns", return_value=1_796_000_000_001_000_000):
        later = [uuid7() for _ in range(200)]
    assert max(earlier) < min(later)
    assert max(str(e) for e in earlier) < min(str(e) for e in later)  # as the index sorts them


def test_ids_of_one_millisecond_differ_in_their_random_bits() -> None:
    with mock.patch("eventstore.events.time.time_ns", return_value=1_796_000_000_000_000_000):
        ids = [uuid7() for _ in range(100_000)]
    assert len({i.int for i in ids}) == len(ids)
    assert {unix_ms(i) for i in ids} == {1_796_000_000_000}
    # The version and variant bits are set on every one, whatever the random bytes were.
    assert {(i.version, i.variant) for i in ids} == {(7, "specified in RFC 4122")}


def test_random_bits_never_overwrite_the_time_version_or_variant() -> None:
    expected = {b"\x00" * 10: "01a229f1-2800-7000-8000-000000000000",
                b"\xff" * 10: "01a229f1-2800-7fff-bfff-ffffffffffff"}
    for fill, text in expected.items():
        with mock.patch("eventstore.events.os.urandom", return_value=fill), \
                mock.patch("eventstore.events.time.time_ns", return_value=1_796_000_000_000_999_999):
            assert str(uuid7()) == text

"""The duplicate-key check of request bodies (eventstore.server.wire), as a pure function."""

from __future__ import annotations

import pytest

from eventstore.errors import ValidationError
from eventstore.server.wire import duplicate_key, has_duplicate_keys, refuse_duplicate_keys


@pytest.mark.parametrize(("body", "found"), [
    (b'{"a":1,"a":2}', ("a", "")),
    (b' \n{"events":[{"payload":{"amount":1,"amount":2}}]}', ("amount", "events[0].payload")),
    # The same key spelled with an escape is the same key.
    (b'{"x":[{},{"k":1,"\\u006b":2}]}', ("k", "x[1]")),
    (b'{"odd key":{"a":{},"a":[]}}', ("a", '["odd key"]')),
    # Document order: the first object that repeats a key is named.
    (b'{"p":{"b":1,"b":2},"q":{"c":1,"c":2}}', ("b", "p")),
])
def test_the_first_repeated_key_and_its_place_are_found(
        body: bytes, found: tuple[str, str]) -> None:
    assert has_duplicate_keys(body)
    assert duplicate_key(body) == found


@pytest.mark.parametrize("body", [
    b'{"a":1,"A":2,"b":{"a":1}}',
    b'[{"a":1},{"a":2}]',
    b'{"n":' + b"9" * 5000 + b"}",  # past int()'s 4300-digit limit: still looked at
])
def test_bodies_without_repetition_pass(body: bytes) -> None:
    assert duplicate_key(body) is None
    refuse_duplicate_keys(body)


def test_the_fast_check_sees_a_duplicate_behind_a_huge_int() -> None:
    body = b'{"n":' + b"9" * 5000 + b',"n":1}'
    assert has_duplicate_keys(body)  # unsure: defers to the careful path
    assert duplicate_key(body) == ("n", "")


@pytest.mark.parametrize("body", [b"", b"{nope", b"\xff\xfe", b"[" * 5000])
def test_what_is_not_json_is_left_to_the_validator(body: bytes) -> None:
    assert duplicate_key(body) is None


def test_the_error_names_key_and_place_and_stays_short() -> None:
    with pytest.raises(ValidationError, match=r'duplicate key "amount" in events\[0\]\.payload'):
        refuse_duplicate_keys(b'{"events":[{"payload":{"amount":1,"amount":2}}]}')
    long_key = "k" * 10_000
    with pytest.raises(ValidationError) as caught:
        refuse_duplicate_keys(f'{{"{long_key}":1,"{long_key}":2}}'.encode())
    assert "the top-level object" in str(caught.value) and len(str(caught.value)) < 400

"""The stored-JSON decoder gives exactly what json.loads gives, and takes orjson's fast path
for ordinary documents (eventstore/store/jsonb.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.store import jsonb
from tests.calls import record_calls

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (1 == 1.0 is not enough here)."""
    return repr(a) == repr(b) and json.dumps(a) == json.dumps(b)


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES)
def test_any_document_decodes_as_json_loads_does(value: Any) -> None:
    text = json.dumps(value)
    for data in (text.encode(), text):
        assert same(jsonb.loads(data), json.loads(data))


@pytest.mark.parametrize("text", [
    # Integers past 64 bits, where orjson alone would return a float.
    '{"n": 123456789012345678901234567890}',
    "18446744073709551616", "-9223372036854775809", "9223372036854775807",
    "1234567890123456789", "[1, -99999999999999999999]",
    # PostgreSQL writes a jsonb number in plain notation: a float of 1e20 comes back
    # as a 21-digit integer, 1e300 as 301 digits (json.loads: an int).
    "100000000000000000000", "1" + "0" * 300, "0.0000001", "0.1000000000000000055511151231257827",
    "1.7976931348623157e308", "5e-324",
    # Past a double: json.loads gives inf, orjson refuses.
    "1e400", "-1e400",
])
def test_numbers_and_depth_orjson_would_get_wrong_or_refuse(text: str) -> None:
    for data in (text.encode(), text):
        assert same(jsonb.loads(data), json.loads(data))


def test_ordinary_documents_skip_the_stdlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken: a payload of ordinary numbers never reaches json.loads, and
    one with a long integer does."""
    calls = record_calls(monkeypatch, json, "loads")
    assert jsonb.loads(b'{"amount": 1250, "rate": 0.25, "note": "x"}') == {
        "amount": 1250, "rate": 0.25, "note": "x"}
    assert jsonb.loads("{}") == {}
    assert calls == []
    assert jsonb.loads(b'{"n": 123456789012345678901}') == {"n": 123456789012345678901}
    assert calls == [b'{"n": 123456789012345678901}']


def test_invalid_documents_raise_as_json_loads_does() -> None:
    for data in (b"{", b"", "nope"):
        with pytest.raises(json.JSONDecodeError):
            jsonb.loads(data)

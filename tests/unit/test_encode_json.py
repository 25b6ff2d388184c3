"""Payload encoding (eventstore/store/encoding.py encode_json): the text decodes to the
value appended, type for type, and floats are written so that PostgreSQL's jsonb gives
them back as floats."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.store.encoding import encode_json, floats_stay_floats
from tests.unit.test_jsonb import same

#: What a payload may hold: JSON values, strings without NUL or unpaired surrogates (which
#: encode_json refuses, tested elsewhere), exponent-like text among them.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")) | \
    st.sampled_from(["1e+16", '"1e+16"', "\\", "e+", '-2.5e+300"'])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(TEXT, VALUES, max_size=5))
def test_any_payload_decodes_to_itself(value: dict[str, Any]) -> None:
    text = encode_json(value, "payload")
    assert same(json.loads(text), value)
    # Only a float's spelling may differ from the stdlib's text.
    stdlib = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert text == stdlib or "e+" in stdlib


@pytest.mark.parametrize("value,text", [
    (1e16, "10000000000000000.0"),
    (-1e16, "-10000000000000000.0"),
    (1.5e300, "15" + "0" * 299 + ".0"),
    (1.2345678901234567e19, "12345678901234567000.0"),
    (9999999999999998.0, "9999999999999998.0"),  # below 1e16: positional already
    (2.5e-8, "2.5e-08"),  # a negative exponent: jsonb keeps the fraction, a float
])
def test_floats_of_1e16_and_more_are_written_positionally(value: float, text: str) -> None:
    assert encode_json({"x": value}, "payload") == f'{{"x":{text}}}'
    assert json.loads(text) == value and type(json.loads(text)) is float


@pytest.mark.parametrize("text", [
    '{"s":"1e+16"}', '{"1e+16":1}', '{"s":"a\\"1e+16\\"b"}', '{"s":"\\\\","n":"2e+5"}',
    '{"s":"e+"}', '{"n":12}',
])
def test_exponents_inside_strings_are_left_alone(text: str) -> None:
    assert floats_stay_floats(text) == text


def test_a_string_next_to_a_float_is_left_alone() -> None:
    value = {"s": 'say "1e+16" \\', "f": 1e16, "list": ["2e+20", 2e20]}
    text = encode_json(value, "payload")
    assert '"say \\"1e+16\\" \\\\"' in text and '"2e+20"' in text
    assert "10000000000000000.0" in text and "200000000000000000000.0" in text
    assert same(json.loads(text), value)

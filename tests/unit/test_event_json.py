"""Events in read replies: `event_json` (orjson) says what json.dumps of `event_to_dict`
says, value for value and type for type, and falls back where orjson cannot."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.events import RecordedEvent
from eventstore.server.wire import event_json, event_to_dict
from tests.calls import record_calls

PAYLOADS = st.dictionaries(st.text(), st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20), max_size=6)
TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 31),
                     timezones=st.sampled_from([UTC, ZoneInfo("Europe/Berlin"),
                                                timezone(timedelta(hours=-5, minutes=-30))]))


def event(payload: dict[str, Any], metadata: dict[str, Any], at: datetime) -> RecordedEvent:
    return RecordedEvent(id=UUID("0192f3c4-5d6e-7f80-91a2-b3c4d5e6f708"), type="bank.Deposited",
                         aggregate_id="account-1", version=7, payload=payload,
                         metadata=metadata, timestamp=at, position=(123 << 20) | 4,
                         schema_version=2)


def typed(value: Any) -> Any:
    """The value with its types spelled out (1 == 1.0 == True is not enough here)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(PAYLOADS, PAYLOADS, TIMES)
def test_the_reply_decodes_to_what_json_dumps_wrote(payload: dict[str, Any],
                                                    metadata: dict[str, Any],
                                                    at: datetime) -> None:
    e = event(payload, metadata, at)
    assert typed(json.loads(event_json(e))) == typed(json.loads(json.dumps(event_to_dict(e))))


@pytest.mark.parametrize("payload", [
    {"n": 2**64}, {"n": -(2**63) - 1}, {"deep": [{"n": 10**30}]},
    {"text": "ünïcødé \u2603 \U0001F600 \x1f \" \\ / </script>"}, {"f": 1e16, "g": 5e-324},
])
def test_long_integers_text_and_floats(payload: dict[str, Any]) -> None:
    for at in (datetime(2026, 12, 1, 23, 30, tzinfo=UTC),
               datetime(2026, 12, 1, 23, 30, 0, 5, tzinfo=ZoneInfo("Europe/Berlin"))):
        e = event(payload, {"trace": "x"}, at)
        decoded = json.loads(event_json(e))
        assert typed(decoded) == typed(json.loads(json.dumps(event_to_dict(e))))
        assert decoded["timestamp"] == at.isoformat() and decoded["id"] == str(e.id)


def test_orjson_writes_ordinary_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken: json.dumps only for what orjson refuses."""
    calls = record_calls(monkeypatch, json, "dumps")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    event_json(event({"amount": 1250, "note": "x"}, {}, at))
    assert calls == []
    event_json(event({"amount": 2**70}, {}, at))
    assert len(calls) == 1

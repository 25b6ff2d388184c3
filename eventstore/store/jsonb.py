"""How stored JSON comes back (PostgreSQL's jsonb, SQLite's text): decoded by orjson,
exactly as json.loads would.

Decoding is most of a read's client time: the stdlib's json.loads took 4.1 us for an
event's payload and empty metadata (given bytes, it first detects their encoding), orjson
0.26 us. With it, the library's read_all went from 98k to 142k events/s and read_stream
from 104k to 145k (benchmark machine, 4 alternating rounds; README, "Reads").

But orjson is not a drop-in: it turns an integer past 64 bits into a float, silently
(123456789012345678901234567890 -> 1.2345678901234568e+29), and refuses a number past a
double's range, where json.loads returns an int or inf. An event store returns what was
stored, so any text with a run of 19 digits (where an integer may no longer fit) and
anything orjson refuses goes to json.loads. Every integer of at most 18 digits is exact in
both, and so is every float (both parse correctly rounded): tests/unit/test_jsonb.py
compares the two on such values and PostgreSQL's own number formats.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads

_LONG_DIGITS = re.compile(rb"\d{19}")
_LONG_DIGITS_TEXT = re.compile(r"\d{19}")


def loads(data: bytes | str) -> Any:
    """A JSON document as json.loads decodes it (see the module doc for why not always
    orjson). Bytes from PostgreSQL, text from SQLite."""
    if isinstance(data, bytes):
        long_digits = _LONG_DIGITS.search(data) is not None
    else:
        long_digits = _LONG_DIGITS_TEXT.search(data) is not None
    if not long_digits:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # e.g. a number out of a double's range
    return json.loads(data)


def decode_with_loads(conn: psycopg.Connection[Any]) -> None:
    """Decode json and jsonb on `conn` with `loads`: a pool's `configure`, or called on a
    dedicated connection. Per connection, over the adapters it copied from psycopg's global
    ones when it connected, so adapters a program registers globally still reach the
    store's connections, and other psycopg users in the process keep json.loads."""
    set_json_loads(loads, conn)


async def decode_with_loads_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """`decode_with_loads` for the async pool."""
    set_json_loads(loads, conn)

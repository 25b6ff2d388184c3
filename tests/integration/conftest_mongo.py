"""Fixtures for tests that need the MongoDB wire server (FerretDB), wired into tests/conftest.py.

`ferretdb_server` starts one FerretDB per test session (building it on first use);
`mongo_url` gives each test its own empty database on it, so tests never share state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count

import pytest

from tests.harness.ferretdb import FerretDBServer
from tests.harness.fixtures import started_or_skipped

_databases = count()


@pytest.fixture(scope="session")
def ferretdb_server() -> Iterator[FerretDBServer]:
    """The throwaway FerretDB server. Skips the tests that need it when it cannot start
    here, unless CI or EVENTSTORE_REQUIRE_MONGO is set (then the failure is an error)."""
    yield from started_or_skipped(FerretDBServer(), "FerretDB (MongoDB wire server)",
                                  "EVENTSTORE_REQUIRE_MONGO")


@pytest.fixture
def mongo_url(ferretdb_server: FerretDBServer) -> str:
    """mongodb://127.0.0.1:PORT/<fresh database> for one test. Restarts the session server
    if an earlier test stopped it and did not bring it back."""
    ferretdb_server.start()
    return f"{ferretdb_server.url}t{os.getpid()}_{next(_databases)}"

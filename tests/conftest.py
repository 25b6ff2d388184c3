"""Session-wide servers for the tests: each started once, on a loopback port, always stopped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count

import pytest

from tests.harness.fixtures import started_or_skipped
from tests.harness.postgres import PostgresServer

_databases = count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The throwaway PostgreSQL server. Skips the tests that need it when it cannot start
    here, unless CI or EVENTSTORE_REQUIRE_POSTGRES is set (then the failure is an error)."""
    yield from started_or_skipped(PostgresServer(), "PostgreSQL", "EVENTSTORE_REQUIRE_POSTGRES")


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the shared server for one test."""
    return postgres_server.create_database(f"t{os.getpid()}_{next(_databases)}")


# The MongoDB wire server (FerretDB): `ferretdb_server` per session, `mongo_url` per test.
from tests.integration.conftest_mongo import ferretdb_server, mongo_url  # noqa: E402, F401

# The S3-compatible server (versitygw): `s3_server` per session, `s3_bucket` per test.
from tests.integration.conftest_s3 import s3_bucket, s3_server  # noqa: E402, F401

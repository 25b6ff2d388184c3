"""Fixtures for tests that need an S3-compatible server (versitygw), wired into tests/conftest.py.

`s3_server` starts one per test session (building it on first use); `s3_bucket` gives each
test its own empty bucket and points the AWS_* environment at the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count

import pytest

from tests.harness.fixtures import started_or_skipped
from tests.harness.s3 import S3Server

_buckets = count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The throwaway S3 server. Skips the tests that need it when it cannot start here,
    unless CI or EVENTSTORE_REQUIRE_S3 is set (then the failure is an error)."""
    yield from started_or_skipped(S3Server(), "the S3-compatible server (versitygw)",
                                  "EVENTSTORE_REQUIRE_S3")


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket for one test, with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL and AWS_DEFAULT_REGION set for the server."""
    name = s3_server.create_bucket(f"t{os.getpid()}-{next(_buckets)}")
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return name

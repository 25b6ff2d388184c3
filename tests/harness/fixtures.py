"""The shape the session fixtures of the throwaway servers share (tests/conftest.py,
tests/integration/conftest_mongo.py, conftest_s3.py): start the server, or skip the tests
that need it with the reason, unless the run requires it; always close it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.harness.process import ServerProcess

S = TypeVar("S", bound=ServerProcess)


def required(require_env: str) -> bool:
    """Whether a server that cannot start is an error rather than a skip: on CI, or when
    `require_env` is set (.ci/run sets every EVENTSTORE_REQUIRE_*)."""
    return bool(os.environ.get("CI") or os.environ.get(require_env))


def started_or_skipped(server: S, what: str, require_env: str) -> Iterator[S]:
    """For `yield from` in a fixture: `server` started, closed after the session. When it
    cannot start, the tests skip naming `what` and why, or fail if `required`."""
    try:
        try:
            server.start()
        except Exception as exc:
            if required(require_env):
                raise
            pytest.skip(f"{what} could not be started here: {exc} "
                        f"(set {require_env}=1 to make this an error)")
        yield server
    finally:
        server.close()

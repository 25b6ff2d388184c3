"""The shape the session fixtures of the throwaway servers share (tests/conftest.py,
tests/integration/conftest_mongo.py, conftest_s3.py): start the server, or skip the tests
that need it with the reason, unless the run requires it; always close it."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TypeVar

import pytest

from tests.harness.process import ServerProcess

S = TypeVar("S", bound=ServerProcess)


def required(require_env: str) -> bool:
    """Whether what a suite needs but cannot get here is an error rather than a skip: when
    `require_env` is 1, true or yes. The one rule for every EVENTSTORE_REQUIRE_* (.ci/run
    sets each it needs; CI alone implies none, as a CI machine may lack Docker for kind)."""
    return os.environ.get(require_env, "").strip().lower() in {"1", "true", "yes"}


def started_or_skipped(server: S, what: str, require_env: str) -> Generator[S, None, None]:
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

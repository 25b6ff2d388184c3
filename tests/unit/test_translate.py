"""Both drivers' errors are classified in one place (eventstore/store/translate.py): a
failure of the database is StoreUnavailable (retried), a failure of the request is not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from eventstore.errors import SchemaError, StoreUnavailable, ValidationError
from eventstore.snapshots.base import SnapshotUnavailable
from eventstore.store.translate import postgres_error, sqlite_error, transient


def _sqlite_error(path: Path, sql: str, locked: bool = False) -> sqlite3.Error:
    """A real sqlite3 error: `sql` on a fresh file, with another writer holding it if
    `locked`."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    if locked:
        holder.execute("BEGIN IMMEDIATE")
    conn = sqlite3.connect(path, timeout=0.01, isolation_level=None)
    try:
        with pytest.raises(sqlite3.Error) as caught:
            conn.execute(sql)
        return caught.value
    finally:
        conn.close()
        holder.close()


def test_sqlite_locked_is_transient_and_bad_sql_is_not(tmp_path: Path) -> None:
    locked = _sqlite_error(tmp_path / "a.db", "INSERT INTO t VALUES (1)", locked=True)
    assert "locked" in str(locked)
    assert isinstance(transient(locked), StoreUnavailable)
    syntax = _sqlite_error(tmp_path / "b.db", "INSERT INTO nowhere VALUES (")
    assert transient(syntax) is None
    missing = _sqlite_error(tmp_path / "c.db", "SELECT * FROM es_events")
    assert transient(missing) is None
    assert isinstance(sqlite_error(missing), SchemaError)


def test_postgres_operational_errors_are_transient_and_constraints_are_not() -> None:
    assert isinstance(transient(psycopg.OperationalError("server closed the connection")),
                      StoreUnavailable)
    assert isinstance(transient(psycopg.errors.QueryCanceled("statement timeout")),
                      StoreUnavailable)
    assert transient(psycopg.errors.UniqueViolation("duplicate key")) is None
    assert transient(psycopg.errors.SyntaxError("syntax error")) is None
    assert isinstance(postgres_error(psycopg.errors.UndefinedTable("no es_events")),
                      SchemaError)


def test_postgres_limits_are_the_requests_fault_not_unavailability() -> None:
    """Class 54 (a jsonb value past 256 MiB, an index row too large, a statement too
    complex) fails the same way again: a ValidationError, never StoreUnavailable (seen:
    a restore chunk past jsonb's cap was reported as "PostgreSQL is unavailable")."""
    for exc in (psycopg.errors.ProgramLimitExceeded("total size of jsonb array elements exceeds"),
                psycopg.errors.StatementTooComplex("stack depth limit exceeded")):
        assert isinstance(postgres_error(exc), ValidationError), exc
        assert transient(exc) is None
    assert isinstance(postgres_error(psycopg.errors.DiskFull("no space left")), StoreUnavailable)


def test_library_errors_pass_as_they_are() -> None:
    unavailable = SnapshotUnavailable("snapshot store down")
    assert transient(unavailable) is unavailable
    assert transient(RuntimeError("a handler's bug")) is None

"""Driver errors (psycopg, sqlite3) as this library's errors: the one place they are told apart.

Everything above the backends (projections, retention, the server) catches library errors
only. The one rule that matters most: a failure of the *database* (it is down, restarting,
busy, locked by another writer, out of connections) becomes StoreUnavailable, which callers
retry; a failure of the *request* (bad SQL in a projection, a constraint it broke) stays what
it is. The projection runner relies on that split: a transient error rolls the batch back
and retries it later, anything else counts against the event and may park it as a dead
letter. Before this module the runner caught `psycopg.OperationalError` only, so on SQLite a
"database is locked" from another writer parked good events.
"""

from __future__ import annotations

import sqlite3

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

from eventstore.errors import EventStoreError, SchemaError, StoreUnavailable, ValidationError

#: SQLite's primary result codes (the low byte of an extended code) that say the database
#: could not serve the call now but may later: busy, locked, I/O error, cannot open, protocol.
_SQLITE_TRANSIENT_CODES = frozenset({5, 6, 10, 14, 15})
#: The same, by message, for errors that carry no code.
_SQLITE_TRANSIENT_TEXT = ("database is locked", "database table is locked", "disk i/o error",
                          "unable to open database file", "locking protocol")


def postgres_connection_lost(exc: BaseException) -> bool:
    """True for errors that say a pool's connections are unusable (not for conflicts,
    races or bad input, which leave the connection fine)."""
    if isinstance(exc, PoolTimeout | OSError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    # No SQLSTATE: the client lost the connection. 08: connection exceptions; 57P: the
    # server is shutting down, crashed or is starting up.
    state = exc.sqlstate or ""
    return not state or state.startswith(("08", "57P"))


def postgres_error(exc: BaseException) -> EventStoreError | None:
    """The library error for a psycopg (or pool) error; None when it is not one we
    translate (a programming error, a constraint: the caller's to handle)."""
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no PostgreSQL connection available: {exc}")
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return SchemaError("the event store schema is missing: run `eventstore migrate` first")
    if isinstance(exc, psycopg.errors.UndefinedFunction):
        return SchemaError("the event store schema is out of date: run `eventstore migrate`")
    # Class 54: a value or statement past one of PostgreSQL's limits (an index row, a
    # jsonb value, the number of parameters). psycopg counts it operational, but it is
    # the request's: the same request fails again, so it is not "unavailable".
    if isinstance(exc, psycopg.OperationalError) and (exc.sqlstate or "").startswith("54"):
        return ValidationError(f"PostgreSQL refused it as past one of its limits: {exc}")
    # OperationalError covers lost connections, server shutdown, statement timeouts,
    # deadlocks and serialization failures (class 40): all worth a retry.
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"PostgreSQL is unavailable: {exc}")
    if isinstance(exc, psycopg.InterfaceError):  # a connection closed under us
        return StoreUnavailable(f"PostgreSQL connection unusable: {exc}")
    return None


def sqlite_transient(exc: BaseException) -> bool:
    """True when SQLite could not serve the call now but may later (another writer holds
    the lock past the busy timeout, an I/O error)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _SQLITE_TRANSIENT_CODES:
        return True
    return str(exc).lower().startswith(_SQLITE_TRANSIENT_TEXT)


def sqlite_error(exc: BaseException) -> EventStoreError | None:
    """The library error for a sqlite3 error raised by the event store's own statements;
    None when it is not one we translate."""
    if isinstance(exc, sqlite3.OperationalError):
        if "no such table" in str(exc):
            return SchemaError("the event store schema is missing: run `eventstore migrate` first")
        # The store's own statements are known good: any other operational error is the
        # file's state (locked, unreadable, full), not the request's.
        return StoreUnavailable(f"SQLite error: {exc}")
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return StoreUnavailable("the event store is closed")
    return None


def transient(exc: BaseException) -> StoreUnavailable | None:
    """`exc` as StoreUnavailable when it says the database (either driver's) failed for
    now, whoever raised it (the library or a projection's own SQL); else None."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if sqlite_transient(exc):
        return StoreUnavailable(f"SQLite is busy or unavailable: {exc}")
    if isinstance(exc, psycopg.Error | PoolTimeout):
        error = postgres_error(exc)
        if isinstance(error, StoreUnavailable):
            return error
    return None

"""The library's exceptions: one root, children named for what went wrong.

Every class carries what the server needs to answer it: the HTTP `status` and the
`code` that goes in the reply's `error` field. `error_reply` turns an error into the one
reply shape, `{"error": code, "message": ..., **details}`, and `error_from_reply` turns
such a reply back into the same class, so the HTTP client raises what the library would
have raised. Codes are looked up by the most derived class (no matching on names), so a
`SnapshotUnavailable` answers as itself and not as the `StoreUnavailable` it also is.

Old import paths (`eventstore.snapshots.base.SnapshotUnavailable`,
`eventstore.settings.SettingsError`, ...) re-export these classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

#: code -> class, filled by `EventStoreError.__init_subclass__` for every class that
#: names its own code. Two classes may not share one (the client could not tell them apart).
_BY_CODE: dict[str, type[EventStoreError]] = {}


class EventStoreError(Exception):
    """Root of every error this library raises on purpose."""

    #: The HTTP status of the reply that reports this error.
    status: ClassVar[int] = 500
    #: The reply's `error` field: stable, snake_case, one per class.
    code: ClassVar[str] = "internal"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            taken = _BY_CODE.get(cls.code)
            if taken is not None and taken.__qualname__ != cls.__qualname__:
                raise TypeError(f"error code {cls.code!r} of {cls.__qualname__} is taken by "
                                f"{taken.__qualname__}")
            _BY_CODE[cls.code] = cls

    def details(self) -> dict[str, Any]:
        """The reply's fields besides `error` and `message` (JSON values), from which
        `from_reply` builds the error again."""
        return {}

    @classmethod
    def from_reply(cls, message: str, details: Mapping[str, Any]) -> Self:
        """The error again, from a reply's message and fields (the client's side)."""
        return cls(message)


_BY_CODE[EventStoreError.code] = EventStoreError


class ValidationError(EventStoreError, ValueError):
    """Input was refused before anything was written; nothing stored has changed."""

    status = 400
    code = "validation_error"


class InvalidRequest(ValidationError):
    """The request does not match the API's schema (FastAPI's 422): `errors` says where
    and why, never echoing the input."""

    status = 422
    code = "invalid_request"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.errors = list(errors or [])
        super().__init__(message)

    def details(self) -> dict[str, Any]:
        return {"details": self.errors}

    @classmethod
    def from_reply(cls, message: str, details: Mapping[str, Any]) -> Self:
        found = details.get("details")
        return cls(message, list(found) if isinstance(found, list) else None)


class PayloadTooLarge(ValidationError):
    """The request body is larger than the server accepts (EVENTSTORE_MAX_BODY_BYTES)."""

    status = 413
    code = "body_too_large"


class UnsupportedMediaType(ValidationError):
    """An append was not sent as JSON (Content-Type application/json or a +json type):
    refused before its body is read, so a cross-site form post never reaches the store."""

    status = 415
    code = "unsupported_media_type"


class BadRequest(ValidationError):
    """The request's headers are malformed (several Authorization headers, a
    Content-Length that is not a number); refused before any routing."""

    status = 400
    code = "bad_request"


class HeadersTooLarge(ValidationError):
    """The request line and headers are larger than the server reads
    (EVENTSTORE_MAX_HEAD_BYTES); the connection is closed after the reply."""

    status = 431
    code = "headers_too_large"


class RequestTimeout(EventStoreError):
    """The client did not finish sending the request head in time; the connection is
    closed after the reply."""

    status = 408
    code = "request_timeout"


class Unauthorized(EventStoreError):
    """The server refused the bearer token (HTTP 401)."""

    status = 401
    code = "unauthorized"


class NotFound(EventStoreError, LookupError):
    """What the request names does not exist (a route, a projection, a snapshot)."""

    status = 404
    code = "not_found"


class MethodNotAllowed(EventStoreError):
    """The path exists but does not take this HTTP method (the reply's Allow header
    lists the ones it takes)."""

    status = 405
    code = "method_not_allowed"


class AggregateNotFound(NotFound):
    """No events exist for this aggregate (at the requested version or time)."""

    code = "aggregate_not_found"


class ConcurrencyError(EventStoreError):
    """The stream's version did not match the expected version.

    Carries the stream's actual version so a caller can reload and retry.
    """

    status = 409
    code = "conflict"

    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual_version = actual
        # The value ("no_stream"), not the enum's name: the same message whether the
        # store raised it or the client rebuilt it from a reply.
        shown = getattr(expected, "value", expected)
        super().__init__(
            f"stream {stream_id!r}: expected version {shown}, but the stream is at "
            f"version {actual}. Reload the aggregate and retry the command."
        )

    def details(self) -> dict[str, Any]:
        expected = self.expected
        value = getattr(expected, "value", expected)  # ExpectedVersion -> "any", ...
        return {"stream_id": self.stream_id, "actual_version": self.actual_version,
                "expected_version": value if isinstance(value, int | str) else str(value)}

    @classmethod
    def from_reply(cls, message: str, details: Mapping[str, Any]) -> Self:
        from eventstore.events import ExpectedVersion  # events imports this module

        expected: object = details.get("expected_version")
        if isinstance(expected, str) and expected in ExpectedVersion._value2member_map_:
            expected = ExpectedVersion(expected)
        return cls(str(details["stream_id"]), expected, int(details["actual_version"]))


class CheckpointConflict(EventStoreError):
    """A consumer's checkpoint was not moved forward: the stored position is already at or
    past the one given (another instance of the consumer got there first). Nothing was
    written; read the checkpoint again and go on from there."""

    status = 409
    code = "checkpoint_conflict"

    def __init__(self, consumer: str, position: int, stored_position: int) -> None:
        self.consumer = consumer
        self.position = position
        self.stored_position = stored_position
        super().__init__(
            f"consumer {consumer!r}: checkpoint {position} is not past the stored checkpoint "
            f"{stored_position}. Another instance has handled these events; read the "
            "checkpoint again and continue after it.")

    def details(self) -> dict[str, Any]:
        return {"consumer": self.consumer, "position": self.position,
                "stored_position": self.stored_position}

    @classmethod
    def from_reply(cls, message: str, details: Mapping[str, Any]) -> Self:
        return cls(str(details["consumer"]), int(details["position"]),
                   int(details["stored_position"]))


class ReplayTooLong(EventStoreError):
    """A load would replay more events than the caller allows (the server's bound on
    `GET /aggregates`); nothing was loaded. Usually no snapshot is near that version yet."""

    status = 422
    code = "replay_too_long"


class StoreUnavailable(EventStoreError):
    """The backend could not be reached or failed transiently; safe to retry."""

    status = 503
    code = "unavailable"


class NotReady(StoreUnavailable):
    """The server's database does not answer or its schema is not current (/readyz)."""

    code = "not_ready"


class ShuttingDown(StoreUnavailable):
    """The server is stopping (SIGTERM): it is out of the Service and drains (/readyz)."""

    code = "shutting_down"


class TooManyConnections(StoreUnavailable):
    """The server holds EVENTSTORE_MAX_CONNECTIONS connections already; retry later."""

    code = "too_many_connections"


class TooManySubscribers(StoreUnavailable):
    """The server serves EVENTSTORE_MAX_SUBSCRIBERS subscriptions already; retry later or
    on another replica."""

    code = "too_many_subscribers"


class LookupsUnsupported(EventStoreError, NotImplementedError):
    """The projection keeps no read model that can be looked up by key (HTTP 501)."""

    status = 501
    code = "no_lookups"


class SnapshotUnavailable(StoreUnavailable):
    """The snapshot store could not be reached or failed transiently.

    Callers load from events instead; retrying later is safe.
    """

    code = "snapshot_store_unavailable"


class SchemaError(EventStoreError):
    """The database schema is missing or older than this code; run `eventstore migrate`."""

    status = 503
    code = "schema"


class CorruptSnapshot(EventStoreError):
    """A stored snapshot could not be decoded (missing field, wrong type, bad state).

    Stores never return such a snapshot: `latest` and `history` skip it with a warning.
    """

    code = "corrupt_snapshot"


class UpcastError(EventStoreError):
    """A stored event could not be brought to the current schema version."""

    code = "upcast_error"


class BackupError(EventStoreError):
    """A backup could not be written or a restore was refused; the message says why."""

    code = "backup_error"


class BackupLocked(BackupError):
    """Another backup or expiry holds the backup location; nothing was written."""

    status = 409
    code = "backup_locked"

    def __init__(self, location: str, timeout: float = 0.0, holder: str = "") -> None:
        self.location = location
        self.timeout = timeout
        self.holder = holder
        waited = f" (waited {timeout:g} s)" if timeout > 0 else ""
        super().__init__(
            f"{location}: another backup or expire-backups holds this location{waited}"
            f"{': ' + holder if holder else ''}. Two writers would corrupt its chain, so "
            "nothing was written: try again when it has finished, or pass --lock-timeout "
            "SECONDS to wait for it")

    # Raised by the CLI and the backup Jobs, never sent as an HTTP reply: its location is
    # in its message, and the reply shape (ErrorOut) gains no fields for it.
    @classmethod
    def from_reply(cls, message: str, details: Mapping[str, Any]) -> Self:
        error = cls("")
        error.args = (message,)
        return error


class ConfigError(EventStoreError):
    """The environment does not describe a server we can start; names the variable."""

    code = "config_error"


class SettingsError(EventStoreError, ValueError):
    """A settings file was refused; the message names the file, the key and the reason."""

    status = 400
    code = "invalid_settings"

    def __init__(
        self, file: str, key: str, reason: str, others: tuple[tuple[str, str, str], ...] = ()
    ) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        #: Every further refusal as (file, key, reason): an edit reports all its errors.
        self.others = tuple(others)
        super().__init__("; ".join(f"{f}: {k}: {r}" for f, k, r in self.errors))

    @property
    def errors(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.file, self.key, self.reason), *self.others)

    @classmethod
    def combine(cls, errors: list[SettingsError]) -> SettingsError:
        every = [e for error in errors for e in error.errors]
        return cls(*every[0], others=tuple(every[1:]))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.file, self.key, self.reason, self.others))

    def details(self) -> dict[str, Any]:
        return {"errors": [{"file": f, "key": k, "reason": r} for f, k, r in self.errors]}

    @classmethod
    def from_reply(cls, message: str, details: Mapping[str, Any]) -> Self:
        every = [(str(e["file"]), str(e["key"]), str(e["reason"]))
                 for e in details.get("errors") or ()]
        if not every:
            return cls("<server>", "<unknown>", message)
        return cls(*every[0], others=tuple(every[1:]))


def error_class(code: str) -> type[EventStoreError] | None:
    """The class whose replies carry `code`, if any."""
    return _BY_CODE.get(code)


def error_reply(exc: EventStoreError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body that report `exc`: the one reply shape."""
    return exc.status, error_body(exc.code, str(exc), **exc.details())


def error_bytes(exc: EventStoreError) -> tuple[int, bytes]:
    """`error_reply` with the body encoded, for the ASGI and protocol layers that write
    their replies themselves."""
    status, body = error_reply(exc)
    return status, json.dumps(body).encode()


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The one reply shape. Called directly only for a framework refusal whose status no
    library class names (error_handlers.py); every other reply comes from an error class
    through `error_reply`."""
    return {"error": code, "message": message, **details}


#: The class for a status whose code the client does not know (an older or newer server).
_BY_STATUS: dict[int, type[EventStoreError]] = {
    400: ValidationError, 401: Unauthorized, 404: NotFound, 405: MethodNotAllowed, 408: RequestTimeout,
    409: EventStoreError, 413: PayloadTooLarge, 415: UnsupportedMediaType,
    422: InvalidRequest, 431: HeadersTooLarge,
    503: StoreUnavailable,
}


def error_from_reply(status: int, body: Mapping[str, Any], fallback_message: str = ""
                     ) -> EventStoreError:
    """The library error a reply reports: the class of its `error` code, else one by
    status; a reply that lacks a field its class needs is reported as its status class."""
    code = str(body.get("error") or "")
    message = str(body.get("message") or body.get("detail") or fallback_message)
    cls = _BY_CODE.get(code)
    if cls is not None and cls is not EventStoreError:
        try:
            return cls.from_reply(message, body)
        except (KeyError, TypeError, ValueError):
            pass
    by_status = _BY_STATUS.get(status)
    if by_status is not None and by_status is not EventStoreError:
        return by_status(message)
    return EventStoreError(f"HTTP {status}: {message}")

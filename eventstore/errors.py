"""The library's exceptions: one root, children named for what went wrong."""

from __future__ import annotations


class EventStoreError(Exception):
    """Root of every error this library raises on purpose."""


class ValidationError(EventStoreError, ValueError):
    """Input was refused before anything was written; nothing stored has changed."""


class ConcurrencyError(EventStoreError):
    """The stream's version did not match the expected version.

    Carries the stream's actual version so a caller can reload and retry.
    """

    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual_version = actual
        super().__init__(
            f"stream {stream_id!r}: expected version {expected}, but the stream is at "
            f"version {actual}. Reload the aggregate and retry the command."
        )


class CheckpointConflict(EventStoreError):
    """A consumer's checkpoint was not moved forward: the stored position is already at or
    past the one given (another instance of the consumer got there first). Nothing was
    written; read the checkpoint again and go on from there."""

    def __init__(self, consumer: str, position: int, stored_position: int) -> None:
        self.consumer = consumer
        self.position = position
        self.stored_position = stored_position
        super().__init__(
            f"consumer {consumer!r}: checkpoint {position} is not past the stored checkpoint "
            f"{stored_position}. Another instance has handled these events; read the "
            "checkpoint again and continue after it.")


class StoreUnavailable(EventStoreError):
    """The backend could not be reached or failed transiently; safe to retry."""


class SchemaError(EventStoreError):
    """The database schema is missing or older than this code; run `eventstore migrate`."""


class UpcastError(EventStoreError):
    """A stored event could not be brought to the current schema version."""


class ReplayTooLong(EventStoreError):
    """A load would replay more events than the caller allows (the server's bound on
    `GET /aggregates`); nothing was loaded. Usually no snapshot is near that version yet."""

"""The aggregate base class: state rebuilt from events, changes recorded as new events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

from eventstore.errors import ValidationError
from eventstore.events import JSONObject, NewEvent, RecordedEvent
from eventstore.upcasting import NO_UPCASTERS, UpcasterRegistry

_RESERVED = frozenset({"id", "version"})


class Aggregate:
    """Subclass it, write `apply` (or `apply_<EventType>` methods) and command methods that
    call `raise_event`. `Account("acc-1")` starts a new aggregate at version 0.

    Snapshots store `snapshot_state()` (public attributes by default) tagged with the class's
    `state_schema_version`; bump that number when the state's shape changes, and optionally
    define `upcast_state` to convert older snapshot states instead of replaying.
    """

    #: Bump when the shape of snapshot_state() changes; older snapshots are then not trusted.
    state_schema_version: ClassVar[int] = 1
    #: The name snapshots are filed under and events are tagged with; defaults to the
    #: class name.
    aggregate_type: ClassVar[str] = ""
    #: Upcasters applied to stored events before `apply` sees them; a Repository uses these
    #: unless it is given its own, and so do the store pods' snapshotter and /aggregates.
    upcasters: ClassVar[UpcasterRegistry] = NO_UPCASTERS

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = 0
        self._changes: list[NewEvent] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("aggregate_type"):
            cls.aggregate_type = cls.__name__

    # -- events ------------------------------------------------------------------------

    def apply(self, event: RecordedEvent) -> None:
        """Mutate state from one event. The default calls `apply_<event.type>` if defined."""
        handler = getattr(self, f"apply_{event.type.replace('.', '_').replace(':', '_')}", None)
        if handler is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no apply_{event.type} method and does not override "
                "apply(): define one to handle this event type"
            )
        handler(event)

    def raise_event(self, type: str, payload: JSONObject | None = None,
                    metadata: JSONObject | None = None, schema_version: int = 1) -> NewEvent:
        """Record a new event and apply it at once, so the aggregate's state stays current."""
        event = NewEvent(type=type, payload=dict(payload or {}), metadata=dict(metadata or {}),
                         schema_version=schema_version)
        self.apply(RecordedEvent(id=event.id, type=event.type, aggregate_id=self.id,
                                 version=self.version + 1, payload=event.payload,
                                 metadata=event.metadata, timestamp=datetime.now(UTC),
                                 position=0, schema_version=schema_version))
        self.version += 1
        self._changes.append(event)
        return event

    def get_uncommitted_changes(self) -> list[NewEvent]:
        return list(self._changes)

    def mark_changes_committed(self) -> None:
        self._changes.clear()

    def load_from_history(self, events: Iterable[RecordedEvent]) -> None:
        for event in events:
            if event.version != self.version + 1:
                raise ValidationError(
                    f"{type(self).__name__} {self.id}: event version {event.version} does not "
                    f"follow version {self.version}; the history has a gap or is out of order"
                )
            self.apply(event)
            self.version = event.version

    # -- snapshots ---------------------------------------------------------------------

    def snapshot_state(self) -> JSONObject:
        """The state to snapshot: public attributes except id and version, as JSON."""
        state = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in _RESERVED}
        try:
            return json.loads(json.dumps(state, allow_nan=False))  # type: ignore[no-any-return]
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"{type(self).__name__} state is not JSON-serializable ({exc}): override "
                "snapshot_state() and restore_state() for this aggregate"
            ) from exc

    def restore_state(self, state: JSONObject) -> None:
        """Set state from a snapshot made by snapshot_state()."""
        for key, value in state.items():
            if key.startswith("_") or key in _RESERVED:
                raise ValidationError(f"snapshot state key {key!r} is not a public attribute")
            setattr(self, key, value)

    @classmethod
    def upcast_state(cls, state: JSONObject, from_version: int) -> JSONObject | None:
        """Convert a snapshot state of an older schema version; None means 'replay instead'."""
        return None

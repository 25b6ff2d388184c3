"""Schema evolution: upcasters turn stored events of an old shape into the current one on read.

Stored events are never rewritten. Each event type has a current schema version; an
upcaster takes a payload at version n and returns it at n + 1, so chains v1 -> v2 -> v3
compose and each step is written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

from eventstore.errors import UpcastError, ValidationError
from eventstore.events import JSONObject, RecordedEvent

Upcaster = Callable[[JSONObject], JSONObject]


class UpcasterRegistry:
    """Upcasters by (event type, from version)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}
        self._current: dict[str, int] = {}

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: `@registry.register("Deposited", 1)` turns v1 payloads into v2."""

        def decorate(step: Upcaster) -> Upcaster:
            self.add(event_type, from_version, step)
            return step

        return decorate

    def add(self, event_type: str, from_version: int, step: Upcaster) -> None:
        if from_version < 1:
            raise ValidationError(f"upcaster for {event_type} from version {from_version}: "
                                  "versions start at 1")
        if (event_type, from_version) in self._steps:
            raise ValidationError(f"an upcaster for {event_type} v{from_version} is already "
                                  "registered")
        self._steps[(event_type, from_version)] = step
        self._current[event_type] = max(self._current.get(event_type, 1), from_version + 1)

    def current_version(self, event_type: str) -> int:
        """The version new events of this type should be written with."""
        return self._current.get(event_type, 1)

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        target = self._current.get(event.type)
        if target is None or event.schema_version >= target:
            return event
        payload = event.payload
        version = event.schema_version
        while version < target:
            step = self._steps.get((event.type, version))
            if step is None:
                raise UpcastError(
                    f"{event.type} event {event.id} is at schema version {version} and no "
                    f"upcaster takes it to {version + 1}: register one with "
                    f"registry.add({event.type!r}, {version}, fn)"
                )
            try:
                payload = step(dict(payload))
            except Exception as exc:
                raise UpcastError(
                    f"upcasting {event.type} event {event.id} from v{version} failed: {exc}"
                ) from exc
            if not isinstance(payload, dict):
                raise UpcastError(f"the upcaster for {event.type} v{version} returned "
                                  f"{type(payload).__name__}, not a dict")
            version += 1
        return dataclasses.replace(event, payload=payload, schema_version=version)

    def upcast_all(self, events: Iterable[RecordedEvent]) -> Iterator[RecordedEvent]:
        for event in events:
            yield self.upcast(event)


#: An empty registry: reads pass events through unchanged.
NO_UPCASTERS = UpcasterRegistry()

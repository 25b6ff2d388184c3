"""The server's snapshots seen through the HTTP client, as a SnapshotStore.

`Repository(EventStoreClient(url, token), Account)` loads through this: the newest snapshot
comes from the pods' snapshot store and only the events after it cross the network. The
pods take the snapshots themselves (their snapshotter, at the ConfigMap's cadence), so
`taken_by_server` tells the Repository not to write its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from eventstore.errors import StoreUnavailable, ValidationError
from eventstore.snapshots.base import Snapshot, SnapshotStore, SnapshotUnavailable

if TYPE_CHECKING:
    from eventstore.server.client import EventStoreClient


class HTTPSnapshotStore(SnapshotStore):
    """Reads (and, when asked, writes) snapshots through `GET`/`PUT /streams/{id}/snapshot`."""

    #: The pods' snapshotter takes the snapshots; a Repository over this store takes none.
    taken_by_server = True

    def __init__(self, client: EventStoreClient) -> None:
        self.client = client

    def save(self, snapshot: Snapshot) -> None:
        try:
            self.client.put_snapshot(snapshot.aggregate_id, snapshot.aggregate_type,
                                     snapshot.version, snapshot.state,
                                     snapshot.state_schema_version)
        except StoreUnavailable as exc:
            raise SnapshotUnavailable(str(exc)) from exc

    def latest(self, aggregate_type: str, aggregate_id: str,
               at_or_below_version: int | None = None,
               taken_at_or_before: datetime | None = None) -> Snapshot | None:
        if taken_at_or_before is not None:
            raise ValidationError("the HTTP API selects snapshots by version only: load with "
                                  "as_of (the repository turns a time into a version)")
        try:
            data = self.client.get_snapshot(aggregate_id, aggregate_type,
                                            at_or_below_version=at_or_below_version)
        except StoreUnavailable as exc:  # the server, or its snapshot store, is down
            raise SnapshotUnavailable(str(exc)) from exc
        if data is None:
            return None
        return Snapshot(aggregate_type=data["aggregate_type"], aggregate_id=data["aggregate_id"],
                        version=int(data["version"]), state=dict(data["state"]),
                        state_schema_version=int(data["state_schema_version"]),
                        taken_at=datetime.fromisoformat(data["taken_at"]))

    def history(self, aggregate_type: str, aggregate_id: str) -> list[Snapshot]:
        raise ValidationError("the HTTP API serves the newest snapshot only (latest)")

    def delete(self, aggregate_type: str, aggregate_id: str) -> int:
        raise ValidationError("snapshots cannot be deleted over the HTTP API")

    def ping(self) -> bool:
        return self.client.ready()

    def close(self) -> None:
        """The client belongs to the caller; nothing to release here."""

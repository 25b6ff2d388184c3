"""Projections: read models built from the global log by a partitioned, retrying runner."""

from __future__ import annotations

from eventstore.projections.base import Projection, ReadModelTx, load_projection
from eventstore.projections.runner import ProjectionRunner, ProjectionStatus

__all__ = ["Projection", "ProjectionRunner", "ProjectionStatus", "ReadModelTx",
           "load_projection"]

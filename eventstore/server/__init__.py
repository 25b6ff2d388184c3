"""The store server (`eventstore serve`): HTTP API, projection workers, retention, metrics."""

from __future__ import annotations

"""The store pods' HTTP API: a FastAPI app over an EventStore, a snapshot store and the
projection runner. `create_app` takes ready objects (tests, embedding); `build_services`
wires them from a ServerConfig and the settings files (what `eventstore serve` runs).

Handlers are plain `def`s: the store is synchronous (psycopg pool), and Starlette runs
them in its thread pool, so a slow database never blocks the event loop. Appends, the hot
path, are served by `AppendRoute` in front of the framework (see append_route.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from eventstore import metrics
from eventstore.aggregate import Aggregate
from eventstore.errors import SchemaError
from eventstore.server import (
    aggregates,
    append_api,
    log_api,
    probe_api,
    projection_api,
    read_api,
    snapshot_api,
)
from eventstore.server.aggregates import aggregate_repositories
from eventstore.server.append_route import AppendRoute
from eventstore.server.appends import Appends
from eventstore.server.asgi import ASGIApp
from eventstore.server.auth import GuardMiddleware
from eventstore.server.deadline import DeadlineMiddleware, ReadinessCheck
from eventstore.server.error_handlers import document_errors, install_error_handlers
from eventstore.server.limits import SubscriberLimit
from eventstore.server.pages import DEFAULT_MAX_PAGE_BYTES
from eventstore.server.routing import AppState
from eventstore.server.wire import AppendIn
from eventstore.settings import Settings
from eventstore.store.base import EventStore
from eventstore.store.budget import DEFAULT_APPEND_POOL_SIZE

if TYPE_CHECKING:
    from eventstore.projections.runner import ProjectionRunner
    from eventstore.retention import RetentionJob
    from eventstore.server.config import ServerConfig
    from eventstore.server.shutdown import Draining
    from eventstore.snapshots.base import SnapshotStore

log = logging.getLogger(__name__)

#: /readyz answers within this, under the kubelet's 1 s probe timeout.
READY_TIMEOUT_SECONDS = 0.5


@dataclass
class Services:
    """What the app serves from; owned (and closed) by the app's lifespan when `owned`."""

    store: EventStore
    snapshots: SnapshotStore | None = None
    runner: ProjectionRunner | None = None
    #: The pod's own read models (local_projections), on its data volume.
    local_runner: ProjectionRunner | None = None
    retention: RetentionJob | None = None
    settings: Settings = field(default_factory=Settings)
    #: The registered aggregate classes (event-store.yaml `aggregates:`), by type name.
    aggregates: dict[str, type[Aggregate]] = field(default_factory=dict)
    owned: bool = True
    refresh_interval: float = 15.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _refresher: threading.Thread | None = None

    @property
    def runners(self) -> list[ProjectionRunner]:
        return [r for r in (self.runner, self.local_runner) if r is not None]

    def runner_for(self, projection: str) -> ProjectionRunner | None:
        return next((r for r in self.runners if projection in r.projections), None)

    def start(self) -> None:
        for runner in self.runners:
            runner.start()
        if self.retention is not None:
            self.retention.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="metrics-refresh",
                                           daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            # It may be in the middle of a count: closing the store under it can crash
            # the SQLite driver.
            self._refresher.join(timeout=30)
        if self.retention is not None:
            self.retention.stop()
        for runner in self.runners:
            runner.stop()
        if self.owned:
            if self.snapshots is not None:
                self.snapshots.close()
            self.store.close()

    def _refresh_loop(self) -> None:
        """Store-size and projection-lag gauges, refreshed in the background so a scrape
        never waits on a count."""
        while not self._stop.is_set():
            try:
                stats = self.store.stats()
                metrics.STORE_EVENTS.set(stats.events)
                metrics.STORE_ARCHIVED_EVENTS.set(stats.archived_events)
                metrics.STORE_STREAMS.set(stats.streams)
                metrics.STORE_BYTES.set(stats.bytes)
                for runner in self.runners:
                    runner.status()
            except Exception as exc:  # metrics must not take the server down
                log.debug("metrics refresh failed: %s", exc)
            self._stop.wait(self.refresh_interval)


# -- the app --------------------------------------------------------------------------

def create_app(services: Services, token: str, max_body_bytes: int = 4 * 1024 * 1024,
               append_threads: int = 16, append_pool_size: int = DEFAULT_APPEND_POOL_SIZE,
               max_replay_events: int = 100_000,
               request_timeout: float | None = None, max_subscribers: int = 100,
               max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
               draining: Draining | None = None) -> ASGIApp:
    """The API over ready services. Every path but /healthz and /readyz needs `token`.

    The routes live in one module-level router per area (probe_api, append_api, read_api,
    snapshot_api, projection_api, aggregates, log_api); they find what they serve on
    `app.state.eventstore` (routing.AppState), never in closures, and every error reply
    comes from error_handlers.py. The FastAPI app sits inside plain ASGI
    layers: the token and body-size guard, the request deadline (503 past
    `request_timeout`, see deadline.py), the subscriber bound (limits.py), then the append
    fast path (see append_route.py), so an append skips the framework. Once `draining` is
    active (SIGTERM, see shutdown.py), /readyz answers 503.
    """
    appends = Appends(services.store, threads=append_threads,
                      async_pool_size=append_pool_size)
    readiness = ReadinessCheck(services.store.schema_is_current, READY_TIMEOUT_SECONDS)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(services.start)
        await appends.start()
        try:
            yield
        finally:
            # uvicorn has drained the requests by now: no append is in flight.
            readiness.close()
            await appends.stop()
            await anyio.to_thread.run_sync(services.stop)

    # FastAPI's own OpenTelemetry hooks are off: metrics are Prometheus (/metrics), and
    # the hooks' per-request checks cost about 8% of an append's CPU.
    # redirect_slashes off: a 307 from /all/ to /all would send a client's token on to
    # wherever the Location points, and hides mistyped paths; /all/ is a 404.
    app = FastAPI(title="eventstore", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None, redirect_slashes=False,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="The event store's HTTP API. Send `Authorization: Bearer "
                              "<token>` on every path except /healthz and /readyz.")
    app.state.eventstore = AppState(services=services, appends=appends, readiness=readiness,
                                    max_page_bytes=max_page_bytes,
                                    subscription_threads=anyio.CapacityLimiter(256),
                                    repositories=aggregate_repositories(services),
                                    max_replay_events=max_replay_events, draining=draining)
    install_error_handlers(app)
    for router in (probe_api.router, append_api.router, read_api.router,
                   snapshot_api.router, projection_api.router):
        app.include_router(router)
    app.include_router(aggregates.router)
    app.include_router(log_api.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    inner: ASGIApp = SubscriberLimit(AppendRoute(app, appends), max_subscribers)
    if request_timeout is not None:
        inner = DeadlineMiddleware(inner, request_timeout, exempt=frozenset({"/healthz",
                                                                             "/readyz"}))
    return GuardMiddleware(inner, token=token, max_body_bytes=max_body_bytes)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the bearer scheme on every path but the probes and the
    append body's schema (the append route reads its body itself, see append_api.py), with
    the error replies documented as they are sent (error_handlers.document_errors)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        append_in = AppendIn.model_json_schema(ref_template="#/components/schemas/{model}")
        models = components.setdefault("schemas", {})
        models.update(append_in.pop("$defs", {}))
        models["AppendIn"] = append_in
        secured = set()
        for path, operations in schema.get("paths", {}).items():
            if path in ("/healthz", "/readyz"):
                continue
            for method, operation in operations.items():
                operation["security"] = [{"bearer": []}]
                secured.add((path, method))
        document_errors(schema, secured)
        app.openapi_schema = schema
    return app.openapi_schema


# -- wiring for `eventstore serve` -----------------------------------------------------

def build_services(config: ServerConfig, settings: Settings, *, migrate: bool = True,
                   retention_aggregate_types: list[str] | None = None) -> Services:
    """Connect the backends and load the projections and aggregates; raises on any startup
    problem (an unimportable registration is a SettingsError naming its key)."""
    from eventstore.projections.base import Projection, load_projection
    from eventstore.projections.runner import ProjectionRunner, local_projection_runner
    from eventstore.registry import load_aggregates
    from eventstore.retention import RetentionJob
    from eventstore.settings import SNAPSHOTTER
    from eventstore.store.budget import pool_size_for

    aggregates = load_aggregates(settings.store.aggregates)
    options: dict[str, object] = {}
    if config.event_store_url.startswith(("postgresql://", "postgres://")):
        # One pool for the whole pod (reads, projections, retention): see store/budget.py.
        options["pool_max_size"] = pool_size_for(config.db_pool_size,
                                                 settings.projections.workers)
        options["pool_timeout"] = options["statement_timeout"] = config.db_timeout_seconds
    store = EventStore.connect(config.event_store_url, **options)
    snapshots = None
    runners: list[ProjectionRunner] = []
    try:
        if migrate:
            store.migrate()
        elif not store.schema_is_current():
            raise SchemaError("the event store schema is not current: run `eventstore "
                              "migrate` (or serve without --no-migrate)")
        projections: dict[str, Projection] = {
            name: load_projection(target)
            for name, target in settings.projections.projections.items()}
        if config.snapshot_store_url:
            from eventstore.snapshots.base import SnapshotStore

            snapshots = SnapshotStore.connect(config.snapshot_store_url,
                                              keep=config.snapshot_keep)
        if aggregates and snapshots is not None:
            from eventstore.snapshotter import Snapshotter

            projections[SNAPSHOTTER] = Snapshotter(store, snapshots, aggregates, settings.store)
        elif aggregates:
            log.warning("aggregates are registered but no snapshot store is configured: "
                        "the store takes no snapshots")
        runner = ProjectionRunner(store, projections, settings.projections) if projections \
            else None
        runners.extend([runner] if runner else [])
        local_runner = local_projection_runner(store, settings.projections, config.data_dir)
        runners.extend([local_runner] if local_runner else [])
        retention = None
        if snapshots is not None:
            # The registered aggregates' snapshots cover their streams; the variable may
            # name more snapshot kinds (written by clients of their own).
            kinds = sorted(set(aggregates) | set(retention_aggregate_types or []))
            retention = RetentionJob(store, snapshots, settings.store.retention_days, kinds,
                                     interval=config.retention_interval_seconds)
    except BaseException:
        for started in runners:
            started.backend.close()
        if snapshots is not None:
            snapshots.close()
        store.close()
        raise
    return Services(store=store, snapshots=snapshots, runner=runner,
                    local_runner=local_runner, retention=retention, settings=settings,
                    aggregates=aggregates)

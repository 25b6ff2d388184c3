"""The store pods' HTTP API: a FastAPI app over an EventStore, a snapshot store and the
projection runner. `create_app` takes ready objects (tests, embedding); `build_services`
wires them from a ServerConfig and the settings files (what `eventstore serve` runs).

Handlers are plain `def`s: the store is synchronous (psycopg pool), and Starlette runs
them in its thread pool, so a slow database never blocks the event loop. Appends, the hot
path, are served by `AppendRoute` in front of the framework (see append_route.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventstore import metrics
from eventstore.aggregate import Aggregate
from eventstore.errors import (
    EventStoreError,
    SchemaError,
    StoreUnavailable,
    ValidationError,
)
from eventstore.events import (
    EVENT_TYPE_PATTERN,
    STREAM_ID_PATTERN,
    RecordedEvent,
)
from eventstore.server.aggregates import aggregates_router
from eventstore.server.append_route import AppendRoute
from eventstore.server.appends import Appends, parse_body
from eventstore.server.asgi import ASGIApp
from eventstore.server.auth import GuardMiddleware
from eventstore.server.deadline import DeadlineMiddleware, ReadinessCheck
from eventstore.server.limits import SubscriberLimit
from eventstore.server.log_api import log_router
from eventstore.server.pages import DEFAULT_MAX_PAGE_BYTES, encode_page
from eventstore.server.wire import (
    BIGINT,
    MAX_PAGE,
    AppendIn,
    AppendOut,
    ConflictOut,
    ErrorOut,
    ProjectionsOut,
    SnapshotIn,
    SnapshotOut,
    StreamOut,
    check_json,
    error_reply,
    event_to_dict,
)
from eventstore.settings import Settings
from eventstore.store.base import EventStore
from eventstore.store.encoding import check_read_stream

if TYPE_CHECKING:
    from eventstore.projections.runner import ProjectionRunner
    from eventstore.retention import RetentionJob
    from eventstore.server.config import ServerConfig
    from eventstore.snapshots.base import SnapshotStore

log = logging.getLogger(__name__)

#: /readyz answers within this, under the kubelet's 1 s probe timeout.
READY_TIMEOUT_SECONDS = 0.5

StreamId = Annotated[str, Path(pattern=STREAM_ID_PATTERN.pattern, max_length=200,
                               description="The stream (aggregate) id.")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Refused input"},
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    503: {"model": ErrorOut, "description": "The database is unavailable"},
}


def _explain(message: str) -> str:
    """The JSON parser's message, or a clearer one where it misleads: a lone UTF-16
    surrogate escape (\\ud800 to \\udfff) is reported as "unexpected end of hex escape"
    or, for a trailing one, as a "leading" surrogate."""
    if "unexpected end of hex escape" in message or "surrogate" in message:
        position = message.rsplit(" at ", 1)[-1] if " at line " in message else ""
        return ("Invalid JSON: an unpaired UTF-16 surrogate escape (\\ud800 to \\udfff)"
                + (f" at {position}" if position else "") + "; send valid Unicode")
    return message


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message, **extra}, status_code=status)


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
               append_threads: int = 16, append_pool_size: int = 16,
               max_replay_events: int = 100_000,
               request_timeout: float | None = None, max_subscribers: int = 100,
               max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> ASGIApp:
    """The API over ready services. Every path but /healthz and /readyz needs `token`.

    The FastAPI app sits inside plain ASGI layers: the token and body-size guard, the
    request deadline (503 past `request_timeout`, see deadline.py), the subscriber bound
    (limits.py), then the append fast path (see append_route.py), so an append skips the
    framework.
    """

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
                  redoc_url=None, redirect_slashes=False, telemetry={"tracing": False, "metrics": False,
                                             "logs": False},
                  description="The event store's HTTP API. Send `Authorization: Bearer "
                              "<token>` on every path except /healthz and /readyz.")
    appends = Appends(services.store, threads=append_threads,
                      async_pool_size=append_pool_size)
    store = services.store
    readiness = ReadinessCheck(store.schema_is_current, READY_TIMEOUT_SECONDS)

    # -- errors -------------------------------------------------------------------------

    @app.exception_handler(EventStoreError)
    async def _store_error(_: Request, exc: EventStoreError) -> JSONResponse:
        status, body = error_reply(exc)
        return JSONResponse(body, status_code=status)

    # Every reply has the same {error, message} shape, the framework's own included; a
    # 422 names where and why, never echoing the input (which may be megabytes).
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": _explain(e.get("msg", "")),
                    "type": e.get("type", "")} for e in exc.errors()[:20]]
        where = "; ".join(": ".join(filter(None, ('.'.join(map(str, d['loc'])), d['msg'])))
                          for d in details[:5])
        return JSONResponse({"error": "invalid_request", "message": where[:2000],
                             "details": details}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return JSONResponse({"error": kind, "message": str(exc.detail)},
                            status_code=exc.status_code, headers=exc.headers)

    # -- probes and metrics -------------------------------------------------------------

    # Both probes are `async def`: they answer from the event loop, never queued behind
    # worker threads that wait on a stalled database.
    @app.get("/healthz", tags=["probes"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], summary="Readiness: the database answers and the "
             "schema is current", responses={503: {"model": ErrorOut}})
    async def readyz() -> Response:
        if await readiness.ready():
            return JSONResponse({"status": "ready"})
        return _error(503, "not_ready", "the event database does not answer or its schema is "
                      "not current (run `eventstore migrate`)")

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # -- streams --------------------------------------------------------------------------

    # Valid appends are answered by AppendRoute before they reach this route; it serves
    # the rest (422 for a body or stream id that does not validate) and the OpenAPI
    # document, which describes AppendIn/AppendOut (see openapi() below).
    @app.post("/streams/{stream_id}", status_code=201, tags=["streams"],
              summary="Append events with optimistic concurrency", response_model=AppendOut,
              responses={409: {"model": ConflictOut, "description": "Expected version did not "
                                                                    "hold"}, **_ERRORS},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/AppendIn"}}}}})
    async def append(stream_id: StreamId, request: Request) -> Response:
        raw = await request.body()
        try:
            body = parse_body(raw)
        except PydanticValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False,
                                                    include_input=False)) from None
        status, reply = await anyio.to_thread.run_sync(appends.reply, stream_id, body)
        return Response(reply, status_code=status, media_type="application/json")

    @app.get("/streams/{stream_id}", tags=["streams"], summary="Read a stream",
             response_model=StreamOut, responses=_ERRORS,
             description="At most `limit` events and about EVENTSTORE_MAX_PAGE_BYTES: when "
                         "the byte budget cuts the page short, `truncated` is true and "
                         "`next_version` is where to continue (as `from_version`, or as "
                         "`to_version` when reading backwards).")
    def read_stream(
        stream_id: StreamId,
        from_version: Annotated[int, Query(ge=1, le=BIGINT)] = 1,
        to_version: Annotated[int | None, Query(ge=1, le=BIGINT)] = None,
        as_of: Annotated[datetime | None, Query(description="Events recorded at or before "
                                                            "this time (ISO 8601, with zone)")]
        = None,
        backwards: bool = False,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> Response:
        if as_of is not None and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        # Validate once up front, as an unbudgeted read did (400 on bad input).
        check_read_stream(stream_id, from_version, to_version, limit)

        def fetch(last: RecordedEvent | None, count: int) -> list[RecordedEvent]:
            low, high = from_version, to_version
            if last is not None:
                low, high = (low, last.version - 1) if backwards else (last.version + 1, high)
            if high is not None and high < low:
                return []
            return store.read_stream(stream_id, from_version=low, to_version=high,
                                     as_of=as_of, backwards=backwards, limit=count)

        page = encode_page(fetch, limit, max_page_bytes)
        next_version = None
        if page.truncated and page.last is not None:
            next_version = page.last.version + (-1 if backwards else 1)
        return Response(b'{"stream_id":' + json.dumps(stream_id).encode() + b',"events":'
                        + page.events_json() + b',"truncated":'
                        + (b"true" if page.truncated else b"false") + b',"next_version":'
                        + json.dumps(next_version).encode() + b"}",
                        media_type="application/json")

    @app.get("/streams/{stream_id}/archive", tags=["streams"],
             summary="Events of a stream that retention moved to the archive",
             responses=_ERRORS)
    def read_archive(
        stream_id: StreamId,
        from_version: Annotated[int, Query(ge=1, le=BIGINT)] = 1,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> StreamOut:
        # The store reads a stream's whole archive; the page bounds the reply.
        events = [e for e in store.read_archived_stream(stream_id)
                  if e.version >= from_version][:limit]
        return StreamOut.model_validate({"stream_id": stream_id,
                                         "events": [event_to_dict(e) for e in events]})

    # -- snapshots ------------------------------------------------------------------------

    def _snapshots() -> SnapshotStore:
        if services.snapshots is None:
            raise StoreUnavailable("this server has no snapshot store configured")
        return services.snapshots

    @app.get("/streams/{stream_id}/snapshot", tags=["snapshots"],
             summary="The newest snapshot of an aggregate",
             responses={404: {"model": ErrorOut}, **_ERRORS})
    def get_snapshot(
        stream_id: StreamId,
        aggregate_type: Annotated[str, Query(pattern=EVENT_TYPE_PATTERN.pattern,
                                             max_length=200)],
        at_or_below_version: Annotated[int | None, Query(ge=1, le=BIGINT)] = None,
    ) -> Response:
        snapshot = _snapshots().latest(aggregate_type, stream_id,
                                       at_or_below_version=at_or_below_version)
        if snapshot is None:
            return _error(404, "not_found", f"no snapshot of {aggregate_type} {stream_id}")
        return JSONResponse(SnapshotOut(
            aggregate_type=snapshot.aggregate_type, aggregate_id=snapshot.aggregate_id,
            version=snapshot.version, state=snapshot.state,
            state_schema_version=snapshot.state_schema_version,
            taken_at=snapshot.taken_at).model_dump(mode="json"))

    @app.put("/streams/{stream_id}/snapshot", status_code=201, tags=["snapshots"],
             summary="Store a snapshot of an aggregate", responses=_ERRORS)
    def put_snapshot(stream_id: StreamId, body: Annotated[SnapshotIn, Body()]) -> SnapshotOut:
        from eventstore.snapshots.base import Snapshot

        check_json(body.state, "state")
        current = store.stream_version(stream_id)
        if body.version > current:
            raise ValidationError(f"snapshot version {body.version} is past the stream's "
                                  f"version {current}: a snapshot must describe stored events")
        snapshot = Snapshot(aggregate_type=body.aggregate_type, aggregate_id=stream_id,
                            version=body.version, state=body.state,
                            state_schema_version=body.state_schema_version,
                            taken_at=datetime.now(UTC))
        started = time.perf_counter()
        _snapshots().save(snapshot)
        metrics.SNAPSHOT_DURATION.observe(time.perf_counter() - started)
        return SnapshotOut(aggregate_type=snapshot.aggregate_type, aggregate_id=stream_id,
                           version=snapshot.version, state=snapshot.state,
                           state_schema_version=snapshot.state_schema_version,
                           taken_at=snapshot.taken_at)

    # -- projections ----------------------------------------------------------------------

    @app.get("/projections", tags=["projections"], summary="Projection status",
             responses=_ERRORS)
    def projections() -> ProjectionsOut:
        return ProjectionsOut(projections=[status.as_dict() for runner in services.runners
                                           for status in runner.status()])

    @app.get("/projections/{name}/entries/{key}", tags=["projections"],
             summary="One entry of a projection's read model",
             description="Served from this pod's own copy for local projections, so these "
                         "reads scale with replicas. The projection defines what a key is "
                         "(the example `AccountBalances`: an account id).",
             responses={404: {"model": ErrorOut}, 501: {"model": ErrorOut}, **_ERRORS})
    def entry(name: Annotated[str, Path(max_length=63)],
              key: Annotated[str, Path(min_length=1, max_length=200)]) -> Response:
        runner = services.runner_for(name)
        if runner is None:
            return _error(404, "not_found", f"no projection named {name!r}")
        try:
            found = runner.lookup(name, key)
        except NotImplementedError as exc:
            return _error(501, "no_lookups", str(exc))
        if found is None:
            return _error(404, "not_found", f"{name} has no entry {key!r}")
        return JSONResponse({"projection": name, "scope": runner.scope, "key": key,
                             "entry": found})

    @app.get("/projections/{name}/dead-letters", tags=["projections"],
             summary="Events a projection parked", responses={404: {"model": ErrorOut},
                                                              **_ERRORS})
    def dead_letters(name: Annotated[str, Path(max_length=63)],
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Response:
        runner = services.runner_for(name)
        if runner is None:
            return _error(404, "not_found", f"no projection named {name!r}")
        return JSONResponse({"dead_letters": runner.dead_letters(name, limit)})

    @app.post("/projections/{name}/rebuild", status_code=202, tags=["projections"],
              summary="Empty a projection's read model and replay it from the start",
              responses={404: {"model": ErrorOut}, **_ERRORS})
    def rebuild(name: Annotated[str, Path(max_length=63)]) -> Response:
        runner = services.runner_for(name)
        if runner is None:
            return _error(404, "not_found", f"no projection named {name!r}")
        runner.rebuild(name)
        return JSONResponse({"name": name, "status": "rebuilding"}, status_code=202)

    app.include_router(aggregates_router(services, max_replay=max_replay_events))
    app.include_router(log_router(store, max_page_bytes=max_page_bytes))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            append_in = AppendIn.model_json_schema(ref_template="#/components/schemas/{model}")
            models = components.setdefault("schemas", {})
            models.update(append_in.pop("$defs", {}))
            models["AppendIn"] = append_in
            for path, operations in schema.get("paths", {}).items():
                if path in ("/healthz", "/readyz"):
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    inner: ASGIApp = SubscriberLimit(AppendRoute(app, appends), max_subscribers)
    if request_timeout is not None:
        inner = DeadlineMiddleware(inner, request_timeout, exempt=frozenset({"/healthz",
                                                                             "/readyz"}))
    return GuardMiddleware(inner, token=token, max_body_bytes=max_body_bytes)


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

    aggregates = load_aggregates(settings.store.aggregates)
    options: dict[str, object] = {}
    if config.event_store_url.startswith(("postgresql://", "postgres://")):
        options["pool_max_size"] = config.db_pool_size
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

"""The `eventstore` command. Only this module decides exit codes:

0 success; 1 a command failed (e.g. check-config found a bad file, replay timed out);
2 usage error (click); 3 the server could not start (bad settings, unreachable database,
missing token), as uvicorn does for startup failures; 4 a backup or expire-backups found
its location held by another one (nothing was written; try again later).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from eventstore import envcontract
from eventstore.errors import EventStoreError

STARTUP_FAILURE = 3
#: `backup` / `expire-backups`: another one holds the location (try again later).
BACKUP_LOCKED = 4
log = logging.getLogger("eventstore.cli")


def _store_url(url: str | None) -> str:
    from eventstore.server.config import event_store_url_from_env

    return url or event_store_url_from_env()


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="eventstore")
def main() -> None:
    """Event store: serve the HTTP API, migrate the schema, check settings, run the demo."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--migrate/--no-migrate", default=True, show_default=True,
              help="Apply schema migrations at startup (safe with several replicas).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              envvar=envcontract.ACCESS_LOG,
              help="One log line per request (off by default: it costs a sizeable share of "
                   "an append's CPU; /metrics has the request figures).")
def serve(host: str, port: int, migrate: bool, log_level: str, access_log: bool) -> None:
    """Run the store server: HTTP API, projection workers, retention job, metrics.

    Backends, token and TLS come from the environment (see eventstore.server.config);
    settings from $EVENTSTORE_CONFIG_DIR (default /etc/eventstore). SIGTERM turns
    /readyz 503 for EVENTSTORE_DRAIN_DELAY_SECONDS while requests are still served, then
    drains in-flight requests and exits 0.
    """
    import uvicorn

    from eventstore.server.app import build_services, create_app
    from eventstore.server.config import ConfigError, ServerConfig, configure_logging
    from eventstore.server.protocol import guarded_protocol
    from eventstore.server.shutdown import Draining, DrainingServer
    from eventstore.settings import Settings, SettingsError, load_settings

    configure_logging(log_level)
    try:
        config = ServerConfig.from_env()
        if config.config_dir.is_dir() or config.config_dir_explicit:
            settings = load_settings(config.config_dir)
        else:
            log.info("no settings directory at %s; using the defaults", config.config_dir)
            settings = Settings()
        log.info("starting", extra={"config": config.describe(), "host": host, "port": port,
                                    "settings": settings.model_dump()})
        services = build_services(config, settings, migrate=migrate,
                                  retention_aggregate_types=list(config.retention_aggregate_types))
    except (ConfigError, SettingsError) as exc:
        log.error("cannot start: %s", exc)
        _fail(f"cannot start: {exc}", STARTUP_FAILURE)
        return
    except EventStoreError as exc:
        log.error("cannot start: %s", exc)
        _fail(f"cannot start: {type(exc).__name__}: {exc}", STARTUP_FAILURE)
        return
    draining = Draining()
    app = create_app(services, token=config.api_token, max_body_bytes=config.max_body_bytes,
                     append_pool_size=config.db_append_pool_size,
                     max_replay_events=config.max_replay_events,
                     request_timeout=config.db_timeout_seconds,
                     max_subscribers=config.max_subscribers,
                     max_page_bytes=config.max_page_bytes, draining=draining)
    server = DrainingServer(uvicorn.Config(
        app, host=host, port=port, log_config=None, lifespan="on", access_log=access_log,
        ssl_certfile=str(config.tls_cert_file) if config.tls_cert_file else None,
        ssl_keyfile=str(config.tls_key_file) if config.tls_key_file else None,
        timeout_graceful_shutdown=25, server_header=False,
        # Request heads bounded in size and time, connections in number: see protocol.py.
        http=guarded_protocol(max_head_bytes=config.max_header_bytes,
                              head_timeout=config.header_timeout_seconds,
                              max_connections=config.max_connections, draining=draining),
        # Clients reach the pods through a Service, not a proxy that sets X-Forwarded-*.
        proxy_headers=False), draining, delay=config.drain_delay_seconds)
    # uvicorn re-raises the signal that stopped it once it has drained; with these no-op
    # handlers in place that re-raise is harmless and a drained SIGTERM exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        _fail("the server did not start (see the log above)", STARTUP_FAILURE)
    log.info("stopped")


@main.command()
@click.option("--url", help="Event store URL (default: from the environment, as `serve`).")
def migrate(url: str | None) -> None:
    """Create or upgrade the event store schema (idempotent)."""
    from eventstore.store.base import EventStore

    try:
        with EventStore.connect(_store_url(url)) as store:
            version = store.migrate()
    except EventStoreError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
        return
    click.echo(f"schema is at version {version}")


@main.command("check-config")
@click.argument("directory", type=click.Path(path_type=Path))
def check_config(directory: Path) -> None:
    """Validate event-store.yaml and projections.yaml in DIRECTORY as the pods will
    (registered aggregates are imported, as at startup)."""
    from eventstore.registry import check_store_settings
    from eventstore.settings import EVENT_STORE_FILE, SettingsError, load_settings

    try:
        settings = load_settings(directory)
        check_store_settings(settings.store, str(directory / EVENT_STORE_FILE))
    except SettingsError as exc:
        _fail(str(exc))
        return
    click.echo(f"{directory}: valid")
    click.echo(json.dumps(settings.model_dump(), indent=2))


@main.command()
@click.argument("name")
@click.option("--url", help="Event store URL (default: from the environment).")
@click.option("--config-dir", type=click.Path(path_type=Path),
              help="Settings directory (default: $EVENTSTORE_CONFIG_DIR or /etc/eventstore).")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
@click.option("--no-reset", is_flag=True, help="Catch up without emptying the read model.")
def replay(name: str, url: str | None, config_dir: Path | None, timeout: float,
           no_reset: bool) -> None:
    """Rebuild projection NAME from the first event, with a progress bar.

    Running servers keep working alongside: this process joins the partition split
    for the duration of the replay.
    """
    from tqdm import tqdm

    from eventstore.projections.base import load_projection
    from eventstore.projections.runner import ProjectionRunner, local_projection_runner
    from eventstore.settings import SettingsError, config_dir_from_env, load_settings
    from eventstore.store.base import EventStore

    try:
        settings = load_settings(config_dir or config_dir_from_env())
        shared, local = settings.projections.projections, settings.projections.local_projections
        if name not in shared and name not in local:
            _fail(f"no projection named {name!r} in projections.yaml (known: "
                  f"{', '.join(sorted([*shared, *local])) or 'none'})")
            return
        store = EventStore.connect(_store_url(url))
    except (SettingsError, EventStoreError) as exc:
        _fail(str(exc))
        return
    try:
        if name in local:  # this pod's own copy, in its data directory
            data_dir = envcontract.data_dir(os.environ)
            local_runner = local_projection_runner(store, settings.projections, data_dir, [name])
            assert local_runner is not None
            runner = local_runner
        else:
            runner = ProjectionRunner(store, {name: load_projection(shared[name])},
                                      settings.projections)
    except EventStoreError as exc:
        store.close()
        _fail(str(exc))
        return
    try:
        runner.setup()
        if not no_reset:
            runner.rebuild(name)
        total = store.stats().events
        runner.start()
        with tqdm(total=total, unit="ev", desc=f"replay {name}") as bar:
            def progress(handled: int, behind: int) -> None:
                bar.total = max(handled + behind, 1)
                bar.n = handled
                bar.refresh()

            done = runner.wait_caught_up(name, timeout, progress)
    except EventStoreError as exc:
        _fail(str(exc))
        return
    finally:
        runner.stop()
        store.close()
    if not done:
        _fail(f"replay of {name} did not catch up within {timeout}s")
    click.echo(f"{name}: caught up")


@main.command()
@click.option("--url", help="Event store URL (default: from the environment).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(url: str | None, as_json: bool) -> None:
    """Size of the store: events, streams, archived events, bytes."""
    from eventstore.server.config import redact_url
    from eventstore.store.base import EventStore

    resolved = _store_url(url)
    try:
        with EventStore.connect(resolved) as store:
            result = store.stats()
    except EventStoreError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
        return
    data: dict[str, Any] = {"store": redact_url(resolved), "events": result.events,
                            "streams": result.streams, "archived_events": result.archived_events,
                            "bytes": result.bytes, "head_position": result.head_position}
    if as_json:
        click.echo(json.dumps(data))
        return
    for key, value in data.items():
        click.echo(f"{key:>16}: {value}")


def _postgres_store(url: str | None) -> Any:
    from eventstore.store.base import EventStore

    resolved = _store_url(url)
    if not resolved.startswith(("postgresql://", "postgres://")):
        _fail("backup and restore need a PostgreSQL event store (--url postgresql://...)")
    return EventStore.connect(resolved)


def _s3_options(command: Any) -> Any:
    """--s3-endpoint and --s3-region. Credentials only from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): a secret on a command line is visible to
    every user of the machine in `ps`."""
    command = click.option("--s3-endpoint", envvar="EVENTSTORE_S3_ENDPOINT",
                           help="S3-compatible endpoint, http(s)://host[:port] (default: "
                                "AWS_ENDPOINT_URL, else AWS S3).")(command)
    return click.option("--s3-region", help="S3 region (default: AWS_REGION or "
                                             "AWS_DEFAULT_REGION).")(command)


def _lock_option(command: Any) -> Any:
    """--lock-timeout: how long a backup or an expiry waits for the location's lock."""
    return click.option(
        "--lock-timeout", type=click.FloatRange(min=0), default=0, show_default=True,
        help="Seconds to wait while another backup or expire-backups holds LOCATION; "
             f"then fail with exit code {BACKUP_LOCKED}. 0: fail at once.")(command)


def _backup_failed(exc: EventStoreError) -> None:
    from eventstore.errors import BackupLocked

    _fail(f"{type(exc).__name__}: {exc}", BACKUP_LOCKED if isinstance(exc, BackupLocked) else 1)


@main.command()
@click.argument("location")
@click.option("--url", help="Event store URL (default: from the environment, as `serve`).")
@click.option("--full-every", type=click.IntRange(min=0), default=7, show_default=True,
              help="Start a new chain (a full backup) once the current one has this many "
                   "segments; 0: never.")
@click.option("--retention-days", type=click.FloatRange(min=0, min_open=True),
              help="After the backup, remove the chains no restore point of the last "
                   "DAYS days needs (default: keep everything).")
@click.option("--s3-part-size", type=click.IntRange(min=5), default=16, show_default=True,
              help="MiB per part of a segment's upload to S3: memory used, and with S3's "
                   "10,000 parts the largest segment (16: ~156 GiB).")
@_lock_option
@_s3_options
def backup(location: str, url: str | None, full_every: int, retention_days: float | None,
           s3_part_size: int, lock_timeout: float, s3_endpoint: str | None,
           s3_region: str | None) -> None:
    """Back up the events written since the last backup in LOCATION (a new segment), or
    a full backup when one is due; remove what interrupted backups left there.

    LOCATION is a directory or s3://bucket/prefix (AWS_* credentials, AWS_ENDPOINT_URL).
    One backup or expire-backups at a time holds LOCATION (a lock in the database)."""
    from eventstore import backup as backups

    try:
        where = backups.target(location, s3_endpoint=s3_endpoint, s3_region=s3_region,
                               s3_part_size=s3_part_size << 20)
        with _postgres_store(url) as store:
            run = backups.backup(store, where, full_every=full_every,
                                 retention_days=retention_days, lock_timeout=lock_timeout)
        position = backups.last_position(where)
    except EventStoreError as exc:
        _backup_failed(exc)
        return
    result_file = os.environ.get(envcontract.BACKUP_RESULT_FILE)
    segment = run.segment
    if segment is None:
        click.echo("nothing new since the last backup")
    else:
        kind = "full backup" if segment.full else "incremental"
        click.echo(f"{segment.file} ({kind}): {segment.events} events, positions "
                   f"{segment.after_position + 1}..{segment.to_position}, "
                   f"{segment.archived} archive moves, sha256 {segment.sha256}")
    if run.expired:
        click.echo(f"expired {len(run.expired)} segments older than the retention: "
                   + ", ".join(s.file for s in run.expired))
    _echo_orphans(run.orphans)
    if result_file:
        # For the operator's status: a Job writes it to its termination message.
        Path(result_file).write_text(json.dumps({"position": position,
                                                 "segment": segment.file if segment else None}))


def _echo_orphans(orphans: list[str]) -> None:
    if orphans:
        click.echo(f"removed {len(orphans)} files of interrupted backups: " + ", ".join(orphans))


@main.command("expire-backups")
@click.argument("location")
@click.option("--retention-days", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Keep every restore point of the last DAYS days.")
@click.option("--url", help="URL of the event store the backups are taken from, whose "
                            "lock on LOCATION this takes (default: from the environment, "
                            "as `serve`).")
@_lock_option
@_s3_options
def expire_backups(location: str, retention_days: float, url: str | None, lock_timeout: float,
                   s3_endpoint: str | None, s3_region: str | None) -> None:
    """Remove the backup chains in LOCATION that no restore point of the last DAYS days
    needs (the newest chain always stays), and what interrupted backups left there."""
    from eventstore import backup as backups

    try:
        where = backups.target(location, s3_endpoint=s3_endpoint, s3_region=s3_region)
        with _postgres_store(url) as store:
            expiry = backups.expire(store, where, retention_days, lock_timeout=lock_timeout)
    except EventStoreError as exc:
        _backup_failed(exc)
        return
    click.echo(f"expired {len(expiry.segments)} segments" + (": " if expiry.segments else "")
               + ", ".join(s.file for s in expiry.segments))
    _echo_orphans(expiry.orphans)


@main.command("list-backups")
@click.argument("location")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@_s3_options
def list_backups(location: str, as_json: bool, s3_endpoint: str | None,
                 s3_region: str | None) -> None:
    """The restore points in LOCATION, oldest first: every segment of its manifest, by
    chain, with the time `restore --as-of` compares. Reads the manifest only (no
    database, no lock)."""
    from dataclasses import asdict

    from eventstore import backup as backups

    try:
        where = backups.target(location, s3_endpoint=s3_endpoint, s3_region=s3_region)
        segments = backups.read_manifest(where)
    except EventStoreError as exc:
        _backup_failed(exc)
        return
    listed = [(number, segment) for number, chain in enumerate(backups.chains(segments), 1)
              for segment in chain]
    if as_json:
        click.echo(json.dumps({"location": str(where), "segments": [
            {"chain": number, "full": segment.full, **asdict(segment)}
            for number, segment in listed]}, indent=1))
        return
    if not listed:
        click.echo(f"no backups in {where}")
    for number, segment in listed:
        kind = "full       " if segment.full else "incremental"
        click.echo(f"{segment.created}  chain {number}  {kind}  {segment.events:>9} events  "
                   f"positions {segment.after_position + 1}..{segment.to_position}  {segment.file}")


@main.command()
@click.argument("location")
@click.option("--url", help="Event store URL (default: from the environment, as `serve`).")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S",
                                            "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S.%f"]),
              help="Restore the newest backup written at or before this time (UTC unless "
                   "it names a zone; default: the newest backup; `list-backups` shows "
                   "the times).")
@_s3_options
def restore(location: str, url: str | None, as_of: datetime | None, s3_endpoint: str | None,
            s3_region: str | None) -> None:
    """Restore a backup in LOCATION (a directory or s3://...) into an empty event store."""
    from eventstore import backup as backups

    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    try:
        where = backups.target(location, s3_endpoint=s3_endpoint, s3_region=s3_region)
        with _postgres_store(url) as store:
            count = backups.restore(store, where, as_of)
    except EventStoreError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
        return
    click.echo(f"restored {count} events")


@main.command()
@click.option("--url", help="Event store URL. Default: sqlite:///<temp dir>/eventstore-demo.db "
                            "(a fresh file each run).")
@click.option("--snapshot-url", help="Snapshot store URL (mongodb://... or sqlite:///...).")
def demo(url: str | None, snapshot_url: str | None) -> None:
    """The bank-account demo on the embedded default: no servers needed."""
    from eventstore.demo import run_demo

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eventstore-demo-") as tmp:
        resolved = url or f"sqlite:///{tmp}/eventstore-demo.db"
        try:
            if snapshot_url:
                run_demo(resolved, sys.stdout, snapshot_url=snapshot_url)
            else:
                run_demo(resolved, sys.stdout)
        except EventStoreError as exc:
            _fail(f"{type(exc).__name__}: {exc}")
            return
    click.echo(f"\ndemo finished in {time.monotonic() - started:.2f}s")


if __name__ == "__main__":
    main()

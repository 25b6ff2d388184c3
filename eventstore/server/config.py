"""Server configuration from the environment: backends, credentials, token, TLS, data dir.

The operator sets exactly the variables documented on `ServerConfig.from_env`; laptops and
tests may instead give full URLs in EVENTSTORE_URL / SNAPSHOT_STORE_URL. Secrets (database
passwords, the API token) are kept out of `repr()` and every log line: `describe()` is the
loggable view.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from eventstore import envcontract as E
from eventstore.envcontract import DEFAULT_CONFIG_DIR as DEFAULT_CONFIG_DIR
from eventstore.envcontract import DEFAULT_DATA_DIR as DEFAULT_DATA_DIR
from eventstore.envcontract import DEFAULT_TLS_CERT_FILE as DEFAULT_TLS_CERT_FILE
from eventstore.envcontract import DEFAULT_TLS_KEY_FILE as DEFAULT_TLS_KEY_FILE
from eventstore.envcontract import DEFAULT_TOKEN_FILE as DEFAULT_TOKEN_FILE
from eventstore.errors import ConfigError as ConfigError  # re-exported
from eventstore.store.budget import DEFAULT_APPEND_POOL_SIZE, DEFAULT_POOL_SIZE

DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Request line plus headers; past it, 431 (see eventstore/server/protocol.py).
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: A request head must be complete this long after the connection opens or the previous
#: response ends.
DEFAULT_HEADER_TIMEOUT_SECONDS = 10
#: Open connections per server; past it, new connections get 503 and are closed.
DEFAULT_MAX_CONNECTIONS = 1024
#: About the most bytes of events in one page of /all, /streams or an SSE batch.
DEFAULT_MAX_PAGE_BYTES = 4 * 1024 * 1024
#: Open `GET /subscribe` streams per server; past it, 503.
DEFAULT_MAX_SUBSCRIBERS = 100
#: The longest a request waits on the database before it is answered 503.
DEFAULT_DB_TIMEOUT_SECONDS = 5
#: After SIGTERM, /readyz answers 503 this long while requests are still served, before
#: the server stops listening and drains (see eventstore/server/shutdown.py).
DEFAULT_DRAIN_DELAY_SECONDS = 5
#: The generated token of a laptop server (no EVENT_DB_HOST), under the data dir.
GENERATED_TOKEN_FILE = "api-token"


@dataclass(frozen=True)
class ServerConfig:
    """Everything `eventstore serve` needs besides the settings files."""

    event_store_url: str = field(repr=False)
    snapshot_store_url: str | None = field(repr=False)
    api_token: str = field(repr=False)
    config_dir: Path = DEFAULT_CONFIG_DIR
    config_dir_explicit: bool = False
    data_dir: Path = DEFAULT_DATA_DIR
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: The connection budget these two feed: eventstore/store/budget.py.
    db_pool_size: int = DEFAULT_POOL_SIZE
    db_append_pool_size: int = DEFAULT_APPEND_POOL_SIZE
    retention_interval_seconds: float = 3600.0
    token_source: str = "env"
    retention_aggregate_types: tuple[str, ...] = ()
    snapshot_keep: int = 5
    max_replay_events: int = 100_000
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_seconds: int = DEFAULT_HEADER_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    db_timeout_seconds: int = DEFAULT_DB_TIMEOUT_SECONDS
    max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS
    max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES
    drain_delay_seconds: int = DEFAULT_DRAIN_DELAY_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Read the pod's environment.

        Events: EVENTSTORE_URL, else EVENT_DB_HOST, EVENT_DB_PORT (5432), EVENT_DB_NAME
        (eventstore), EVENT_DB_USER, EVENT_DB_PASSWORD or EVENT_DB_PASSWORD_FILE,
        EVENT_DB_SSLMODE (libpq's; unset: libpq's default, prefer) and
        EVENT_DB_SSLROOTCERT; else the embedded SQLite file <data dir>/events.db.
        Snapshots: SNAPSHOT_STORE_URL, else SNAPSHOT_DB_HOST, SNAPSHOT_DB_PORT (27017),
        SNAPSHOT_DB_NAME (eventstore), SNAPSHOT_DB_USER, SNAPSHOT_DB_PASSWORD(_FILE),
        SNAPSHOT_DB_AUTH_SOURCE (admin); else <data dir>/snapshots.db.
        Token: EVENTSTORE_API_TOKEN, else the file EVENTSTORE_API_TOKEN_FILE
        (/var/run/secrets/eventstore/token). Without either, a server on PostgreSQL refuses
        to start; a laptop server (no EVENT_DB_HOST) generates one in <data dir>/api-token.
        TLS: served when the files EVENTSTORE_TLS_CERT_FILE and EVENTSTORE_TLS_KEY_FILE
        (default /var/run/secrets/eventstore/tls/tls.crt and tls.key) exist.
        Tuning: EVENTSTORE_MAX_BODY_BYTES (4 MiB), EVENTSTORE_DB_POOL_SIZE (12: the pool
        reads, projections and retention share; at least projection workers + 2),
        EVENTSTORE_DB_APPEND_POOL_SIZE (2: the async append pool; the pod's connection
        budget is in eventstore/store/budget.py),
        EVENTSTORE_SNAPSHOT_KEEP (5 snapshots kept per aggregate),
        EVENTSTORE_MAX_REPLAY_EVENTS (100000: the most events GET /aggregates replays),
        EVENTSTORE_RETENTION_INTERVAL_SECONDS (3600), EVENTSTORE_RETENTION_AGGREGATE_TYPES
        (comma-separated snapshot kinds that cover archived events besides the aggregates
        registered in event-store.yaml, which always do).
        Limits (see the README's Security section): EVENTSTORE_MAX_HEADER_BYTES (64 KiB),
        EVENTSTORE_HEADER_TIMEOUT_SECONDS (10), EVENTSTORE_MAX_CONNECTIONS (1024),
        EVENTSTORE_DB_TIMEOUT_SECONDS (5), EVENTSTORE_MAX_SUBSCRIBERS (100),
        EVENTSTORE_MAX_PAGE_BYTES (4 MiB).
        Shutdown: EVENTSTORE_DRAIN_DELAY_SECONDS (5; 0 stops at once): after SIGTERM,
        /readyz answers 503 this long while requests are still served, then the server
        drains. Logs: POD_NAME, on every line as `pod`.
        The names are eventstore/envcontract.py's, which the operator's builders use too.
        """
        env = os.environ if environ is None else environ
        data_dir = E.data_dir(env)
        config_dir = E.config_dir(env)

        events_url = event_store_url_from_env(env)
        clustered = bool(env.get(E.EVENT_DB.host))
        snapshot_url = env.get(E.SNAPSHOT_STORE_URL) or None
        if not snapshot_url:
            if env.get(E.SNAPSHOT_DB.host):
                snapshot_url = _mongo_url(env)
            else:
                snapshot_url = f"sqlite:///{(data_dir / 'snapshots.db').resolve()}"

        token, source = _token(env, data_dir, required=clustered)
        cert = Path(env.get(E.TLS_CERT_FILE) or DEFAULT_TLS_CERT_FILE)
        key = Path(env.get(E.TLS_KEY_FILE) or DEFAULT_TLS_KEY_FILE)
        if cert.exists() != key.exists():
            missing = E.TLS_KEY_FILE if cert.exists() else E.TLS_CERT_FILE
            raise ConfigError(f"{missing}: TLS needs both a certificate and a key; "
                              f"{(key if cert.exists() else cert)} does not exist")
        return cls(
            event_store_url=events_url,
            snapshot_store_url=snapshot_url,
            api_token=token,
            config_dir=config_dir,
            config_dir_explicit=bool(env.get(E.CONFIG_DIR)),
            data_dir=data_dir,
            tls_cert_file=cert if cert.exists() else None,
            tls_key_file=key if key.exists() else None,
            max_body_bytes=_int(env, E.MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES, 1024,
                                256 * 1024 * 1024),
            db_pool_size=_int(env, E.DB_POOL_SIZE, DEFAULT_POOL_SIZE, 2, 500),
            db_append_pool_size=_int(env, E.DB_APPEND_POOL_SIZE, DEFAULT_APPEND_POOL_SIZE, 1, 500),
            retention_interval_seconds=float(_int(env, E.RETENTION_INTERVAL_SECONDS,
                                                  3600, 1, 7 * 86400)),
            token_source=source,
            snapshot_keep=_int(env, E.SNAPSHOT_KEEP, 5, 1, 1000),
            max_replay_events=_int(env, E.MAX_REPLAY_EVENTS, 100_000, 1,
                                   100_000_000),
            retention_aggregate_types=tuple(
                t.strip() for t in env.get(E.RETENTION_AGGREGATE_TYPES, "").split(",")
                if t.strip()),
            max_header_bytes=_int(env, E.MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_BYTES,
                                  4096, 1024 * 1024),
            header_timeout_seconds=_int(env, E.HEADER_TIMEOUT_SECONDS,
                                        DEFAULT_HEADER_TIMEOUT_SECONDS, 1, 300),
            max_connections=_int(env, E.MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS,
                                 8, 100_000),
            db_timeout_seconds=_int(env, E.DB_TIMEOUT_SECONDS,
                                    DEFAULT_DB_TIMEOUT_SECONDS, 1, 600),
            max_subscribers=_int(env, E.MAX_SUBSCRIBERS, DEFAULT_MAX_SUBSCRIBERS,
                                 1, 10_000),
            max_page_bytes=_int(env, E.MAX_PAGE_BYTES, DEFAULT_MAX_PAGE_BYTES,
                                1024, 1024 * 1024 * 1024),
            drain_delay_seconds=_int(env, E.DRAIN_DELAY_SECONDS,
                                     DEFAULT_DRAIN_DELAY_SECONDS, 0, 300),
        )

    def describe(self) -> dict[str, Any]:
        """A loggable view: URLs without credentials, no token."""
        return {
            "event_store": redact_url(self.event_store_url),
            "snapshot_store": redact_url(self.snapshot_store_url) if self.snapshot_store_url
            else None,
            "config_dir": str(self.config_dir),
            "data_dir": str(self.data_dir),
            "tls": self.tls_cert_file is not None,
            "token_source": self.token_source,
        }


def event_store_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """EVENTSTORE_URL, else PostgreSQL from EVENT_DB_*, else SQLite under the data dir."""
    env = os.environ if environ is None else environ
    url = env.get(E.EVENTSTORE_URL)
    if url:
        return url
    if env.get(E.EVENT_DB.host):
        return _postgres_url(env)
    data_dir = E.data_dir(env)
    return f"sqlite:///{(data_dir / 'events.db').resolve()}"


def redact_url(url: str) -> str:
    """The URL with any password (and user) replaced, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, "", ""))


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """NAME, else the content of the file NAME_FILE (a mounted Secret), stripped."""
    value = env.get(name)
    if value:
        return value
    path = env.get(E.secret_file(name))
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{E.secret_file(name)}: cannot read {path}: {exc.strerror}") from None


def _require(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name) or default
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return _int(env, name, default, 1, 65535)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range {low}..{high}")
    return value


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _userinfo(user: str | None, password: str | None) -> str:
    """`user:password@` for a URL, percent-encoded; empty without a user."""
    if not user:
        return ""
    return quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"


def _postgres_url(env: Mapping[str, str]) -> str:
    host = _require(env, E.EVENT_DB.host)
    port = _port(env, E.EVENT_DB.port, 5432)
    name = env.get(E.EVENT_DB.name) or "eventstore"
    auth = _userinfo(env.get(E.EVENT_DB.user), _secret(env, E.EVENT_DB.password))
    query = ""
    sslmode = env.get(E.EVENT_DB.sslmode)
    if sslmode:
        if sslmode not in SSL_MODES:
            raise ConfigError(f"EVENT_DB_SSLMODE: {sslmode!r} is not one of "
                              f"{', '.join(SSL_MODES)}")
        query = f"?sslmode={sslmode}"
        if env.get(E.EVENT_DB.sslrootcert):
            query += "&sslrootcert=" + quote(env[E.EVENT_DB.sslrootcert], safe="/")
    return f"postgresql://{auth}{_host(host)}:{port}/{quote(name, safe='')}{query}"


#: libpq's sslmode values; verify-full checks the server's certificate and name.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _mongo_url(env: Mapping[str, str]) -> str:
    host = _require(env, E.SNAPSHOT_DB.host)
    port = _port(env, E.SNAPSHOT_DB.port, 27017)
    name = env.get(E.SNAPSHOT_DB.name) or "eventstore"
    user = env.get(E.SNAPSHOT_DB.user)
    auth = _userinfo(user, _secret(env, E.SNAPSHOT_DB.password))
    query = ""
    if user:
        query = "?authSource=" + quote(env.get(E.SNAPSHOT_DB.auth_source) or "admin", safe="")
    return f"mongodb://{auth}{_host(host)}:{port}/{quote(name, safe='')}{query}"


#: The shortest API token a server accepts, from the environment or a file alike.
MIN_TOKEN_LENGTH = 16


def _checked_token(token: str, source: str) -> str:
    """The token stripped; refused when shorter than MIN_TOKEN_LENGTH (a blank one would
    otherwise match an empty Authorization header, turning authentication off)."""
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{source}: the API token is shorter than {MIN_TOKEN_LENGTH} "
                          "characters (after stripping whitespace); generate a long random "
                          "one, e.g. `openssl rand -base64 32`")
    return token


def _token(env: Mapping[str, str], data_dir: Path, *, required: bool) -> tuple[str, str]:
    token = env.get(E.API_TOKEN)
    if token:
        return _checked_token(token, E.API_TOKEN), E.API_TOKEN
    path = Path(env.get(E.API_TOKEN_FILE) or DEFAULT_TOKEN_FILE)
    if path.exists():
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"EVENTSTORE_API_TOKEN_FILE: cannot read {path}: "
                              f"{exc.strerror}") from None
        return _checked_token(token, f"EVENTSTORE_API_TOKEN_FILE ({path})"), str(path)
    if required:
        raise ConfigError(
            f"EVENTSTORE_API_TOKEN_FILE: no API token: {path} does not exist and "
            "EVENTSTORE_API_TOKEN is not set. Mount the token Secret there.")
    generated = data_dir / GENERATED_TOKEN_FILE
    if generated.exists():
        return _checked_token(generated.read_text(encoding="utf-8"), str(generated)), \
            str(generated)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"EVENTSTORE_DATA_DIR: cannot write a generated API token to "
                          f"{generated}: {exc.strerror}; set EVENTSTORE_API_TOKEN") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, f"generated:{generated}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the pod's name (POD_NAME,
    so lines from three replicas can be told apart once collected) and any `extra` fields."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime",
                                                                     "color_message"}

    def __init__(self, pod: str | None = None) -> None:
        super().__init__()
        self.pod = pod

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.pod:
            entry["pod"] = self.pod
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON logs on stderr for this process and uvicorn's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(os.environ.get(E.POD_NAME) or None))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)

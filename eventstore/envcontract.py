"""The environment contract between the operator and the store pods: every variable a
store pod (or a backup/restore Job running the same image) reads, and the paths inside it.

The operator's builders set these names and `eventstore.server.config` reads them; both
import them from here, so a name cannot drift between the two (a unit test checks that
every variable the builders set is one this module lists as read). Importable without
any server dependency: the operator imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

# -- paths inside a store pod -----------------------------------------------------------

#: The pod's own durable state (the volume claim): local read models, their checkpoints,
#: and on a laptop the embedded SQLite files and the generated token.
DEFAULT_DATA_DIR = Path("/data")
#: Where the settings ConfigMap (event-store.yaml, projections.yaml) is mounted.
DEFAULT_CONFIG_DIR = Path("/etc/eventstore")
#: The mounted API token Secret.
DEFAULT_TOKEN_FILE = Path("/var/run/secrets/eventstore/token")
DEFAULT_TLS_CERT_FILE = Path("/var/run/secrets/eventstore/tls/tls.crt")
DEFAULT_TLS_KEY_FILE = Path("/var/run/secrets/eventstore/tls/tls.key")

# -- the store pods' own variables ------------------------------------------------------

#: Full URLs, for laptops and tests; a pod gets the EVENT_DB_* / SNAPSHOT_DB_* parts instead.
EVENTSTORE_URL = "EVENTSTORE_URL"
SNAPSHOT_STORE_URL = "SNAPSHOT_STORE_URL"
DATA_DIR = "EVENTSTORE_DATA_DIR"
CONFIG_DIR = "EVENTSTORE_CONFIG_DIR"
API_TOKEN = "EVENTSTORE_API_TOKEN"
API_TOKEN_FILE = "EVENTSTORE_API_TOKEN_FILE"
TLS_CERT_FILE = "EVENTSTORE_TLS_CERT_FILE"
TLS_KEY_FILE = "EVENTSTORE_TLS_KEY_FILE"
#: The pod's name (the downward API), on every JSON log line as `pod`.
POD_NAME = "POD_NAME"
#: `eventstore serve --access-log` (one log line per request; off by default).
ACCESS_LOG = "EVENTSTORE_ACCESS_LOG"

#: Tuning and limits (see ServerConfig.from_env for defaults and ranges).
MAX_BODY_BYTES = "EVENTSTORE_MAX_BODY_BYTES"
DB_POOL_SIZE = "EVENTSTORE_DB_POOL_SIZE"
DB_APPEND_POOL_SIZE = "EVENTSTORE_DB_APPEND_POOL_SIZE"
SNAPSHOT_KEEP = "EVENTSTORE_SNAPSHOT_KEEP"
MAX_REPLAY_EVENTS = "EVENTSTORE_MAX_REPLAY_EVENTS"
RETENTION_INTERVAL_SECONDS = "EVENTSTORE_RETENTION_INTERVAL_SECONDS"
RETENTION_AGGREGATE_TYPES = "EVENTSTORE_RETENTION_AGGREGATE_TYPES"
MAX_HEADER_BYTES = "EVENTSTORE_MAX_HEADER_BYTES"
HEADER_TIMEOUT_SECONDS = "EVENTSTORE_HEADER_TIMEOUT_SECONDS"
MAX_CONNECTIONS = "EVENTSTORE_MAX_CONNECTIONS"
DB_TIMEOUT_SECONDS = "EVENTSTORE_DB_TIMEOUT_SECONDS"
MAX_SUBSCRIBERS = "EVENTSTORE_MAX_SUBSCRIBERS"
MAX_PAGE_BYTES = "EVENTSTORE_MAX_PAGE_BYTES"
DRAIN_DELAY_SECONDS = "EVENTSTORE_DRAIN_DELAY_SECONDS"

#: `eventstore backup` writes what it backed up here (the Job's termination message).
BACKUP_RESULT_FILE = "EVENTSTORE_BACKUP_RESULT_FILE"
#: S3 targets of backup and restore: the endpoint, and the variables the S3 client reads.
S3_ENDPOINT = "EVENTSTORE_S3_ENDPOINT"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"
AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"


def secret_file(name: str) -> str:
    """The variable naming the file that holds secret `name` (`NAME_FILE`)."""
    return f"{name}_FILE"


class DatabaseEnv:
    """The variables that describe one database: `<prefix>_HOST`, `_PORT`, ...

    A password comes as `<prefix>_PASSWORD` or, in pods, as the file `<prefix>_PASSWORD_FILE`
    names (a mounted Secret key: the environment shows in `kubectl describe`). Every
    attribute but `prefix` is a variable name, so `variables()` cannot miss one."""

    def __init__(self, prefix: str) -> None:
        self.prefix: Final = prefix
        self.host: Final = f"{prefix}_HOST"
        self.port: Final = f"{prefix}_PORT"
        self.name: Final = f"{prefix}_NAME"
        self.user: Final = f"{prefix}_USER"
        self.password: Final = f"{prefix}_PASSWORD"
        self.password_file: Final = secret_file(self.password)

    def variables(self) -> frozenset[str]:
        return frozenset(value for key, value in vars(self).items() if key != "prefix")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prefix!r})"


class _EventDatabase(DatabaseEnv):
    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.sslmode: Final = f"{prefix}_SSLMODE"
        self.sslrootcert: Final = f"{prefix}_SSLROOTCERT"


class _SnapshotDatabase(DatabaseEnv):
    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.auth_source: Final = f"{prefix}_AUTH_SOURCE"


#: The events' PostgreSQL.
EVENT_DB = _EventDatabase("EVENT_DB")
#: The snapshots' MongoDB.
SNAPSHOT_DB = _SnapshotDatabase("SNAPSHOT_DB")

#: Every variable `eventstore serve` reads.
SERVER_VARIABLES: frozenset[str] = frozenset({
    EVENTSTORE_URL, SNAPSHOT_STORE_URL, DATA_DIR, CONFIG_DIR, API_TOKEN, API_TOKEN_FILE,
    TLS_CERT_FILE, TLS_KEY_FILE, POD_NAME, ACCESS_LOG, MAX_BODY_BYTES, DB_POOL_SIZE,
    DB_APPEND_POOL_SIZE, SNAPSHOT_KEEP, MAX_REPLAY_EVENTS, RETENTION_INTERVAL_SECONDS,
    RETENTION_AGGREGATE_TYPES, MAX_HEADER_BYTES, HEADER_TIMEOUT_SECONDS, MAX_CONNECTIONS,
    DB_TIMEOUT_SECONDS, MAX_SUBSCRIBERS, MAX_PAGE_BYTES, DRAIN_DELAY_SECONDS,
}) | EVENT_DB.variables() | SNAPSHOT_DB.variables()

#: Every variable `eventstore backup` / `restore` reads (its Jobs run the store image).
BACKUP_VARIABLES: frozenset[str] = frozenset({
    EVENTSTORE_URL, BACKUP_RESULT_FILE, S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, DATA_DIR,
}) | EVENT_DB.variables()


def data_dir(environ: Mapping[str, str]) -> Path:
    """The data directory: $EVENTSTORE_DATA_DIR, else /data (the pod's volume claim)."""
    return Path(environ.get(DATA_DIR) or DEFAULT_DATA_DIR)


def config_dir(environ: Mapping[str, str]) -> Path:
    """The settings directory: $EVENTSTORE_CONFIG_DIR, else /etc/eventstore."""
    return Path(environ.get(CONFIG_DIR) or DEFAULT_CONFIG_DIR)

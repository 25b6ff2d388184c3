"""Every name the operator gives to things, in one place (labels, child names, API ids).

Builders, handlers, RBAC tests and the chart refer to these constants so a rename
happens once.
"""

from __future__ import annotations

from eventstore import envcontract

GROUP = "eventstore.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "EventStore"
PLURAL = "eventstores"
SINGULAR = "eventstore"
SHORT_NAMES = ("es",)
CRD_NAME = f"{PLURAL}.{GROUP}"

FIELD_MANAGER = "eventstore-operator"
MANAGED_BY = "eventstore-operator"

# Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/)
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_VERSION = "app.kubernetes.io/version"
APP_NAME = "eventstore"
#: On objects kept when the EventStore is deleted (they belong with its data).
LABEL_KEPT_WITH_DATA = f"{GROUP}/kept-with-data"
LABEL_SERVICE_ROLE = f"{GROUP}/service"  # "client" or "headless" on Services

COMPONENT_STORE = "store"
COMPONENT_POSTGRES = "postgres"
COMPONENT_MONGODB = "mongodb"
COMPONENT_CONFIG = "config"  # the user's ConfigMap, the tuning surface
COMPONENT_CONFIG_SNAPSHOT = "config-snapshot"  # immutable copies of valid configs the pods mount
COMPONENT_API_TOKEN = "api-token"
COMPONENT_APP = "app"  # the connection Secret for applications
COMPONENT_BACKUP = "backup"  # the backup CronJob and its Jobs
COMPONENT_RESTORE = "restore"  # the restore Job

# Annotations
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
ANNOTATION_SEED_HASH = f"{GROUP}/seeded-from"  # on the user's ConfigMap: hash of spec.settings
ANNOTATION_PREFIX = GROUP  # kopf's progress and diff-base annotations live under it

# Condition types on EventStore.status.conditions
CONDITION_READY = "Ready"
CONDITION_CONFIG_VALID = "ConfigValid"
CONDITION_RECONCILED = "Reconciled"
CONDITION_RESTORED = "Restored"  # spec.restore: the restore Job finished
CONDITION_BACKUP = "BackupSucceeded"  # the last backup Job succeeded
CONDITION_SETTINGS_SEEDED = "SettingsSeeded"  # spec.settings still matches the seeded ConfigMap

# Paths and ports inside the store pod (the contract with `eventstore serve`, whose
# defaults and variable names live in eventstore/envcontract.py)
CONFIG_DIR = str(envcontract.DEFAULT_CONFIG_DIR)
DATA_DIR = str(envcontract.DEFAULT_DATA_DIR)
BACKUP_DIR = "/backup"  # where the backup Job mounts its target volume
TOKEN_DIR = str(envcontract.DEFAULT_TOKEN_FILE.parent)
TOKEN_KEY = envcontract.DEFAULT_TOKEN_FILE.name
TOKEN_FILE = str(envcontract.DEFAULT_TOKEN_FILE)
#: Database passwords are mounted as files here (<dir>/event-db/password, ...snapshot-db/...)
#: and named by EVENT_DB_PASSWORD_FILE / SNAPSHOT_DB_PASSWORD_FILE, never put in the env.
#: (Not under TOKEN_DIR: that is a read-only Secret volume, where no mount point can be made.)
CREDENTIALS_DIR = "/var/run/secrets/eventstore-db"
HTTP_PORT = 8080
HTTP_PORT_NAME = "http"
POSTGRES_PORT = 5432
MONGODB_PORT = 27017

# Keys of generated credential Secrets
USERNAME_KEY = "username"
PASSWORD_KEY = "password"

DEFAULT_IMAGE = "ghcr.io/eventstore-py/eventstore:0.1.0"
DEFAULT_POSTGRES_IMAGE = "postgres:16"
DEFAULT_MONGODB_IMAGE = "mongo:7"

# The StatefulSet's pod names are "<sts>-<ordinal>" and carry a 63-character
# controller-revision-hash label value "<sts>-<10 chars>"; child names add at most
# "-postgres-credentials" (21). Keeping EventStore names at or below 40 keeps every
# derived name a valid DNS label.
MAX_NAME_LENGTH = 40


def store(name: str) -> str:
    """The store StatefulSet, its client Service and its PodDisruptionBudget."""
    return name


def headless(name: str) -> str:
    return f"{name}-headless"


def config(name: str) -> str:
    """The user's ConfigMap: created once, then edited by the user."""
    return f"{name}-config"


def config_snapshot(name: str, digest: str) -> str:
    """An immutable copy of a validated config; the pods mount this, never the user's."""
    return f"{name}-config-{digest}"


def api_token(name: str) -> str:
    return f"{name}-api-token"


def app_secret(name: str) -> str:
    """The connection Secret for applications (url, host, port, token), as CloudNativePG's."""
    return f"{name}-app"


def backup(name: str) -> str:
    """The backup CronJob (its Jobs are named by the CronJob controller)."""
    return f"{name}-backup"


def restore(name: str) -> str:
    """The Job that restores a backup into a new EventStore (spec.restore)."""
    return f"{name}-restore"


def postgres(name: str) -> str:
    return f"{name}-postgres"


def mongodb(name: str) -> str:
    return f"{name}-mongodb"


def credentials(db_object_name: str) -> str:
    return f"{db_object_name}-credentials"


def data_volume() -> str:
    """The volumeClaimTemplate name; PVCs are "data-<sts>-<ordinal>"."""
    return "data"


def pvc(statefulset: str, ordinal: int) -> str:
    return f"{data_volume()}-{statefulset}-{ordinal}"

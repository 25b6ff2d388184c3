"""The environment contract (eventstore/envcontract.py): every variable the operator's
builders set is one the store's processes read, and the server reads nothing the
contract does not list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstore import envcontract
from eventstore.server.config import ServerConfig
from eventstore_operator import builders, names
from eventstore_operator.builders import Owner

OWNER = Owner(name="demo", namespace="team-a", uid="0000-1111")
S3 = {"s3": {"bucket": "b", "endpoint": "http://minio:9000", "region": "eu-west-1",
             "credentialsSecret": {"name": "s3-creds"}}}
EXTERNAL = {
    "postgres": {"mode": "External", "host": "pg.example.com", "port": 6432,
                 "database": "events",
                 "credentialsSecret": {"name": "pg", "usernameKey": "user", "passwordKey": "pw"}},
    "mongodb": {"mode": "External", "host": "mongo.example.com",
                "credentialsSecret": {"name": "mongo"}},
}
SPECS: dict[str, dict[str, Any]] = {
    "in-cluster": {},
    "external": EXTERNAL,
    "backup-to-pvc": {"backup": {"schedule": "0 * * * *",
                                 "target": {"pvc": {"claimName": "backups"}}}},
    "backup-to-s3": {"backup": {"schedule": "0 * * * *", "target": S3}, "restore": {"from": S3}},
}


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what runs in it, container) for every container of the store image."""
    sts = builders.store_statefulset(OWNER, spec, "h", "demo-config-h")
    yield "serve", sts["spec"]["template"]["spec"]["containers"][0]
    cron = builders.backup_cronjob(OWNER, spec)
    if cron is not None:
        yield "backup", cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    job = builders.restore_job(OWNER, spec)
    if job is not None:
        yield "backup", job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_variable_the_builders_set_is_read(spec: dict[str, Any]) -> None:
    readers = {"serve": envcontract.SERVER_VARIABLES, "backup": envcontract.BACKUP_VARIABLES}
    for process, container in _containers(spec):
        names_set = {e["name"] for e in container["env"]}
        unread = names_set - readers[process]
        assert not unread, f"the builders set {sorted(unread)} for `eventstore {process}`, " \
                           "which reads no such variable (eventstore/envcontract.py)"


class _Recording(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def _pod_env(spec: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The store container's environment as the kubelet would give it (Secrets and the
    downward API resolved, the password file and token written under tmp_path)."""
    container = next(c for p, c in _containers(spec) if p == "serve")
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = "app-user"
        else:
            env[item["name"]] = "demo-0"
    for name in (envcontract.EVENT_DB.password_file, envcontract.SNAPSHOT_DB.password_file):
        password = tmp_path / name
        password.write_text("s3cret-pw\n")
        env[name] = str(password)
    token = tmp_path / "token"
    token.write_text("a-token-long-enough-0123456789\n")
    env[envcontract.API_TOKEN_FILE] = str(token)
    return env


def test_the_server_reads_what_the_builders_set(tmp_path: Path) -> None:
    env = _Recording(_pod_env(EXTERNAL, tmp_path))
    config = ServerConfig.from_env(env)
    assert config.event_store_url == "postgresql://app-user:s3cret-pw@pg.example.com:6432/events"
    assert config.snapshot_store_url is not None
    assert config.snapshot_store_url.startswith(
        "mongodb://app-user:s3cret-pw@mongo.example.com:27017/")
    assert config.config_dir == Path(names.CONFIG_DIR)
    assert env.read <= envcontract.SERVER_VARIABLES, \
        f"the server reads {sorted(env.read - envcontract.SERVER_VARIABLES)} outside the contract"


def test_paths_are_one_source() -> None:
    assert str(envcontract.DEFAULT_CONFIG_DIR) == names.CONFIG_DIR
    assert str(envcontract.DEFAULT_DATA_DIR) == names.DATA_DIR
    assert str(envcontract.DEFAULT_TOKEN_FILE) == names.TOKEN_FILE
    assert envcontract.data_dir({}) == Path("/data")
    assert envcontract.config_dir({envcontract.CONFIG_DIR: "/x"}) == Path("/x")


def test_the_database_variables_are_spelled_from_their_prefix() -> None:
    # The names pods and users set: a rename here breaks every deployed EventStore.
    event_db, snapshot_db = envcontract.EVENT_DB, envcontract.SNAPSHOT_DB
    assert (event_db.host, event_db.port, event_db.name, event_db.user, event_db.password,
            event_db.password_file, event_db.sslmode, event_db.sslrootcert) == (
        "EVENT_DB_HOST", "EVENT_DB_PORT", "EVENT_DB_NAME", "EVENT_DB_USER", "EVENT_DB_PASSWORD",
        "EVENT_DB_PASSWORD_FILE", "EVENT_DB_SSLMODE", "EVENT_DB_SSLROOTCERT")
    assert snapshot_db.auth_source == "SNAPSHOT_DB_AUTH_SOURCE"
    assert event_db.variables() == {
        "EVENT_DB_HOST", "EVENT_DB_PORT", "EVENT_DB_NAME", "EVENT_DB_USER", "EVENT_DB_PASSWORD",
        "EVENT_DB_PASSWORD_FILE", "EVENT_DB_SSLMODE", "EVENT_DB_SSLROOTCERT"}
    assert snapshot_db.variables() == {
        "SNAPSHOT_DB_HOST", "SNAPSHOT_DB_PORT", "SNAPSHOT_DB_NAME", "SNAPSHOT_DB_USER",
        "SNAPSHOT_DB_PASSWORD", "SNAPSHOT_DB_PASSWORD_FILE", "SNAPSHOT_DB_AUTH_SOURCE"}
    assert envcontract.secret_file(event_db.password) == event_db.password_file

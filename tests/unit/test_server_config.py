"""Server configuration from the environment: URLs, secrets from files, redaction, TLS."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from eventstore.server.auth import token_matches
from eventstore.server.config import ConfigError, JsonFormatter, ServerConfig, redact_url


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"EVENTSTORE_DATA_DIR": str(tmp_path / "data"),
            "EVENTSTORE_TLS_CERT_FILE": str(tmp_path / "nocert"),
            "EVENTSTORE_TLS_KEY_FILE": str(tmp_path / "nokey"),
            "EVENTSTORE_API_TOKEN_FILE": str(tmp_path / "notoken"), **extra}


def test_laptop_defaults_embedded_sqlite_and_a_generated_token(tmp_path: Path) -> None:
    config = ServerConfig.from_env(_env(tmp_path))
    assert config.event_store_url == f"sqlite:///{tmp_path}/data/events.db"
    assert config.snapshot_store_url == f"sqlite:///{tmp_path}/data/snapshots.db"
    token_file = tmp_path / "data" / "api-token"
    assert token_file.read_text().strip() == config.api_token and len(config.api_token) >= 32
    assert token_file.stat().st_mode & 0o077 == 0
    assert ServerConfig.from_env(_env(tmp_path)).api_token == config.api_token  # stable
    assert config.tls_cert_file is None


def test_operator_environment(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("p@ss:w/rd\n")
    (tmp_path / "mpw").write_text("mongo-secret")
    (tmp_path / "token").write_text("a-token-from-a-secret-0123\n")
    config = ServerConfig.from_env(_env(
        tmp_path, EVENT_DB_HOST="pg.ns.svc", EVENT_DB_USER="es",
        EVENT_DB_PASSWORD_FILE=str(tmp_path / "pw"), SNAPSHOT_DB_HOST="mongo.ns.svc",
        SNAPSHOT_DB_USER="snap", SNAPSHOT_DB_PASSWORD_FILE=str(tmp_path / "mpw"),
        SNAPSHOT_DB_NAME="snaps", EVENTSTORE_API_TOKEN_FILE=str(tmp_path / "token"),
        EVENTSTORE_CONFIG_DIR="/cfg", EVENTSTORE_RETENTION_AGGREGATE_TYPES="Account, Order"))
    assert config.event_store_url == "postgresql://es:p%40ss%3Aw%2Frd@pg.ns.svc:5432/eventstore"
    assert config.snapshot_store_url == ("mongodb://snap:mongo-secret@mongo.ns.svc:27017/snaps"
                                         "?authSource=admin")
    assert config.api_token == "a-token-from-a-secret-0123"
    assert config.retention_aggregate_types == ("Account", "Order")
    assert str(config.config_dir) == "/cfg"
    shown = json.dumps(config.describe()) + repr(config)
    for secret in ("p@ss", "p%40ss", "mongo-secret", "a-token-from"):
        assert secret not in shown
    assert config.describe()["event_store"] == "postgresql://***@pg.ns.svc:5432/eventstore"


def test_full_urls_override(tmp_path: Path) -> None:
    config = ServerConfig.from_env(_env(tmp_path, EVENTSTORE_URL="postgresql://u@h/db",
                                        EVENT_DB_HOST="ignored",
                                        SNAPSHOT_STORE_URL="mongodb://h/db",
                                        EVENTSTORE_API_TOKEN="tok-0123456789abcdef"))
    assert config.event_store_url == "postgresql://u@h/db"
    assert config.snapshot_store_url == "mongodb://h/db"


@pytest.mark.parametrize("env,variable", [
    ({"EVENT_DB_HOST": "pg"}, "EVENTSTORE_API_TOKEN_FILE"),          # cluster needs a token
    ({"EVENT_DB_HOST": "pg", "EVENTSTORE_API_TOKEN": "t", "EVENT_DB_PORT": "x"}, "EVENT_DB_PORT"),
    ({"EVENT_DB_HOST": "pg", "EVENTSTORE_API_TOKEN": "t", "EVENT_DB_PORT": "70000"},
     "EVENT_DB_PORT"),
    ({"EVENT_DB_HOST": "pg", "EVENTSTORE_API_TOKEN": "t",
      "EVENT_DB_PASSWORD_FILE": "/nonexistent/pw"}, "EVENT_DB_PASSWORD_FILE"),
    ({"EVENTSTORE_MAX_BODY_BYTES": "1"}, "EVENTSTORE_MAX_BODY_BYTES"),
])
def test_bad_environment_names_the_variable(tmp_path: Path, env: dict[str, str],
                                            variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ServerConfig.from_env(_env(tmp_path, **env))


def test_tls_needs_both_files(tmp_path: Path) -> None:
    (tmp_path / "crt").write_text("x")
    with pytest.raises(ConfigError, match="EVENTSTORE_TLS_KEY_FILE"):
        ServerConfig.from_env(_env(tmp_path, EVENTSTORE_TLS_CERT_FILE=str(tmp_path / "crt")))
    (tmp_path / "key").write_text("x")
    config = ServerConfig.from_env(_env(tmp_path, EVENTSTORE_TLS_CERT_FILE=str(tmp_path / "crt"),
                                        EVENTSTORE_TLS_KEY_FILE=str(tmp_path / "key")))
    assert config.tls_cert_file == tmp_path / "crt" and config.tls_key_file == tmp_path / "key"


def test_short_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        ServerConfig.from_env(_env(tmp_path, EVENTSTORE_API_TOKEN_FILE=str(tmp_path / "t")))


def test_redact_url() -> None:
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://***@h:5432/db"
    assert redact_url("mongodb://u:secret@[::1]:27017/db?authSource=admin") == \
        "mongodb://***@[::1]:27017/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_token_matches() -> None:
    assert token_matches(b"abc", b"Bearer abc")
    assert token_matches(b"abc", b"bearer abc")
    assert not token_matches(b"abc", b"Bearer abcd")
    assert not token_matches(b"abc", b"Basic abc")
    assert not token_matches(b"abc", None)
    assert not token_matches(b"abc", b"Bearer ")


def test_json_log_lines_carry_extras() -> None:
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "hello %s",
                                    "args": ("world",), "projection": "balances"})
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world" and line["projection"] == "balances"
    assert line["level"] == "info" and "pod" not in line
    # POD_NAME (set by the operator from the downward API) names the replica.
    assert json.loads(JsonFormatter("demo-1").format(record))["pod"] == "demo-1"


@pytest.mark.parametrize("token", ["   ", "\t\n", "x", "fifteen-chars-x"])
def test_one_token_rule_for_the_environment_and_the_file(tmp_path: Path, token: str) -> None:
    """A blank or short token is refused wherever it comes from (a whitespace-only
    EVENTSTORE_API_TOKEN used to turn authentication off)."""
    with pytest.raises(ConfigError, match="shorter than 16"):
        ServerConfig.from_env(_env(tmp_path, EVENTSTORE_API_TOKEN=token))
    (tmp_path / "t").write_text(token)
    with pytest.raises(ConfigError, match="shorter than 16"):
        ServerConfig.from_env(_env(tmp_path, EVENTSTORE_API_TOKEN_FILE=str(tmp_path / "t")))


def test_an_empty_token_never_matches() -> None:
    assert not token_matches(b"", b"Bearer ")
    assert not token_matches(b"", b"Bearer")
    assert not token_matches(b"", b"Bearer    ")


def test_postgres_tls_mode(tmp_path: Path) -> None:
    base = {"EVENT_DB_HOST": "pg", "EVENTSTORE_API_TOKEN": "tok-0123456789abcdef"}
    config = ServerConfig.from_env(_env(tmp_path, **base, EVENT_DB_SSLMODE="verify-full",
                                        EVENT_DB_SSLROOTCERT="/etc/pg/ca.crt"))
    assert config.event_store_url.endswith("/eventstore?sslmode=verify-full"
                                           "&sslrootcert=/etc/pg/ca.crt")
    with pytest.raises(ConfigError, match="EVENT_DB_SSLMODE"):
        ServerConfig.from_env(_env(tmp_path, **base, EVENT_DB_SSLMODE="yes-please"))


def test_drain_delay_defaults_to_five_seconds_and_is_bounded(tmp_path: Path) -> None:
    assert ServerConfig.from_env(_env(tmp_path)).drain_delay_seconds == 5
    assert ServerConfig.from_env(_env(
        tmp_path, EVENTSTORE_DRAIN_DELAY_SECONDS="0")).drain_delay_seconds == 0
    for bad in ("-1", "301", "soon"):
        with pytest.raises(ConfigError, match="EVENTSTORE_DRAIN_DELAY_SECONDS"):
            ServerConfig.from_env(_env(tmp_path, EVENTSTORE_DRAIN_DELAY_SECONDS=bad))

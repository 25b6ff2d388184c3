"""The images the one-node cluster runs really run, the way the operator's pods run them.

Each image is imported into a private containerd (tests/harness/images.py) and started
with `ctr run`: read-only root filesystem, the operator's mounts, env, args and probe
commands (taken from eventstore_operator.builders), as the pods' uid. Host networking on
loopback ports stands in for the pod network.

Needs root, containerd, ctr and runc (and, on a cold cache, debootstrap, Go and the package
registries: the first build takes minutes; warm, this module takes well under a minute).
Skipped with the reason otherwise, or failed when EVENTSTORE_REQUIRE_NODE=1.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymongo
import pymongo.errors
import pytest

from eventstore_operator import builders, names
from tests.harness import images
from tests.harness.fixtures import required

OWNER = builders.Owner(name="demo", namespace="test", uid="0000")
PREFIX = "images-test-"


def _require(reason: str) -> None:
    if required("EVENTSTORE_REQUIRE_NODE"):
        pytest.fail(f"EVENTSTORE_REQUIRE_NODE is set but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Ctr:
    """`ctr` against the private containerd, in the CRI's namespace."""

    address: Path
    logs: Path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "-n", images.NAMESPACE, "--address", str(self.address), *args],
                              capture_output=True, text=True, check=check, timeout=120)

    def run(self, image: str, name: str, argv: Sequence[str], *, env: dict[str, str],
            mounts: Sequence[str] = (), detach: bool = True) -> subprocess.CompletedProcess[str]:
        """Like a pod's container: read-only root, the given mounts and env, `argv` as
        entrypoint + args (`ctr run` replaces both, as kubelet's command/args would)."""
        cid = PREFIX + name
        self.remove(cid)
        flags = ["--net-host", "--read-only"]
        if detach:
            flags += ["-d", "--log-uri", f"file://{self.logs / cid}.log"]
        else:
            flags += ["--rm"]
        for mount in mounts:
            flags += ["--mount", mount]
        for key, value in env.items():
            flags += ["--env", f"{key}={value}"]
        return self("run", *flags, image, cid, *argv, check=not detach)

    def log(self, name: str) -> str:
        path = self.logs / f"{PREFIX}{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def state(self, cid: str) -> str | None:
        for line in self("task", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return fields[-1]
        return None

    def running(self, name: str) -> bool:
        return self.state(PREFIX + name) == "RUNNING"

    def probe(self, name: str, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        exec_id = f"probe{time.monotonic_ns()}"
        return self("task", "exec", "--exec-id", exec_id, PREFIX + name, *command, check=False)

    def remove(self, cid: str) -> None:
        self("task", "kill", "-s", "SIGKILL", cid, check=False)
        with contextlib.suppress(AssertionError):
            _wait(lambda: self.state(cid) != "RUNNING", 10, f"{cid} to die")
        self("task", "delete", cid, check=False)
        self("containers", "rm", cid, check=False)


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """Every image's archive, built now when the cache lacks it (minutes, once)."""
    if os.geteuid() != 0:
        _require("building and running images needs root (chroot, containerd)")
    try:
        return images.build()
    except Exception as exc:  # a cold build needs debootstrap, Go and the registries
        _require(f"the images could not be built here: {exc}")
        raise


@pytest.fixture(scope="module")
def ctr(built: dict[str, Path]) -> Iterator[Ctr]:
    missing = [tool for tool in ("containerd", "ctr", "runc") if shutil.which(tool) is None]
    if missing:
        _require(f"missing {', '.join(missing)} (apt-get install containerd runc)")
    logs = Path(tempfile.mkdtemp(prefix="eventstore-images-test-"))
    try:
        with images.private_containerd(images.CACHE_DIR / "test-containerd") as address:
            client = Ctr(address, logs)
            images.import_images(address=address)
            for line in client("containers", "ls", "-q").stdout.split():
                if line.startswith(PREFIX):
                    client.remove(line)
            try:
                yield client
            finally:
                for line in client("containers", "ls", "-q").stdout.split():
                    if line.startswith(PREFIX):
                        client.remove(line)
    finally:
        shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="eventstore-images-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _owned_dir(path: Path, uid: int) -> Path:
    path.mkdir(parents=True)
    os.chown(path, uid, uid)
    return path


def _secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o444)
    return path


def _bind(src: Path, dst: str, mode: str = "rw") -> str:
    return f"type=bind,src={src},dst={dst},options=rbind:{mode}"


def _tmpfs(dst: str) -> str:
    return f"type=tmpfs,src=tmpfs,dst={dst},options=rw:nosuid:nodev:mode=1777"


def _as_uid(uid: int, argv: Sequence[str]) -> list[str]:
    """`ctr run` has no --user: step down inside, as runAsUser would (no capabilities left)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def _mount_path(container: dict[str, Any], name: str) -> str:
    return next(str(m["mountPath"]) for m in container["volumeMounts"] if m["name"] == name)


def _value(container: dict[str, Any], name: str) -> str:
    return next(str(e["value"]) for e in container["env"] if e["name"] == name)


def test_archives_carry_the_recipes_config(built: dict[str, Path]) -> None:
    """The written image config is exactly the recipe's (what the contract test checks)."""
    for key, path in built.items():
        recipe = images.RECIPES[key]
        _, config = images.read_archive(path)
        assert config["config"] == recipe.config.to_oci(), recipe.key
        assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_store_layer_has_the_dockerfile_user_and_data_dir(built: dict[str, Path]) -> None:
    path = built[images.STORE.key]
    seen: dict[str, tuple[int, int, int, bool]] = {}
    passwd = ""
    for member, layer in images.layer_members(path):
        if member.name in {"data", "etc/passwd", "usr/local/bin/eventstore",
                           "opt/eventstore/venv/bin/eventstore-operator"}:
            seen[member.name] = (member.uid, member.gid, member.mode, member.isdir())
            if member.name == "etc/passwd":
                handle = layer.extractfile(member)
                assert handle is not None
                passwd = handle.read().decode()
    assert seen["data"] == (10001, 10001, 0o750, True)
    assert "opt/eventstore/venv/bin/eventstore-operator" in seen
    assert "eventstore:x:10001:10001::/nonexistent:/usr/sbin/nologin" in passwd.splitlines()


def test_pause_holds_and_stops_on_sigterm(ctr: Ctr) -> None:
    ctr.run(images.PAUSE_IMAGE, "pause", ["/pause"], env={})
    _wait(lambda: ctr.running("pause"), 10, "pause to run")
    time.sleep(0.5)
    assert ctr.running("pause"), ctr.log("pause")
    ctr("task", "kill", "-s", "SIGTERM", PREFIX + "pause")
    _wait(lambda: not ctr.running("pause"), 5, "pause to exit on SIGTERM")


def _scram_verifier_matches(verifier: str, password: str) -> bool:
    """PostgreSQL's stored SCRAM-SHA-256 secret was made from `password` (RFC 5802)."""
    mechanism, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    return (mechanism == "SCRAM-SHA-256"
            and base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key
            and base64.b64encode(server).decode() == server_key)


def test_postgres_follows_the_official_contract(ctr: Ctr, scratch: Path) -> None:
    """POSTGRES_DB == POSTGRES_USER is still created; the operator's args pass through;
    the readiness probe passes; SIGINT (the image's stop signal) is a fast shutdown; a
    restart reuses the data directory."""
    spec = {"postgres": {"mode": "InCluster"}, "mongodb": {"mode": "InCluster"}}
    container = _container(builders.postgres_statefulset(OWNER, spec))
    data_mount = _mount_path(container, names.data_volume())
    pgdata = _value(container, "PGDATA")
    probe = container["readinessProbe"]["exec"]["command"]
    password = "pa ss'word"
    port = _free_port()
    env = {"POSTGRES_USER": "eventstore", "POSTGRES_DB": "eventstore", "PGDATA": pgdata,
           "POSTGRES_PASSWORD_FILE": "/run/secrets/password", "PGPORT": str(port)}
    mounts = [_bind(_owned_dir(scratch / "data", 999), data_mount),
              _bind(_secret(scratch / "password", password), "/run/secrets/password", "ro"),
              *(_tmpfs(_mount_path(container, name)) for name in ("run", "tmp"))]
    argv = _as_uid(999, [*images.POSTGRES.config.entrypoint, *container["args"]])
    ctr.run(images.POSTGRES_IMAGE, "postgres", argv, env=env, mounts=mounts)
    _wait(lambda: ctr.probe("postgres", probe).returncode == 0 or not ctr.running("postgres"),
          90, "the readiness probe")
    assert ctr.running("postgres"), ctr.log("postgres")

    dsn = f"host=127.0.0.1 port={port} user=eventstore dbname=eventstore connect_timeout=5"
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_database(), current_setting('max_connections'),"
                           " current_setting('listen_addresses'), current_setting('data_directory')"
                           ).fetchone()
        assert row == ("eventstore", "300", "*", pgdata)
        secret = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'eventstore'").fetchone()
        assert secret is not None and _scram_verifier_matches(str(secret[0]), password)
        rules = conn.execute("SELECT type, address, auth_method FROM pg_hba_file_rules"
                             " WHERE address = 'all'").fetchall()
        assert ("host", "all", "scram-sha-256") in rules
        conn.execute("CREATE TABLE kept (id int)")
    assert (scratch / "data" / "pgdata" / "PG_VERSION").stat().st_uid == 999

    # `ctr task kill` sends the image's StopSignal, as kubelet does: with a client still
    # connected, SIGTERM ("smart") would wait for it; SIGINT ("fast") does not.
    with psycopg.connect(dsn):
        started = time.monotonic()
        ctr("task", "kill", PREFIX + "postgres")
        _wait(lambda: not ctr.running("postgres"), 15, "a fast shutdown")
        assert time.monotonic() - started < 10
    ctr("task", "delete", PREFIX + "postgres")
    ctr("task", "start", "-d", PREFIX + "postgres")
    _wait(lambda: ctr.probe("postgres", probe).returncode == 0 or not ctr.running("postgres"),
          60, "the restarted server")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)


def test_ferretdb_follows_the_mongo_root_user_contract(ctr: Ctr, scratch: Path) -> None:
    """MONGO_INITDB_ROOT_USERNAME/PASSWORD(_FILE) make an admin-database user that
    authenticates with SCRAM-SHA-256 (what the store's authSource=admin URL uses)."""
    spec = {"postgres": {"mode": "InCluster"}, "mongodb": {"mode": "InCluster"}}
    container = _container(builders.mongodb_statefulset(OWNER, spec))
    env_names = {e["name"] for e in container["env"]}
    assert {"MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"} <= env_names
    port = _free_port()
    password = "m0ngo:pw@"
    env = {"MONGO_INITDB_ROOT_USERNAME": "eventstore",
           "MONGO_INITDB_ROOT_PASSWORD_FILE": "/run/secrets/password",
           "MONGO_INITDB_DATABASE": _value(container, "MONGO_INITDB_DATABASE"),
           # Host networking in this test: a free loopback port, no debug listener.
           "FERRETDB_LISTEN_ADDR": f"127.0.0.1:{port}", "FERRETDB_DEBUG_ADDR": "-"}
    data_mount = _mount_path(container, names.data_volume())
    mounts = [_bind(_owned_dir(scratch / "db", 999), data_mount),
              _bind(_secret(scratch / "password", password), "/run/secrets/password", "ro"),
              *(_tmpfs(_mount_path(container, name)) for name in ("configdb", "tmp"))]
    argv = _as_uid(999, [*images.MONGODB.config.entrypoint, *images.MONGODB.config.cmd])
    ctr.run(images.MONGODB_IMAGE, "mongodb", argv, env=env, mounts=mounts)

    def answers() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0 or not ctr.running("mongodb")

    _wait(answers, 30, "FerretDB to listen")
    assert ctr.running("mongodb"), ctr.log("mongodb")

    quoted = urllib.parse.quote(password, safe="")
    url = (f"mongodb://eventstore:{quoted}@127.0.0.1:{port}/"
           "?authSource=admin&authMechanism=SCRAM-SHA-256")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    try:
        client.eventstore.snapshots.insert_one({"_id": "a", "v": 1})
        assert client.eventstore.snapshots.find_one({"_id": "a"}) == {"_id": "a", "v": 1}
    finally:
        client.close()
    for bad in (f"mongodb://eventstore:wrong@127.0.0.1:{port}/?authSource=admin",
                f"mongodb://127.0.0.1:{port}/"):
        other: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            bad, serverSelectionTimeoutMS=5000)
        try:
            with pytest.raises(pymongo.errors.OperationFailure):
                other.eventstore.snapshots.find_one({})
        finally:
            other.close()
    assert {p.name for p in (scratch / "db").glob("*.sqlite")} >= {"admin.sqlite", "eventstore.sqlite"}
    assert (scratch / "db" / "eventstore.sqlite").stat().st_uid == 999


def test_store_image_runs_as_10001_and_serves(ctr: Ctr, scratch: Path) -> None:
    out = ctr.run(images.STORE_IMAGE, "store-shell", [
        "sh", "-c", "id -u; id -g; pwd; command -v eventstore eventstore-operator;"
        " eventstore --version; eventstore-operator --help >/dev/null && echo operator-ok"],
        env={}, detach=False)
    lines = out.stdout.split()
    assert lines[:3] == ["10001", "10001", "/data"], out.stdout + out.stderr
    assert "/opt/eventstore/venv/bin/eventstore" in lines and "operator-ok" in lines, out.stdout

    port = _free_port()
    mounts = [_bind(_owned_dir(scratch / "data", 10001), "/data"), _tmpfs("/tmp")]
    ctr.run(images.STORE_IMAGE, "store", ["eventstore", "serve", "--host", "127.0.0.1",
                                          "--port", str(port)],
            env={"EVENTSTORE_API_TOKEN": "test-token-0123456789abcdef"}, mounts=mounts)

    def ready() -> bool:
        if not ctr.running("store"):
            return True
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    _wait(ready, 60, "the store's /readyz")
    assert ctr.running("store"), ctr.log("store")
    ctr("task", "kill", PREFIX + "store")
    _wait(lambda: not ctr.running("store"), 30, "the store to drain and exit on SIGTERM")

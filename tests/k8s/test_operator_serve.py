"""Issue 5 item 6: a store pod starts from exactly what the operator wrote.

The StatefulSet's pod template is read back from the API server; its ConfigMap and
Secret volumes are laid out as the kubelet would (under a temp root instead of /), its
env is resolved as the kubelet would (values, secretKeyRef from the real Secrets,
fieldRef), and its command (`eventstore serve`) is started against real PostgreSQL and
the MongoDB wire server (FerretDB). The only substitutions: the database Service names
become 127.0.0.1 and their ports the harness ports (no cluster DNS here), mount paths
are rebased under the temp root, and the server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pymongo.errors
import pytest
import yaml

from eventstore_operator import names
from tests.harness import ferretdb
from tests.harness.postgres import PostgresServer
from tests.k8s.test_operator import converged, patch_config, wait_converged
from tests.k8s.test_operator_support import (
    Kubectl,
    OperatorProcess,
    install_crd,
    manifest,
    service_account_kubeconfig,
    wait_for,
)
from tests.unit.operator.kubelet import kubelet_layout

pytestmark = [pytest.mark.k8s, pytest.mark.postgres, pytest.mark.mongo]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def resolve_env(
    container: dict[str, Any], secrets: dict[str, dict[str, str]], pod_name: str
) -> dict[str, str]:
    """The container's env as the kubelet resolves it."""
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        else:
            raise AssertionError(f"unhandled env source: {var}")
    return env


def applied_snapshot_frequency(kubectl: Kubectl, namespace: str) -> int | None:
    """snapshot_frequency in the ConfigMap the store pods mount (None until converged)."""
    body = converged(kubectl, namespace)
    mounted = (body or {}).get("status", {}).get("configMapName")
    cm = kubectl.get("configmap", mounted, namespace) if mounted else None
    if not cm:
        return None
    value: int = yaml.safe_load(cm["data"]["event-store.yaml"]).get("snapshot_frequency", 100)
    return value


@contextlib.contextmanager
def authenticated_ferretdb(username: str, password: str, tmp: Path) -> Iterator[int]:
    """FerretDB with authentication on, its one user in `admin`: as the mongo:7 image sets up
    MONGO_INITDB_ROOT_USERNAME/PASSWORD (the shared harness server runs without auth)."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [
        str(ferretdb.ensure_binary()),
        "--handler=sqlite",
        f"--sqlite-url=file:{tmp}/",
        f"--listen-addr=127.0.0.1:{port}",
        "--debug-addr=-",
        "--telemetry=disable",
        f"--state-dir={tmp}",
        "--log-level=WARN",
        "--test-enable-new-auth",
        f"--setup-username={username}",
        "--setup-database=admin",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
    env.update({"DO_NOT_TRACK": "1", "FERRETDB_SETUP_PASSWORD": password})  # not on argv
    with (tmp / "ferretdb.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{port}/",
        username=username,
        password=password,
        authSource="admin",
        serverSelectionTimeoutMS=500,
        directConnection=True,
    )
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"FerretDB exited: {(tmp / 'ferretdb.log').read_text()}")
            try:
                return bool(client.admin.command("ping"))
            except pymongo.errors.PyMongoError:
                return False

        wait_for(answers, 30, "FerretDB with auth")
        yield port
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_store_pod_starts_from_the_operator_written_template(
    control_plane: Any,
    namespace: str,
    tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:
    kubectl = Kubectl(control_plane.kubectl, control_plane.kubeconfig)
    install_crd(kubectl)
    kubectl.apply(manifest("rbac.yaml", namespace))
    op = OperatorProcess(service_account_kubeconfig(kubectl, namespace, tmp_path), namespace, tmp_path)
    database = f"serve_{namespace.replace('-', '_')}"
    doc = yaml.safe_load((Path(__file__).parents[2] / "manifests/examples/eventstore.yaml").read_text())
    doc["spec"]["postgres"]["database"] = database
    doc["spec"]["mongodb"]["database"] = database
    op.start()
    try:
        kubectl.apply(yaml.safe_dump(doc), namespace)
        wait_converged(kubectl, namespace, op)
        patch_config(kubectl, namespace, "snapshot_frequency: 50\nretention_days: 30\n")
        wait_for(
            lambda: applied_snapshot_frequency(kubectl, namespace) == 50,
            30,
            "the valid edit to be applied",
        )
        sts = kubectl.get("statefulset", "demo", namespace)
        assert sts is not None
    finally:
        op.stop()

    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secret_names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} | {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    secrets = {}
    for name in secret_names:
        obj = kubectl.get("secret", name, namespace)
        assert obj is not None, f"the template references a missing Secret {name}"
        secrets[name] = {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}
    config_maps = {}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            found = kubectl.get("configmap", volume["configMap"]["name"], namespace)
            assert found is not None
            config_maps[volume["configMap"]["name"]] = found

    root = tmp_path / "pod-root"
    kubelet_layout(root, sts, config_maps, secrets)
    env = resolve_env(container, secrets, "demo-0")
    # The substitutions this machine needs (see the module docstring).
    assert env["EVENT_DB_HOST"] == "demo-postgres" and env["SNAPSHOT_DB_HOST"] == "demo-mongodb"
    env["EVENT_DB_HOST"], env["EVENT_DB_PORT"] = "127.0.0.1", str(postgres_server.port)
    for key in ("EVENTSTORE_CONFIG_DIR", "EVENTSTORE_API_TOKEN_FILE", "EVENT_DB_PASSWORD_FILE",
                "SNAPSHOT_DB_PASSWORD_FILE"):
        env[key] = str(root / env[key].lstrip("/"))
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == names.data_volume())
    env["EVENTSTORE_DATA_DIR"] = str(root / data_mount["mountPath"].lstrip("/"))
    Path(env["EVENTSTORE_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    postgres_server.create_database(database)

    port = free_port()
    executable = Path(sys.executable).parent / container["command"][0]
    argv = [str(executable), *container["args"], "--host", "127.0.0.1", "--port", str(port)]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENT", "SNAPSHOT_"))}
    log_path = tmp_path / "serve.log"
    mongo_secret = secrets["demo-mongodb-credentials"]
    stack = contextlib.ExitStack()
    mongo_port = stack.enter_context(
        authenticated_ferretdb(mongo_secret["username"], mongo_secret["password"], tmp_path / "fdb")
    )
    env["SNAPSHOT_DB_HOST"], env["SNAPSHOT_DB_PORT"] = "127.0.0.1", str(mongo_port)
    with stack, log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env={**base_env, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"eventstore serve exited {proc.returncode}:\n{log_path.read_text()}")
                try:
                    return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, 60, "eventstore serve to become ready", interval=0.5)
            assert httpx.get(f"{url}/healthz").status_code == 200
            token = secrets["demo-api-token"]["token"]
            assert httpx.get(f"{url}/all").status_code == 401  # the token is required
            auth = {"Authorization": f"Bearer {token}"}
            appended = httpx.post(
                f"{url}/streams/acc-1",
                json={"expected_version": "no_stream", "events": [{"type": "Opened", "payload": {"n": 1}}]},
                headers=auth,
            )
            assert appended.status_code == 201, appended.text
            read = httpx.get(f"{url}/streams/acc-1", headers=auth)
            assert read.status_code == 200 and "Opened" in read.text
            snap = httpx.put(
                f"{url}/streams/acc-1/snapshot",
                json={"aggregate_type": "Account", "version": 1, "state": {"n": 1}},
                headers=auth,
            )
            assert snap.status_code == 201, snap.text
            got = httpx.get(
                f"{url}/streams/acc-1/snapshot", params={"aggregate_type": "Account"}, headers=auth
            )
            assert got.status_code == 200 and got.json()["state"] == {"n": 1}  # via FerretDB
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    log_text = log_path.read_text(errors="replace")
    assert code == 0, log_text
    # The settings the pod started with are the edited ConfigMap's.
    started = next(line for line in log_text.splitlines() if "starting" in line)
    assert '"snapshot_frequency": 50' in started and '"retention_days": 30' in started, started
    # Credentials never reach the log.
    for secret in secrets.values():
        for value in secret.values():
            if len(value) >= 16:
                assert value not in log_text

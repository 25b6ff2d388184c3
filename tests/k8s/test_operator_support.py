"""Helpers for the operator and manifest tests against the real control plane.

(Named test_operator_* so it sits with the tests it serves; it holds no tests.)
The operator runs as a subprocess, authenticated as its own ServiceAccount (a token
from the TokenRequest API), so the RBAC in manifests/rbac.yaml is what it really has.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.harness.kubeaccess import crd_established

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
MANIFEST_NAMESPACE = "eventstore-system"
SERVICE_ACCOUNT = "eventstore-operator"

T = TypeVar("T")


class Kubectl:
    """Real kubectl against the test control plane, as admin or as a given kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = Path(binary)
        self.kubeconfig = Path(kubeconfig)

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def apply(self, text: str, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
        ns = ["-n", namespace] if namespace else []
        return self.run("apply", *ns, "-f", "-", input=text)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        proc = self.run("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        sel = ["-l", selector] if selector else []
        proc = self.run("get", kind, "-n", namespace, *sel, "-o", "json")
        items: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
        return items

    def can_i(
        self,
        verb: str,
        resource: str,
        namespace: str | None,
        as_user: str,
        subresource: str | None = None,
    ) -> bool:
        ns = ["-n", namespace] if namespace else []
        sub = [f"--subresource={subresource}"] if subresource else []
        proc = self.run("auth", "can-i", verb, resource, *ns, *sub, f"--as={as_user}", check=False)
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), f"can-i {verb} {resource}: {proc.stdout}{proc.stderr}"
        return answer == "yes"


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll until `probe` returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except AssertionError as exc:  # a kubectl hiccup counts as "not yet"
            last = exc
        if last and not isinstance(last, AssertionError):
            result: T = last
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def manifest(name: str, namespace: str) -> str:
    """A manifest file with its namespace moved to the test's namespace."""
    return (MANIFESTS / name).read_text().replace(MANIFEST_NAMESPACE, namespace)


def crd_yaml() -> str:
    return (MANIFESTS / "crd.yaml").read_text()


def install_crd(kubectl: Kubectl) -> None:
    """Apply the CRD and wait until it is served (see KubectlClient.wait_crd_established for
    why not `kubectl wait`)."""
    kubectl.apply(crd_yaml())
    wait_for(lambda: crd_established(json.loads(
        kubectl.run("get", "crd", "eventstores.eventstore.io", "-o", "json").stdout)),
        30, "the CRD to be Established")


def service_account_kubeconfig(
    kubectl: Kubectl, namespace: str, directory: Path, service_account: str = SERVICE_ACCOUNT
) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (bound token)."""
    token = kubectl.run("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(kubectl.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [
            {
                "name": service_account,
                "context": {
                    "cluster": cluster["name"],
                    "user": service_account,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": service_account,
    }
    path = directory / f"kubeconfig-{service_account}-{namespace}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """`python -m eventstore_operator` as a subprocess, restartable, always stopped."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: Extra environment for the next start (as a Deployment's env would set).
        self.env: dict[str, str] = {}

    def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "EVENTSTORE_OPERATOR_RESYNC_SECONDS": "3",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake this for in-cluster
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eventstore_operator",
                "--standalone",
                "--namespace",
                self.namespace,
                "--verbose",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies mid-reconcile."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def assert_running(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, (
            f"the operator exited ({self.proc.returncode if self.proc else None}):\n{self.logs()}"
        )

    def assert_clean_logs(self) -> None:
        """No RBAC refusal and no crash in any run: the Role is enough for everything."""
        text = self.logs(limit=None)
        for marker in ("HTTP 403", "is forbidden: User", "APIForbiddenError", "Traceback"):
            assert marker not in text, f"operator log contains {marker!r}:\n{self.logs()}"

    def logs(self, limit: int | None = 6000) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-(limit or 0) :]
            for p in sorted(self.log_dir.glob("operator-*.log"))
        )


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None

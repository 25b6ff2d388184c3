"""A throwaway Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) run
as local processes, the way controller-runtime's envtest does, for tests that need real API
semantics: validation, RBAC, owner references, the StatefulSet and garbage collectors.

Binaries are built from Go modules by `scripts/k8s/build.sh` into
`${XDG_CACHE_HOME:-~/.cache}/eventstore-ci/k8s-<version>-etcd-<version>/bin/` (the cache
root is $EVENTSTORE_CI_CACHE when set; built on first use when missing; set
EVENTSTORE_K8S_BIN_DIR to use another folder holding etcd, kube-apiserver,
kube-controller-manager, kubectl and helm).

No kubelet and no scheduler run: Pods stay Pending and PVCs stay unbound. Tests assert on
the objects the controllers create, not on running containers.

Stable interface (used by tests/k8s/conftest.py and the operator's tests)::

    cp = ControlPlane().start()        # or: with ControlPlane() as cp: ...
    cp.kubeconfig   -> Path            # admin (system:masters) kubeconfig, client-cert auth
    cp.server       -> str             # https://127.0.0.1:<port>
    cp.kubectl, cp.helm -> Path        # real binaries matching the server's minor version
    cp.bin_dir      -> Path
    cp.env()        -> dict[str, str]  # os.environ + KUBECONFIG + bin dir first on PATH
    cp.kubectl_run("get", "pods", "-n", ns)            # CompletedProcess[str], check=True
    cp.kubectl_json("get", "statefulset", "x", "-n", ns)   # parsed `-o json`
    cp.make_user_kubeconfig("alice", ["dev"])        # client-cert identity, RBAC applies
    cp.service_account_kubeconfig(ns, "operator")    # token of a ServiceAccount (create it first)
    wait_until(lambda: ..., timeout=60, message="pods created")   # poll, never sleep
    cp.stop()                          # terminate all, kill after timeout, remove temp dir

`python -m tests.harness.controlplane up` runs one in the foreground and prints
`export KUBECONFIG=...`; `python -m tests.harness.controlplane build` builds the binaries.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness.kubeaccess import (
    PKI,
    KubectlClient,
    api_get,
    client_cert_auth,
    http_ok,
    kubeconfig,
)
from tests.harness.process import ci_cache_dir, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "k8s" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")

# What kube-controller-manager runs: enough for StatefulSets to create Pods and PVCs,
# Deployments/ReplicaSets/Jobs to create Pods, owner-reference garbage collection, namespace
# deletion, default ServiceAccounts and their tokens, the kube-root-ca.crt ConfigMap, PDB
# status, EndpointSlices, aggregated ClusterRoles (admin/edit/view, which charts extend) and
# the pvc-protection finalizer. Canonical names (`kube-controller-manager --help` lists them).
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "statefulset-controller",
    "replicaset-controller",
    "deployment-controller",
    "job-controller",
    "disruption-controller",
    "endpointslice-controller",
    "persistentvolumeclaim-protection-controller",
)

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The API server's names: loopback, and the `kubernetes` Service (first address of the range).
APISERVER_SANS = ("IP:127.0.0.1", "DNS:localhost", "IP:10.0.0.1", "DNS:kubernetes",
                  "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                  "DNS:kubernetes.default.svc.cluster.local")



class ControlPlaneError(RuntimeError):
    """The control plane could not be started or did not become ready."""


class BinariesUnavailable(ControlPlaneError):
    """The binaries are not built and cannot be built here (no Go toolchain, build failed)."""


def _versions_from_build_script() -> tuple[str, str]:
    # build.sh is the one place that names the versions; read them rather than copy them.
    text = BUILD_SCRIPT.read_text()
    k8s = re.search(r'^K8S_VERSION="([^"]+)"', text, re.M)
    etcd = re.search(r'^ETCD_VERSION="([^"]+)"', text, re.M)
    if not k8s or not etcd:
        raise ControlPlaneError(f"cannot read K8S_VERSION/ETCD_VERSION from {BUILD_SCRIPT}")
    return k8s.group(1), etcd.group(1)


K8S_VERSION, ETCD_VERSION = _versions_from_build_script()


def default_bin_dir() -> Path:
    """Where build.sh puts (or has put) the binaries for the pinned versions."""
    override = os.environ.get("EVENTSTORE_K8S_BIN_DIR")
    if override:
        return Path(override)
    return ci_cache_dir() / f"k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}" / "bin"


def missing_binaries(bin_dir: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def build(*, quiet: bool = False) -> Path:
    """Run scripts/k8s/build.sh (a no-op when everything is cached); return the bin dir."""
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE,
                          stderr=out, text=True, check=False)
    if proc.returncode != 0:
        raise BinariesUnavailable(
            f"scripts/k8s/build.sh failed with exit code {proc.returncode}; run it by hand "
            "(`make k8s-build`) to see why (a Go toolchain >= 1.26 and PyPI access are needed)")
    return Path(proc.stdout.strip().splitlines()[-1])


def ensure_binaries() -> Path:
    """The bin dir with all five binaries, building them first if any is missing."""
    bin_dir = default_bin_dir()
    if not missing_binaries(bin_dir):
        return bin_dir
    if os.environ.get("EVENTSTORE_K8S_BIN_DIR"):
        raise BinariesUnavailable(
            f"EVENTSTORE_K8S_BIN_DIR={bin_dir} lacks {', '.join(missing_binaries(bin_dir))}")
    if shutil.which("go") is None:
        raise BinariesUnavailable(
            f"the control plane binaries are not built ({bin_dir} lacks "
            f"{', '.join(missing_binaries(bin_dir))}) and there is no Go toolchain to build "
            "them; install Go >= 1.26 and run `make k8s-build`")
    built = build()
    if missing_binaries(built):
        raise BinariesUnavailable(f"build.sh did not produce {', '.join(missing_binaries(built))}")
    return built


class ControlPlane(KubectlClient):
    """etcd + kube-apiserver + kube-controller-manager in a temp dir on loopback ports.

    Start with `start()` (returns self) and always `stop()`; usable as a context manager.
    """

    def __init__(self, *, bin_dir: Path | None = None, start_timeout: float = 120.0) -> None:
        self._bin_dir = bin_dir
        self.start_timeout = start_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="eventstore-k8s-"))
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()
        self.kcm_port = free_port()
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._pki: PKI | None = None
        self._admin_cert: tuple[Path, Path] | None = None

    # -- public properties -------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.tmp / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.tmp / "pki" / "ca.crt"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kopf, helm, scripts) that talk to this cluster as admin."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        bin_dir = self.bin_dir
        deadline = time.monotonic() + self.start_timeout
        self._write_pki()
        self._spawn("etcd", [
            str(bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={self.tmp / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{self.etcd_peer_port}",
            "--unsafe-no-fsync=true",  # throwaway data: skip fsync, as envtest users often do
            "--log-level=warn",
        ])
        self._wait("etcd", deadline, lambda: self._http_ok(f"http://127.0.0.1:{self.etcd_port}/health"))

        pki = self.tmp / "pki"
        self._spawn("kube-apiserver", [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.tmp / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://127.0.0.1:{self.apiserver_port}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # Loopback is not a valid endpoint address for the `kubernetes` Service; nothing
            # in the tests dials it through a Service, so skip the endpoint reconciler.
            "--endpoint-reconciler-type=none",
            "--v=0",
        ])
        self._wait("kube-apiserver", deadline, lambda: self._api_get("/readyz") is not None)
        self._wait("the default namespace", deadline,
                   lambda: self._api_get("/api/v1/namespaces/default") is not None)

        self._spawn("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.kcm_port}",
            f"--cert-dir={self.tmp / 'kcm-certs'}",
            "--v=0",
        ])
        self._wait("kube-controller-manager", deadline,
                   lambda: self._http_ok(f"https://127.0.0.1:{self.kcm_port}/healthz", verify=False))
        # The serviceaccount controller has run once the default namespace's `default` SA
        # exists; until then the ServiceAccount admission plugin would refuse new Pods.
        self._wait("the default ServiceAccount", deadline,
                   lambda: self._api_get("/api/v1/namespaces/default/serviceaccounts/default") is not None)

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate every process (newest first), kill what outlives `timeout`, remove the temp dir."""
        for _name, proc in reversed(self._processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for _name, proc in reversed(self._processes):
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._processes.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------

    def make_user_kubeconfig(self, name: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig that authenticates as user `name` in `groups` (client certificate).

        The user has no permissions until RBAC grants some, as on a real cluster.
        """
        if self._pki is None:
            raise ControlPlaneError("start() the control plane first")
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        crt, key = self._pki.client_cert(f"user-{slug}", name, groups)
        path = self.tmp / f"user-{slug}.kubeconfig"
        path.write_text(kubeconfig(self.server, self.ca_file, name, client_cert_auth((crt, key))))
        return path

    def service_account_kubeconfig(self, namespace: str, service_account: str,
                                   duration: str = "24h") -> Path:
        """A kubeconfig holding a token of an existing ServiceAccount (`kubectl create token`),
        for running a process (e.g. the operator) with exactly that account's RBAC permissions."""
        token = self.kubectl_run("create", "token", service_account, "-n", namespace,
                                 f"--duration={duration}").stdout.strip()
        user = f"system:serviceaccount:{namespace}:{service_account}"
        path = self.tmp / f"sa-{namespace}-{service_account}.kubeconfig"
        path.write_text(kubeconfig(self.server, self.ca_file, user, {"token": token}))
        return path

    def logs(self, name: str, tail: int = 4000) -> str:
        """The tail of one component's log (etcd, kube-apiserver, kube-controller-manager)."""
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    # -- internals ---------------------------------------------------------------------

    def _write_pki(self) -> None:
        pki = PKI(self.tmp / "pki")
        self._pki = pki
        pki.server_cert("apiserver", "kube-apiserver", APISERVER_SANS)
        pki.ensure_service_account_keys()
        self._admin_cert = pki.client_cert("admin", "eventstore-admin", ["system:masters"])
        self.kubeconfig.write_text(kubeconfig(self.server, self.ca_file, "admin",
                                              client_cert_auth(self._admin_cert)))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        try:
            # A session of its own, so stop() can signal the whole process group.
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.tmp, start_new_session=True)
        finally:
            log.close()
        self._processes.append((name, proc))

    def _wait(self, what: str, deadline: float, ready: Any) -> None:
        while True:
            for name, proc in self._processes:
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with code {proc.returncode} while waiting for {what}; "
                        f"log tail:\n{self.logs(name)}")
            if ready():
                return
            if time.monotonic() > deadline:
                name = self._processes[-1][0]
                raise ControlPlaneError(f"{what} not ready after {self.start_timeout:.0f}s; "
                                        f"{name} log tail:\n{self.logs(name)}")
            time.sleep(0.2)

    def _api_get(self, path: str) -> Any:
        """GET on the API server as admin; the decoded body, or None if not (yet) 200."""
        return api_get(self.server + path, ca=self.ca_file, cert=self._admin_cert)

    @staticmethod
    def _http_ok(url: str, verify: bool = True) -> bool:
        return http_ok(url, verify=verify)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "up"
    if command == "build":
        print(build())
        return 0
    if command != "up":
        print("usage: python -m tests.harness.controlplane [up|build]", file=sys.stderr)
        return 2
    # SIGTERM behaves like Ctrl-C, so `finally` stops the processes in both cases, also
    # when it arrives during start-up.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    cp = ControlPlane()
    try:
        cp.start()
        print(f"# control plane {K8S_VERSION} up in {time.monotonic() - started:.1f}s at {cp.server}; "
              f"logs in {cp.tmp}; Ctrl-C stops it", file=sys.stderr)
        print(f"export KUBECONFIG={cp.kubeconfig}")
        print(f"export PATH={cp.bin_dir}:$PATH", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

if __name__ == "__main__":
    sys.exit(main())

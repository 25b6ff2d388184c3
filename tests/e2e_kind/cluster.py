"""A kind cluster, the project image built and loaded into it, and port-forwards, for the
kind suite. Real tools only: docker, kind, kubectl, helm (from the cached control-plane bin
dir when present, so the same versions as tests/k8s, else from PATH).

`KindCluster` is a tests.e2e_shared.scenarios.Cluster (kubectl_run / kubectl_json like
tests.harness.controlplane.ControlPlane, plus helm_run, diagnostics and tag_image), so the
shared scenarios and assertions run against it; the host reaches its Services and pods
through `kubectl port-forward` (tests.e2e_shared.access.PortForwardAccess).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.harness.controlplane import default_bin_dir
from tests.harness.fixtures import required as require_env_set

REPO = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "EVENTSTORE_REQUIRE_KIND"


def tool(name: str) -> str | None:
    """kubectl/helm from the control plane's cache (pinned versions), else PATH."""
    cached = default_bin_dir() / name
    if os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which(name)


def missing_requirements() -> list[str]:
    """What this machine lacks to run the kind suite, each said precisely; [] if nothing."""
    missing: list[str] = []
    docker = shutil.which("docker")
    if docker is None:
        missing.append("the `docker` command is not on PATH")
    else:
        try:
            proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                  text=True, timeout=30, check=False)
            ok, detail = proc.returncode == 0, (proc.stderr.strip().splitlines() or ["no output"])[-1]
        except subprocess.TimeoutExpired:
            ok, detail = False, "timed out after 30s"
        if not ok:
            missing.append(f"a working Docker engine (`docker info` failed: {detail})")
    if shutil.which("kind") is None:
        missing.append("the `kind` command is not on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/)")
    for name in ("kubectl", "helm"):
        if tool(name) is None:
            missing.append(f"`{name}` (neither in {default_bin_dir()} nor on PATH; `make k8s-build`)")
    return missing


def required() -> bool:
    return require_env_set(REQUIRE_ENV)


def run(argv: list[str], *, input: str | None = None, timeout: float = 600, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout,
                                            f"{' '.join(argv[:3])} ...: {proc.stderr}")
    return proc


class KindCluster:
    """One kind cluster (created, or an existing one reused via EVENTSTORE_KIND_CLUSTER and
    then never deleted), with a private kubeconfig."""

    def __init__(self, name: str, workdir: Path, *, reuse: bool = False,
                 node_image: str | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.reuse = reuse
        self.node_image = node_image
        self.kubeconfig = workdir / "kubeconfig"
        self.kind = shutil.which("kind") or "kind"
        self.docker = shutil.which("docker") or "docker"
        self.kubectl = tool("kubectl") or "kubectl"
        self.helm = tool("helm") or "helm"
        self.helm_env = {**os.environ, "HELM_CONFIG_HOME": str(workdir / "helm-config"),
                         "HELM_CACHE_HOME": str(workdir / "helm-cache"),
                         "HELM_DATA_HOME": str(workdir / "helm-data"), "KUBECONFIG": str(self.kubeconfig)}

    def create(self) -> None:
        if self.reuse:
            text = run([self.kind, "get", "kubeconfig", "--name", self.name]).stdout
            self.kubeconfig.write_text(text)
            return
        image = ["--image", self.node_image] if self.node_image else []
        run([self.kind, "create", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig),
             "--wait", "180s", *image], timeout=600)

    def delete(self) -> None:
        if not self.reuse:
            run([self.kind, "delete", "cluster", "--name", self.name], timeout=300, check=False)

    def load_image(self, image: str) -> None:
        run([self.kind, "load", "docker-image", image, "--name", self.name], timeout=900)

    def tag_image(self, source: str, target: str) -> None:
        """`target` as a second name of the local image `source`, loaded into the nodes."""
        run([self.docker, "tag", source, target])
        self.load_image(target)

    def kubectl_argv(self) -> list[str]:
        return [self.kubectl, f"--kubeconfig={self.kubeconfig}"]

    # -- the Kube protocol of tests/k8s/assertions.py ------------------------------------

    def kubectl_run(self, *args: str, check: bool = True, input: str | None = None,
                    timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([self.kubectl, f"--kubeconfig={self.kubeconfig}", *args], input=input, timeout=timeout,
                   check=check)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl_run(*args, "-o", "json").stdout)

    def helm_run(self, *args: str, check: bool = True,
                 timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run([self.helm, *args, "--kubeconfig", str(self.kubeconfig)], timeout=timeout, check=check,
                   env=self.helm_env)

    def diagnostics(self, namespace: str) -> str:
        """What to look at when something did not come up (printed on failure)."""
        parts = []
        for args in (("get", "all,pvc,configmaps,eventstores", "-n", namespace, "-o", "wide"),
                     ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
                     ("logs", "-n", namespace, "-l", "app.kubernetes.io/component=operator", "--tail=80"),
                     ("logs", "-n", namespace, "-l", "app.kubernetes.io/component=store", "--tail=40",
                      "--prefix")):
            proc = self.kubectl_run(*args, check=False)
            parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        return "\n".join(parts)

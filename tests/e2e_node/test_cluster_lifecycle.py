"""The one-node cluster itself (tests/harness/node.py): what the rest of tests/e2e_node relies
on works, a second `up` changes nothing, and `down` leaves the host as it found it.

`test_down_restores_host` runs last in the session (see conftest.py): it stops the cluster.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_node.conftest import NodeSession
from tests.harness.controlplane import REPO_ROOT
from tests.harness.kubeaccess import wait_until
from tests.harness.node import (
    BRIDGE,
    CLUSTER_DOMAIN,
    GATEWAY_IP,
    KUBERNETES_SERVICE_IP,
    NODE_NAME,
    PAUSE_IMAGE,
    STORAGE_CLASS,
    HostState,
    Node,
    process_start_time,
)


@pytest.fixture
def namespace(node: Node) -> Iterator[str]:
    name = f"lifecycle-{uuid.uuid4().hex[:8]}"
    node.kubectl_run("create", "namespace", name)
    wait_until(lambda: node.kubectl_run("get", "serviceaccount", "default", "-n", name, check=False)
               .returncode == 0, timeout=60, message="the namespace's default ServiceAccount")
    yield name
    node.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


def test_node_ready_with_its_services(node: Node) -> None:
    body = node.kubectl_json("get", "node", NODE_NAME)
    conditions = {c["type"]: c["status"] for c in body["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    assert {"type": "InternalIP", "address": GATEWAY_IP} in body["status"]["addresses"]
    # The `kubernetes` Service points at the apiserver's real address (pods reach it).
    slices = node.kubectl_json("get", "endpointslices", "-n", "default",
                               "-l", "kubernetes.io/service-name=kubernetes")["items"]
    assert [e["addresses"] for e in slices[0]["endpoints"]] == [[GATEWAY_IP]]
    classes = node.kubectl_json("get", "storageclass")["items"]
    defaults = [c["metadata"]["name"] for c in classes
                if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
                == "true"]
    assert defaults == [STORAGE_CLASS]


def test_cluster_dns_answers(node: Node) -> None:
    assert node.resolve(f"kubernetes.default.svc.{CLUSTER_DOMAIN}") == [KUBERNETES_SERVICE_IP]
    assert node.resolve(f"no-such-service.default.svc.{CLUSTER_DOMAIN}") == []


def test_pod_with_a_100gi_claim_runs_and_its_volume_goes_with_the_claim(node: Node, namespace: str) -> None:
    from tests.harness import images

    images.import_images(["pause"], address=Path(node.containerd_address))
    node.apply([
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Gi"}}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
         "spec": {"securityContext": {"runAsUser": 1000, "fsGroup": 2000},
                  "terminationGracePeriodSeconds": 1,
                  "containers": [{"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "Never",
                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                  "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}},
    ], namespace=namespace)

    def running() -> bool:
        pod = node.kubectl_json("get", "pod", "sleeper", "-n", namespace)
        return bool(pod["status"].get("phase") == "Running")

    try:
        wait_until(running, timeout=90, message="the pause pod Running")
    except TimeoutError:
        print(node.diagnostics(namespace))
        raise
    pvc = node.kubectl_json("get", "pvc", "data", "-n", namespace)
    assert pvc["status"]["phase"] == "Bound"
    pv = node.kubectl_json("get", "pv", pvc["spec"]["volumeName"])
    assert pv["spec"]["capacity"]["storage"] == "100Gi"
    path = Path(pv["spec"]["local"]["path"])
    assert path.is_dir() and path.stat().st_gid == 2000, "fsGroup applied to the volume"
    # The apiserver reaches the kubelet (logs, exec, port-forward go that way).
    node.kubectl_run("logs", "sleeper", "-n", namespace)

    node.kubectl_run("delete", "pod", "sleeper", "-n", namespace, "--wait=true", timeout=60)
    node.kubectl_run("delete", "pvc", "data", "-n", namespace, "--wait=true", timeout=60)
    wait_until(lambda: node.kubectl_run("get", "pv", pv["metadata"]["name"], check=False).returncode != 0,
               timeout=30, message="the released volume deleted")
    assert not path.exists()


def _store_image_pods(node: Node, namespace: str, pods: dict[str, tuple[dict[str, str], list[str]]],
                      *others: dict[str, object]) -> None:
    """Pods on the store image (name -> (labels, python3 arguments)), applied with `others`,
    each Ready (the cluster's diagnostics printed if one is not)."""
    from tests.harness import images

    images.import_images(["store"], address=Path(node.containerd_address))
    manifests = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                  "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
                           "containers": [{"name": name, "image": images.STORE_IMAGE,
                                           "imagePullPolicy": "Never", "command": ["python3", *args]}]}}
                 for name, (labels, args) in pods.items()]
    node.apply([*others, *manifests], namespace=namespace)
    try:
        for name in pods:
            node.kubectl_run("wait", "--for=condition=Ready", f"pod/{name}", "-n", namespace, "--timeout=90s",
                             timeout=120)
    except subprocess.CalledProcessError:
        print(node.diagnostics(namespace))
        raise


#: The `client` pod of the tests below: it only sleeps, the tests exec in it.
_CLIENT = ({"app": "client"}, ["-c", "import time; time.sleep(86400)"])


def _fetch(node: Node, namespace: str, url: str) -> bool:
    """Whether the `client` pod gets an answer from `url` within 2 s."""
    code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)"
    return node.kubectl_run("exec", "client", "-n", namespace, "--", "python3", "-c", code,
                            check=False, timeout=30).returncode == 0


@pytest.mark.timeout(1800)   # a cold build of the store image (debootstrap) comes first
def test_network_policies_are_enforced(node: Node, namespace: str) -> None:
    if "kube-router" not in node.status():
        pytest.skip("kube-router is not built here (scripts/kube-router/build.sh): policies not enforced")
    _store_image_pods(node, namespace, {
        "web": ({"app": "web"}, ["-m", "http.server", "8080", "--directory", "/tmp"]),
        "client": _CLIENT})
    url = f"http://{node.kubectl_json('get', 'pod', 'web', '-n', namespace)['status']['podIP']}:8080/"
    assert _fetch(node, namespace, url), "no policy yet: the client reaches the server"

    node.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "web-from-friends"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"friend": "yes"}}}]}]}},
               namespace=namespace)
    wait_until(lambda: not _fetch(node, namespace, url), timeout=30, message="ingress to web denied")
    node.kubectl_run("label", "pod", "client", "-n", namespace, "friend=yes")
    wait_until(lambda: _fetch(node, namespace, url), timeout=30, message="ingress from a friend allowed")


#: What the client pod prints for a connection: "answered ..." or the error's name.
_CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        print("answered", s.recv(80))
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.mark.timeout(1800)   # a cold build of the store image (debootstrap) comes first
def test_a_service_without_endpoints_refuses_connections(node: Node, namespace: str) -> None:
    """A connection to a Service whose pods are all gone or NotReady is refused, as
    kube-proxy's REJECT means it to be, and nothing off the node answers a pod: the guard
    table of tests/harness/node.py (`guard_ruleset`) says why. Without it, the sandbox's
    egress proxy answered such a connection with an empty HTTP 404."""
    _store_image_pods(node, namespace, {"client": _CLIENT},
                      {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nobody"},
                       "spec": {"selector": {"app": "no-such-pod"},
                                "ports": [{"port": 8080, "targetPort": 8080}]}})

    def connect(host: str, port: int) -> str:
        return node.kubectl_run("exec", "client", "-n", namespace, "--", "python3", "-c", _CONNECT,
                                host, str(port), timeout=60).stdout.strip()

    # The same pod reaches a Service that has endpoints: the apiserver's.
    assert connect(f"kubernetes.default.svc.{CLUSTER_DOMAIN}", 443).startswith("answered")
    assert connect(f"nobody.{namespace}.svc.{CLUSTER_DOMAIN}", 8080) == "ConnectionRefusedError"
    assert connect("192.0.2.1", 80) == "ConnectionRefusedError", "an address off the node answered a pod"


def test_second_up_changes_nothing(node: Node) -> None:
    pids = node.pids()
    proc = subprocess.run([sys.executable, "-m", "tests.harness.node", "up"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"export KUBECONFIG={node.kubeconfig}"
    assert node.pids() == pids
    assert subprocess.run([sys.executable, "-m", "tests.harness.node", "status"], cwd=REPO_ROOT,
                          capture_output=True, timeout=60, check=False).returncode == 0


@pytest.mark.node_teardown
def test_down_restores_host(node_session: NodeSession) -> None:
    if not node_session.started_here:
        pytest.skip("the cluster was up before this session (make cluster-up); left running")
    node = node_session.node
    before = node_session.before or HostState.from_json(node.host_state_file.read_text())
    processes = {name: (pid, process_start_time(pid)) for name, pid in node.pids().items()}
    assert set(processes) >= {"etcd", "containerd", "kube-apiserver", "kubelet", "kube-proxy", "coredns"}

    node.down()
    node_session.torn_down = True

    alive = [f"{name} (pid {pid})" for name, (pid, start) in processes.items()
             if start is not None and process_start_time(pid) == start]
    assert not alive, f"still running after down: {', '.join(alive)}"
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    problems = before.differences(HostState.capture(), node.dir)
    assert not problems, "down left the host changed:\n" + "\n".join(problems)
    assert not node.host_state_file.exists()
    assert sorted(p.name for p in node.dir.iterdir()) == ["containerd", "logs"]
    assert not any(node.status().values())

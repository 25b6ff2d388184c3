"""How a test on the host reaches a Service or a pod of the cluster, and phase timings.

Two ways, one interface (`Access`):
- `DirectAccess`: the ClusterIP of a Service (kube-proxy serves it on the host too) and the
  pod IP of a pod (the host routes to the pod network). The one-node cluster works so.
- `PortForwardAccess`: `kubectl port-forward` to a loopback port (kind: the nodes are
  containers, their networks are not the host's).

Both yield "host:port" strings, valid while the context is open.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any, Protocol

from tests.k8s import assertions


class Access(Protocol):
    def service(self, namespace: str, name: str, port: int) -> contextlib.AbstractContextManager[str]:
        """"host:port" of Service `name`'s `port`, reachable from this process."""
        ...

    def pod(self, namespace: str, name: str, port: int) -> contextlib.AbstractContextManager[str]:
        """"host:port" of pod `name`'s container `port`, reachable from this process."""
        ...


class DirectAccess:
    """ClusterIPs and pod IPs straight from the host (kube-proxy and the CNI bridge)."""

    def __init__(self, kube: assertions.Kube) -> None:
        self.kube = kube

    @contextlib.contextmanager
    def service(self, namespace: str, name: str, port: int) -> Iterator[str]:
        svc = assertions.get(self.kube, "service", name, namespace)
        assert svc is not None, f"Service {namespace}/{name} does not exist"
        ip = svc["spec"].get("clusterIP")
        assert ip and ip != "None", f"Service {namespace}/{name} has no ClusterIP ({ip!r})"
        yield f"{ip}:{port}"

    @contextlib.contextmanager
    def pod(self, namespace: str, name: str, port: int) -> Iterator[str]:
        def ip() -> str | None:
            pod = assertions.get(self.kube, "pod", name, namespace) or {}
            found = (pod.get("status") or {}).get("podIP")
            return str(found) if found else None

        yield f"{assertions.poll(ip, 60, f'an IP for pod {namespace}/{name}')}:{port}"


class PortForward:
    """`kubectl port-forward` of `target` (svc/NAME or pod/NAME) to a free loopback port,
    chosen by kubectl itself (":remote"), read back from its first output line."""

    def __init__(self, kubectl: Sequence[str], namespace: str, target: str, remote_port: int) -> None:
        self.argv = [*kubectl, "port-forward", "-n", namespace, "--address", "127.0.0.1", target,
                     f":{remote_port}"]
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def __enter__(self) -> PortForward:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        found: list[str] = []
        reader = threading.Thread(target=self._read_port, args=(self.proc.stdout, found), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not found and reader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not found:
            self.__exit__(None, None, None)
            raise AssertionError(f"kubectl port-forward did not start: {' '.join(self.argv[2:])}")
        self.address = f"127.0.0.1:{found[0]}"
        return self

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @staticmethod
    def _read_port(stream: IO[str], found: list[str]) -> None:
        for line in stream:
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if match:
                found.append(match.group(1))
                break
        # Keep draining so kubectl never blocks on a full pipe.
        for _ in stream:
            pass

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)


class PortForwardAccess:
    """Services and pods through `kubectl port-forward` (`kubectl` is the argv prefix,
    with its --kubeconfig)."""

    def __init__(self, kubectl: Sequence[str]) -> None:
        self.kubectl = list(kubectl)

    @contextlib.contextmanager
    def service(self, namespace: str, name: str, port: int) -> Iterator[str]:
        with PortForward(self.kubectl, namespace, f"svc/{name}", port) as forward:
            yield forward.address

    @contextlib.contextmanager
    def pod(self, namespace: str, name: str, port: int) -> Iterator[str]:
        with PortForward(self.kubectl, namespace, f"pod/{name}", port) as forward:
            yield forward.address


class Timings:
    """Seconds per phase, in the order the phases began; a phase begun inside another is
    listed under it, indented (printed at the end of a suite)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.depth: dict[str, int] = {}
        self._level = 0

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        name, n = what, 2
        while name in self.phases:
            name, n = f"{what} #{n}", n + 1
        self.phases[name] = 0.0
        self.depth[name] = self._level
        self._level += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self._level -= 1
            self.phases[name] = round(time.monotonic() - started, 1)

    def lines(self) -> list[str]:
        labels = {name: "  " * self.depth.get(name, 0) + name for name in self.phases}
        width = max((len(label) for label in labels.values()), default=0)
        return [f"{labels[name]:<{width}}  {seconds:7.1f} s" for name, seconds in self.phases.items()]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.phases)

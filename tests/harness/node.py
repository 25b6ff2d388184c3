"""A one-node Kubernetes cluster with a real kubelet, run as host processes (root only), so that
tests/e2e_node can run the operator, the store pods, PostgreSQL and MongoDB as real pods on a
machine without Docker or a registry. The comments next to the settings say why each one is
what it is (most are fixes for an exact failure seen on these machines: cgroup v1 hosts, root
without CAP_SYS_RESOURCE, no registry, no DNS for the node's name).

What runs (each a daemon with a PID file, a log and a readiness check):
etcd, containerd (its own root, state and socket), kube-apiserver, kube-controller-manager
(--controllers=*), kube-scheduler, kubelet (cgroupfs, cgroup v1 allowed), kube-proxy (iptables
mode, nft backend), CoreDNS on the host (scripts/coredns), a small dynamic volume provisioner
(`python -m tests.harness.node provisioner`, see `Provisioner`), and kube-router's NetworkPolicy
controller (scripts/kube-router; policy only: no routing, no service proxy), so that
NetworkPolicies are enforced as on a real cluster (the bridge CNI plugin ignores them).
One `up` or `down` at a time per state dir (a flock on it).

Networking: one bridge, BRIDGE, holding GATEWAY_IP. That address is also the node's
InternalIP, the apiserver's and kubelet's listen address and the cluster DNS server, so every
pod reaches them as its gateway and they do not listen on the machine's real interfaces (only
kube-router's health port does: v2.1 has no flag for its address).
Pods get POD_SUBNET from the CNI bridge plugin (host-local IPAM, masquerade, hairpin, portmap);
Services get SERVICE_CIDR from kube-proxy. Pods have no way off the node: the nftables table
GUARD_TABLE refuses what they send out of any other interface (see `guard_ruleset`).

Storage: the default StorageClass STORAGE_CLASS (WaitForFirstConsumer, reclaim Delete) is served
by `Provisioner`, which makes a directory under the state dir and a `local` PersistentVolume of
exactly the claimed size (nominal: 100Gi claims bind) with node affinity, and deletes both when
the claim goes. So a re-install gets fresh volumes, with no pool to size and no recycling.

State: everything lives under `state_dir()` (/var/lib/eventstore-node, or $EVENTSTORE_NODE_DIR).
`down` stops only the processes of the PID files, undoes every host change (pods and their
network namespaces, kube-proxy's and the CNI's iptables chains, the bridge, mounts, the
kubepods cgroups, the sysctls recorded at the first `up`, files in shared host paths) and
wipes the state but for the containerd image store (containerd/root: imported images survive)
and the logs. `down --purge` removes the state dir entirely.

Stable interface (tests/e2e_node and the image builder rely on it)::

    node = Node.up()                    # start, or adopt a running cluster (idempotent)
    node = Node()                       # the cluster of STATE_DIR, without starting anything
    node.kubeconfig -> Path             # admin (system:masters) kubeconfig
    node.server -> str                  # https://GATEWAY_IP:APISERVER_PORT
    node.node_name -> str               # NODE_NAME
    node.containerd_address -> str      # containerd's socket path (also containerd_address())
    node.ctr(*args) -> CompletedProcess # `ctr -n k8s.io --address <socket> ...`
    node.kubectl_run(*args, check=True, input=None, timeout=120.0) -> CompletedProcess[str]
    node.kubectl_json(*args) -> Any     # `kubectl ... -o json`, parsed
    node.apply(manifest, namespace=None)
    node.helm_run(*args, check=True, input=None, timeout=600.0) -> CompletedProcess[str]
    node.env() -> dict[str, str]        # KUBECONFIG, PATH with the k8s bin dir, HELM_* dirs
    node.diagnostics(namespace=None) -> str   # pods, events, describe/logs of non-ready pods,
                                              # log tails of kubelet, containerd, apiserver...
    node.logs(component, tail=4000) -> str
    node.resolve(name) -> list[str]     # A records from the cluster DNS (queried from the host)
    node.pids() -> dict[str, int]       # live daemons by component name
    node.status() -> dict[str, bool]    # component -> running
    node.down(purge=False)
    containerd_address() -> str; CONTAINERD_NAMESPACE = "k8s.io"; PAUSE_IMAGE
    HostState.capture()                 # what `down` must restore (tests compare two captures)

Command line: `python -m tests.harness.node up|down [--purge]|status` (`make cluster-up`,
`make cluster-down`). `up` prints each phase's time on stderr and, as its last stdout line,
`export KUBECONFIG=<path>`. Needs root, the binaries of scripts/k8s/build.sh and
scripts/coredns/build.sh (built on first use when Go is there), and Debian's containerd, runc,
containernetworking-plugins, iptables (nft backend) and nftables.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.controlplane import (
    K8S_VERSION,
    REPO_ROOT,
    BinariesUnavailable,
    build,
    default_bin_dir,
)
from tests.harness.kubeaccess import (
    PKI,
    CommandError,
    KubectlClient,
    api_get,
    client_cert_auth,
    http_ok,
    kubeconfig,
)
from tests.harness.process import ci_cache_dir

# -- fixed facts of the cluster --------------------------------------------------------------

STATE_DIR_ENV = "EVENTSTORE_NODE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/eventstore-node")
NODE_NAME = "eventstore-node"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "esnode0"                     # ours alone: `down` deletes it
GATEWAY_IP = "10.244.0.1"              # bridge address = node IP = API/kubelet/DNS address
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CNI_NETWORK = "eventstore-node"
CNI_BIN_DIR = Path("/usr/lib/cni")
CONTAINERD_NAMESPACE = "k8s.io"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"   # containerd's sandbox_image; tests/harness/images.py
STORAGE_CLASS = "standard"                   # the name kind uses too
PROVISIONER_NAME = "eventstore.dev/host-dir"
# Fixed ports (below the ephemeral range, so they never meet the control plane harness's).
ETCD_PORT, ETCD_PEER_PORT = 12379, 12380
APISERVER_PORT = 16443
KCM_PORT, SCHEDULER_PORT = 10257, 10259
KUBELET_PORT, KUBELET_HEALTHZ_PORT = 10250, 10248
PROXY_METRICS_PORT, PROXY_HEALTHZ_PORT = 10249, 10256
COREDNS_HEALTH_PORT, COREDNS_READY_PORT = 18080, 18181
KUBE_ROUTER_HEALTH_PORT = 20244
GUARD_TABLE = "eventstore-node"        # nftables (inet) table of ours alone: `down` deletes it

NODE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                 "kube-proxy", "kubectl", "helm")
HOST_COMMANDS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables-nft",
                 "ip6tables-nft", "iptables-nft-save", "ip6tables-nft-save", "nft", "mount", "umount",
                 "openssl")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
COREDNS_BUILD = REPO_ROOT / "scripts" / "coredns" / "build.sh"
KUBE_ROUTER_BUILD = REPO_ROOT / "scripts" / "kube-router" / "build.sh"
COREDNS_MODULE = "github.com/coredns/coredns"
KUBE_ROUTER_MODULE = "github.com/cloudnativelabs/kube-router/v2"

# Chains that kube-proxy, the kubelet, the CNI plugins and kube-router create.
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-")
# Sysctls that the kubelet, kube-proxy, the CNI plugins or kube-router may change: recorded at
# the first `up`, restored by `down`.
SYSCTLS = (
    "net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.route_localnet", "net.ipv4.conf.default.route_localnet",
    "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
    "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait", "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream", "net.netfilter.nf_conntrack_tcp_be_liberal",
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
)
# Host paths outside the state dir that our daemons write into (hard-coded in them): the
# kubelet's device-plugin socket dir and /var/log/containers symlinks, the CNI result cache,
# containerd shim sockets. `down` removes our entries and the directories it saw appear.
SHARED_HOST_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni",
                     "/run/containerd", "/run/netns", "/opt/containerd", "/etc/cni", "/opt/cni")
CGROUP_ROOT_NAME = "kubepods"

T_Ready = Callable[[], bool]


class NodeError(RuntimeError):
    """The node could not be brought up or down; the message carries the relevant log tails."""


class NodeUnavailable(BinariesUnavailable):
    """This machine cannot run the node (not root, a binary or host package missing)."""


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def containerd_address(directory: Path | None = None) -> str:
    """The socket of the node's own containerd (`ctr --address <this>`); not the system one."""
    return str((directory or state_dir()) / "containerd" / "containerd.sock")


def _log(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _phase(what: str, started: float) -> Iterator[None]:
    """Print how long a phase took (and the time since `up` began) on stderr."""
    t0 = time.monotonic()
    yield
    now = time.monotonic()
    _log(f"{what}: {now - t0:.1f}s (at {now - started:.1f}s)")


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 120.0,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def _write_if_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    """Write `content` unless the file already holds it; True when written. Daemons that watch
    their config (kube-proxy exits when its file changes) only see real changes."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == content:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True


# -- processes ---------------------------------------------------------------------------------

def process_start_time(pid: int) -> int | None:
    """The start time of a live (non-zombie) process, to tell it from a later one with its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


# Run by a throwaway interpreter: start the daemon in a session of its own and exit, so the
# daemon is re-parented to init and never becomes a zombie of the (test) process calling up().
_SPAWNER = """
import subprocess, sys
log = open(sys.argv[1], "ab")
proc = subprocess.Popen(sys.argv[3:], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        cwd=sys.argv[2], start_new_session=True)
print(proc.pid)
"""


@dataclass
class _Daemon:
    """One managed process: how to start it, how to tell it is ready."""

    name: str
    argv: list[str]
    ready: T_Ready


# -- host state --------------------------------------------------------------------------------

def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name.replace(".", "/")).write_text(value + "\n")


def _iptables_tables(family: int) -> dict[str, dict[str, list[str]]]:
    """table -> chain -> rules (`-A` lines) from the nft backend's save output."""
    cmd = "iptables-nft-save" if family == 4 else "ip6tables-nft-save"
    if shutil.which(cmd) is None:
        return {}
    out = _run([cmd], check=False).stdout
    tables: dict[str, dict[str, list[str]]] = {}
    table: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            table.setdefault(line.split()[1], []).append(line)
    return tables


def _ours(chain: str) -> bool:
    return chain.startswith(OUR_CHAIN_PREFIXES)


def _mountinfo() -> list[str]:
    """Mount points of this mount namespace (octal escapes decoded)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _cgroup_mounts() -> list[Path]:
    """Every cgroup v1 hierarchy and the cgroup2 mount (hybrid layouts have both)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(left.split()[4]))
    return mounts


IPTABLES_TABLE_NAMES = ("filter", "nat", "mangle", "raw", "security")


def _nft_tables() -> list[str]:
    """The host's nftables tables ("family name") but for those iptables-nft keeps, which
    `_iptables_tables` reports."""
    if shutil.which("nft") is None:
        return []
    listed = _run(["nft", "list", "tables"], check=False).stdout.split("\n")
    tables = [line.removeprefix("table ").strip() for line in listed if line.startswith("table ")]
    return sorted(t for t in tables if t.split()[-1] not in IPTABLES_TABLE_NAMES)


def guard_ruleset() -> str:
    """The nftables table that keeps pods on the node: whatever a pod sends that would leave
    by another interface than the bridge is refused (ICMP port unreachable, as kube-proxy's
    own REJECT for a Service without endpoints).

    Why: kube-router's NetworkPolicy chain ACCEPTs allowed traffic at the top of FORWARD,
    before kube-proxy's "has no endpoints" REJECT, so a connection to a Service whose pods
    are all NotReady is not refused: untranslated, it follows the default route. On a real
    network it would time out or be refused; on these machines the default route leads to
    the sandbox's egress proxy, which answers any address and port itself (an empty HTTP
    404, seen by the PostgreSQL-outage test as a NotFound from the store's Service). A
    base chain of its own, at a priority before iptables-nft's, refuses it whatever order
    the other chains are in. Nothing of the cluster needs to leave: the apiserver, DNS and
    the test's S3 server listen on the bridge's own address."""
    return f"""table inet {GUARD_TABLE}
delete table inet {GUARD_TABLE}
table inet {GUARD_TABLE} {{
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{BRIDGE}" oifname != "{BRIDGE}" counter reject
    }}
}}
"""


def _ipsets() -> list[str]:
    if shutil.which("ipset") is None:
        return []
    return sorted(_run(["ipset", "list", "-n"], check=False).stdout.split())


@dataclass
class HostState:
    """What the node may change on the host. Captured before the first `up` (and stored in the
    state dir), compared with a capture after `down` by the tests."""

    sysctls: dict[str, str | None]
    chains: dict[str, list[str]]          # "ipv4/nat" -> KUBE-/CNI- chain names
    tables: list[str]                     # "ipv4/nat" ... (nft tables made by iptables-nft)
    paths: dict[str, bool]                # SHARED_HOST_PATHS -> existed
    cgroups: list[str]                    # existing kubepods cgroup dirs
    ipsets: list[str]
    links: list[str]
    nft_tables: list[str] = field(default_factory=list)  # "inet eventstore-node" ... (native ones)

    @classmethod
    def capture(cls) -> HostState:
        chains: dict[str, list[str]] = {}
        tables: list[str] = []
        for family in (4, 6):
            for table, table_chains in _iptables_tables(family).items():
                key = f"ipv{family}/{table}"
                tables.append(key)
                chains[key] = sorted(c for c in table_chains if _ours(c))
        return cls(
            sysctls={name: _read_sysctl(name) for name in SYSCTLS},
            chains=chains,
            tables=sorted(tables),
            paths={p: os.path.lexists(p) for p in SHARED_HOST_PATHS},
            cgroups=sorted(str(m / CGROUP_ROOT_NAME) for m in _cgroup_mounts()
                           if (m / CGROUP_ROOT_NAME).is_dir()),
            ipsets=_ipsets(),
            links=sorted(p.name for p in Path("/sys/class/net").iterdir()),
            nft_tables=_nft_tables(),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HostState:
        return cls(**json.loads(text))

    def differences(self, after: HostState, directory: Path) -> list[str]:
        """What `after` (a capture after `down`) still has that this capture had not, each said
        in one line; [] when the host is as it was. Mounts under `directory` count too."""
        problems = []
        for name, value in self.sysctls.items():
            if after.sysctls.get(name) != value:
                problems.append(f"sysctl {name} is {after.sysctls.get(name)!r}, was {value!r}")
        for key, names in after.chains.items():
            extra = sorted(set(names) - set(self.chains.get(key, [])))
            if extra:
                problems.append(f"iptables chains left in {key}: {', '.join(extra)}")
        extra_tables = sorted(set(after.tables) - set(self.tables))
        if extra_tables and shutil.which("nft"):
            problems.append(f"nft tables left: {', '.join(extra_tables)}")
        for path, existed in self.paths.items():
            if after.paths.get(path) != existed:
                problems.append(f"{path} {'exists' if after.paths.get(path) else 'is gone'}, "
                                f"it {'did' if existed else 'did not'} before")
        extra_cg = sorted(set(after.cgroups) - set(self.cgroups))
        if extra_cg:
            problems.append(f"cgroups left: {', '.join(extra_cg)}")
        extra_nft = sorted(set(after.nft_tables) - set(self.nft_tables))
        if extra_nft:
            problems.append(f"nftables tables left: {', '.join(extra_nft)}")
        extra_sets = sorted(set(after.ipsets) - set(self.ipsets))
        if extra_sets:
            problems.append(f"ipsets left: {', '.join(extra_sets)}")
        # Our bridge and pod veths; other software's interfaces may come and go meanwhile.
        extra_links = sorted(name for name in set(after.links) - set(self.links)
                             if name == BRIDGE or name.startswith("veth"))
        if extra_links:
            problems.append(f"network interfaces left: {', '.join(extra_links)}")
        mounts = [m for m in _mountinfo() if _is_under(Path(m), directory)]
        if mounts:
            problems.append(f"mounts left under {directory}: {', '.join(mounts)}")
        return problems


def _is_under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


# -- DNS (a tiny client, so tests need no dnspython) ------------------------------------------

def dns_query(name: str, server: str = GATEWAY_IP, port: int = 53, timeout: float = 3.0) -> list[str]:
    """The A records of `name` from `server` over UDP ([] for NXDOMAIN or no answer)."""
    qid = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, port))
        data = sock.recv(4096)
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if flags & 0x000F:
        return []
    pos = 12

    def skip_name(p: int) -> int:
        while data[p]:
            if data[p] & 0xC0 == 0xC0:
                return p + 2
            p += data[p] + 1
        return p + 1

    for _ in range(qd):
        pos = skip_name(pos) + 4
    answers = []
    for _ in range(an):
        pos = skip_name(pos)
        rtype, _, _, length = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            answers.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += length
    return answers


# -- certificates ------------------------------------------------------------------------------

# The API server's names: the node's address, loopback, and the `kubernetes` Service.
APISERVER_SANS = (f"IP:{GATEWAY_IP}", "IP:127.0.0.1", f"IP:{KUBERNETES_SERVICE_IP}", "DNS:localhost",
                  "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                  f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}")
# The kubelet's serving certificate (logs, exec, port-forward from the API server).
KUBELET_SANS = (f"IP:{GATEWAY_IP}", f"DNS:{NODE_NAME}", "DNS:localhost", "IP:127.0.0.1")

# Client identities: (file name, user, groups). The bootstrap RBAC policy already binds the
# system:* users; BOOTSTRAP_OBJECTS binds the others.
CLIENTS = (
    ("admin", "eventstore-admin", ("system:masters",)),
    ("kube-controller-manager", "system:kube-controller-manager", ()),
    ("kube-scheduler", "system:kube-scheduler", ()),
    ("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)),
    ("kube-proxy", "system:kube-proxy", ()),
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ()),
    ("coredns", "eventstore-node:coredns", ()),
    ("provisioner", "eventstore-node:provisioner", ()),
    ("kube-router", "eventstore-node:kube-router", ()),
    ("front-proxy-client", "front-proxy-client", ()),   # the apiserver towards aggregated APIs
)


def _cluster_role(name: str, user: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]},
    ]


_READ = ["get", "list", "watch"]
BOOTSTRAP_OBJECTS: list[dict[str, Any]] = [
    {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
     "metadata": {"name": STORAGE_CLASS,
                  "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
     "provisioner": PROVISIONER_NAME, "reclaimPolicy": "Delete",
     "volumeBindingMode": "WaitForFirstConsumer"},
    # The apiserver's identity towards the kubelet (logs, exec, port-forward), as kubeadm binds it.
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "eventstore-node:apiserver-kubelet-client"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "system:kubelet-api-admin"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                   "name": "kube-apiserver-kubelet-client"}]},
    *_cluster_role("eventstore-node:coredns", "eventstore-node:coredns", [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": _READ},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
    ]),
    *_cluster_role("eventstore-node:provisioner", "eventstore-node:provisioner", [
        {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": [*_READ, "create", "delete"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": _READ},
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": _READ},
    ]),
    # kube-router's NetworkPolicy controller (its daemonset manifests' ClusterRole, trimmed to
    # what --run-firewall reads).
    *_cluster_role("eventstore-node:kube-router", "eventstore-node:kube-router", [
        {"apiGroups": [""], "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
         "verbs": _READ},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": _READ},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": [*_READ, "create", "update"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]),
]


# -- the node ----------------------------------------------------------------------------------

class Node(KubectlClient):
    """The one-node cluster whose state lives in `directory` (default: `state_dir()`).

    Creating a Node starts nothing; `start()` (or `Node.up()`) brings everything up or adopts
    what already runs; `down()` stops and cleans. Safe to use from several processes in turn
    (the PID files are the truth), not concurrently.
    """

    def __init__(self, directory: Path | None = None, *, bin_dir: Path | None = None,
                 timeout: float = 300.0) -> None:
        self.dir = (directory or state_dir()).resolve()
        self._bin_dir = bin_dir
        self.timeout = timeout
        self.node_name = NODE_NAME
        self.server = f"https://{GATEWAY_IP}:{APISERVER_PORT}"

    @classmethod
    def up(cls, directory: Path | None = None, **kwargs: Any) -> Node:
        return cls(directory, **kwargs).start()

    # -- paths ---------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = default_bin_dir()
        return self._bin_dir

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def containerd_address(self) -> str:
        return containerd_address(self.dir)

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def config_dir(self) -> Path:
        return self.dir / "config"

    @property
    def volumes_dir(self) -> Path:
        return self.dir / "volumes"

    @property
    def kubelet_dir(self) -> Path:
        return self.dir / "kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        return self.dir / "pod-logs"

    @property
    def host_state_file(self) -> Path:
        return self.dir / "host-before.json"

    def _kubeconfig_of(self, client: str) -> Path:
        return self.config_dir / f"{client}.kubeconfig"

    # -- clients -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, helm, kopf, scripts) acting as cluster admin.
        Helm's cache and config stay in the state dir, not in the user's home."""
        helm = self.dir / "helm"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "HELM_CACHE_HOME": str(helm / "cache"), "HELM_CONFIG_HOME": str(helm / "config"),
                "HELM_DATA_HOME": str(helm / "data")}

    def helm_run(self, *args: str, check: bool = True, input: str | None = None,
                 timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        argv = [str(self.helm), *args, "--kubeconfig", str(self.kubeconfig)]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              check=False, env=self.env())
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """`ctr` against the node's containerd, in the namespace the kubelet uses."""
        return _run(["ctr", "--address", self.containerd_address, "--namespace", CONTAINERD_NAMESPACE,
                     *args], check=check, timeout=timeout)

    def resolve(self, name: str) -> list[str]:
        """A records of `name` as pods see them (the cluster DNS, queried from the host)."""
        return dns_query(name, GATEWAY_IP)

    def logs(self, component: str, tail: int = 4000) -> str:
        path = self.log_dir / f"{component}.log"
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def diagnostics(self, namespace: str | None = None) -> str:
        """What to read when something did not come up: nodes, pods, events, describe and logs
        of the pods that are not ready, and the tails of the node's own logs."""
        ns = ["-n", namespace] if namespace else ["-A"]
        parts: list[str] = []

        def kubectl(*args: str) -> str:
            try:
                proc = self.kubectl_run(*args, check=False, timeout=30)
            except subprocess.TimeoutExpired:
                return "(timed out)\n"
            return proc.stdout + proc.stderr

        for args in (("get", "nodes", "-o", "wide"), ("get", "pods", *ns, "-o", "wide"),
                     ("get", "pvc,pv", *ns), ("get", "events", *ns, "--sort-by=.lastTimestamp")):
            parts.append(f"$ kubectl {' '.join(args)}\n{kubectl(*args)}")
        with contextlib.suppress(Exception):
            pods = json.loads(self.kubectl_run("get", "pods", *ns, "-o", "json", check=False,
                                               timeout=30).stdout or "{}").get("items", [])
            for pod in pods:
                conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
                if conditions.get("Ready") == "True" or pod.get("status", {}).get("phase") == "Succeeded":
                    continue
                meta = pod["metadata"]
                where = ("-n", meta["namespace"])
                parts.append(f"$ kubectl describe pod {meta['name']}\n"
                             f"{kubectl('describe', 'pod', meta['name'], *where)}")
                for flag in ((), ("--previous",)):
                    out = kubectl("logs", meta["name"], *where, "--all-containers", "--tail=40", *flag)
                    parts.append(f"$ kubectl logs {meta['name']} {' '.join(flag)}\n{out}")
        for component in ("kubelet", "containerd", "kube-apiserver", "kube-scheduler",
                          "kube-controller-manager", "kube-proxy", "coredns", "provisioner", "kube-router"):
            text = self.logs(component, tail=3000)
            if text:
                parts.append(f"--- tail of {self.log_dir / component}.log\n{text}")
        return "\n".join(parts)

    # -- processes -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up` or `down` at a time per state dir (two test sessions, or `make cluster-up`
        during one): an exclusive flock on the directory itself, which outlives `down`. A
        `down --purge` removes the directory while others wait on it, so the lock counts
        only if the path still names the locked directory once it is ours."""
        while True:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = os.fstat(fd)
            with contextlib.suppress(FileNotFoundError):
                now = os.stat(self.dir)
                if (now.st_dev, now.st_ino) == (locked.st_dev, locked.st_ino):
                    break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _pid(self, name: str) -> int | None:
        """The PID of component `name` if the process of its PID file still runs."""
        try:
            record = json.loads(self._pid_file(name).read_text())
        except (OSError, ValueError):
            return None
        pid = int(record["pid"])
        if process_start_time(pid) != record.get("start"):
            return None
        return pid

    def _argv(self, name: str) -> list[str] | None:
        """The command line the running `name` was started with (from its PID file)."""
        try:
            argv = json.loads(self._pid_file(name).read_text()).get("argv")
        except (OSError, ValueError):
            return None
        return list(argv) if isinstance(argv, list) else None

    def pids(self) -> dict[str, int]:
        """Live daemons of this node, by component name."""
        result = {}
        if self.run_dir.is_dir():
            for path in sorted(self.run_dir.glob("*.pid")):
                pid = self._pid(path.stem)
                if pid is not None:
                    result[path.stem] = pid
        return result

    def _spawn(self, daemon: _Daemon) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{daemon.name}.log"
        if log.exists():
            os.replace(log, log.with_suffix(".log.1"))
        env = {"PATH": f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(self.dir), "LANG": "C.UTF-8", "PYTHONPATH": str(REPO_ROOT)}
        out = _run([sys.executable, "-c", _SPAWNER, str(log), str(self.dir), *daemon.argv], env=env)
        pid = int(out.stdout.strip())
        record = {"pid": pid, "start": process_start_time(pid), "argv": daemon.argv}
        _write_if_changed(self._pid_file(daemon.name), json.dumps(record) + "\n")

    def _stop(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM the process of `name`'s PID file (its process group, when it leads one),
        SIGKILL after `timeout`; then forget the PID file."""
        pid = self._pid(name)
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._pid(name) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._pid(name) is not None:
                _log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; killing it")
                self._signal(pid, signal.SIGKILL)
                while self._pid(name) is not None and time.monotonic() < deadline + 10:
                    time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            self._pid_file(name).unlink()

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    # -- readiness -----------------------------------------------------------------------

    def _api_get(self, path: str) -> Any:
        """GET on the apiserver as admin: the decoded JSON, or None unless 200 (also when the
        certificates are missing, after `down`, or unreadable, when not root)."""
        return api_get(self.server + path, ca=self.pki_dir / "ca.crt",
                       cert=(self.pki_dir / "admin.crt", self.pki_dir / "admin.key"))

    @staticmethod
    def _http_ok(url: str) -> bool:
        return http_ok(url, verify=False, timeout=3)

    def _containerd_ready(self) -> bool:
        """Serving, with its CRI plugin loaded (a bad config leaves containerd up without it)."""
        if not Path(self.containerd_address).exists():
            return False
        proc = _run(["ctr", "--address", self.containerd_address, "plugins", "list"], check=False, timeout=10)
        if proc.returncode != 0:
            return False
        for line in proc.stdout.splitlines():
            fields = line.split()
            if fields[:2] == ["io.containerd.grpc.v1", "cri"] and fields[-1] != "ok":
                raise NodeError(f"containerd's CRI plugin did not load; {self.log_dir}/containerd.log "
                                f"ends with:\n{self.logs('containerd')}")
        return True

    def node_ready(self) -> bool:
        node = self._api_get(f"/api/v1/nodes/{NODE_NAME}")
        if not isinstance(node, dict):
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in node.get("status", {}).get("conditions", []))

    def _wait(self, what: str, ready: T_Ready, deadline: float, watch: Sequence[str] = ()) -> None:
        """Poll `ready` until true; fail early when a daemon in `watch` dies, with its log."""
        while not ready():
            for name in watch:
                if self._pid(name) is None:
                    raise NodeError(f"{name} exited while waiting for {what}; "
                                    f"{self.log_dir / name}.log ends with:\n{self.logs(name)}")
            if time.monotonic() > deadline:
                name = watch[-1] if watch else "kubelet"
                raise NodeError(f"{what} not ready after {self.timeout:.0f}s; "
                                f"{self.log_dir / name}.log ends with:\n{self.logs(name)}")
            time.sleep(0.25)

    def status(self) -> dict[str, bool]:
        """component -> running, for every component `up` starts."""
        live = self.pids()
        return {name: name in live for name in self._component_names()}

    def _component_names(self) -> list[str]:
        names = ["etcd", "containerd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                 "kubelet", "kube-proxy", "coredns", "provisioner"]
        if self._kube_router_binary() is not None:
            names.append("kube-router")
        return names

    def is_up(self) -> bool:
        return all(self.status().values()) and self.node_ready()

    # -- up ------------------------------------------------------------------------------

    def start(self) -> Node:
        """Bring every component up (or adopt the running ones) and wait until the node is
        Ready, DNS answers and the default ServiceAccount exists. Idempotent."""
        started = time.monotonic()
        with _phase("preflight (root, host packages, binaries)", started):
            coredns, kube_router = self._preflight()
        with self._locked():
            return self._start(started, coredns, kube_router)

    def _start(self, started: float, coredns: Path, kube_router: Path | None) -> Node:
        deadline = time.monotonic() + self.timeout   # a cold build in preflight does not count
        with _phase("host record, bridge, certificates, configs", started):
            self._record_host_state()
            self._setup_host_network()
            self._write_pki()
            changed = self._write_configs()
        daemons = {d.name: d for d in self._daemons(coredns, kube_router)}

        def ensure(name: str) -> None:
            if self._pid(name) is not None and (name in changed or self._argv(name) != daemons[name].argv):
                _log(f"{name}: its configuration or flags changed, restarting it")
                self._stop(name)
            if self._pid(name) is None:
                self._spawn(daemons[name])

        def wait(name: str, *watch: str) -> None:
            with _phase(f"{name} ready", started):
                self._wait(name, daemons[name].ready, deadline, (*watch, name))

        ensure("etcd")
        ensure("containerd")
        wait("etcd")
        ensure("kube-apiserver")
        wait("kube-apiserver", "etcd")
        wait("containerd")
        with _phase("bootstrap objects (StorageClass, RBAC)", started):
            self.apply(BOOTSTRAP_OBJECTS)
        # kube-router exits at once unless its Node object exists ("failed to identify the
        # node"), which the kubelet registers only after it started: on a loaded machine
        # that is seconds later. So it starts once the node is Ready.
        late = [n for n in daemons if n == "kube-router"]
        rest = [n for n in daemons if n not in ("etcd", "containerd", "kube-apiserver", *late)]
        for name in rest:
            ensure(name)
        for name in rest:
            wait(name, "kube-apiserver", "containerd")
        with _phase("node Ready", started):
            self._wait(f"node {NODE_NAME} Ready", self.node_ready, deadline,
                       ("kubelet", "containerd", "kube-apiserver"))
        for name in late:
            ensure(name)
            wait(name, "kube-apiserver")
        with _phase("default ServiceAccount", started):
            sa_path = "/api/v1/namespaces/default/serviceaccounts/default"
            self._wait("the default ServiceAccount", lambda: self._api_get(sa_path) is not None,
                       deadline, ("kube-controller-manager",))
        _log(f"up in {time.monotonic() - started:.1f}s")
        return self

    def _preflight(self) -> tuple[Path, Path | None]:
        """Fail early, saying what is missing (NodeUnavailable), before touching the host."""
        if os.geteuid() != 0:
            raise NodeUnavailable("the one-node cluster needs root (network, mounts, cgroups); run as root")
        packages = {"containerd": "containerd", "containerd-shim-runc-v2": "containerd", "ctr": "containerd",
                    "runc": "runc", "ip": "iproute2", "iptables-nft": "iptables", "ip6tables-nft": "iptables",
                    "iptables-nft-save": "iptables", "ip6tables-nft-save": "iptables", "nft": "nftables",
                    "mount": "mount", "umount": "mount", "openssl": "openssl"}
        missing = sorted({packages[c] for c in HOST_COMMANDS if shutil.which(c) is None})
        missing += ["containernetworking-plugins"] if any(
            not os.access(CNI_BIN_DIR / p, os.X_OK) for p in CNI_PLUGINS) else []
        if missing:
            raise NodeUnavailable(f"missing host packages: apt-get install {' '.join(missing)}")
        version = _run(["iptables", "--version"], check=False).stdout
        if "nf_tables" not in version:
            raise NodeUnavailable(f"`iptables` on PATH is not the nft backend ({version.strip()!r}); "
                                  "kube-proxy and the CNI plugins must use iptables-nft")
        if not self.host_state_file.exists():
            # A kubepods tree we did not make means another kubelet owns (or owned) this host.
            foreign = [str(m / CGROUP_ROOT_NAME) for m in _cgroup_mounts() if (m / CGROUP_ROOT_NAME).is_dir()]
            if foreign:
                raise NodeError(f"cgroups of another kubelet exist ({', '.join(foreign)}); "
                                "tear that cluster down first")
            # The bridge, addresses and ports are fixed: one node per host, whatever its dir.
            if Path(f"/sys/class/net/{BRIDGE}").exists():
                raise NodeError(f"the bridge {BRIDGE} exists but {self.dir} holds no record of it: another "
                                f"node (another {STATE_DIR_ENV}?) runs here, or a leftover (ip link delete "
                                f"{BRIDGE})")
            self._check_address_ranges()
        coredns, kube_router = ensure_node_binaries(self._bin_dir)
        if kube_router is not None and shutil.which("ipset") is None:
            raise NodeUnavailable("kube-router (NetworkPolicies) needs `ipset`: apt-get install ipset")
        return coredns, kube_router

    @staticmethod
    def _check_address_ranges() -> None:
        ours = [ipaddress.ip_network(CLUSTER_CIDR), ipaddress.ip_network(SERVICE_CIDR)]
        routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
        for route in routes:
            dst, dev = route.get("dst", ""), route.get("dev", "")
            if dev == BRIDGE or dst in ("", "default") or route.get("type") in ("broadcast", "local"):
                continue
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
                for mine in ours:
                    if net.overlaps(mine) and not net.is_loopback:
                        raise NodeError(f"the host already routes {dst} via {dev}, which overlaps the "
                                        f"cluster's {mine}; the node cannot use it")

    def _record_host_state(self) -> None:
        """Capture the host before the first change; never again until `down` (a second `up`
        must not mistake our own changes for the host's defaults)."""
        if self.host_state_file.exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711)
        _write_if_changed(self.host_state_file, HostState.capture().to_json(), 0o600)

    def _setup_host_network(self) -> None:
        """The bridge with the gateway address before anything binds to it (the CNI bridge
        plugin adopts an existing bridge), and the two forwarding knobs Services need."""
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        addrs = json.loads(_run(["ip", "-j", "-4", "addr", "show", "dev", BRIDGE]).stdout or "[]")
        have = {a.get("local") for entry in addrs for a in entry.get("addr_info", [])}
        if GATEWAY_IP not in have:
            _run(["ip", "addr", "add", f"{GATEWAY_IP}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "mtu", str(_uplink_mtu()), "up"])
        _run(["nft", "-f", "-"], input=guard_ruleset())
        for name in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
            if _read_sysctl(name) not in (None, "1"):
                _write_sysctl(name, "1")

    def _write_pki(self) -> None:
        # The CA and every pair are made only when missing: a second `up` must not re-key a
        # running cluster.
        pki = PKI(self.pki_dir)
        pki.ensure_server("apiserver", "kube-apiserver", APISERVER_SANS)
        pki.ensure_server("kubelet-serving", f"system:node:{NODE_NAME}", KUBELET_SANS)
        pki.ensure_service_account_keys()
        for name, user, groups in CLIENTS:
            cert = pki.ensure_client(name, user, groups)
            if name == "front-proxy-client":
                continue   # a flag of the apiserver, not a kubeconfig
            path = self.kubeconfig if name == "admin" else self._kubeconfig_of(name)
            _write_if_changed(path, kubeconfig(self.server, pki.ca_crt, user, client_cert_auth(cert)), 0o600)
        for path in pki.dir.glob("*.key"):
            path.chmod(0o600)

    def _write_configs(self) -> set[str]:
        """Every daemon's config file, written only when its content changes; the names of the
        daemons whose config changed (a running one is restarted)."""
        changed = set()
        d = self.dir
        for sub in ("containerd/root", "containerd/state", "containerd/tmp", "containerd/runc",
                    "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "volumes", "etcd"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "etcd").chmod(0o700)
        files = {
            "containerd": (self.config_dir / "containerd.toml", self._containerd_config()),
            "kubelet": (self.config_dir / "kubelet.json", json.dumps(self._kubelet_config(), indent=2)),
            "kube-proxy": (self.config_dir / "kube-proxy.json", json.dumps(self._proxy_config(), indent=2)),
            "coredns": (self.config_dir / "Corefile", self._corefile()),
            # containerd reads the CNI config on every sandbox: no restart needed.
            "": (d / "cni" / "net.d" / f"10-{CNI_NETWORK}.conflist",
                 json.dumps(self._cni_config(), indent=2)),
        }
        for name, (path, content) in files.items():
            if _write_if_changed(path, content + "\n") and name:
                changed.add(name)
        return changed

    def _containerd_config(self) -> str:
        c = self.dir / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""# Written by tests/harness/node.py: this node's own containerd (root, state, socket).
version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
temp = "{c / 'tmp'}"
# Plugins that would touch host paths (/opt/containerd) or probe for other storage.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.internal.v1.opt"]

[grpc]
  address = "{self.containerd_address}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj (-998 for the sandbox) is
  # refused and every sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c / 'runc'}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
"""

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
                 # hairpinMode alone: with promiscMode too the plugin refuses the config.
                 "hairpinMode": True, "mtu": _uplink_mtu(),
                 "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni" / "ipam"),
                          "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY_IP}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _kubelet_config(self) -> dict[str, Any]:
        pki = self.pki_dir
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # kubelet 1.35 refuses cgroup v1 hosts by default; these machines have v1 hierarchies.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_address}",
            "address": GATEWAY_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [GATEWAY_IP],
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(self.pod_logs_dir),
            "podCIDR": POD_SUBNET,
            "maxPods": 110,
            "serializeImagePulls": False,
            # Images are imported, never pulled: image GC would delete what cannot come back.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # A busy CI disk must not evict the store pods; memory still guards the machine.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            # Without CAP_SYS_RESOURCE a negative score for the kubelet itself is refused.
            "oomScoreAdj": 0,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "protectKernelDefaults": False,
        }

    def _proxy_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self._kubeconfig_of("kube-proxy"))},
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": f"127.0.0.1:{PROXY_HEALTHZ_PORT}",
            "metricsBindAddress": f"127.0.0.1:{PROXY_METRICS_PORT}",
            "clusterCIDR": CLUSTER_CIDR,
            "detectLocalMode": "ClusterCIDR",
            # NodePorts on the node IP only: no route_localnet, no rules for 127.0.0.1.
            "nodePortAddresses": ["primary"],
            "oomScoreAdj": 0,
            # Zero leaves the host's conntrack table size and timeouts alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s", "udpTimeout": "0s", "udpStreamTimeout": "0s"},
            "iptables": {"masqueradeAll": False, "syncPeriod": "30s", "minSyncPeriod": "1s",
                         "localhostNodePorts": False},
        }

    def _corefile(self) -> str:
        return f""".:53 {{
    bind {GATEWAY_IP}
    errors
    health 127.0.0.1:{COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self._kubeconfig_of('coredns')}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    loop
    loadbalance
}}"""

    def _daemons(self, coredns: Path, kube_router: Path | None) -> list[_Daemon]:
        b, pki, d = self.bin_dir, self.pki_dir, self.dir
        kcm_kc = self._kubeconfig_of("kube-controller-manager")
        sched_kc = self._kubeconfig_of("kube-scheduler")
        daemons = [
            _Daemon("etcd", [
                str(b / "etcd"), "--name=default", f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ETCD_PORT}",
                f"--advertise-client-urls=http://127.0.0.1:{ETCD_PORT}",
                f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
                f"--initial-cluster=default=http://127.0.0.1:{ETCD_PEER_PORT}",
                "--unsafe-no-fsync=true", "--log-level=warn"],
                lambda: self._http_ok(f"http://127.0.0.1:{ETCD_PORT}/health")),
            _Daemon("containerd", ["containerd", f"--config={self.config_dir / 'containerd.toml'}"],
                    self._containerd_ready),
            _Daemon("kube-apiserver", [
                str(b / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
                f"--bind-address={GATEWAY_IP}", f"--advertise-address={GATEWAY_IP}",
                f"--secure-port={APISERVER_PORT}", f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                # Dial the kubelet by IP: the node's name resolves nowhere.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                # The front-proxy settings: aggregated API servers work, and the controller
                # manager and scheduler find the requestheader CA they look up (else they log
                # "missing content for CA bundle" every few seconds).
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--profiling=false", "--v=0"],
                lambda: self._api_get("/readyz") is not None),
            _Daemon("kube-controller-manager", [
                str(b / "kube-controller-manager"), f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}", f"--authorization-kubeconfig={kcm_kc}",
                # All of them: the PersistentVolume binder included (the envtest list lacks it).
                "--controllers=*", f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}", f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}", "--use-service-account-credentials=true",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={KCM_PORT}",
                f"--cert-dir={d / 'kcm-certs'}", "--profiling=false", "--v=0"],
                lambda: self._http_ok(f"https://127.0.0.1:{KCM_PORT}/healthz")),
            _Daemon("kube-scheduler", [
                str(b / "kube-scheduler"), f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}", f"--authorization-kubeconfig={sched_kc}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={SCHEDULER_PORT}",
                f"--cert-dir={d / 'scheduler-certs'}", "--profiling=false", "--v=0"],
                lambda: self._http_ok(f"https://127.0.0.1:{SCHEDULER_PORT}/healthz")),
            _Daemon("kubelet", [
                str(b / "kubelet"), f"--config={self.config_dir / 'kubelet.json'}",
                f"--kubeconfig={self._kubeconfig_of('kubelet')}", f"--root-dir={self.kubelet_dir}",
                f"--cert-dir={self.kubelet_dir / 'pki'}", f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY_IP}", "--v=1"],
                lambda: self._http_ok(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz")),
            _Daemon("kube-proxy", [str(b / "kube-proxy"), f"--config={self.config_dir / 'kube-proxy.json'}",
                                   "--v=0"],
                    lambda: self._http_ok(f"http://127.0.0.1:{PROXY_HEALTHZ_PORT}/healthz")),
            _Daemon("coredns", [str(coredns), "-conf", str(self.config_dir / "Corefile")],
                    lambda: self._http_ok(f"http://127.0.0.1:{COREDNS_READY_PORT}/ready")),
            _Daemon("provisioner", [sys.executable, "-m", "tests.harness.node", "provisioner",
                                    "--dir", str(self.dir)],
                    lambda: Provisioner.alive(self.dir)),
        ]
        if kube_router is not None:
            daemons.append(_Daemon("kube-router", [
                str(kube_router), f"--kubeconfig={self._kubeconfig_of('kube-router')}",
                f"--hostname-override={NODE_NAME}", "--run-firewall=true", "--run-router=false",
                "--run-service-proxy=false", "--enable-cni=false", "--enable-ipv4=true",
                "--enable-ipv6=false", "--enable-pprof=false",
                # Health listens on every address (no flag for it in v2.1); metrics stay off.
                f"--health-port={KUBE_ROUTER_HEALTH_PORT}", "--metrics-port=0",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--iptables-sync-period=5m", "--v=1"],
                lambda: self._http_ok(f"http://127.0.0.1:{KUBE_ROUTER_HEALTH_PORT}/healthz")))
        return daemons

    def _kube_router_binary(self) -> Path | None:
        return _cached_build_output(KUBE_ROUTER_BUILD, "kube-router", KUBE_ROUTER_MODULE)

    # -- down ----------------------------------------------------------------------------

    def down(self, purge: bool = False) -> None:
        """Stop what `up` started (PID files only) and undo its host changes; keep the image
        store and the logs unless `purge`. Safe to repeat, and safe after a crash."""
        if os.geteuid() != 0:
            raise NodeUnavailable("the one-node cluster needs root to be torn down")
        if not self.dir.is_dir():
            return
        with self._locked():
            self._down(purge)

    def _down(self, purge: bool) -> None:
        started = time.monotonic()
        before: HostState | None = None
        with contextlib.suppress(OSError, ValueError, TypeError):
            before = HostState.from_json(self.host_state_file.read_text())
        with _phase("pods removed", started):
            for name in ("provisioner", "kube-controller-manager", "kube-scheduler"):
                self._stop(name)   # nothing may recreate or reschedule pods now
            self._remove_pods()
        with _phase("kubelet, containerd and their leftovers stopped", started):
            self._stop("kubelet")
            self._remove_containers()
            self._stop("containerd")
            self._kill_leftovers()
        with _phase("kube-proxy, kube-router cleaned up", started):
            self._stop("kube-proxy")
            self._stop("kube-router")
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
            if os.access(self.bin_dir / "kube-proxy", os.X_OK):
                _run([str(self.bin_dir / "kube-proxy"), "--cleanup", "--v=0"], check=False, env=env)
            # Not `kube-router --cleanup-config`: it also flushes every IPVS service of the
            # host. Its chains (KUBE-*) and ipsets go with the generic cleanup below.
        with _phase("control plane stopped", started):
            for name in ("coredns", "kube-apiserver", "etcd"):
                self._stop(name)
            for path in self.run_dir.glob("*.pid") if self.run_dir.is_dir() else ():
                self._stop(path.stem)   # anything else a newer `up` started
        with _phase("mounts, network, cgroups, sysctls restored", started):
            left = self._unmount_all()
            self._remove_network(before)
            self._remove_cgroups(before)
            if before is not None:
                for name, value in before.sysctls.items():
                    if value is not None and _read_sysctl(name) != value:
                        with contextlib.suppress(OSError):
                            _write_sysctl(name, value)
                self._clean_shared_paths(before)
        if left:
            raise NodeError(f"could not unmount {', '.join(left)}; the state under {self.dir} is kept")
        with _phase("state wiped", started):
            self._wipe_state(purge)
        _log(f"down in {time.monotonic() - started:.1f}s")

    def _remove_pods(self) -> None:
        """Let the kubelet stop every pod, so the CNI plugins tear down their own network state
        (IP leases, masquerade and hostport chains, veths). Best effort: `down` cleans up
        after whatever does not go this way."""
        if not (self._pid("kube-apiserver") and self._pid("kubelet") and self._pid("containerd")):
            return
        proc = self.kubectl_run("delete", "pods", "--all", "--all-namespaces", "--grace-period=1",
                                "--wait=false", check=False, timeout=60)
        if proc.returncode != 0:
            _log(f"deleting pods failed, cleaning up by hand: {proc.stderr.strip()}")
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = self.ctr("tasks", "list", "--quiet", check=False, timeout=20).stdout.split()
            pods = self.kubectl_run("get", "pods", "--all-namespaces", "-o", "name", check=False,
                                    timeout=20).stdout.split()
            if not tasks and not pods:
                return
            time.sleep(0.5)
        _log("pods still running after 60s; killing them")

    def _remove_containers(self) -> None:
        """Kill and delete every task and container in containerd's k8s.io namespace (pods the
        kubelet did not stop); their snapshots go with them, imported images stay."""
        if not self._pid("containerd"):
            return
        for task in self.ctr("tasks", "list", "--quiet", check=False, timeout=30).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=30)
        for task in self.ctr("tasks", "list", "--quiet", check=False, timeout=30).stdout.split():
            self.ctr("tasks", "delete", "--force", task, check=False, timeout=30)
        containers = self.ctr("containers", "list", "--quiet", check=False, timeout=30).stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, check=False, timeout=120)

    def _kill_leftovers(self) -> None:
        """SIGKILL what our containerd left: its shims (they name our socket in their argv)
        and any process still in the kubepods cgroups our kubelet made."""
        socket_path = self.containerd_address
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-address" in argv and socket_path.encode() in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc_dir.name), signal.SIGKILL)
        for pid in _kubepods_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _unmount_all(self) -> list[str]:
        """Unmount everything under the state dir (pod volumes, rootfs overlays, shm, network
        namespaces), deepest first; lazily when busy. Returns what stays mounted."""
        for _ in range(5):
            points = sorted({m for m in _mountinfo() if _is_under(Path(m), self.dir) and Path(m) != self.dir},
                            key=lambda p: p.count("/"), reverse=True)
            if not points:
                return []
            for point in points:
                if _run(["umount", point], check=False).returncode != 0:
                    _run(["umount", "--lazy", point], check=False)
        return [m for m in _mountinfo() if _is_under(Path(m), self.dir) and Path(m) != self.dir]

    def _remove_network(self, before: HostState | None) -> None:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            # A pod's veth goes with its network namespace; one still attached to our bridge
            # (a namespace something kept open) is removed by hand. Other veths are not ours.
            listed = _run(["ip", "-j", "link", "show", "master", BRIDGE], check=False).stdout
            for port in json.loads(listed or "[]"):
                _run(["ip", "link", "delete", port["ifname"]], check=False)
            _run(["ip", "link", "delete", BRIDGE], check=False)
        for family, cmd in ((4, "iptables-nft"), (6, "ip6tables-nft")):
            for table, chains in _iptables_tables(family).items():
                key = f"ipv{family}/{table}"
                keep = set(before.chains.get(key, [])) if before else set()
                doomed = {c for c in chains if _ours(c) and c not in keep}
                if not doomed:
                    continue
                for chain, rules in chains.items():
                    if chain in doomed:
                        continue
                    for rule in rules:
                        args = shlex.split(rule)
                        targets = {args[i + 1] for i, a in enumerate(args[:-1])
                                   if a in ("-j", "-g", "--jump", "--goto")}
                        if targets & doomed:
                            _run([cmd, "-w", "-t", table, "-D", *args[1:]], check=False)
                for chain in doomed:
                    _run([cmd, "-w", "-t", table, "-F", chain], check=False)
                for chain in doomed:
                    _run([cmd, "-w", "-t", table, "-X", chain], check=False)
        if shutil.which("nft") and before is not None:
            # iptables-nft leaves the tables it created; drop those that are ours and empty.
            for family in (4, 6):
                for table, chains in _iptables_tables(family).items():
                    if f"ipv{family}/{table}" not in before.tables and not any(chains.values()):
                        _run(["nft", "delete", "table", "ip" if family == 4 else "ip6", table], check=False)
        if f"inet {GUARD_TABLE}" in _nft_tables():
            _run(["nft", "delete", "table", "inet", GUARD_TABLE], check=False)
        if shutil.which("ipset") and before is not None:
            for name in sorted(set(_ipsets()) - set(before.ipsets)):
                _run(["ipset", "destroy", name], check=False)
        if shutil.which("conntrack"):
            for flag in ("--orig-src", "--orig-dst"):
                for cidr in (CLUSTER_CIDR, SERVICE_CIDR):
                    _run(["conntrack", "-D", flag, cidr], check=False)

    def _remove_cgroups(self, before: HostState | None) -> None:
        """rmdir the kubepods trees (deepest first) in every hierarchy, once their processes
        are gone; never a tree that existed before the first `up`."""
        keep = set(before.cgroups) if before else set()
        deadline = time.monotonic() + 20
        for mount in _cgroup_mounts():
            root = mount / CGROUP_ROOT_NAME
            if not root.is_dir() or str(root) in keep:
                continue
            while True:
                busy = []
                for dirpath, _dirs, _files in os.walk(root, topdown=False):
                    try:
                        os.rmdir(dirpath)
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:
                            busy.append(dirpath)
                if not busy or time.monotonic() > deadline:
                    if busy:
                        _log(f"cgroups still busy: {', '.join(busy)}")
                    break
                for pid in _kubepods_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)

    def _clean_shared_paths(self, before: HostState) -> None:
        """Our entries in host paths the daemons hard-code; the directories that were not there."""
        containers_log = Path("/var/log/containers")
        if containers_log.is_dir():
            for link in containers_log.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and _is_under(Path(os.readlink(link)), self.pod_logs_dir):
                        link.unlink()
        cni_results = Path("/var/lib/cni/results")
        if cni_results.is_dir():
            for entry in cni_results.glob(f"{CNI_NETWORK}-*"):
                entry.unlink()
        for path_text, existed in before.paths.items():
            path = Path(path_text)
            if existed or not path.exists():
                continue
            if path_text in ("/var/lib/kubelet", "/var/lib/cni", "/var/log/containers"):
                _safe_rmtree(path)      # only our kubelet and CNI plugins write there
            else:
                _rmdir_empty(path)      # shared with other software: empty directories only

    def _wipe_state(self, purge: bool) -> None:
        if not self.dir.is_dir():
            return
        if purge:
            _safe_rmtree(self.dir)
            return
        keep = {"logs", "containerd"}
        for entry in self.dir.iterdir():
            if entry.name not in keep:
                _safe_rmtree(entry)
        containerd = self.dir / "containerd"
        if containerd.is_dir():
            for entry in containerd.iterdir():
                if entry.name != "root":
                    _safe_rmtree(entry)
            # CRI's per-sandbox/container files: stale once their containers are deleted.
            for sub in ("sandboxes", "containers"):
                _safe_rmtree(containerd / "root" / "io.containerd.grpc.v1.cri" / sub)


# -- helpers -----------------------------------------------------------------------------------

def _kubepods_pids() -> list[int]:
    pids: set[int] = set()
    for mount in _cgroup_mounts():
        root = mount / CGROUP_ROOT_NAME
        if not root.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(root):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return sorted(pids)


def _safe_rmtree(path: Path) -> None:
    """rm -rf that refuses to run while anything below `path` is mounted (a bind mount of a
    hostPath volume would otherwise lose the host's files)."""
    if not path.exists() and not path.is_symlink():
        return
    mounted = [m for m in _mountinfo() if _is_under(Path(m), path)]
    if mounted:
        raise NodeError(f"refusing to delete {path}: still mounted: {', '.join(mounted)}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _rmdir_empty(path: Path) -> None:
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _uplink_mtu() -> int:
    """The MTU of the default route's interface (pods' packets leave through it), else 1500."""
    with contextlib.suppress(Exception):
        routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "default"], check=False).stdout or "[]")
        if routes:
            return min(1500, int(Path(f"/sys/class/net/{routes[0]['dev']}/mtu").read_text()))
    return 1500


def _cached_build_output(script: Path, name: str, module: str) -> Path | None:
    """The binary a scripts/*/build.sh caches under <name>-<version of `module` in the
    wrapper's go.mod>, when it is there (without building)."""
    if not script.exists():
        return None
    mod = (script.parent / "go.mod").read_text()
    version = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", mod, re.M)
    if version is None:
        return None
    path = ci_cache_dir() / f"{name}-{version.group(1)}" / name
    return path if os.access(path, os.X_OK) else None


def _build(script: Path) -> Path:
    proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise NodeUnavailable(f"{script.relative_to(REPO_ROOT)} failed (exit {proc.returncode}); run it by "
                              "hand to see why (a Go toolchain >= 1.26 and the Go module proxy are needed)")
    return Path(proc.stdout.strip().splitlines()[-1])


def ensure_node_binaries(bin_dir: Path | None = None) -> tuple[Path, Path | None]:
    """Build what is missing (Kubernetes, CoreDNS, kube-router when its script exists); return
    (coredns, kube-router or None). NodeUnavailable when it cannot be built here."""
    bin_dir = bin_dir or default_bin_dir()
    missing = [n for n in NODE_BINARIES if not os.access(bin_dir / n, os.X_OK)]
    if missing:
        if os.environ.get("EVENTSTORE_K8S_BIN_DIR") or shutil.which("go") is None:
            raise NodeUnavailable(f"{bin_dir} lacks {', '.join(missing)}; run `make k8s-build` "
                                  "(needs Go >= 1.26)")
        built = build()
        still = [n for n in NODE_BINARIES if not os.access(built / n, os.X_OK)]
        if still:
            raise NodeUnavailable(f"scripts/k8s/build.sh did not produce {', '.join(still)}")
    coredns = _cached_build_output(COREDNS_BUILD, "coredns", COREDNS_MODULE)
    if coredns is None:
        if shutil.which("go") is None:
            raise NodeUnavailable("CoreDNS is not built and there is no Go toolchain to build it")
        coredns = _build(COREDNS_BUILD)
    kube_router = _cached_build_output(KUBE_ROUTER_BUILD, "kube-router", KUBE_ROUTER_MODULE)
    if kube_router is None and KUBE_ROUTER_BUILD.exists() and shutil.which("go") is not None:
        kube_router = _build(KUBE_ROUTER_BUILD)
    return coredns, kube_router


# -- the volume provisioner --------------------------------------------------------------------

class Provisioner:
    """Dynamic provisioning for STORAGE_CLASS, as a daemon of the node.

    Why not pre-created PersistentVolumes with `kubernetes.io/no-provisioner`: a released
    local PV is never reusable by itself (reclaim Delete fails without a deleter plugin,
    Recycle is not supported for `local`), so every re-install would need someone to wipe and
    unbind volumes, and the pool would have to be sized for the tests. Here a claim that the
    scheduler assigned to this node (WaitForFirstConsumer sets `selected-node`) gets a fresh
    directory and a `local` PV of exactly its size, pre-bound to it; a Released PV of ours is
    wiped and deleted. Polls the API every second: a few objects, no watch to keep alive.
    """

    ANNOTATIONS = ("volume.kubernetes.io/storage-provisioner",
                   "volume.beta.kubernetes.io/storage-provisioner")

    def __init__(self, directory: Path) -> None:
        self.node = Node(directory)
        self.volumes = self.node.volumes_dir
        pki = self.node.pki_dir
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "provisioner.crt"), str(pki / "provisioner.key"))
        self.stopping = False

    @staticmethod
    def heartbeat(directory: Path) -> Path:
        return directory / "run" / "provisioner.alive"

    @classmethod
    def alive(cls, directory: Path) -> bool:
        with contextlib.suppress(OSError):
            return time.time() - cls.heartbeat(directory).stat().st_mtime < 15
        return False

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.node.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=self.ctx) as resp:
            return json.loads(resp.read() or b"null")

    def run_forever(self, interval: float = 1.0) -> None:
        def stop(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"provisioner for StorageClass {STORAGE_CLASS} ({PROVISIONER_NAME}) in {self.volumes}",
              flush=True)
        while not self.stopping:
            try:
                self.reconcile()
                self.heartbeat(self.node.dir).touch()
            except Exception as exc:   # the API may be briefly away: log and go on
                print(f"reconcile failed: {exc!r}", flush=True)
            time.sleep(interval)

    def reconcile(self) -> None:
        classes = {sc["metadata"]["name"]: sc for sc in
                   self._request("GET", "/apis/storage.k8s.io/v1/storageclasses")["items"]}
        pvs = self._request("GET", "/api/v1/persistentvolumes")["items"]
        names = {pv["metadata"]["name"] for pv in pvs}
        for pvc in self._request("GET", "/api/v1/persistentvolumeclaims")["items"]:
            meta, spec = pvc["metadata"], pvc["spec"]
            annotations = meta.get("annotations") or {}
            if not any(annotations.get(a) == PROVISIONER_NAME for a in self.ANNOTATIONS):
                continue
            if spec.get("volumeName") or pvc.get("status", {}).get("phase") != "Pending":
                continue
            if annotations.get("volume.kubernetes.io/selected-node", NODE_NAME) != NODE_NAME:
                continue
            if spec.get("volumeMode", "Filesystem") != "Filesystem":
                continue
            name = f"pvc-{meta['uid']}"
            if name not in names:
                self._provision(name, pvc, classes.get(spec.get("storageClassName") or "", {}))
        for pv in pvs:
            meta = pv["metadata"]
            if (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER_NAME:
                continue
            if (pv.get("status", {}).get("phase") in ("Released", "Failed")
                    and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete"):
                self._delete(pv)

    def _provision(self, name: str, pvc: dict[str, Any], storage_class: dict[str, Any]) -> None:
        meta, spec = pvc["metadata"], pvc["spec"]
        path = self.volumes / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)   # any pod user may write; fsGroup still applies on top
        size = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER_NAME}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy", "Delete"),
                "storageClassName": spec.get("storageClassName", STORAGE_CLASS),
                "volumeMode": "Filesystem",
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                "local": {"path": str(path)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}},
            },
        }
        self._request("POST", "/api/v1/persistentvolumes", pv)
        print(f"provisioned {name} ({size}) for {meta['namespace']}/{meta['name']} at {path}", flush=True)

    def _delete(self, pv: dict[str, Any]) -> None:
        name = pv["metadata"]["name"]
        path = Path(pv["spec"].get("local", {}).get("path", ""))
        if path.parent == self.volumes:
            _safe_rmtree(path)
        with contextlib.suppress(urllib.error.HTTPError):
            self._request("DELETE", f"/api/v1/persistentvolumes/{name}")
        print(f"deleted {name} and {path}", flush=True)


# -- command line ------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.node",
                                     description="The one-node Kubernetes cluster (root).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start it (or adopt it); last line: export KUBECONFIG=...")
    down = sub.add_parser("down", help="stop it and undo its host changes")
    down.add_argument("--purge", action="store_true", help="also delete the image store and logs")
    sub.add_parser("status", help="which components run; exit 0 when all do and the node is Ready")
    prov = sub.add_parser("provisioner", help=argparse.SUPPRESS)
    prov.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "provisioner":
        Provisioner(args.dir).run_forever()
        return 0
    node = Node()
    if args.command == "status":
        for name, running in node.status().items():
            pid = node.pids().get(name)
            print(f"{name:25} {f'running (pid {pid})' if running and pid else 'stopped'}")
        ready = node.node_ready()
        print(f"{'node ' + NODE_NAME:25} {'Ready' if ready else 'not Ready'}")
        return 0 if ready and all(node.status().values()) else 1
    try:
        if args.command == "down":
            node.down(purge=args.purge)
            return 0
        node.start()
    except NodeUnavailable as exc:
        print(f"[node] cannot run here: {exc}", file=sys.stderr)
        return 2
    except NodeError as exc:
        print(f"[node] {args.command} failed: {exc}", file=sys.stderr)
        if args.command == "up":
            print(f"[node] logs are in {node.log_dir}; `make cluster-down` cleans up", file=sys.stderr)
        return 1
    print(f"# Kubernetes {K8S_VERSION} node {NODE_NAME} Ready; API {node.server}; "
          f"containerd {node.containerd_address}; state {node.dir}")
    print(f"export PATH={node.bin_dir}:$PATH")
    print(f"export KUBECONFIG={node.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

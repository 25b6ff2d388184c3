"""tests/harness/kubeaccess.py: the certificates and kubeconfigs the control plane
(controlplane.py) and the one-node cluster (node.py) write, checked with the openssl CLI:
names, SANs, key usages, the chain to the CA, and that the node never re-keys."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import controlplane, node
from tests.harness.kubeaccess import PKI, client_cert_auth, crd_established, kubeconfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _x509(crt: Path, *args: str) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", *args],
                          capture_output=True, text=True, check=True).stdout


def sans(crt: Path) -> list[str]:
    """subjectAltName as openssl's config spells it (IP:..., DNS:...), in order."""
    text = _x509(crt, "-ext", "subjectAltName").splitlines()[1]
    return [part.strip().replace("IP Address:", "IP:") for part in text.split(",")]


def subject(crt: Path) -> str:
    return _x509(crt, "-subject", "-nameopt", "RFC2253").strip().removeprefix("subject=")


def extended_usage(crt: Path) -> str:
    return _x509(crt, "-ext", "extendedKeyUsage").splitlines()[1].strip()


def signed_by(ca: Path, crt: Path) -> bool:
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(crt)],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.strip().endswith(": OK")


def public_key_of(private_key: Path) -> str:
    return subprocess.run(["openssl", "ec", "-in", str(private_key), "-pubout"], capture_output=True,
                          text=True, check=True).stdout


def _config(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_the_pki_signs_server_and_client_certificates(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    assert "CA:TRUE" in _x509(pki.ca_crt, "-ext", "basicConstraints")
    crt, key = pki.server_cert("web", "web-server", ["IP:10.1.2.3", "DNS:web.example"])
    assert (crt, key) == (pki.dir / "web.crt", pki.dir / "web.key")
    assert sans(crt) == ["IP:10.1.2.3", "DNS:web.example"]
    assert extended_usage(crt) == "TLS Web Server Authentication"
    assert signed_by(pki.ca_crt, crt)
    # A CN and O carrying the DN's special characters still mean the user and its groups.
    client, _ = pki.client_cert("odd", "a/b=c+d", ["team/x", "g=1"])
    assert subject(client) == r"O=g=1,O=team/x,CN=a/b=c\+d"     # RFC 2253, newest RDN first
    assert extended_usage(client) == "TLS Web Client Authentication"
    assert signed_by(pki.ca_crt, client)
    assert not (pki.dir / "odd.csr").exists()
    # A second PKI on the same directory keeps the CA; a foreign CA does not verify.
    assert PKI(pki.dir).ca_crt.read_bytes() == pki.ca_crt.read_bytes()
    assert not signed_by(PKI(tmp_path / "other").ca_crt, crt)


def test_the_ensure_methods_keep_what_exists(tmp_path: Path) -> None:
    pki = PKI(tmp_path)
    first = [p.read_bytes() for p in pki.ensure_server("s", "s", ["DNS:a"])]
    first += [p.read_bytes() for p in pki.ensure_client("c", "u")]
    sa_key, sa_pub = pki.ensure_service_account_keys()
    assert public_key_of(sa_key) == sa_pub.read_text()
    sa = sa_key.read_bytes()
    again = [p.read_bytes() for p in pki.ensure_server("s", "s", ["DNS:other"])]
    again += [p.read_bytes() for p in pki.ensure_client("c", "someone-else")]
    assert again == first
    assert pki.ensure_service_account_keys()[0].read_bytes() == sa


def test_kubeconfig() -> None:
    config = json.loads(kubeconfig("https://127.0.0.1:6443", Path("/p/ca.crt"), "alice",
                                   client_cert_auth((Path("/p/a.crt"), Path("/p/a.key")))))
    assert config == {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {"server": "https://127.0.0.1:6443",
                                                     "certificate-authority": "/p/ca.crt"}}],
        "users": [{"name": "alice", "user": {"client-certificate": "/p/a.crt", "client-key": "/p/a.key"}}],
        "contexts": [{"name": "alice", "context": {"cluster": "envtest", "user": "alice",
                                                   "namespace": "default"}}],
        "current-context": "alice",
    }


@pytest.fixture
def control_plane_files() -> Iterator[controlplane.ControlPlane]:
    cp = controlplane.ControlPlane(bin_dir=Path("/nonexistent"))   # nothing is started
    try:
        cp._write_pki()
        yield cp
    finally:
        cp.stop()


def test_the_control_plane_pki(control_plane_files: controlplane.ControlPlane) -> None:
    cp = control_plane_files
    pki = cp.tmp / "pki"
    assert sorted(p.name for p in pki.iterdir()) == [
        "admin.crt", "admin.ext", "admin.key", "apiserver.crt", "apiserver.ext", "apiserver.key",
        "ca.crt", "ca.key", "ca.srl", "sa.key", "sa.pub"]
    assert sans(pki / "apiserver.crt") == [
        "IP:127.0.0.1", "DNS:localhost", "IP:10.0.0.1", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    assert subject(pki / "apiserver.crt") == "CN=kube-apiserver"
    assert subject(pki / "admin.crt") == "O=system:masters,CN=eventstore-admin"
    for crt in ("apiserver.crt", "admin.crt"):
        assert signed_by(cp.ca_file, pki / crt)
    assert public_key_of(pki / "sa.key") == (pki / "sa.pub").read_text()
    config = _config(cp.kubeconfig)
    assert config["clusters"][0]["cluster"] == {"server": cp.server, "certificate-authority": str(cp.ca_file)}
    assert config["users"] == [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"),
                                                          "client-key": str(pki / "admin.key")}}]


def test_the_node_pki_and_kubeconfigs(tmp_path: Path) -> None:
    n = node.Node(directory=tmp_path)
    n._write_pki()
    pki = n.pki_dir
    clients = {name: (user, groups) for name, user, groups in node.CLIENTS}
    expected = {"ca", "apiserver", "kubelet-serving", *clients}
    assert {p.stem for p in pki.glob("*.crt")} == expected
    assert {p.stem for p in pki.glob("*.key")} == expected | {"sa"}
    assert sans(pki / "apiserver.crt") == [
        "IP:10.244.0.1", "IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes",
        "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    assert sans(pki / "kubelet-serving.crt") == [
        "IP:10.244.0.1", "DNS:eventstore-node", "DNS:localhost", "IP:127.0.0.1"]
    assert subject(pki / "kubelet-serving.crt") == "CN=system:node:eventstore-node"
    assert subject(pki / "kubelet.crt") == "O=system:nodes,CN=system:node:eventstore-node"
    for crt in expected - {"ca"}:
        assert signed_by(pki / "ca.crt", pki / f"{crt}.crt"), crt
    for key in pki.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # One kubeconfig per client but the front proxy's (an apiserver flag), each its own user.
    configs = {p.name: p for p in n.config_dir.glob("*.kubeconfig")}
    assert set(configs) == {f"{c}.kubeconfig" for c in clients} - {"admin.kubeconfig",
                                                                     "front-proxy-client.kubeconfig"}
    for name, (user, _groups) in clients.items():
        if name == "front-proxy-client":
            continue
        path = n.kubeconfig if name == "admin" else configs[f"{name}.kubeconfig"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        config = _config(path)
        assert config["current-context"] == user
        assert config["clusters"][0]["cluster"] == {"server": "https://10.244.0.1:16443",
                                                    "certificate-authority": str(pki / "ca.crt")}
        assert config["users"][0]["user"] == {"client-certificate": str(pki / f"{name}.crt"),
                                              "client-key": str(pki / f"{name}.key")}
    # A second `up` writes nothing new: the running cluster keeps its keys.
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    n._write_pki()
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before


@pytest.mark.parametrize("crd,established", [
    ({}, False),  # read before the apiserver wrote any status: what broke `kubectl wait`
    ({"status": None}, False),
    ({"status": {"conditions": None}}, False),
    ({"status": {"conditions": [{"type": "NamesAccepted", "status": "True"}]}}, False),
    ({"status": {"conditions": [{"type": "Established", "status": "False"}]}}, False),
    ({"status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                {"type": "Established", "status": "True"}]}}, True),
])
def test_crd_established_reads_only_the_established_condition(crd: dict[str, Any],
                                                               established: bool) -> None:
    assert crd_established(crd) is established

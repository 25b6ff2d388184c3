"""How the harness reaches the Kubernetes clusters it makes (controlplane.py, node.py): a
throwaway CA and the certificates it signs (openssl CLI), kubeconfigs, and plain GETs on the
API server as admin while waiting for it to become ready."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar


class PKIError(RuntimeError):
    """openssl is missing or refused to make a key or certificate."""


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PKIError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def dn_escape(value: str) -> str:
    """`value` safe inside an openssl `-subj` /CN=... or /O=... part."""
    return value.replace("\\", "\\\\").replace("/", "\\/").replace("+", "\\+").replace("=", "\\=")


_LEAF = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"


class PKI:
    """A CA in `directory` and the certificates it signs, all as files named `<name>.crt` and
    `<name>.key` there.

    The CA is made only when `ca.crt` and `ca.key` are missing: a control plane gets a fresh
    directory (so a fresh CA), while the one-node cluster keeps its CA across `up`s (a second
    `up` must not re-key a running cluster). The `ensure_*` methods likewise keep a pair that
    exists. ECDSA P-256 keys: generated in milliseconds (RSA-2048 takes noticeably longer on
    a loaded 2-core machine) and accepted by every Kubernetes component.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_key = directory / "ca.key"
        self.ca_crt = directory / "ca.crt"
        if self.ca_crt.exists() and self.ca_key.exists():
            return
        if shutil.which("openssl") is None:
            raise PKIError("the `openssl` command is missing: apt-get install openssl")
        self.dir.mkdir(parents=True, exist_ok=True)
        openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", self.ca_key.name,
                "-out", self.ca_crt.name, "-days", "7", "-subj", "/CN=eventstore-test-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                cwd=self.dir)

    def issue(self, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
        """Sign a new key pair for `subject`; return (cert, key) paths."""
        key, csr, crt, ext = (self.dir / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
        ext.write_text(extensions)
        openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", key.name, "-out", csr.name, "-subj", subject, cwd=self.dir)
        openssl("x509", "-req", "-in", csr.name, "-CA", self.ca_crt.name, "-CAkey", self.ca_key.name,
                "-CAcreateserial", "-out", crt.name, "-days", "7", "-extfile", ext.name, cwd=self.dir)
        csr.unlink()
        return crt, key

    def client_cert(self, name: str, user: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
        # Kubernetes maps a client certificate's CN to the user name and each O to a group.
        subject = f"/CN={dn_escape(user)}" + "".join(f"/O={dn_escape(g)}" for g in groups)
        return self.issue(name, subject, _LEAF + "extendedKeyUsage=clientAuth\n")

    def server_cert(self, name: str, common_name: str, sans: Sequence[str]) -> tuple[Path, Path]:
        """A serving certificate; `sans` as openssl spells them (`IP:10.0.0.1`, `DNS:x`)."""
        return self.issue(name, f"/CN={common_name}",
                          _LEAF + f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n")

    def _existing(self, name: str) -> tuple[Path, Path] | None:
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        return (crt, key) if crt.exists() and key.exists() else None

    def ensure_client(self, name: str, user: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
        return self._existing(name) or self.client_cert(name, user, groups)

    def ensure_server(self, name: str, common_name: str, sans: Sequence[str]) -> tuple[Path, Path]:
        return self._existing(name) or self.server_cert(name, common_name, sans)

    def ensure_service_account_keys(self) -> tuple[Path, Path]:
        """sa.key and sa.pub, the pair that signs and verifies ServiceAccount tokens."""
        key, pub = self.dir / "sa.key", self.dir / "sa.pub"
        if not key.exists():
            openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.name, cwd=self.dir)
            openssl("ec", "-in", key.name, "-pubout", "-out", pub.name, cwd=self.dir)
        return key, pub


def kubeconfig(server: str, ca: Path, user: str, auth: dict[str, str]) -> str:
    """A one-cluster, one-user kubeconfig (cluster `envtest`, context and user `user`,
    namespace `default`). JSON is valid YAML, so kubectl, helm, client-go and the Python
    client all read it."""
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": user, "context": {"cluster": "envtest", "user": user,
                                                "namespace": "default"}}],
        "current-context": user,
    }
    return json.dumps(config, indent=2) + "\n"


def client_cert_auth(cert: tuple[Path, Path]) -> dict[str, str]:
    """A kubeconfig user entry for a (cert, key) pair."""
    crt, key = cert
    return {"client-certificate": str(crt), "client-key": str(key)}


def tls_context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """TLS that trusts only `ca`, presenting `cert` (cert, key) when given."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def api_get(url: str, *, ca: Path, cert: tuple[Path, Path] | None) -> Any:
    """GET `url` on an API server trusting `ca`, as `cert`: the decoded JSON (or text), or
    None unless it answers 200. Missing or unreadable certificates also give None (a node
    that is down, or a caller that is not root: not ready either)."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=tls_context(ca, cert)) as resp:
            body = resp.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def http_ok(url: str, *, verify: bool = True, timeout: float = 5.0) -> bool:
    """Whether `url` answers 200 (a health endpoint). `verify=False` accepts any certificate
    (the components' self-signed serving certificates)."""
    ctx = None
    if url.startswith("https://") and not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.5,
               message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy (returned); fail with `message` after
    `timeout`. Controllers are eventually consistent, so tests poll instead of sleeping."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} did not happen within {timeout:.0f}s (last value: {value!r})")
        time.sleep(interval)


def crd_established(crd: dict[str, Any]) -> bool:
    """True once the apiserver has marked the CRD Established (it serves the new kind)."""
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


class CommandError(subprocess.CalledProcessError):
    """A CalledProcessError whose message carries the command's stderr (pytest shows str(exc),
    and "returned non-zero exit status 1" alone says nothing)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


class KubectlClient:
    """kubectl as cluster admin, for the control plane and the one-node cluster alike:
    each says where its kubectl binary and admin kubeconfig are."""

    @property
    def kubectl(self) -> Path:
        raise NotImplementedError

    @property
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    def kubectl_run(self, *args: str, check: bool = True, input: str | None = None,
                    kubeconfig: Path | None = None, timeout: float = 120.0,
                    ) -> subprocess.CompletedProcess[str]:
        """kubectl, as admin unless `kubeconfig` is given; with check=True a non-zero exit
        raises CommandError (its message ends with kubectl's stderr)."""
        argv = [str(self.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """`kubectl ... -o json`, parsed."""
        return json.loads(self.kubectl_run(*args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def wait_crd_established(self, name: str, timeout: float = 60.0) -> None:
        """Until the CRD `name` is Established. Not `kubectl wait --for=condition=Established`:
        that fails at once (".status.conditions accessor error: <nil> is of the type <nil>")
        when it reads a fresh CRD before the apiserver has written any condition, as it did
        in one CI run."""
        wait_until(lambda: crd_established(self.kubectl_json("get", "crd", name)),
                   timeout=timeout, interval=0.1, message=f"CRD {name} Established")

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]],
              namespace: str | None = None) -> None:
        """`kubectl apply -f -` of YAML/JSON text, one object or a list of objects."""
        if isinstance(manifest, list):
            manifest = {"apiVersion": "v1", "kind": "List", "items": manifest}
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl_run("apply", *(["-n", namespace] if namespace else []), "-f", "-", input=text)

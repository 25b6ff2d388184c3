"""A throwaway S3-compatible server for the backup tests: versitygw (a real S3 gateway in
Go: SigV4 authentication, multipart uploads, checksums) on its POSIX backend in a temp
dir, on a free loopback port (or on another address of this host, `host`: the
one-node suite binds the node bridge's address so that pods reach it), with a random root
access key and secret.

The binary is built once by scripts/versitygw/build.sh (`make deps`) and cached under
~/.cache/eventstore-ci/versitygw-<version>/. `python -m tests.harness.s3` runs one in the
foreground and prints the AWS_* variables for `eventstore backup s3://...`.
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness.process import (
    ServerProcess,
    ci_cache_dir,
    ensure_go_binary,
    free_port,
    serve_in_foreground,
)

VERSION = os.environ.get("VERSITYGW_VERSION", "v1.8.0")


def cached_binary() -> Path:
    return ci_cache_dir() / f"versitygw-{VERSION}" / "versitygw"


def ensure_binary() -> Path:
    """versitygw: the cached build, else build it now (a few minutes, once per machine)."""
    return ensure_go_binary("versitygw", VERSION, version_env="VERSITYGW_VERSION")


class S3Server(ServerProcess):
    """versitygw on `host`:`port` (127.0.0.1 unless told); `endpoint`, `access_key`,
    `secret_key`, `region`."""

    label = "versitygw"
    log_name = "versitygw.log"
    region = "us-east-1"

    def __init__(self, start_timeout: float = 30.0, host: str = "127.0.0.1") -> None:
        super().__init__(tmp_prefix="eventstore-s3-", start_timeout=start_timeout)
        self.host = host
        self.port = free_port(host)
        self.access_key = "es" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        self.root = self.tmp / "buckets"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What `eventstore backup s3://...` reads."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": self.region}

    def start(self) -> S3Server:
        if self.is_running():
            return self
        self._check_open()
        binary = ensure_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        # The secret goes through the environment, not argv (visible in `ps`).
        env = {**os.environ, "ROOT_ACCESS_KEY_ID": self.access_key,
               "ROOT_SECRET_ACCESS_KEY": self.secret_key}
        self._spawn([str(binary), "--port", f"{self.host}:{self.port}", "--region", self.region,
                     "--quiet", "posix", str(self.root)], env=env)
        self._wait_ready(self._answers)
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answers (403 to an anonymous request): up
        except OSError:
            return False

    def client(self, secret_key: str | None = None) -> Any:
        """A minio client for this server (test set-up and inspection)."""
        from minio import Minio

        return Minio(f"{self.host}:{self.port}", access_key=self.access_key,
                     secret_key=secret_key or self.secret_key, secure=False, region=self.region)

    def create_bucket(self, name: str) -> str:
        """A new empty bucket `name` (returned)."""
        self.client().make_bucket(name)
        return name


def _announce(server: S3Server) -> None:
    for key, value in server.env.items():
        print(f"export {key}={value}", flush=True)
    print(f"# versitygw {VERSION}, buckets under {server.root}; create one with "
          "`mkdir` there; Ctrl-C stops and removes it", file=sys.stderr, flush=True)


def main() -> None:
    serve_in_foreground(S3Server(), _announce)


if __name__ == "__main__":
    main()

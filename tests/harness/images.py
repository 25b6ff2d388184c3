"""The container images the one-node cluster runs, built and imported without a registry.

There is no Docker and no registry here, so every image is a root filesystem made on the
host (a static Go binary, or a Debian bookworm `debootstrap` base changed inside a chroot)
and written as a single-layer OCI archive with `tarfile` and `json`, which
`ctr -n k8s.io images import` accepts.

Each archive is cached under ${XDG_CACHE_HOME:-~/.cache}/eventstore-ci/images-v1/ (the cache
root is $EVENTSTORE_CI_CACHE when set), named by
a hash of everything it is made from (the recipe, its image config, its scripts, the base
tarball's recipe, this checkout's package sources, the FerretDB binary), so an unchanged
checkout reuses it and `make images` takes seconds. `import` skips an image the node's
containerd already holds with the same manifest digest.

    python -m tests.harness.images build [--only pause,store,...]
    python -m tests.harness.images import [--address SOCK] [--only ...]
    python -m tests.harness.images list

Images (module constants other code imports): PAUSE_IMAGE, STORE_IMAGE, POSTGRES_IMAGE,
MONGODB_IMAGE. Python API: `build(names)`, `import_images(names, address=...)`,
`ensure_imported(address)`, `archive_for(name)`, `RECIPES`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.process import ci_cache_dir

REPO_ROOT = Path(__file__).resolve().parents[2]

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
STORE_IMAGE = "ghcr.io/eventstore-py/eventstore:0.1.0"
POSTGRES_IMAGE = "eventstore.local/postgres:15"
MONGODB_IMAGE = "eventstore.local/ferretdb:1.24.2"

CACHE_DIR = ci_cache_dir() / "images-v1"
NODE_DIR = Path(os.environ.get("EVENTSTORE_NODE_DIR", "/var/lib/eventstore-node"))
NODE_SOCKET = NODE_DIR / "containerd" / "containerd.sock"
NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin (kubelet) sees

DEBIAN_MIRROR = os.environ.get("EVENTSTORE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tzdata")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
# Fixed, so that the config (and so the manifest digest) depends only on the content.
CREATED = "1970-01-01T00:00:00Z"


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """Log how long each step takes: cold builds are minutes, warm ones must stay seconds."""
    start = time.monotonic()
    log(f"{what} ...")
    yield
    log(f"{what}: {time.monotonic() - start:.1f} s")


# --------------------------------------------------------------------------------------
# Image config and recipes
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageConfig:
    """The runtime contract of an image: what `docker inspect` would show as .Config."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    user: str = ""
    env: tuple[tuple[str, str], ...] = (("PATH", DEFAULT_PATH),)
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()          # "8080/tcp"
    stop_signal: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Env": [f"{k}={v}" for k, v in self.env],
            "Entrypoint": list(self.entrypoint),
        }
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.user:
            out["User"] = self.user
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out


@dataclass(frozen=True)
class Account:
    """A user and group the image creates (uid == gid), as `useradd --system` would."""

    name: str
    uid: int
    home: str
    shell: str


@dataclass(frozen=True)
class OwnedDir:
    path: str
    uid: int
    gid: int
    mode: int


@dataclass
class BuildContext:
    """What a recipe's build function gets: a scratch dir on the cache's filesystem."""

    work: Path
    rootfs: Path


@dataclass(frozen=True)
class Recipe:
    """One image: its name, config, and how to make its root filesystem.

    `version` is bumped by hand when the build steps change in a way the hashed inputs do
    not show; the config, the scripts and `inputs()` are hashed automatically.
    """

    key: str                                  # short name: pause, store, postgres, mongodb
    ref: str
    config: ImageConfig
    version: str
    make_rootfs: Callable[[BuildContext], None]
    inputs: Callable[[], dict[str, str]]      # label -> digest or literal text
    accounts: tuple[Account, ...] = ()
    dirs: tuple[OwnedDir, ...] = ()
    files: tuple[tuple[str, str], ...] = ()   # (path in image, text) hashed into the key
    needs_root: bool = True

    def cache_key(self) -> str:
        description = {
            "recipe": self.version,
            "ref": self.ref,
            "config": self.config.to_oci(),
            "accounts": [vars(a) for a in self.accounts],
            "dirs": [vars(d) for d in self.dirs],
            "files": [[p, _sha256_bytes(t.encode())] for p, t in self.files],
            "inputs": self.inputs(),
        }
        blob = json.dumps(description, sort_keys=True).encode()
        return _sha256_bytes(blob)[:16]

    def archive_path(self) -> Path:
        return CACHE_DIR / f"{self.key}-{self.cache_key()}.oci.tar"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Pause: the sandbox image containerd starts first in every pod
# --------------------------------------------------------------------------------------

PAUSE_GO = """\
// pause: the process that holds a pod's namespaces. It blocks until SIGINT or SIGTERM,
// and reaps zombies while it is PID 1 of a shared process namespace.
package main

import (
\t"fmt"
\t"os"
\t"os/signal"
\t"syscall"
)

func reap() {
\tfor {
\t\tvar status syscall.WaitStatus
\t\tpid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
\t\tif pid <= 0 || err != nil {
\t\t\treturn
\t\t}
\t}
}

func main() {
\tif len(os.Args) > 1 && os.Args[1] == "-v" {
\t\tfmt.Println("pause (eventstore) 3.10")
\t\treturn
\t}
\tif os.Getpid() != 1 {
\t\tfmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
\t}
\tsignals := make(chan os.Signal, 16)
\tsignal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor sig := range signals {
\t\tif sig == syscall.SIGCHLD {
\t\t\treap()
\t\t\tcontinue
\t\t}
\t\tfmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\\n", sig)
\t\tos.Exit(0)
\t}
}
"""
PAUSE_GO_MOD = "module eventstore.local/pause\n\ngo 1.22\n"
PAUSE_BUILD = ("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o")


def _make_pause_rootfs(ctx: BuildContext) -> None:
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to build the pause image (go not on PATH)")
    src = ctx.work / "pause-src"
    src.mkdir()
    (src / "go.mod").write_text(PAUSE_GO_MOD)
    (src / "main.go").write_text(PAUSE_GO)
    env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64",
           "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    ctx.rootfs.mkdir(mode=0o755)
    binary = ctx.rootfs / "pause"
    _run(["nice", "-n", "10", *PAUSE_BUILD, str(binary), "."], cwd=src, env=env)
    binary.chmod(0o755)
    out = _run([str(binary), "-v"], capture=True)
    if "pause" not in out:
        raise RuntimeError(f"the pause binary does not run: {out!r}")


PAUSE = Recipe(
    key="pause",
    ref=PAUSE_IMAGE,
    # As the upstream image: an unprivileged user, nothing else in the root filesystem.
    config=ImageConfig(entrypoint=("/pause",), user="65535:65535", env=()),
    version="1",
    make_rootfs=_make_pause_rootfs,
    inputs=lambda: {"main.go": _sha256_bytes(PAUSE_GO.encode()), "go.mod": PAUSE_GO_MOD,
                    "build": " ".join(PAUSE_BUILD)},
    needs_root=False,
)


# --------------------------------------------------------------------------------------
# The Debian base: one debootstrap, cached as a tarball, shared by the other images
# --------------------------------------------------------------------------------------

BASE_VERSION = "2"


def base_key() -> str:
    """Hash of what the base is made from (not of its bytes: hashing 150 MB costs time on
    every warm run, and the same recipe gives the same packages from a stable release)."""
    blob = _canonical({"v": BASE_VERSION, "suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR,
                       "variant": "minbase", "include": list(BASE_PACKAGES)})
    return _sha256_bytes(blob)[:16]


def base_tarball() -> Path:
    """The cached base root filesystem tarball, made by debootstrap if missing (minutes)."""
    target = CACHE_DIR / f"base-{DEBIAN_SUITE}-{base_key()}.tar"
    if target.exists():
        return target
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise RuntimeError("making the Debian base needs root and debootstrap "
                           "(apt-get install debootstrap)")
    work = Path(tempfile.mkdtemp(prefix=".build-base-", dir=CACHE_DIR))
    try:
        rootfs = work / "rootfs"
        with phase(f"base: debootstrap {DEBIAN_SUITE} (minutes when cold)"):
            _run(["nice", "-n", "5", "debootstrap", "--variant=minbase",
                  f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR])
        # Later installs leave docs out too (DPKG_EXCLUDES); what debootstrap put there goes.
        _inside(rootfs, "etc/dpkg/dpkg.cfg.d/eventstore-excludes").write_text(DPKG_EXCLUDES)
        with chroot(rootfs) as run:
            run("find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete\n"
                "find /usr/share/doc -mindepth 1 -type d -empty -delete\n"
                "rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/*\n"
                "apt-get clean\n")
        with phase("base: tarball"):
            partial = work / "base.tar"
            _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cpf",
                  str(partial), "-C", str(rootfs), "."])
            partial.replace(target)
        for old in CACHE_DIR.glob(f"base-{DEBIAN_SUITE}-*.tar"):
            if old != target:
                old.unlink(missing_ok=True)
        return target
    finally:
        _remove_tree(work)


def unpack_base(rootfs: Path) -> None:
    rootfs.mkdir(mode=0o755)
    _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
          str(base_tarball()), "-C", str(rootfs)])


# --------------------------------------------------------------------------------------
# Steps shared by the Debian-based images
# --------------------------------------------------------------------------------------

CHROOT_ENV = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
              "DEBIAN_FRONTEND": "noninteractive"}
# Docs, manuals and translations are dead weight in an image (as in Debian's slim images).
DPKG_EXCLUDES = """\
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
"""


def _inside(rootfs: Path, rel: str) -> Path:
    """`rootfs/rel` for writing from the host, refusing any symlinked component: in a
    chroot `var/run` is an absolute link to /run, and following it from the host would
    change the host's /run. Such paths are handled by commands inside the chroot."""
    path = rootfs
    for part in Path(rel.lstrip("/")).parts:
        path = path / part
        if path.is_symlink():
            raise RuntimeError(f"{path} is a symlink; change it from inside the chroot")
    return path


@contextlib.contextmanager
def chroot(rootfs: Path) -> Iterator[Callable[[str], None]]:
    """Run shell scripts inside `rootfs` with /proc mounted, the host's DNS and services
    kept from starting (policy-rc.d); all three are undone on the way out."""
    proc = _inside(rootfs, "proc")
    resolv = _inside(rootfs, "etc/resolv.conf")
    policy = _inside(rootfs, "usr/sbin/policy-rc.d")
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    policy.write_text("#!/bin/sh\n# no service starts while an image is built\nexit 101\n")
    policy.chmod(0o755)
    mounted = False
    try:
        _run(["mount", "-t", "proc", "proc", str(proc)])
        mounted = True

        def run(script: str) -> None:
            _run(["chroot", str(rootfs), "/usr/bin/env", "-i",
                  *(f"{k}={v}" for k, v in CHROOT_ENV.items()), "/bin/sh", "-euc", script])

        yield run
    finally:
        if mounted and subprocess.run(["umount", str(proc)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(proc)], check=False)
        policy.unlink(missing_ok=True)
        resolv.write_text("")  # the runtime mounts its own


def _accounts_script(accounts: Iterable[Account]) -> str:
    return "".join(
        f"groupadd --system --gid {a.uid} {a.name}\n"
        f"useradd --system --uid {a.uid} --gid {a.uid} --no-create-home"
        f" --home-dir {a.home} --shell {a.shell} {a.name}\n" for a in accounts)


def _dirs_script(dirs: Iterable[OwnedDir]) -> str:
    # install -d does not change an existing directory's mode; chown/chmod make it exact.
    return "".join(
        f"install -d {d.path} && chown {d.uid}:{d.gid} {d.path} && chmod {d.mode:04o} {d.path}\n"
        for d in dirs)


def _finish(rootfs: Path, recipe: Recipe, run: Callable[[str], None]) -> None:
    """The steps every Debian-based recipe ends with: its directories, its files, and
    host-specific files (hostname, hosts) reset to neutral ones."""
    run(_dirs_script(recipe.dirs))
    for path, text in recipe.files:
        target = _inside(rootfs, path)
        target.write_text(text)
        target.chmod(0o755)
    _inside(rootfs, "etc/hostname").write_text("localhost\n")
    _inside(rootfs, "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")


def _debian_rootfs(ctx: BuildContext, recipe: Recipe, steps: str = "") -> None:
    """Base tarball, then the recipe's accounts, its own shell `steps`, dirs and files."""
    with phase(f"{recipe.key}: unpack base"):
        unpack_base(ctx.rootfs)
    with chroot(ctx.rootfs) as run:
        run(_accounts_script(recipe.accounts))
        if steps:
            with phase(f"{recipe.key}: steps in the chroot"):
                run(steps)
        _finish(ctx.rootfs, recipe, run)


# The `file_env` of the official images: VAR or the contents of VAR_FILE (never both).
FILE_ENV_SH = r"""
error() { echo "error: $*" >&2; exit 1; }
file_env() {
	var=$1; file_var="${1}_FILE"; default=${2:-}
	eval "value=\${$var:-}; file=\${$file_var:-}"
	if [ -n "$value" ] && [ -n "$file" ]; then
		error "both $var and $file_var are set (but are exclusive)"
	fi
	if [ -n "$file" ]; then
		value=$(cat "$file") || error "cannot read $file_var=$file"
	elif [ -z "$value" ]; then
		value=$default
	fi
	export "$var=$value"
	unset "$file_var"
}
"""


# --------------------------------------------------------------------------------------
# PostgreSQL: Debian's postgresql-15 behind the official `postgres` image's contract
# --------------------------------------------------------------------------------------

POSTGRES_MAJOR = "15"
POSTGRES_BIN = f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin"
POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# The official postgres image's entrypoint contract, for Debian's postgresql-15:
# POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default: the user; created
# unless it is "postgres"), POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default
# scram-sha-256), each also as *_FILE; initdb on an empty $PGDATA, then `exec "$@"`.
set -eu
""" + FILE_ENV_SH + r"""
case "${1:-}" in -*) set -- postgres "$@" ;; esac

if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
	# Started as root (not under the operator, which runs uid 999): fix ownership, step down.
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ]; then
	file_env POSTGRES_USER postgres
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	mkdir -p "$PGDATA"
	chmod 700 "$PGDATA" 2>/dev/null || :
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
			error "the database is uninitialized and POSTGRES_PASSWORD is not set" \
				"(or set POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one)"
		fi
		pwfile=$(umask 077 && mktemp)
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
		# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS holds several arguments
		initdb --username="$POSTGRES_USER" --pwfile="$pwfile" $POSTGRES_INITDB_ARGS
		rm -f "$pwfile"
		printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
		# A temporary server on the Unix socket only, for CREATE DATABASE and init scripts.
		pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
		run_psql() { psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" "$@"; }
		if [ "$POSTGRES_DB" != postgres ]; then
			run_psql --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
				CREATE DATABASE :"db" ;
			EOSQL
		fi
		for f in /docker-entrypoint-initdb.d/*; do
			case "$f" in
				*.sh) echo "$0: running $f"; . "$f" ;;
				*.sql) echo "$0: running $f"; run_psql --dbname "$POSTGRES_DB" -f "$f" ;;
				*.sql.gz) echo "$0: running $f"; gunzip -c "$f" | run_psql --dbname "$POSTGRES_DB" ;;
				*) [ -e "$f" ] && echo "$0: ignoring $f" ;;
			esac
		done
		pg_ctl -D "$PGDATA" -m fast -w stop
		echo "$0: PostgreSQL init process complete; ready for start up."
	fi
	unset POSTGRES_PASSWORD
fi

exec "$@"
"""


def _make_postgres_rootfs(ctx: BuildContext) -> None:
    sample = f"/usr/share/postgresql/{POSTGRES_MAJOR}/postgresql.conf.sample"
    _debian_rootfs(ctx, POSTGRES, f"""
# No cluster from the package: the entrypoint runs initdb on the mounted volume.
mkdir -p /etc/postgresql-common/createcluster.d
echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/eventstore.conf
apt-get -q update
apt-get -q install -y --no-install-recommends postgresql-{POSTGRES_MAJOR}
apt-get clean
rm -rf /var/lib/apt/lists/*
# Listen on every address, as the official image does (the Service reaches it by pod IP).
sed -ri "s!^#?(listen_addresses)\\s*=\\s*\\S+.*!\\1 = '*'!" {sample}
grep -qF "listen_addresses = '*'" {sample}
""")


POSTGRES = Recipe(
    key="postgres",
    ref=POSTGRES_IMAGE,
    config=ImageConfig(
        entrypoint=("/usr/local/bin/docker-entrypoint.sh",),
        cmd=("postgres",),
        # The server's own bin dir first: Debian's /usr/bin wrappers (pg_wrapper) need perl
        # and a cluster registry; the readiness probe's pg_isready must be the real one.
        env=(("PATH", f"{POSTGRES_BIN}:{DEFAULT_PATH}"), ("LANG", "C.UTF-8"),
             ("PG_MAJOR", POSTGRES_MAJOR), ("PGDATA", "/var/lib/postgresql/data")),
        exposed_ports=("5432/tcp",),
        stop_signal="SIGINT",  # fast shutdown; SIGTERM ("smart") waits for every client
    ),
    version="1",
    make_rootfs=lambda ctx: _make_postgres_rootfs(ctx),
    inputs=lambda: {"base": base_key(), "packages": f"postgresql-{POSTGRES_MAJOR}"},
    accounts=(Account("postgres", 999, "/var/lib/postgresql", "/bin/bash"),),
    dirs=(OwnedDir("/var/lib/postgresql", 999, 999, 0o755),
          OwnedDir("/var/lib/postgresql/data", 999, 999, 0o1777),
          OwnedDir("/var/run/postgresql", 999, 999, 0o3777),
          OwnedDir("/docker-entrypoint-initdb.d", 0, 0, 0o755)),
    files=(("/usr/local/bin/docker-entrypoint.sh", POSTGRES_ENTRYPOINT),),
)


# --------------------------------------------------------------------------------------
# MongoDB wire protocol: FerretDB on SQLite behind the official `mongo` image's contract
# --------------------------------------------------------------------------------------

MONGODB_ENTRYPOINT = r"""#!/bin/sh
# The official mongo image's root-user contract, for FerretDB 1.x on SQLite:
# MONGO_INITDB_ROOT_USERNAME / MONGO_INITDB_ROOT_PASSWORD (each also as *_FILE) make a user
# in the admin database on first start (FerretDB's setup user, with its new SCRAM-SHA-256
# authentication). Other settings are FerretDB's FERRETDB_* variables. Then `exec "$@"`.
set -eu
""" + FILE_ENV_SH + r"""
case "${1:-}" in -*) set -- ferretdb "$@" ;; esac

if [ "${1:-}" = ferretdb ] && [ "$(id -u)" = 0 ]; then
	mkdir -p /data/db /data/configdb
	chown mongodb:mongodb /data/db /data/configdb
	exec setpriv --reuid=mongodb --regid=mongodb --init-groups "$0" "$@"
fi

if [ "${1:-}" = ferretdb ]; then
	file_env MONGO_INITDB_ROOT_USERNAME
	file_env MONGO_INITDB_ROOT_PASSWORD
	if [ -n "$MONGO_INITDB_ROOT_USERNAME" ]; then
		[ -n "$MONGO_INITDB_ROOT_PASSWORD" ] ||
			error "MONGO_INITDB_ROOT_USERNAME is set but MONGO_INITDB_ROOT_PASSWORD is not"
		# FerretDB creates the user only while the admin database does not exist yet.
		export FERRETDB_TEST_ENABLE_NEW_AUTH=true FERRETDB_SETUP_DATABASE=admin \
			FERRETDB_SETUP_USERNAME="$MONGO_INITDB_ROOT_USERNAME" \
			FERRETDB_SETUP_PASSWORD="$MONGO_INITDB_ROOT_PASSWORD"
	elif [ -n "$MONGO_INITDB_ROOT_PASSWORD" ]; then
		error "MONGO_INITDB_ROOT_PASSWORD is set but MONGO_INITDB_ROOT_USERNAME is not"
	fi
	unset MONGO_INITDB_ROOT_PASSWORD
fi

exec "$@"
"""


def _ferretdb_binary() -> Path:
    from tests.harness.ferretdb import ensure_binary

    return ensure_binary()


def _make_mongodb_rootfs(ctx: BuildContext) -> None:
    _debian_rootfs(ctx, MONGODB)
    target = _inside(ctx.rootfs, "usr/local/bin/ferretdb")
    shutil.copyfile(_ferretdb_binary(), target)
    target.chmod(0o755)


MONGODB = Recipe(
    key="mongodb",
    ref=MONGODB_IMAGE,
    config=ImageConfig(
        entrypoint=("/usr/local/bin/docker-entrypoint.sh",),
        cmd=("ferretdb",),
        env=(("PATH", DEFAULT_PATH), ("LANG", "C.UTF-8"),
             ("FERRETDB_HANDLER", "sqlite"),
             ("FERRETDB_SQLITE_URL", "file:/data/db/"),  # the operator mounts the claim here
             ("FERRETDB_STATE_DIR", "/data/db"),         # state.json; the root fs is read-only
             ("FERRETDB_LISTEN_ADDR", ":27017"),
             ("FERRETDB_TELEMETRY", "disable"), ("DO_NOT_TRACK", "1")),
        exposed_ports=("27017/tcp",),
    ),
    version="1",
    make_rootfs=lambda ctx: _make_mongodb_rootfs(ctx),
    inputs=lambda: {"base": base_key(), "ferretdb": _sha256_file(_ferretdb_binary())},
    accounts=(Account("mongodb", 999, "/data/db", "/usr/sbin/nologin"),),
    dirs=(OwnedDir("/data", 0, 0, 0o755), OwnedDir("/data/db", 999, 999, 0o755),
          OwnedDir("/data/configdb", 999, 999, 0o755)),
    files=(("/usr/local/bin/docker-entrypoint.sh", MONGODB_ENTRYPOINT),),
)


# --------------------------------------------------------------------------------------
# The store: this checkout's wheel and its pinned dependencies in a venv (the Dockerfile's
# runtime contract, checked against the Dockerfile by tests/unit/test_image_recipes.py)
# --------------------------------------------------------------------------------------

STORE_VENV = "/opt/eventstore/venv"
# What the wheel is built from: the Dockerfile's COPY lines.
STORE_SOURCES = ("pyproject.toml", "README.md", "eventstore", "operator")
# The wheels must fit the image's interpreter (Debian bookworm: CPython 3.11, glibc 2.36).
# Every manylinux tag glibc 2.36 accepts, spelled out: older pips do not expand one.
WHEEL_PLATFORM = (
    *(arg for minor in range(36, 4, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")),
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64",
    "--platform", "manylinux1_x86_64",
    "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")


def store_source_digest() -> str:
    """Hash of the files the wheel is built from (names and bytes; caches and bytecode out)."""
    digest = hashlib.sha256()
    for top in STORE_SOURCES:
        root = REPO_ROOT / top
        paths = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
            and not any(part.endswith(".egg-info") for part in p.parts))
        for path in paths:
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
            digest.update(_sha256_file(path).encode())
    return digest.hexdigest()


def store_requirements() -> list[str]:
    """The pinned dependencies and the operator extra, as pyproject.toml declares them."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["operator"]]


def wheelhouse() -> Path:
    """Binary wheels of every dependency for the image's interpreter, downloaded once per
    set of requirements (pip on the host: the chroot then installs offline)."""
    requirements = store_requirements()
    key = _sha256_bytes(_canonical({"req": requirements, "platform": list(WHEEL_PLATFORM)}))[:16]
    target = CACHE_DIR / f"wheels-{key}"
    if target.is_dir():
        return target
    partial = Path(tempfile.mkdtemp(prefix=".wheels-", dir=CACHE_DIR))
    try:
        env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
        _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *WHEEL_PLATFORM,
              "--dest", str(partial), *requirements], env=env)
        partial.replace(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for old in CACHE_DIR.glob("wheels-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _make_store_rootfs(ctx: BuildContext) -> None:
    with phase("store: wheels"):
        deps = wheelhouse()
        src = ctx.work / "src"
        src.mkdir()
        for top in STORE_SOURCES:
            path = REPO_ROOT / top
            if path.is_dir():
                shutil.copytree(path, src / top, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc", "*.egg-info"))
            else:
                shutil.copy2(path, src / top)
        own = ctx.work / "own"
        env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(own),
              str(src)], env=env)
    entry_points = " ".join(f"/usr/local/bin/{name}" for name in ("eventstore", "eventstore-operator"))

    def copy_wheels() -> None:
        wheels = _inside(ctx.rootfs, "tmp/wheels")
        shutil.copytree(deps, wheels)
        for wheel in own.glob("*.whl"):
            shutil.copy2(wheel, wheels / wheel.name)

    with phase("store: unpack base"):
        unpack_base(ctx.rootfs)
    copy_wheels()
    with chroot(ctx.rootfs) as run:
        run(_accounts_script(STORE.accounts))
        with phase("store: venv and pip install (offline)"):
            run(f"""
python3 -m venv {STORE_VENV}
{STORE_VENV}/bin/pip install -q --no-index --find-links /tmp/wheels --no-cache-dir \\
    --disable-pip-version-check 'eventstore[operator]'
{STORE_VENV}/bin/pip uninstall -q -y setuptools
rm -rf /tmp/wheels /root/.cache
for script in {entry_points}; do ln -s {STORE_VENV}/bin/$(basename $script) $script; done
{STORE_VENV}/bin/eventstore --version
""")
        _finish(ctx.rootfs, STORE, run)


STORE_ACCOUNT = Account("eventstore", 10001, "/nonexistent", "/usr/sbin/nologin")
STORE = Recipe(
    key="store",
    ref=STORE_IMAGE,
    config=ImageConfig(
        entrypoint=("eventstore",),
        cmd=("serve",),
        user=f"{STORE_ACCOUNT.uid}:{STORE_ACCOUNT.uid}",
        env=(("PATH", f"{STORE_VENV}/bin:{DEFAULT_PATH}"), ("LANG", "C.UTF-8"),
             ("PIP_DISABLE_PIP_VERSION_CHECK", "1"), ("PIP_NO_CACHE_DIR", "1"),
             ("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1")),
        working_dir="/data",
        exposed_ports=("8080/tcp",),
        labels=(("org.opencontainers.image.title", "eventstore"),
                ("org.opencontainers.image.description", "Event store server and its Kubernetes operator"),
                ("org.opencontainers.image.source", "https://github.com/eventstore-py/eventstore"),
                ("org.opencontainers.image.licenses", "Apache-2.0")),
    ),
    version="1",
    make_rootfs=lambda ctx: _make_store_rootfs(ctx),
    inputs=lambda: {"base": base_key(), "source": store_source_digest(),
                    "requirements": _sha256_bytes(_canonical(store_requirements()))},
    accounts=(STORE_ACCOUNT,),
    dirs=(OwnedDir("/data", STORE_ACCOUNT.uid, STORE_ACCOUNT.uid, 0o750),),
)


# --------------------------------------------------------------------------------------
# Shared helpers: commands, chroots, the archive
# --------------------------------------------------------------------------------------

def _run(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         capture: bool = False, input_text: str | None = None) -> str:
    """Run a command; on failure raise with its output (builds are long, errors must be clear)."""
    result = subprocess.run(list(argv), cwd=cwd, env=env, text=True, input=input_text,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None, check=False)
    if result.returncode != 0:
        detail = f"\n{(result.stderr or '')[-4000:]}" if capture else ""
        raise RuntimeError(f"{' '.join(argv)!r} failed with exit {result.returncode}{detail}")
    return result.stdout or ""


def _layer_filter(rel: str, is_dir: bool) -> bool:
    """What stays out of an image: device nodes and pseudo-filesystem content (the runtime
    provides /dev, /proc, /sys), scratch space, and the files (not the directories) of
    apt's caches and lists and of logs."""
    if rel.startswith(("dev/", "proc/", "sys/", "tmp/", "var/tmp/", "root/.cache/")):
        return False
    return is_dir or not rel.startswith(("var/cache/apt/", "var/lib/apt/lists/", "var/log/"))


def _walk(root: Path) -> Iterator[Path]:
    """Every path below `root`, sorted, parents first; symlinked directories not entered."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        yield path
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path)


def write_layer(rootfs: Path, out: Path) -> tuple[str, int]:
    """Write `rootfs` as an uncompressed layer tar; return (sha256 hex, size).

    Entries are sorted, owners numeric (no names), modes, symlinks and hardlinks as on
    disk. Modification times are kept: Python's .pyc files are validated against them.
    """
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in _walk(rootfs):
            rel = path.relative_to(rootfs).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            if not _layer_filter(rel, info.isdir()):
                continue
            if info.ischr() or info.isblk() or info.isfifo():
                continue
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return _sha256_file(out), out.stat().st_size


def write_archive(rootfs: Path, recipe: Recipe, out: Path) -> str:
    """Write an OCI image layout tar of `rootfs` with the recipe's config; return the
    manifest digest (what containerd reports for the imported image)."""
    layer = out.with_name(out.name + ".layer")
    try:
        layer_hex, layer_size = write_layer(rootfs, layer)
        config = {
            "created": CREATED,
            "architecture": "amd64",
            "os": "linux",
            "config": recipe.config.to_oci(),
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]},
            "history": [{"created": CREATED,
                         "created_by": f"tests/harness/images.py recipe {recipe.key} v{recipe.version}"}],
        }
        config_blob = _canonical(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": f"sha256:{_sha256_bytes(config_blob)}",
                       "size": len(config_blob)},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": f"sha256:{layer_hex}",
                        "size": layer_size}],
        }
        manifest_blob = _canonical(manifest)
        manifest_digest = f"sha256:{_sha256_bytes(manifest_blob)}"
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {IMAGE_NAME_ANNOTATION: recipe.ref,
                                REF_NAME_ANNOTATION: recipe.ref.rsplit(":", 1)[1]},
            }],
        }
        with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", _canonical(index))
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            _add_bytes(tar, f"blobs/sha256/{_sha256_bytes(config_blob)}", config_blob)
            _add_bytes(tar, f"blobs/sha256/{manifest_digest.split(':')[1]}", manifest_blob)
            info = tarfile.TarInfo(f"blobs/sha256/{layer_hex}")
            info.size, info.mode = layer_size, 0o644
            with open(layer, "rb") as handle:
                tar.addfile(info, handle)
        return manifest_digest
    finally:
        layer.unlink(missing_ok=True)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def read_archive(path: Path) -> tuple[str, dict[str, Any]]:
    """(manifest digest, image config) of an archive written by `write_archive`."""
    with tarfile.open(path) as tar:
        index = json.loads(_member_bytes(tar, "index.json"))
        digest = index["manifests"][0]["digest"]
        manifest = json.loads(_member_bytes(tar, f"blobs/sha256/{digest.split(':')[1]}"))
        config_digest = manifest["config"]["digest"].split(":")[1]
        config = json.loads(_member_bytes(tar, f"blobs/sha256/{config_digest}"))
    return str(digest), dict(config)


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    if handle is None:
        raise RuntimeError(f"{name} is not a file in the archive")
    return handle.read()


def layer_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """The entries of an archive's single layer, streamed (for checks of ownership and modes)."""
    with tarfile.open(path) as outer:
        index = json.loads(_member_bytes(outer, "index.json"))
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.loads(_member_bytes(outer, f"blobs/sha256/{digest}"))
        layer_name = f"blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}"
        handle = outer.extractfile(layer_name)
        if handle is None:
            raise RuntimeError("the layer is missing")
        with tarfile.open(fileobj=handle, mode="r|") as layer:
            for member in layer:
                yield member, layer


# --------------------------------------------------------------------------------------
# Building and caching
# --------------------------------------------------------------------------------------

RECIPES: dict[str, Recipe] = {r.key: r for r in (PAUSE, STORE, POSTGRES, MONGODB)}


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder at a time (`make images` and a test session may race on a 2-core box)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def archive_for(name: str) -> Path:
    """The cached archive of image `name` (a key of RECIPES or an image ref), built if missing."""
    return build([name])[_recipe(name).key]


def _recipe(name: str) -> Recipe:
    for recipe in RECIPES.values():
        if name in (recipe.key, recipe.ref):
            return recipe
    raise KeyError(f"no image recipe {name!r}; known: {', '.join(RECIPES)}")


def build(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Build (or reuse) the archives of `names` (all by default); return key -> archive."""
    recipes = [_recipe(n) for n in names] if names is not None else list(RECIPES.values())
    out: dict[str, Path] = {}
    with _cache_lock():
        _remove_leftovers()
        for recipe in recipes:
            with phase(f"{recipe.key}: cache key"):
                target = recipe.archive_path()
            if target.exists():
                log(f"{recipe.key}: cached {target}")
            else:
                _build_one(recipe, target)
            out[recipe.key] = target
    return out


def _build_one(recipe: Recipe, target: Path) -> None:
    if recipe.needs_root and os.geteuid() != 0:
        raise RuntimeError(f"building the {recipe.key} image needs root (chroot, file ownership)")
    work = Path(tempfile.mkdtemp(prefix=f".build-{recipe.key}-", dir=CACHE_DIR))
    try:
        ctx = BuildContext(work=work, rootfs=work / "rootfs")
        with phase(f"{recipe.key}: root filesystem"):
            recipe.make_rootfs(ctx)
        partial = work / "image.oci.tar"
        with phase(f"{recipe.key}: archive"):
            digest = write_archive(ctx.rootfs, recipe, partial)
        partial.replace(target)
        for old in CACHE_DIR.glob(f"{recipe.key}-*.oci.tar"):
            if old != target:
                old.unlink(missing_ok=True)
        log(f"{recipe.key}: built {target} ({target.stat().st_size >> 20} MiB, {digest})")
    finally:
        _remove_tree(work)


def _remove_leftovers() -> None:
    """Scratch dirs of a build that was killed (we hold the lock: nobody else builds now),
    first unmounting a chroot's /proc it may have left behind."""
    for stale in [*CACHE_DIR.glob(".build-*"), *CACHE_DIR.glob(".wheels-*")]:
        for mount in reversed(_mounts_under(stale)):
            subprocess.run(["umount", "-l", mount], check=False)
        log(f"removing the leftovers of an interrupted build: {stale}")
        _remove_tree(stale)


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(f"{path}/")]


def _remove_tree(path: Path) -> None:
    """rm -rf that refuses to cross into mounts (a chroot's /proc must be unmounted first)."""
    if not path.exists():
        return
    inside = _mounts_under(path)
    if inside:
        raise RuntimeError(f"refusing to remove {path}: still mounted: {inside}")
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Importing into containerd
# --------------------------------------------------------------------------------------

def _ctr(address: Path, *args: str, capture: bool = True) -> str:
    return _run(["ctr", "-n", NAMESPACE, "--address", str(address), *args], capture=capture)


def imported(address: Path) -> dict[str, str]:
    """ref -> manifest digest of the images the containerd at `address` holds."""
    out = _ctr(address, "images", "ls")
    images: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            images[fields[0]] = fields[2]
    return images


def import_images(names: Iterable[str] | None = None, *, address: Path = NODE_SOCKET) -> None:
    """Import the archives of `names` (all by default), skipping those already present
    with the same digest."""
    archives = build(names)
    present = imported(address)
    for key, archive in archives.items():
        recipe = RECIPES[key]
        digest, _ = read_archive(archive)
        if present.get(recipe.ref) == digest:
            log(f"{key}: {recipe.ref} already imported ({digest[:19]})")
            continue
        with phase(f"{key}: import {recipe.ref}"):
            _ctr(address, "images", "import", str(archive))
        after = imported(address).get(recipe.ref)
        if after != digest:
            raise RuntimeError(f"after import, {recipe.ref} is {after}, expected {digest}")


def containerd_answers(address: Path) -> bool:
    """A containerd listens at `address` (a socket file alone may be a stale one)."""
    return address.is_socket() and subprocess.run(
        ["ctr", "--address", str(address), "version"], capture_output=True, check=False,
        timeout=30).returncode == 0


def ensure_imported(address: Path = NODE_SOCKET) -> None:
    """For the cluster harness: every image the node needs, built and imported."""
    import_images(None, address=address)


@contextlib.contextmanager
def private_containerd(root: Path, *, timeout: float = 30.0) -> Iterator[Path]:
    """A containerd of our own (its own root, state dir and socket; no CRI) to import and
    run images in tests without the node. `root` persists (images stay imported between
    sessions); one user at a time. Yields the socket; stopped by its PID on exit."""
    root.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = Path(tempfile.mkdtemp(prefix="eventstore-ctrd-"))
        socket = state / "containerd.sock"
        config = state / "config.toml"
        config.write_text(
            f'version = 2\nroot = "{root}"\nstate = "{state / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n'
            '[debug]\n  address = ""\n')
        log_path = state / "containerd.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log_file,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not containerd_answers(socket):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"containerd did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield socket
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _remove_tree(state)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def _names(only: str | None) -> list[str] | None:
    return [n.strip() for n in only.split(",") if n.strip()] if only else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("build", "build or reuse the cached archives"),
                            ("import", "build if needed, then import into the node's containerd"),
                            ("list", "the images: cached? imported in the node? archive path")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--only", help=f"comma-separated subset of: {', '.join(RECIPES)}")
        if name == "import":
            cmd.add_argument("--address", type=Path, default=NODE_SOCKET,
                             help=f"containerd socket (default {NODE_SOCKET})")
            cmd.add_argument("--skip-without-node", action="store_true",
                             help="only build when no containerd listens there (make images "
                                  "before make cluster-up)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    names = _names(args.only)
    if args.command == "build":
        for key, path in build(names).items():
            print(f"{RECIPES[key].ref}\t{path}")
    elif args.command == "import":
        if not containerd_answers(args.address):
            if not args.skip_without_node:
                parser.error(f"no containerd socket at {args.address}: start the node "
                             "(make cluster-up) or pass --address")
            build(names)
            log(f"no containerd at {args.address}: built only; `make images` again after "
                "`make cluster-up` imports them")
        else:
            import_images(names, address=args.address)
    else:
        present = imported(NODE_SOCKET) if containerd_answers(NODE_SOCKET) else None
        for key in names or list(RECIPES):
            recipe = _recipe(key)
            path = recipe.archive_path()
            state = "cached" if path.exists() else "missing"
            if present is None:
                node = "node down"
            elif path.exists() and present.get(recipe.ref) == read_archive(path)[0]:
                node = "imported"
            else:
                node = "not imported" if recipe.ref not in present else "older imported"
            print(f"{recipe.key}\t{recipe.ref}\t{state}\t{node}\t{path}")
    log(f"{args.command}: {time.monotonic() - start:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

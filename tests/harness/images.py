"""The container images the one-node cluster runs, built and imported without a registry.

There is no Docker and no registry here, so every image is a root filesystem made on the
host (a static Go binary, or a Debian bookworm `debootstrap` base changed inside a chroot)
and written as a single-layer OCI archive with `tarfile` and `json`, which
`ctr -n k8s.io images import` accepts.

Each archive is cached under ${XDG_CACHE_HOME:-~/.cache}/eventstore-ci/images-v1/, named by
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
STORE_IMAGE = "ghcr.io/eventstore-py/eventstore:0.1.0"
POSTGRES_IMAGE = "eventstore.local/postgres:15"
MONGODB_IMAGE = "eventstore.local/ferretdb:1.24.2"

CACHE_DIR = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "eventstore-ci" / "images-v1")
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
    extra: dict[str, str] = field(default_factory=dict)

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

RECIPES: dict[str, Recipe] = {r.key: r for r in (PAUSE,)}


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


def _remove_tree(path: Path) -> None:
    """rm -rf that refuses to cross into mounts (a chroot's /proc must be unmounted first)."""
    if not path.exists():
        return
    with open("/proc/self/mounts") as mounts:
        inside = [line.split()[1] for line in mounts
                  if line.split()[1].startswith(str(path) + "/")]
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


def ensure_imported(address: Path = NODE_SOCKET) -> None:
    """For the cluster harness: every image the node needs, built and imported."""
    import_images(None, address=address)


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
                            ("list", "the images, their cache state and archive paths")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--only", help=f"comma-separated subset of: {', '.join(RECIPES)}")
        if name == "import":
            cmd.add_argument("--address", type=Path, default=NODE_SOCKET,
                             help=f"containerd socket (default {NODE_SOCKET})")
    args = parser.parse_args(argv)
    start = time.monotonic()
    names = _names(args.only)
    if args.command == "build":
        for key, path in build(names).items():
            print(f"{RECIPES[key].ref}\t{path}")
    elif args.command == "import":
        import_images(names, address=args.address)
    else:
        for key in names or list(RECIPES):
            recipe = _recipe(key)
            path = recipe.archive_path()
            state = "cached" if path.exists() else "missing"
            print(f"{recipe.key}\t{recipe.ref}\t{state}\t{path}")
    log(f"{args.command}: {time.monotonic() - start:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

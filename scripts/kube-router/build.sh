#!/usr/bin/env bash
# Builds (or reuses) kube-router for the one-node cluster, which runs only its NetworkPolicy
# controller (--run-firewall, no routing, no service proxy; tests/harness/node.py): the
# plain CNI bridge plugin ignores NetworkPolicies, kube-router enforces them with iptables
# and ipsets, like on a real cluster.
#
# The wrapper module here requires kube-router and names its command as a `tool`, so that
# `go build` compiles it with go.sum pinning every dependency (as scripts/k8s/kube does).
# v2.1.0: the newest version the module proxy serves here.
#
# Result: ${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci/kube-router-<version>/kube-router,
# printed on the last line. Idempotent: exits at once when that binary is there and runs.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
MODULE="github.com/cloudnativelabs/kube-router/v2"
VERSION="$(awk -v m="$MODULE" '$1 == m {print $2} $1 == "require" && $2 == m {print $3}' "$here/go.mod" | head -n1)"
[[ -n "$VERSION" ]] || { echo "kube-router/build.sh: no $MODULE version in $here/go.mod" >&2; exit 1; }
OUT_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci/kube-router-$VERSION"
OUT="$OUT_DIR/kube-router"

log() { printf 'kube-router/build.sh: %s\n' "$*" >&2; }
usable() { [[ -x "$OUT" ]] && "$OUT" --version >/dev/null 2>&1; }

if usable; then log "using cached $OUT"; echo "$OUT"; exit 0; fi
command -v go >/dev/null 2>&1 || { log "the Go toolchain (>= 1.26) is required: go not on PATH"; exit 2; }
mkdir -p "$OUT_DIR"

# One build at a time (parallel sessions on a 2-core machine would compile twice).
exec 9>"$OUT_DIR/.build.lock"
flock 9
if usable; then log "using $OUT (built by a concurrent run)"; echo "$OUT"; exit 0; fi

start=$(date +%s)
log "building kube-router $VERSION ..."
tmp_out="$OUT_DIR/.kube-router.partial.$$"
trap 'rm -f "$tmp_out"' EXIT
(cd "$here" && GOTOOLCHAIN=local CGO_ENABLED=0 nice -n 10 go build -trimpath -mod=readonly \
    -ldflags "-s -w -X $MODULE/pkg/version.Version=$VERSION" -o "$tmp_out" "$MODULE/cmd/kube-router")
mv -f "$tmp_out" "$OUT"
log "built $OUT in $(( $(date +%s) - start ))s"
echo "$OUT"

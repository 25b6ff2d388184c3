#!/usr/bin/env bash
# Builds (or reuses) CoreDNS for the one-node cluster (tests/harness/node.py runs it on the
# host as the cluster DNS). The wrapper module here (main.go, go.mod) compiles only the
# plugins that cluster uses; see main.go for why.
#
# Result: ${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci/coredns-<version>/coredns, printed on
# the last line. Idempotent: exits at once when that binary is there and runs.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
VERSION="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$here/go.mod")"
[[ -n "$VERSION" ]] || { echo "coredns/build.sh: no coredns version in $here/go.mod" >&2; exit 1; }
OUT_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci/coredns-$VERSION"
OUT="$OUT_DIR/coredns"

log() { printf 'coredns/build.sh: %s\n' "$*" >&2; }
usable() { [[ -x "$OUT" ]] && "$OUT" -version >/dev/null 2>&1; }

if usable; then log "using cached $OUT"; echo "$OUT"; exit 0; fi
command -v go >/dev/null 2>&1 || { log "the Go toolchain (>= 1.26) is required: go not on PATH"; exit 2; }
mkdir -p "$OUT_DIR"

# One build at a time (parallel sessions on a 2-core machine would compile twice).
exec 9>"$OUT_DIR/.build.lock"
flock 9
if usable; then log "using $OUT (built by a concurrent run)"; echo "$OUT"; exit 0; fi

start=$(date +%s)
log "building CoreDNS $VERSION ..."
tmp_out="$OUT_DIR/.coredns.partial.$$"
trap 'rm -f "$tmp_out"' EXIT
(cd "$here" && GOTOOLCHAIN=local CGO_ENABLED=0 nice -n 10 go build -trimpath -mod=readonly \
    -ldflags "-s -w" -o "$tmp_out" .)
mv -f "$tmp_out" "$OUT"
log "built $OUT in $(( $(date +%s) - start ))s"
echo "$OUT"

#!/usr/bin/env bash
# Build (or reuse) versitygw, the S3-compatible server the backup tests write to.
#
# Result: ${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci/versitygw-<version>/versitygw
# Idempotent: exits at once when that binary is already there and runs.
#
# Why versitygw: a real S3 server in Go (github.com/versity/versitygw) with a POSIX
# backend, SigV4 authentication (so wrong credentials are refused as AWS refuses them),
# multipart uploads, checksums and conditional writes. It builds from the Go module proxy
# alone; moto's server accepts any credentials unless its IAM emulation is set up, and
# MinIO or SeaweedFS are far larger builds.
#
# Environment: VERSITYGW_VERSION (default v1.8.0).
set -euo pipefail

VERSION="${VERSITYGW_VERSION:-v1.8.0}"
MODULE="github.com/versity/versitygw"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci"
OUT_DIR="$CACHE_ROOT/versitygw-$VERSION"
OUT="$OUT_DIR/versitygw"

log() { printf 'versitygw/build.sh: %s\n' "$*" >&2; }

usable() { [[ -x "$OUT" ]] && "$OUT" --version >/dev/null 2>&1; }

if usable; then
    log "using cached $OUT"
    echo "$OUT"
    exit 0
fi

command -v go >/dev/null 2>&1 || { log "the Go toolchain is required (go not on PATH)"; exit 1; }
mkdir -p "$OUT_DIR"

# One build at a time (parallel sessions on a shared 2-core machine).
exec 9>"$OUT_DIR/.build.lock"
flock 9
if usable; then
    log "using $OUT (built by a concurrent run)"
    echo "$OUT"
    exit 0
fi

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED="${CGO_ENABLED:-0}"

start=$(date +%s)
BIN_TMP=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$BIN_TMP"' EXIT
log "building $MODULE/cmd/versitygw@$VERSION (nice -n 10; a cold build takes a few minutes)"
(cd / && GOBIN="$BIN_TMP" nice -n 10 go install -trimpath "$MODULE/cmd/versitygw@$VERSION")
"$BIN_TMP/versitygw" --version >/dev/null   # refuse to cache a binary that does not start
mv -f "$BIN_TMP/versitygw" "$OUT"           # same directory: a rename, never a half binary
log "built $OUT in $(( $(date +%s) - start ))s"
echo "$OUT"

#!/usr/bin/env bash
# Build (or reuse) the FerretDB binary the tests use as their MongoDB wire-protocol server.
#
# Result: ${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci/ferretdb-<version>/ferretdb
# Idempotent: exits at once when that binary is already there and runs.
#
# Why not `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: FerretDB's
# build/version package embeds build/version/*.txt and panics at startup unless
# version.txt holds "v<major>.<minor>.<patch>" (it is generated from `git describe` in
# FerretDB's own tree, and the module zip does not carry it). So we download the module
# source, copy it somewhere writable, write version.txt ourselves and build there.
#
# Environment: FERRETDB_VERSION (default v1.24.2), FERRETDB_BUILD_TAGS (default none;
# the SQLite backend the tests use is compiled in by default).
set -euo pipefail

VERSION="${FERRETDB_VERSION:-v1.24.2}"
MODULE="github.com/FerretDB/FerretDB"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci"
OUT_DIR="$CACHE_ROOT/ferretdb-$VERSION"
OUT="$OUT_DIR/ferretdb"

log() { printf 'ferretdb/build.sh: %s\n' "$*" >&2; }

usable() { [[ -x "$OUT" ]] && "$OUT" --version >/dev/null 2>&1; }

if usable; then
    log "using cached $OUT"
    echo "$OUT"
    exit 0
fi

command -v go >/dev/null 2>&1 || { log "the Go toolchain is required (go not on PATH)"; exit 1; }
mkdir -p "$OUT_DIR"

# One build at a time: parallel test sessions or `make -j` would otherwise compile twice
# on a shared 2-core machine. The second waiter finds the binary and exits.
exec 9>"$OUT_DIR/.build.lock"
flock 9
if usable; then
    log "using $OUT (built by a concurrent run)"
    echo "$OUT"
    exit 0
fi

# The module's go.mod asks for toolchain go1.24.x; any newer local Go builds it, so do
# not let Go try to download a toolchain.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED="${CGO_ENABLED:-0}"   # FerretDB's SQLite is modernc.org/sqlite (pure Go)

start=$(date +%s)
log "downloading $MODULE@$VERSION"
SRC=$(cd / && go mod download -json "$MODULE@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -n "$SRC" && -d "$SRC" ]] || { log "go mod download did not report a source dir"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferretdb-build.XXXXXX")
TMP_OUT="$OUT_DIR/.ferretdb.partial.$$"
trap 'rm -rf "$WORK" "$TMP_OUT"' EXIT
cp -r "$SRC" "$WORK/src"
chmod -R u+w "$WORK/src"          # the module cache is read-only
printf '%s\n' "$VERSION" >"$WORK/src/build/version/version.txt"
printf '%s\n' "eventstore-ci" >"$WORK/src/build/version/package.txt"

log "building ./cmd/ferretdb (nice -n 10; a cold build takes several minutes)"
(
    cd "$WORK/src"
    nice -n 10 go build -trimpath ${FERRETDB_BUILD_TAGS:+-tags "$FERRETDB_BUILD_TAGS"} \
        -o "$TMP_OUT" ./cmd/ferretdb
)
"$TMP_OUT" --version >/dev/null   # refuse to cache a binary that panics at start
mv -f "$TMP_OUT" "$OUT"           # same directory: a rename, so OUT only ever appears complete
log "built $OUT in $(( $(date +%s) - start ))s"
echo "$OUT"

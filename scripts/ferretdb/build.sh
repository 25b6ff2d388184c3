#!/usr/bin/env bash
# Build (or reuse) the FerretDB binary the tests use as their MongoDB wire-protocol server.
#
# Result: $CACHE_ROOT/ferretdb-<version>/ferretdb (scripts/lib/go-build.sh: the cache root
# and the steps every Go build here shares). Idempotent: exits at once when that binary is
# already there and runs.
#
# Why not `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: FerretDB's
# build/version package embeds build/version/*.txt and panics at startup unless
# version.txt holds "v<major>.<minor>.<patch>" (it is generated from `git describe` in
# FerretDB's own tree, and the module zip does not carry it). So we download the module
# source, copy it somewhere writable, write version.txt ourselves and build there.
#
# Environment: FERRETDB_VERSION (default v1.24.2), FERRETDB_BUILD_TAGS (default none;
# the SQLite backend the tests use is compiled in by default), EVENTSTORE_CI_CACHE.
set -euo pipefail

VERSION="${FERRETDB_VERSION:-v1.24.2}"
MODULE="github.com/FerretDB/FerretDB"
# shellcheck source=../lib/go-build.sh
source "$(dirname "$0")/../lib/go-build.sh"

# The module's go.mod asks for toolchain go1.24.x; the local Go builds it (GOTOOLCHAIN=local).
# FerretDB's SQLite is modernc.org/sqlite (pure Go), so CGO_ENABLED=0 suits it.
go_build_begin ferretdb --version

go_build_log "downloading $MODULE@$VERSION"
SRC=$(cd / && go mod download -json "$MODULE@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -n "$SRC" && -d "$SRC" ]] || { go_build_log "go mod download did not report a source dir"; exit 1; }
cp -r "$SRC" "$TMP_DIR/src"
chmod -R u+w "$TMP_DIR/src"          # the module cache is read-only
printf '%s\n' "$VERSION" >"$TMP_DIR/src/build/version/version.txt"
printf '%s\n' "eventstore-ci" >"$TMP_DIR/src/build/version/package.txt"

(cd "$TMP_DIR/src" && nice -n 10 go build -trimpath ${FERRETDB_BUILD_TAGS:+-tags "$FERRETDB_BUILD_TAGS"} \
    -o "$TMP_OUT" ./cmd/ferretdb)
go_build_finish   # refuses to cache a binary that panics at start

#!/usr/bin/env bash
# Builds (or reuses) CoreDNS for the one-node cluster (tests/harness/node.py runs it on the
# host as the cluster DNS). The wrapper module here (main.go, go.mod) compiles only the
# plugins that cluster uses; see main.go for why.
#
# Result: $CACHE_ROOT/coredns-<version>/coredns, printed on the last line
# (scripts/lib/go-build.sh: the cache root and the steps every Go build here shares).
# Idempotent: exits at once when that binary is there and runs.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
VERSION="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$here/go.mod")"
[[ -n "$VERSION" ]] || { echo "coredns/build.sh: no coredns version in $here/go.mod" >&2; exit 1; }
# shellcheck source=../lib/go-build.sh
source "$here/../lib/go-build.sh"

go_build_begin coredns -version
(cd "$here" && nice -n 10 go build -trimpath -mod=readonly -ldflags "-s -w" -o "$TMP_OUT" .)
go_build_finish

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
# Result: $CACHE_ROOT/kube-router-<version>/kube-router, printed on the last line
# (scripts/lib/go-build.sh: the cache root and the steps every Go build here shares).
# Idempotent: exits at once when that binary is there and runs.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
MODULE="github.com/cloudnativelabs/kube-router/v2"
VERSION="$(awk -v m="$MODULE" '$1 == m {print $2} $1 == "require" && $2 == m {print $3}' "$here/go.mod" | head -n1)"
[[ -n "$VERSION" ]] || { echo "kube-router/build.sh: no $MODULE version in $here/go.mod" >&2; exit 1; }
# shellcheck source=../lib/go-build.sh
source "$here/../lib/go-build.sh"

go_build_begin kube-router --version
(cd "$here" && nice -n 10 go build -trimpath -mod=readonly \
    -ldflags "-s -w -X $MODULE/pkg/version.Version=$VERSION" -o "$TMP_OUT" "$MODULE/cmd/kube-router")
go_build_finish

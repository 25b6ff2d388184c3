#!/usr/bin/env bash
# Build (or reuse) versitygw, the S3-compatible server the backup tests write to.
#
# Result: $CACHE_ROOT/versitygw-<version>/versitygw (scripts/lib/go-build.sh: the cache root
# and the steps every Go build here shares). Idempotent: exits at once when that binary is
# already there and runs.
#
# Why versitygw: a real S3 server in Go (github.com/versity/versitygw) with a POSIX
# backend, SigV4 authentication (so wrong credentials are refused as AWS refuses them),
# multipart uploads, checksums and conditional writes. It builds from the Go module proxy
# alone; moto's server accepts any credentials unless its IAM emulation is set up, and
# MinIO or SeaweedFS are far larger builds.
#
# Environment: VERSITYGW_VERSION (default v1.8.0), EVENTSTORE_CI_CACHE.
set -euo pipefail

VERSION="${VERSITYGW_VERSION:-v1.8.0}"
MODULE="github.com/versity/versitygw"
# shellcheck source=../lib/go-build.sh
source "$(dirname "$0")/../lib/go-build.sh"

go_build_begin versitygw --version
(cd / && GOBIN="$TMP_DIR" nice -n 10 go install -trimpath "$MODULE/cmd/versitygw@$VERSION")
go_build_finish

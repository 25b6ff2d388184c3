# Sourced by scripts/{ferretdb,versitygw,coredns,kube-router}/build.sh: the part of building a
# Go program into the CI cache that is the same for each of them.
#
# The cache root is $EVENTSTORE_CI_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci
# (the same folder as before this file existed, so CI's warm caches stay valid). Setting
# EVENTSTORE_CI_CACHE alone moves only our cache: Go's own build cache, which derives from
# XDG_CACHE_HOME, stays where it is.
#
# A caller sets VERSION, sources this file, then:
#
#   go_build_begin NAME VERSION_FLAG   # cached and running: print it, exit 0. Otherwise
#                                      # check Go, take the lock, check again, export the
#                                      # Go environment and set TMP_OUT, a partial path
#                                      # removed on exit (or TMP_DIR, a scratch directory).
#   ... build into "$TMP_OUT" ...
#   go_build_finish                    # the partial binary must run; rename it to OUT, print OUT.
#
# Result on the last stdout line: $CACHE_ROOT/NAME-VERSION/NAME. Logs go to stderr.

# The cache root every build script and the test harness share (tests/harness/process.py
# reads the same variables).
CACHE_ROOT="${EVENTSTORE_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eventstore-ci}"

go_build_log() { printf '%s/build.sh: %s\n' "$GO_BUILD_NAME" "$*" >&2; }

# True when the cached binary exists and starts (a binary that panics at start is no cache).
go_build_usable() { [[ -x "$OUT" ]] && "$OUT" "$GO_BUILD_VERSION_FLAG" >/dev/null 2>&1; }

go_build_begin() {
  GO_BUILD_NAME="$1"
  GO_BUILD_VERSION_FLAG="$2"
  [[ -n "${VERSION:-}" ]] || { go_build_log "no version to build (VERSION is empty)"; exit 1; }
  OUT_DIR="$CACHE_ROOT/$GO_BUILD_NAME-$VERSION"
  OUT="$OUT_DIR/$GO_BUILD_NAME"

  if go_build_usable; then go_build_log "using cached $OUT"; echo "$OUT"; exit 0; fi
  command -v go >/dev/null 2>&1 || {
    go_build_log "the Go toolchain (>= 1.26) is required: go not on PATH"; exit 2; }
  mkdir -p "$OUT_DIR"

  # One build at a time: parallel test sessions or `make -j` would otherwise compile twice
  # on a shared 2-core machine. The second waiter finds the binary and exits.
  exec 9>"$OUT_DIR/.build.lock"
  flock 9
  if go_build_usable; then go_build_log "using $OUT (built by a concurrent run)"; echo "$OUT"; exit 0; fi

  # Never let Go download a toolchain (a module asking for an older go1.x builds with the
  # local one); no VCS stamping (module sources have no .git); pure Go binaries.
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
  export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
  export CGO_ENABLED="${CGO_ENABLED:-0}"

  GO_BUILD_START=$(date +%s)
  # In OUT_DIR, so the final move is a rename: OUT only ever appears complete.
  TMP_DIR=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
  TMP_OUT="$TMP_DIR/$GO_BUILD_NAME"
  trap 'rm -rf "$TMP_DIR"' EXIT
  go_build_log "building $GO_BUILD_NAME $VERSION (nice -n 10; a cold build takes minutes)"
}

go_build_finish() {
  local said
  said=$("$TMP_OUT" "$GO_BUILD_VERSION_FLAG" 2>&1) || {
    go_build_log "the new binary does not start, so it is not cached; $GO_BUILD_NAME $GO_BUILD_VERSION_FLAG said:"
    printf '%s\n' "$said" | tail -n 20 >&2
    exit 1; }
  mv -f "$TMP_OUT" "$OUT"
  go_build_log "built $OUT in $(( $(date +%s) - GO_BUILD_START ))s"
  echo "$OUT"
}

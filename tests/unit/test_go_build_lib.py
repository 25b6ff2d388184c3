"""scripts/lib/go-build.sh, the steps the Go build scripts share, driven by a fake build (a
shell script stands in for the Go binary, so no compiler runs): where the result lands,
the cached no-op, the refusal to cache a binary that does not start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "scripts" / "lib" / "go-build.sh"

# A caller shaped like scripts/versitygw/build.sh; the "build" writes a script that answers
# --version with $FAKE_EXIT.
CALLER = f"""set -euo pipefail
VERSION=v1.2.3
source {LIB}
go_build_begin fake --version
printf '#!/bin/sh\\necho fake v1.2.3; exit %s\\n' "$FAKE_EXIT" >"$TMP_OUT"
chmod +x "$TMP_OUT"
echo built >>"$BUILD_COUNT"
go_build_finish
"""


def _run(tmp_path: Path, *, fake_exit: int = 0, path: str | None = None,
         **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "build.sh"
    script.write_text(CALLER)
    base = {k: v for k, v in os.environ.items()
            if k not in ("EVENTSTORE_CI_CACHE", "XDG_CACHE_HOME")}
    if path is None:   # a `go` that is never run: the library only checks that there is one
        fake_go = tmp_path / "fake-go" / "go"
        fake_go.parent.mkdir(exist_ok=True)
        fake_go.write_text("#!/bin/sh\nexit 99\n")
        fake_go.chmod(0o755)
        path = f"{fake_go.parent}{os.pathsep}{base['PATH']}"
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False,
                          env={**base, "PATH": path, "FAKE_EXIT": str(fake_exit),
                               "BUILD_COUNT": str(tmp_path / "count"), **env})


def test_builds_into_the_cache_root_then_reuses_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _run(tmp_path, EVENTSTORE_CI_CACHE=str(cache))
    assert first.returncode == 0, first.stderr
    out = cache / "fake-v1.2.3" / "fake"
    assert first.stdout.splitlines()[-1] == str(out)
    assert os.access(out, os.X_OK)
    assert "fake/build.sh: built" in first.stderr
    second = _run(tmp_path, EVENTSTORE_CI_CACHE=str(cache))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == str(out)
    assert "using cached" in second.stderr
    assert (tmp_path / "count").read_text().count("built") == 1
    # The scratch dir is gone; only the lock and the binary stay.
    assert sorted(p.name for p in (cache / "fake-v1.2.3").iterdir()) == [".build.lock", "fake"]


def test_the_default_cache_root_is_under_xdg_cache_home(tmp_path: Path) -> None:
    # The folder CI's warm caches live in: it must not move.
    result = _run(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(tmp_path / "xdg" / "eventstore-ci" / "fake-v1.2.3" / "fake")


def test_a_binary_that_does_not_start_is_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = _run(tmp_path, fake_exit=3, EVENTSTORE_CI_CACHE=str(cache))
    assert result.returncode == 1
    assert "does not start, so it is not cached" in result.stderr
    assert "fake v1.2.3" in result.stderr        # what the binary said
    assert not (cache / "fake-v1.2.3" / "fake").exists()
    assert [p.name for p in (cache / "fake-v1.2.3").iterdir()] == [".build.lock"]


@pytest.mark.skipif(not Path("/usr/bin/bash").exists(), reason="needs /usr/bin/bash for a PATH without go")
def test_without_go_it_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"      # the tools the library uses, and no `go`
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "flock", "mktemp", "date", "rm", "mv", "tail"):
        os.symlink(f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else f"/bin/{tool}",
                   bin_dir / tool)
    result = _run(tmp_path, path=str(bin_dir), EVENTSTORE_CI_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 2
    assert "the Go toolchain (>= 1.26) is required: go not on PATH" in result.stderr

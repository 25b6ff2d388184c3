"""Fixtures of the kind suite: a kind cluster and the project image loaded into it.

The suite needs a working Docker engine (`docker info` succeeds), `kind`, `kubectl` and
`helm`. Where any is missing every test here is skipped with a reason that names exactly
what is missing (EVENTSTORE_REQUIRE_KIND=1 turns that into a failure, for CI machines that
have Docker). Knobs:
- EVENTSTORE_KIND_CLUSTER=NAME reuses an existing kind cluster (and never deletes it);
- EVENTSTORE_KIND_NODE_IMAGE=kindest/node:v1.35.x picks the node image;
- EVENTSTORE_KIND_KEEP=1 keeps the cluster the suite created (for debugging).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from eventstore_operator import names
from tests.e2e_kind.cluster import REPO, REQUIRE_ENV, KindCluster, missing_requirements, required, run
from tests.e2e_shared.scenarios import attach_diagnostics

_HERE = Path(__file__).resolve().parent
#: The image the suite builds; pods use it with imagePullPolicy Never (it is only on the nodes).
IMAGE_REPOSITORY = "localhost/eventstore"
IMAGE_TAG = "e2e"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"

_missing: list[str] | None = None


def _what_is_missing() -> list[str]:
    global _missing
    if _missing is None:
        _missing = missing_requirements()
    return _missing


def skip_reason(missing: list[str]) -> str:
    return "kind suite skipped: this machine lacks " + "; ".join(missing)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if _HERE in Path(str(item.path)).resolve().parents]
    for item in ours:
        item.add_marker(pytest.mark.kind)
    if ours and _what_is_missing() and not required():
        marker = pytest.mark.skip(reason=skip_reason(_what_is_missing()))
        for item in ours:
            item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if _HERE in Path(str(item.path)).resolve().parents:
        attach_diagnostics(item, report)
    return report


@pytest.fixture(scope="session")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    missing = _what_is_missing()
    if missing:
        if required():
            pytest.fail(f"{REQUIRE_ENV} is set but {skip_reason(missing)}")
        pytest.skip(skip_reason(missing))
    reuse = os.environ.get("EVENTSTORE_KIND_CLUSTER")
    cluster = KindCluster(reuse or f"eventstore-e2e-{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("kind"),
                          reuse=bool(reuse), node_image=os.environ.get("EVENTSTORE_KIND_NODE_IMAGE"))
    try:
        cluster.create()
        yield cluster
    finally:
        if os.environ.get("EVENTSTORE_KIND_KEEP", "").lower() not in {"1", "true", "yes"}:
            cluster.delete()


@pytest.fixture(scope="session")
def store_image(kind_cluster: KindCluster) -> str:
    """`docker build` of the repository's Dockerfile, loaded into the kind nodes; the
    database images are pulled once and loaded too, so the nodes need not pull them."""
    run([kind_cluster.docker, "build", "-t", IMAGE, str(REPO)], timeout=1800)
    kind_cluster.load_image(IMAGE)
    for image in (names.DEFAULT_POSTGRES_IMAGE, names.DEFAULT_MONGODB_IMAGE):
        try:
            run([kind_cluster.docker, "pull", "-q", image], timeout=900)
            kind_cluster.load_image(image)
        except subprocess.CalledProcessError as exc:
            # Not fatal: the nodes pull it themselves (and the wait reports it if they cannot).
            print(f"could not preload {image}: {exc.stderr}")
    return IMAGE

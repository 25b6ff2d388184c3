"""Fixtures for tests against the local control plane (tests/harness/controlplane.py).

`control_plane` (session): a started ControlPlane, always stopped at the end of the session.
Skipped with the reason when the binaries cannot be built here (no Go toolchain, build
failure); with EVENTSTORE_REQUIRE_K8S=1 (CI) that is a failure instead. A control plane
that is built but fails to start is always an error.

`namespace` (function): a fresh namespace name whose `default` ServiceAccount exists (so
Pods can be admitted), deleted after the test without waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.controlplane import BinariesUnavailable, ControlPlane, ensure_binaries
from tests.harness.fixtures import required
from tests.harness.kubeaccess import wait_until

_HERE = Path(__file__).resolve().parent


def _required() -> bool:
    return required("EVENTSTORE_REQUIRE_K8S")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hooks in a sub-directory conftest see the whole session's items: mark only ours.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    """The helm binary alone (lint and template need no cluster). Skips with the reason
    where it cannot be built, and fails instead when EVENTSTORE_REQUIRE_K8S is set."""
    try:
        return ensure_binaries() / "helm"
    except BinariesUnavailable as exc:
        if _required():
            pytest.fail(f"EVENTSTORE_REQUIRE_K8S is set but helm is unavailable: {exc}")
        pytest.skip(f"no helm binary: {exc}")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager for the whole test session."""
    try:
        bin_dir = ensure_binaries()
    except BinariesUnavailable as exc:
        if _required():
            pytest.fail(f"EVENTSTORE_REQUIRE_K8S is set but the control plane is unavailable: {exc}")
        pytest.skip(f"no local Kubernetes control plane: {exc}")
    cp = ControlPlane(bin_dir=bin_dir)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A new, empty namespace for one test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl_run("create", "namespace", name)
    wait_until(
        lambda: (
            control_plane.kubectl_run("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        timeout=30,
        interval=0.2,
        message=f"ServiceAccount default in namespace {name}",
    )
    try:
        yield name
    finally:
        control_plane.kubectl_run(
            "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
        )

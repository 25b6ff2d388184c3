"""Fixtures for the suite on the one-node cluster with a real kubelet (tests/harness/node.py).

`node_session` (session): the cluster for the whole session, as a `NodeSession`. When the
cluster was already up as the session began (`make cluster-up`), it is adopted and left
running. Otherwise the session brings it up, after capturing the host's state, and
`test_down_restores_host` (test_cluster_lifecycle.py; moved to the end of the session by the
hook below) tears it down and checks the host against that capture. If that test did not run
(deselected, -x), the finalizer still tears down what the session started.

`node` (session): `node_session.node`, the `Node` to use (kubectl_run, kubectl_json,
helm_run, env, diagnostics, containerd_address; see the harness docstring).

Requirements: root, the binaries of scripts/k8s/build.sh and scripts/coredns/build.sh (built
on first use when Go is there; prebuild with `make k8s-build coredns-build`, a cold build
exceeds the per-test timeout), Debian's containerd, runc, containernetworking-plugins and
iptables. Missing any, the tests skip with the reason; with EVENTSTORE_REQUIRE_NODE=1 (CI)
they fail instead. A cluster that cannot start on a capable machine is always an error.

Every test here gets the `node` marker; `node_teardown` marks the test that must run last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e_shared.access import Timings
from tests.e2e_shared.scenarios import attach_diagnostics
from tests.harness.fixtures import required as require_env_set
from tests.harness.node import HostState, Node, NodeError, NodeUnavailable

_HERE = Path(__file__).resolve().parent


def required() -> bool:
    return require_env_set("EVENTSTORE_REQUIRE_NODE")


def unavailable(reason: str) -> None:
    """Skip (or, with EVENTSTORE_REQUIRE_NODE set, fail) because this machine cannot run the node."""
    if required():
        pytest.fail(f"EVENTSTORE_REQUIRE_NODE is set but the one-node cluster cannot run: {reason}")
    pytest.skip(f"no one-node cluster here: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node: needs the one-node cluster with a real kubelet (root)")
    config.addinivalue_line("markers", "node_teardown: tears the one-node cluster down; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hooks in a sub-directory conftest see the whole session's items: mark only ours, and
    # move the teardown test after every other test of the session (it stops the cluster).
    ours = [item for item in items if _HERE in Path(str(item.path)).resolve().parents]
    for item in ours:
        item.add_marker(pytest.mark.node)
    last = [item for item in ours if item.get_closest_marker("node_teardown")]
    for item in last:
        items.remove(item)
    items.extend(last)


@dataclass
class NodeSession:
    node: Node
    started_here: bool            # False: adopted a cluster that was up before the session
    before: HostState | None      # the host captured before this session's `up`, if any
    torn_down: bool = False
    up_seconds: float = 0.0       # how long `start()` took (bringing up, or adopting)


@pytest.fixture(scope="session")
def node_session() -> Iterator[NodeSession]:
    if os.geteuid() != 0:
        unavailable("it needs root (bridge, iptables, mounts, cgroups)")
    node = Node()
    adopted = node.is_up()
    # The node records the host at its first `up`; capture it here too when this session is
    # that first `up`, so the teardown test compares against an independent record.
    before = None if adopted or node.host_state_file.exists() else HostState.capture()
    started = time.monotonic()
    try:
        node.start()
    except NodeUnavailable as exc:
        unavailable(str(exc))
    except NodeError:
        if not adopted:
            node.down()
        raise
    session = NodeSession(node, started_here=not adopted, before=before,
                          up_seconds=round(time.monotonic() - started, 1))
    try:
        yield session
    finally:
        if session.started_here and not session.torn_down:
            node.down()


@pytest.fixture(scope="session")
def node(node_session: NodeSession) -> Node:
    return node_session.node


# -- phase timings and failure diagnostics (the EventStore scenarios, test_eventstore.py) --

TIMINGS_KEY = pytest.StashKey[Timings]()


@pytest.fixture(scope="session")
def timings(request: pytest.FixtureRequest) -> Timings:
    """Seconds per phase (cluster up, images, helm install, pods Ready, each scenario),
    printed at the end of the session."""
    return request.config.stash.setdefault(TIMINGS_KEY, Timings())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    recorded = config.stash.get(TIMINGS_KEY, None)
    if recorded is not None and recorded.phases:
        terminalreporter.write_sep("-", "e2e_node phase timings")
        for line in recorded.lines():
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that uses the EventStore `deployment` gets the cluster diagnostics in
    its report (pods, events, describe and logs of what is not Ready, the operator's log)."""
    report: pytest.TestReport = yield
    if _HERE in Path(str(item.path)).resolve().parents:
        attach_diagnostics(item, report)
    return report

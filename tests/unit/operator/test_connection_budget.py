"""The operator's PostgreSQL is sized from the store pods' connection budget
(eventstore/store/budget.py), the one place that budget is set."""

from __future__ import annotations

from eventstore.store.budget import (
    DEDICATED_CONNECTIONS,
    POD_CONNECTIONS,
    pod_connections,
    pool_size_for,
)
from eventstore_operator import builders
from tests.unit.operator.test_operator_builders import OWNER, container, example_spec

#: PostgreSQL's superuser_reserved_connections plus the operator, a migrate job, a backup.
RESERVE = 10


def test_the_budget_with_defaults_is_below_the_47_connections_of_before() -> None:
    assert POD_CONNECTIONS == 12 + 2 + DEDICATED_CONNECTIONS == 17


def test_the_pool_never_has_fewer_connections_than_workers_plus_two() -> None:
    """A shared projection worker holds one for its batch and the snapshotter takes a
    second inside it: with fewer, the workers could starve each other."""
    assert pool_size_for(12, 5) == 12
    assert pool_size_for(4, 8) == 10
    assert pod_connections(pool_size=4, append_pool_size=2, workers=8) == 10 + 2 + 3


def test_the_operators_postgres_admits_three_pods_and_more() -> None:
    sts = builders.postgres_statefulset(OWNER, example_spec())
    args = container(sts)["args"]
    assert f"max_connections={builders.POSTGRES_MAX_CONNECTIONS}" in args
    assert builders.POSTGRES_MAX_CONNECTIONS >= 3 * POD_CONNECTIONS + RESERVE

"""The PostgreSQL connection budget of one store pod: the one place it is set and explained.

A pod talks to the event database through one PostgresDatastore (postgres_datastore.py),
so its connections are the sum of a few named sources, all bounded:

- the pool: `pool_size` connections (EVENTSTORE_DB_POOL_SIZE, default 12; at least
  `workers` + 2). HTTP reads, the library's synchronous appends, projection batches
  (shared ones, and the reads of local ones), the snapshotter's loads, checkpoints and
  retention all share it.
- the async append pool: `append_pool_size` (EVENTSTORE_DB_APPEND_POOL_SIZE, default 2),
  the server's event-loop appends, grouped into at most two batches in flight.
- dedicated: 3, LISTEN (wake-ups), the coalesced NOTIFY, the projection runner's
  advisory locks.

With the defaults that is 12 + 2 + 3 = 17 (it was about 47 when projections, local
projections and retention each opened their own pools and connections). The pool is at
least `workers` + 2 because a shared projection worker holds one connection for its batch
and the snapshotter, inside that batch, takes a second one to load an aggregate: with fewer
the workers could hold every connection while each waits for another.

PostgreSQL's `max_connections` must cover every pod's budget plus its own reserved
connections (superuser_reserved_connections, 3 by default) and any other clients (the
operator, `eventstore migrate`, backups): replicas x `pod_connections(...)` + about 10. The
operator's PostgreSQL (builders.POSTGRES_MAX_CONNECTIONS) is sized from this function.
"""

from __future__ import annotations

#: EVENTSTORE_DB_POOL_SIZE's default: the shared synchronous pool.
DEFAULT_POOL_SIZE = 12
#: EVENTSTORE_DB_APPEND_POOL_SIZE's default: the server's async append pool. Its group
#: commit writes at most two batches at once (postgres_async.MAX_IN_FLIGHT), so more
#: connections would sit idle.
DEFAULT_APPEND_POOL_SIZE = 2
#: Connections outside the pools: LISTEN, NOTIFY, the projection runner's locks.
DEDICATED_CONNECTIONS = 3
#: The seed's projection `workers` (projections.yaml).
DEFAULT_WORKERS = 5


def pool_size_for(pool_size: int, workers: int) -> int:
    """The synchronous pool's size: as configured, but never below `workers` + 2 (see the
    module doc)."""
    return max(pool_size, workers + 2)


def pod_connections(pool_size: int = DEFAULT_POOL_SIZE,
                    append_pool_size: int = DEFAULT_APPEND_POOL_SIZE,
                    workers: int = DEFAULT_WORKERS) -> int:
    """The most PostgreSQL connections one store pod opens with these settings."""
    return pool_size_for(pool_size, workers) + append_pool_size + DEDICATED_CONNECTIONS


#: One pod's budget with the default settings.
POD_CONNECTIONS = pod_connections()

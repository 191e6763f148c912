"""Postgres adapter: the run index, the outbox, run leases and migrations (contract §5, §6).

The only package that imports psycopg or holds SQL. Its modules, in dependency order:

* :mod:`~worker.adapters.postgres.config` — :class:`PgConfig` and the libpq parameters;
* :mod:`~worker.adapters.postgres.queries` — named statements of ``sql/queries.sql``,
  :func:`execute` (one statement = one round trip on a :class:`RoundTripCounter`), the
  retry policy, and the one translation of psycopg errors into
  :class:`~worker.errors.PostgresUnavailableError` (retryable) / :class:`~worker.errors.PostgresError`;
* :mod:`~worker.adapters.postgres.pool` — :func:`connect` and :class:`ConnectionPool`
  (no network I/O in constructors: pools connect in ``__enter__``/``open``);
* :mod:`~worker.adapters.postgres.migrations` — versioned files ``sql/NNNN_name.sql``, :func:`migrate`;
* :mod:`~worker.adapters.postgres.index` — :class:`RunIndex` (the ``RunIndex`` and
  ``OperatorAudit`` ports);
* :mod:`~worker.adapters.postgres.leases` — :class:`LeaseManager` / :class:`Lease` (the
  ``Leases`` / ``Lease`` ports) and the epoch-checked writes;
* :mod:`~worker.adapters.postgres.prune` — ``sr index prune``.

Session-level advisory locks need a direct connection or *session* pooling: SR does not
work behind PgBouncer in transaction-pooling mode.
"""

from __future__ import annotations

from worker.adapters.postgres.config import PgConfig
from worker.adapters.postgres.index import RunIndex, publication_params
from worker.adapters.postgres.leases import Lease, LeaseManager, advance_with_epoch, touch_head_with_epoch
from worker.adapters.postgres.migrations import (
    MIGRATION_LOCK_KEY,
    Migration,
    MigrationError,
    load_migrations,
    migrate,
)
from worker.adapters.postgres.pool import ConnectionPool, connect
from worker.adapters.postgres.prune import PrunedRows, prune_publications
from worker.adapters.postgres.queries import (
    Connection,
    Query,
    RoundTripCounter,
    execute,
    load_queries,
    query,
    retrying,
    translate,
)
from worker.core.index import (
    Admission,
    AdmissionOutcome,
    NewPublication,
    NewRun,
    Publication,
    PublicationKind,
    RunRow,
)

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Admission",
    "AdmissionOutcome",
    "Connection",
    "ConnectionPool",
    "Lease",
    "LeaseManager",
    "Migration",
    "MigrationError",
    "NewPublication",
    "NewRun",
    "PgConfig",
    "PrunedRows",
    "Publication",
    "PublicationKind",
    "Query",
    "RoundTripCounter",
    "RunIndex",
    "RunRow",
    "advance_with_epoch",
    "connect",
    "execute",
    "load_migrations",
    "load_queries",
    "migrate",
    "prune_publications",
    "publication_params",
    "query",
    "retrying",
    "touch_head_with_epoch",
    "translate",
]

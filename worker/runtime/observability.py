"""Compatibility re-exports for the old ``worker.runtime.observability`` module.

Its contents moved (issue 11): :mod:`worker.runtime.metrics` (``Metrics``),
:mod:`worker.runtime.health` (``HealthServer``, ``flag_check``, ``standard_checks``),
:mod:`worker.runtime.gauges` (the gauge refreshers) and each system's check into its adapter
(:mod:`worker.adapters.kafka.health`, :mod:`worker.adapters.postgres.health`,
:mod:`worker.adapters.s3.health`). Import from there; this module goes away once nothing
imports it.
"""

from __future__ import annotations

from worker.adapters.kafka.health import LagSource, consumer_lag, kafka_check
from worker.adapters.postgres.health import postgres_check
from worker.adapters.s3.health import s3_check
from worker.runtime.gauges import refresh_consumer_lag, refresh_runs_by_status
from worker.runtime.health import Check, HealthServer, flag_check, standard_checks
from worker.runtime.metrics import (
    DLQ_OTHER,
    INDEX_STATUSES,
    METRIC_NAMES,
    RUN_TRANSITION_STATUSES,
    S3_VERBS,
    Metrics,
)

__all__ = [
    "DLQ_OTHER",
    "INDEX_STATUSES",
    "METRIC_NAMES",
    "RUN_TRANSITION_STATUSES",
    "S3_VERBS",
    "Check",
    "HealthServer",
    "LagSource",
    "Metrics",
    "consumer_lag",
    "flag_check",
    "kafka_check",
    "postgres_check",
    "refresh_consumer_lag",
    "refresh_runs_by_status",
    "s3_check",
    "standard_checks",
]

"""Refreshers of the gauges that are not event-driven: consumer lag, runs by status and the
outbox (backlog and oldest age).

The worker refreshes them together every few seconds on its poll thread: the consumer
answers only the thread polling it. Each costs one round trip (committed offsets; one
GROUP BY; one aggregate over the unpublished rows). A failed refresh leaves its gauges as
they were.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from worker.adapters.kafka.health import LagSource, consumer_lag
from worker.core.index import OutboxStats
from worker.runtime.metrics import Metrics

__all__ = ["CountsByStatus", "OutboxSource", "refresh_consumer_lag", "refresh_outbox", "refresh_runs_by_status"]


class CountsByStatus(Protocol):
    """What :func:`refresh_runs_by_status` needs of the run index."""

    def count_by_status(self) -> dict[str, int]:
        """Runs per status (status -> runs), one round trip."""
        ...


class OutboxSource(Protocol):
    """What :func:`refresh_outbox` needs of the run index."""

    def outbox_stats(self) -> OutboxStats:
        """Unpublished publication rows and the age of the oldest, one round trip."""
        ...


def refresh_consumer_lag(consumer: LagSource, topics: Iterable[str] | None, metrics: Metrics, *,
                         timeout: float = 5.0, cached: bool = False) -> dict[tuple[str, int], int]:
    """Measure :func:`~worker.adapters.kafka.health.consumer_lag` and replace the
    ``sr_consumer_lag`` series with it.

    Returns:
        The lags measured (messages per ``(topic, partition)``).

    Raises:
        KafkaUnavailableError / KafkaFatalError: as ``consumer_lag`` (the gauge is unchanged).
    """
    lags = consumer_lag(consumer, topics, timeout=timeout, cached=cached)
    metrics.set_lags(lags)
    return lags


def refresh_runs_by_status(index: CountsByStatus, metrics: Metrics) -> dict[str, int]:
    """Refresh ``sr_runs_by_status`` from the index with one GROUP BY query.

    Returns:
        The counts read (status -> runs).

    Raises:
        PostgresUnavailableError / PostgresError: the query failed (the gauge is unchanged).
    """
    counts = index.count_by_status()
    metrics.set_runs_by_status(counts)
    return counts


def refresh_outbox(index: OutboxSource, metrics: Metrics) -> OutboxStats:
    """Refresh ``sr_outbox_backlog`` and ``sr_outbox_oldest_age_seconds`` with one query.

    A backlog that stays above 0 with a growing age means publications are not reaching the
    broker (the outbox flush re-sends them every few seconds while Kafka answers).

    Returns:
        What the index reported (rows; seconds, by the database's clock).

    Raises:
        PostgresUnavailableError / PostgresError: the query failed (the gauges are unchanged).
    """
    stats = index.outbox_stats()
    metrics.set_outbox(stats.backlog, stats.oldest_age_seconds)
    return stats

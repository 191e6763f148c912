"""Refreshers of the two gauges that are not event-driven: consumer lag and runs by status.

The worker refreshes both together every few seconds on its poll thread: the consumer
answers only the thread polling it. Each costs one round trip (committed offsets; one
GROUP BY). A failed refresh leaves the gauge as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from worker.adapters.kafka.health import LagSource, consumer_lag
from worker.runtime.metrics import Metrics

__all__ = ["CountsByStatus", "refresh_consumer_lag", "refresh_runs_by_status"]


class CountsByStatus(Protocol):
    """What :func:`refresh_runs_by_status` needs of the run index."""

    def count_by_status(self) -> dict[str, int]:
        """Runs per status (status -> runs), one round trip."""
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

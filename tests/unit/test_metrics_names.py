"""The metrics object's exposition: Prometheus naming conventions, the runtime collectors,
build info, and what each hook does with odd input (issue 15)."""

from __future__ import annotations

import importlib.metadata
import platform
import re
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import worker
from worker.runtime import metrics as metrics_module
from worker.runtime.metrics import (
    METRIC_NAMES,
    RENAMED_METRICS,
    RUNTIME_FAMILY_PREFIXES,
    Metrics,
    sr_version,
)

_TYPE_LINE = re.compile(r"^# TYPE (?P<name>\S+) (?P<type>\S+)$", re.MULTILINE)
#: Base units SR uses, as Prometheus names them (plural, as a suffix).
_UNITS = ("_seconds", "_bytes")


def _exercised() -> Metrics:
    """A Metrics object on which every labelled family has at least one series."""
    m = Metrics()
    m.set_lag("sr.run-intents", 0, 3)
    m.dead_lettered("DECODE_ERROR")
    m.message("sr.run-intents", "READY")
    return m


def _types(m: Metrics) -> dict[str, str]:
    """Family name (as written in the text format) -> type, from the ``# TYPE`` lines."""
    return {match["name"]: match["type"] for match in _TYPE_LINE.finditer(m.render().decode())}


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


@pytest.fixture
def fresh_version_cache() -> Iterator[None]:
    sr_version.cache_clear()
    yield
    sr_version.cache_clear()


def test_every_family_follows_the_naming_conventions() -> None:
    types = _types(_exercised())
    assert types, "nothing exposed"
    for name, kind in types.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
            # A counter of a unit says it before _total (sr_evidence_verified_bytes_total).
            assert not any(f"{unit}_" in name.removesuffix("_total") for unit in _UNITS), name
        elif kind == "histogram":
            assert name.endswith(_UNITS), f"histogram {name} must end in a base unit"
        else:
            assert kind == "gauge", (name, kind)
            assert not name.endswith("_total"), f"gauge {name} must not look like a counter"
        # Base units only: no milliseconds, kilobytes, minutes in any name.
        assert not re.search(r"_(ms|milliseconds|microseconds|kilobytes|megabytes|minutes|hours|percent)(_|$)",
                             name), name
    latency = [n for n, k in types.items() if k == "histogram" and n.startswith("sr_") and n.endswith("_seconds")]
    assert all(n.endswith("_duration_seconds") or n == "sr_ready_latency_seconds" for n in latency), latency


def test_exposition_is_exactly_sr_families_plus_the_runtime_collectors() -> None:
    types = _types(_exercised())
    sr = {n for n in types if n.startswith("sr_")}
    assert sr == set(METRIC_NAMES)
    assert set(types) - sr == {n for n in types if n.startswith(RUNTIME_FAMILY_PREFIXES)}
    # prometheus_client's process (Linux /proc), platform and GC collectors, on SR's own registry.
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "process_start_time_seconds"} <= set(types)
    assert {"python_info", "python_gc_collections_total", "python_gc_objects_collected_total"} <= set(types)
    assert not set(RENAMED_METRICS) & set(types), "an old, non-conventional name is still exposed"
    assert set(RENAMED_METRICS.values()) <= set(METRIC_NAMES)


def test_two_metrics_objects_never_share_a_registry() -> None:
    # Collectors are per registry: a second worker in the process neither collides nor doubles.
    a, b = Metrics(), Metrics()
    a.ready_published(2)
    assert _samples(a)[("sr_ready_published_total", ())] == 2
    assert _samples(b)[("sr_ready_published_total", ())] == 0


def test_build_info_is_one_series_at_one() -> None:
    samples = _samples(Metrics())
    build = {labels: v for (name, labels), v in samples.items() if name == "sr_build_info"}
    assert build == {(("python", platform.python_version()), ("version", sr_version())): 1.0}


def test_version_comes_from_the_distribution_that_ships_the_package(fresh_version_cache: None) -> None:
    dists = importlib.metadata.packages_distributions().get("worker", [])
    assert dists, "the worker package is not installed (pip install -e .)"
    assert sr_version() == importlib.metadata.version(dists[0])


def test_version_falls_back_to_the_package_then_to_unknown(fresh_version_cache: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "packages_distributions", dict)
    assert sr_version() == worker.__version__
    sr_version.cache_clear()
    monkeypatch.delattr(worker, "__version__")
    assert sr_version() == "unknown"
    sr_version.cache_clear()
    # A distribution that maps the package but has no metadata any more is skipped.
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"worker": ["sr-gone"]})
    assert metrics_module.sr_version() == "unknown"


def test_ready_latency_observes_non_negative_seconds_only() -> None:
    m = Metrics()
    m.ready_latency(0.2)
    m.ready_latency(0.0)
    m.ready_latency(-3.0)  # the producer's clock ahead of ours: not a latency anybody had
    s = _samples(m)
    assert s[("sr_ready_latency_seconds_count", ())] == 2
    assert s[("sr_ready_latency_seconds_sum", ())] == pytest.approx(0.2)
    assert s[("sr_ready_latency_seconds_bucket", (("le", "0.25"),))] == 2
    assert s[("sr_ready_latency_seconds_bucket", (("le", "0.01"),))] == 1


def test_lease_lost_reasons_exist_from_the_start_and_stay_bounded() -> None:
    m = Metrics()
    s = _samples(m)
    assert s[("sr_lease_lost_total", (("reason", "lost"),))] == 0
    assert s[("sr_lease_lost_total", (("reason", "fenced"),))] == 0
    m.lease_lost("fenced")
    m.lease_lost("fenced")
    m.lease_lost("lost")
    m.lease_lost("a reason nobody planned")
    s = _samples(m)
    assert s[("sr_lease_lost_total", (("reason", "fenced"),))] == 2
    assert s[("sr_lease_lost_total", (("reason", "lost"),))] == 1
    assert s[("sr_lease_lost_total", (("reason", "OTHER"),))] == 1


def test_outbox_gauges_start_at_zero_and_clamp() -> None:
    m = Metrics()
    s = _samples(m)
    assert (s[("sr_outbox_backlog", ())], s[("sr_outbox_oldest_age_seconds", ())]) == (0, 0)
    m.set_outbox(3, 42.5)
    s = _samples(m)
    assert (s[("sr_outbox_backlog", ())], s[("sr_outbox_oldest_age_seconds", ())]) == (3, 42.5)
    m.set_outbox(0, 17.0)  # no backlog has no age, whatever the source said
    s = _samples(m)
    assert (s[("sr_outbox_backlog", ())], s[("sr_outbox_oldest_age_seconds", ())]) == (0, 0)
    m.set_outbox(-1, -5.0)
    s = _samples(m)
    assert (s[("sr_outbox_backlog", ())], s[("sr_outbox_oldest_age_seconds", ())]) == (0, 0)
    m.set_outbox(1, -5.0)  # a database clock step backwards: an age of 0, never negative
    assert _samples(m)[("sr_outbox_oldest_age_seconds", ())] == 0


def test_renamed_families_count_what_the_old_ones_counted() -> None:
    m = Metrics()
    m.evidence_bytes(1000)
    m.observe_s3("GET", 0.02, ok=True)
    m.observe_pg(0.001)
    m.engine_attempt("succeeded", seconds=30.0)
    s = _samples(m)
    assert s[("sr_evidence_verified_bytes_total", ())] == 1000
    assert s[("sr_s3_request_duration_seconds_count", (("outcome", "ok"), ("verb", "GET")))] == 1
    assert s[("sr_pg_query_duration_seconds_count", ())] == 1
    assert s[("sr_engine_attempt_duration_seconds_count", ())] == 1
    assert s[("sr_engine_attempts_total", (("event", "succeeded"),))] == 1

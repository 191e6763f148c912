"""The monitoring artifacts against the metrics SR really exposes (issue 15): the Grafana
dashboard charts every SR series, the PrometheusRule's alerts and the ServiceMonitor have the
structure the Prometheus Operator expects, and every PromQL expression names only series that
exist (SR's, the runtime collectors', and the few from Prometheus / kube-state-metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.deploy_files import dashboard_panels
from worker.runtime.metrics import METRIC_NAMES, Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "dashboards" / "sr-overview.json"
SERVICE = ROOT / "deploy" / "k8s" / "service.yaml"
MONITORING = ROOT / "deploy" / "k8s" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
SERVICE_MONITOR = MONITORING / "servicemonitor.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

#: Series that come from outside SR: Prometheus's own scrape health, kube-state-metrics.
EXTERNAL_SERIES = frozenset({"up", "kube_pod_status_ready"})
#: The runbook anchors of docs/operations.md the alerts link to (``<a id="...">`` there).
RUNBOOK_ANCHORS = frozenset({"runbook-consumer-lag", "runbook-dlq", "runbook-outbox", "runbook-not-ready",
                             "runbook-ready-latency", "runbook-lease-contention"})
#: Every alert -> the SR series (or external one) it must be about.
REQUIRED_ALERTS = {
    "SRConsumerLagHigh": "sr_consumer_lag",
    "SRDeadLettersSustained": "sr_dlq_total",
    "SROutboxStuck": "sr_outbox_oldest_age_seconds",
    "SRWorkerNotReady": "kube_pod_status_ready",
    "SRTargetDown": "up",
    "SRReadyLatencyHigh": "sr_ready_latency_seconds_bucket",
    "SRLeaseContention": "sr_lease_lost_total",
}
_PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                              "group_left", "group_right", "inf", "nan"})


def _families() -> dict[str, str]:
    """Family name as exposed -> type, for every family of a Metrics object."""
    m = Metrics()
    m.set_lag("t", 0, 1)
    m.dead_lettered("X")
    m.message("t", "READY")
    out = {}
    for line in m.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            out[name] = kind
    return out


def _known_series() -> set[str]:
    """Every series name a query may select: gauges and counters as exposed, histograms'
    ``_bucket`` / ``_count`` / ``_sum``, plus :data:`EXTERNAL_SERIES`."""
    known = set(EXTERNAL_SERIES)
    for name, kind in _families().items():
        if kind == "histogram":
            known |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            known.add(name)
    return known


def series_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small tokenizer, enough for our queries)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\w)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue  # a function or an aggregation, not a series
        names.add(name)
    return names


def _check_expression(expr: str, known: set[str], where: str) -> set[str]:
    used = series_in(expr)
    assert used, f"{where}: no series in {expr!r}"
    assert used <= known, f"{where}: unknown series {sorted(used - known)} in {expr!r}"
    # rate()/increase() only over counters; quantiles only over histogram buckets.
    for fn, name in re.findall(r"\b(rate|irate|increase)\(\s*([a-zA-Z_:][\w:]*)", expr):
        assert name.endswith(("_total", "_bucket", "_count", "_sum")), f"{where}: {fn}() of the gauge {name}"
    for name in re.findall(r"histogram_quantile\([^,]+,[^()]*\([^()]*\(\s*([a-zA-Z_:][\w:]*)", expr):
        assert name.endswith("_bucket"), f"{where}: histogram_quantile over {name}"
    return used


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# ----------------------------------------------------------------------------- the tokenizer itself
@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (topic) (rate(sr_dlq_total{job=~"$job"}[$__rate_interval]))', {"sr_dlq_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) > 1", {"a_bucket"}),
    ('up{job="x"} == 0 and on (pod) b', {"up", "b"}),
    ('absent(up{job="sr-worker-metrics"})', {"up"}),
    ('x{a="rate(y)"} / ignoring (z) w offset 5m', {"x", "w"}),
])
def test_series_in_finds_the_selected_series(expr: str, expected: set[str]) -> None:
    assert series_in(expr) == expected


def test_an_unknown_series_is_caught() -> None:
    with pytest.raises(AssertionError, match="unknown series"):
        _check_expression("sum(rate(sr_evidence_bytes_verified_total[5m]))", _known_series(), "old name")
    with pytest.raises(AssertionError, match="rate"):
        _check_expression("rate(sr_outbox_backlog[5m])", _known_series(), "gauge rate")


# ----------------------------------------------------------------------------- dashboard


def test_dashboard_charts_every_sr_series_with_existing_names_only() -> None:
    dash = json.loads(DASHBOARD.read_text())
    known = _known_series()
    families = _families()
    used: set[str] = set()
    ids = set()
    for panel in dashboard_panels(dash):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= _check_expression(target["expr"], known, panel["title"])
    for name in METRIC_NAMES:
        wanted = {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if families[name] == "histogram" else {name}
        assert wanted & used, f"no panel charts {name}"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= used
    assert any(name.startswith("python_") for name in used)
    # Panels do not overlap (Grafana would shove them around).
    cells: set[tuple[int, int]] = set()
    for panel in dashboard_panels(dash):
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


# ----------------------------------------------------------------------------- ServiceMonitor
def _service() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SERVICE.read_text())
    return doc


def test_service_monitor_selects_the_metrics_service_and_its_port() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    service = _service()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["name"] and "namespace" not in monitor["metadata"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])
    assert int(endpoint["scrapeTimeout"][:-1]) < int(endpoint["interval"][:-1])


# ----------------------------------------------------------------------------- PrometheusRule
def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULE.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"] and "namespace" not in doc["metadata"]
    groups = doc["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    return [rule for g in groups for rule in g["rules"]]


def test_prometheus_rule_has_every_alert_with_its_runbook() -> None:
    rules = _rules()
    alerts = {r["alert"]: r for r in rules}
    assert len(alerts) == len(rules), "duplicate or unnamed alert"
    assert set(REQUIRED_ALERTS) <= set(alerts)
    for name, rule in alerts.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        anchor = re.fullmatch(r"https://\S+/docs/operations\.md#(?P<anchor>[a-z0-9-]+)", notes["runbook_url"])
        assert anchor and anchor["anchor"] in RUNBOOK_ANCHORS, (name, notes["runbook_url"])


def test_every_alert_expression_names_only_series_that_exist() -> None:
    known = _known_series()
    service_name = _service()["metadata"]["name"]
    for rule in _rules():
        used = _check_expression(rule["expr"], known, rule["alert"])
        wanted = REQUIRED_ALERTS.get(rule["alert"])
        assert wanted is None or wanted in used, (rule["alert"], used)
        # SR's series are selected by the job the ServiceMonitor gives them (the Service's name).
        if used - {"kube_pod_status_ready"}:
            assert f'job="{service_name}"' in rule["expr"], rule["alert"]


def test_runbook_anchors_exist_in_the_operations_guide() -> None:
    text = OPERATIONS.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    anchors |= {_slug(m.group(1)) for m in re.finditer(r"^#{2,4}\s+(.+?)\s*$", text, re.MULTILINE)}
    used = {re.sub(r".*#", "", r["annotations"]["runbook_url"]) for r in _rules()}
    assert used == RUNBOOK_ANCHORS
    assert used <= anchors, f"runbook anchors missing from docs/operations.md: {sorted(used - anchors)}"

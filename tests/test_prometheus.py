"""The Grafana dashboards against a real Prometheus scraping a real `bentoml serve` under load.

Grafana itself is not installable here: what Grafana would run is each panel's PromQL, so every
query (variables substituted as Grafana does for "All") goes to Prometheus's HTTP API. Queries on
tabserve/BentoML metrics must return data; the Kubernetes-only ones must at least parse.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from observability.local_prometheus import TARGET_LABELS, Prometheus
from tabserve.catalog import MODELS
from tests.chart.manifests import CHART, load_values
from tests.dashboard_queries import (
    DASHBOARDS,
    METRIC_NAME,
    SELECTOR,
    needs_kubernetes,
    panels,
    queries,
    substituted,
    variable_queries,
    variables,
)
from tests.data import instances
from tests.declared_metrics import KNOWN_SERIES, KUBERNETES
from tests.model_versions import VersionStore
from tests.server import ServerProcess
from tests.system_packages import require
from tests.test_alerts import rules

# Bounded both ways: at most this many requests, for at most this long; long enough to span
# several scrapes, since rate() only sees what grows between two of them.
LOAD_REQUESTS = 2000
LOAD_SECONDS = 10


def test_there_are_dashboards_and_every_panel_has_unit_description_and_queries() -> None:
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        found = variables(dashboard)
        assert found["datasource"]["type"] == "datasource"
        assert found["datasource"]["query"] == "prometheus"
        for name in ("cluster", "namespace", "job", "deployment", "pod", "model"):
            assert found[name]["type"] == "query", name  # chosen from what Prometheus has
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in panels(dashboard):
            assert panel["description"].strip(), panel["title"]
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


# Every selector of a scraped tabserve/BentoML series narrows to the chosen variables; the
# Kubernetes ones to the cluster, namespace and the release's Deployment (its pods, its HPA).
SCRAPED_FILTERS = ('cluster=~"$cluster"', 'namespace=~"$namespace"', 'job=~"$job"', 'pod=~"$pod"')
KUBERNETES_FILTERS = {
    "deployment": 'deployment=~"$deployment"',
    "pod": 'pod=~"$pod", pod=~"$deployment-[a-z0-9]+-[a-z0-9]+"',
    # KEDA names the HPA it makes for a ScaledObject keda-hpa-<ScaledObject name>.
    "horizontalpodautoscaler": 'horizontalpodautoscaler=~"$deployment|keda-hpa-$deployment"',
}


def test_every_query_filters_by_the_dashboard_variables() -> None:
    for dashboard, title, expr in queries():
        for metric, matchers in SELECTOR.findall(expr):
            where = f"{dashboard} / {title}: {metric}{{{matchers}}}"
            if metric not in KUBERNETES:
                assert all(f in matchers for f in SCRAPED_FILTERS), where
                continue
            assert matchers.startswith('cluster=~"$cluster", namespace=~"$namespace", '), where
            (scope,) = [label for label in KUBERNETES_FILTERS if f"{label}=" in matchers]
            assert KUBERNETES_FILTERS[scope] in matchers, where


def test_tables_query_the_present_and_lines_mark_the_objectives() -> None:
    """A table shows one instant value per row; the latency, error and drift panels draw the
    chart's default objectives and thresholds (the dashboard is static: these are what the
    alerts use by default)."""
    rules = load_values(CHART / "values.yaml")["metrics"]["prometheusRule"]
    latency = rules["alerts"]["TabserveLatencyP99AboveSLO"]["threshold"]
    budget = round(1 - rules["slo"]["availability"], 6)
    lines = {}
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            if panel["type"] == "table":
                for target in panel["targets"]:
                    assert (target["instant"], target["range"], target["format"]) == (
                        True,
                        False,
                        "table",
                    ), panel["title"]
            defaults = panel["fieldConfig"]["defaults"]
            if "thresholds" in defaults:
                assert defaults["custom"]["thresholdsStyle"]["mode"] == "dashed"
                lines[panel["title"]] = [s["value"] for s in defaults["thresholds"]["steps"]]
    feature_drift = rules["alerts"]["TabserveFeatureDrift"]["threshold"]
    score_drift = rules["alerts"]["TabserveScoreDrift"]["threshold"]
    agreement = rules["alerts"]["TabserveShadowDisagreement"]["threshold"]
    assert lines == {
        "Server error ratio by route": [None, budget],
        "Request latency p50 / p95 / p99": [None, latency],
        "p99 latency by route": [None, latency],
        "Feature drift (PSI) by feature": [None, feature_drift],
        "Score drift (PSI) by model": [None, score_drift],
        "Shadow agreement by model": [None, agreement],
    }


def test_every_metric_a_panel_uses_is_declared() -> None:
    """A renamed metric fails here (and in test_metrics) rather than emptying a panel."""
    for dashboard, title, expr in queries():
        unknown = set(METRIC_NAME.findall(expr)) - KNOWN_SERIES
        assert not unknown, f"{dashboard} / {title}: undeclared {unknown}"


def _load(server: ServerProcess) -> dict[str, int]:
    """A short, bounded mixed load: valid predictions for every model, refused inputs, 404s."""
    models = list(MODELS)
    rows = {name: instances(name, 20) for name in models}
    deadline = time.monotonic() + LOAD_SECONDS
    outcomes: dict[str, int] = {}

    def one(client: httpx.Client, number: int) -> str:
        if time.monotonic() > deadline:
            return "skipped"
        name = models[number % len(models)]
        if number % 10 == 7:
            response = client.post(f"/v1/models/{name}:predict", json={"instances": [{}]})
        elif number % 10 == 9:
            response = client.get(f"/probe-{number}")
        else:
            batch = rows[name][number % 20 : number % 20 + 1 + number % 3]
            response = client.post(f"/v1/models/{name}:predict", json={"instances": batch})
        return str(response.status_code)

    with (
        httpx.Client(base_url=server.url, timeout=30) as client,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        for status in pool.map(lambda number: one(client, number), range(LOAD_REQUESTS)):
            outcomes[status] = outcomes.get(status, 0) + 1
    return outcomes


@pytest.fixture(scope="module")
def prometheus(version_store: VersionStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    require("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    # The load sends a few hundred rows per model: the drift panels need their PSI exported.
    # churn is served in two versions, the second shadowing the first: the shadow panels.
    env = {"TABSERVE_DRIFT_MIN_ROWS": "20", **version_store.settings()}
    with (
        ServerProcess.start(workdir / "serve.log", env=env, store=version_store.path) as server,
        Prometheus.start([server.metrics_url.split("/")[2]], workdir, 1.0) as running,
    ):
        _wait_for_first_scrape(running)
        outcomes = _load(server)
        # The machine is shared: the time bound may cut the load short, but never to nothing.
        assert outcomes.get("200", 0) >= 50, outcomes
        assert set(outcomes) <= {"200", "404", "422", "skipped"}, outcomes
        assert outcomes.get("422", 0) > 0 and outcomes.get("404", 0) > 0, outcomes
        _wait_for_scrape(running, min_predictions=outcomes["200"])
        yield running


def _wait_for_first_scrape(prometheus: Prometheus) -> None:
    """Before the load: counters first seen already grown would show no rate at all."""
    deadline = time.monotonic() + 20
    while not prometheus.query("up == 1")["data"]["result"]:
        assert time.monotonic() < deadline, "Prometheus did not scrape tabserve in 20 s"
        time.sleep(0.2)


def _wait_for_scrape(prometheus: Prometheus, min_predictions: int) -> None:
    """Until a scrape after the load is in, so the rate windows cover it."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = prometheus.query("sum(tabserve_predictions_total)")["data"]["result"]
        if result and float(result[0]["value"][1]) >= min_predictions:
            time.sleep(2)  # one or two more scrapes: rate() needs two samples after the load
            return
        time.sleep(0.5)
    targets = prometheus.api("targets")["data"]["activeTargets"]
    pytest.fail(f"Prometheus did not scrape the load's predictions in 20 s: {targets}")


def test_prometheus_scrapes_the_service_port(prometheus: Prometheus) -> None:
    targets = prometheus.api("targets")["data"]["activeTargets"]
    assert [target["health"] for target in targets] == ["up"], targets


@pytest.mark.parametrize(
    ("dashboard", "title", "expr"), queries(), ids=[f"{d}:{t}" for d, t, _ in queries()]
)
def test_panel_query_returns_data(
    prometheus: Prometheus, dashboard: str, title: str, expr: str
) -> None:
    answer = prometheus.query(substituted(expr))
    assert answer["status"] == "success", answer  # a syntax error: status "error", bad_data
    if needs_kubernetes(expr):
        return  # parsed; only a cluster has kube-state-metrics and cAdvisor series
    values = [float(series["value"][1]) for series in answer["data"]["result"]]
    assert values, f"no data for {title}: {expr}"
    assert any(math.isfinite(value) for value in values), f"only NaN for {title}: {values}"


@pytest.mark.parametrize(
    ("dashboard", "variable", "selector", "label"),
    variable_queries(),
    ids=[f"{d}:{v}" for d, v, _, _ in variable_queries()],
)
def test_variable_query_offers_values(
    prometheus: Prometheus, dashboard: str, variable: str, selector: str, label: str
) -> None:
    """What Grafana asks for a variable's choices. Outside a cluster there is no `cluster` (on
    a single-cluster Prometheus neither) nor `pod` label: those may offer nothing."""
    answer = prometheus.api(f"label/{label}/values", **{"match[]": substituted(selector)})
    assert answer["status"] == "success", answer
    if variable not in ("cluster", "pod"):
        assert answer["data"], f"{dashboard} ${variable}: no {label} values for {selector}"
    if variable == "deployment":
        assert answer["data"] == [TARGET_LABELS["service"]]


def test_alert_rules_load_and_evaluate_cleanly(prometheus: Prometheus) -> None:
    time.sleep(1.5)  # at least one evaluation round (interval 1 s)
    groups = prometheus.api("rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == {rule.get("alert", rule.get("record")) for rule in rules()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # The rules select the scrape's target labels: a healthy server trips none of these.
    for healthy in (
        "TabserveModelNotLoaded",
        "TabserveHighErrorRatio",
        "TabserveTargetDown",
        "TabserveMetricsAbsent",
        "TabserveErrorBudgetBurnFast",
    ):
        assert loaded[healthy]["state"] == "inactive", loaded[healthy]
    # ...and see its series: the availability recording rule has a value (no server error: 0).
    (ratio,) = prometheus.query("tabserve:slo_errors:ratio_rate5m")["data"]["result"]
    assert ratio["metric"] == {"__name__": "tabserve:slo_errors:ratio_rate5m", **TARGET_LABELS}
    assert float(ratio["value"][1]) == 0

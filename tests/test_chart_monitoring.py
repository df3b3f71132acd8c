"""The chart's monitoring objects: ServiceMonitor, PrometheusRule and KEDA ScaledObject values,
rendered with Helm's engine and validated against their CRD schemas (and promtool for rules)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.chart import crd_schemas
from tests.chart.manifests import NAMESPACE, RELEASE, Manifest, only, render
from tests.system_packages import require

SERVICE_MONITOR = {"metrics": {"serviceMonitor": {"enabled": True}}}
PROMETHEUS_RULE = {"metrics": {"prometheusRule": {"enabled": True}}}
KEDA = {"keda": {"enabled": True}}
# A selector of a metric: name{matchers}, a quoted value may hold braces (a regex).
SELECTOR = re.compile(r'\b([a-z_:][a-z0-9_:]*)\{((?:[^}"]|"[^"]*")*)\}')


def _valid(manifest: Manifest) -> Manifest:
    assert crd_schemas.errors(manifest) == [], manifest["kind"]
    return manifest


def _rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    rule = _valid(only(render(values), "PrometheusRule"))
    return [rule for group in rule["spec"]["groups"] for rule in group["rules"]]


def _alert(values: dict[str, Any], name: str) -> dict[str, Any]:
    (rule,) = [rule for rule in _rules(values) if rule.get("alert") == name]
    return rule


def _rule_settings(**settings: Any) -> dict[str, Any]:
    return {"metrics": {"prometheusRule": {"enabled": True, **settings}}}


# --- the CRD guard ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "api"),
    [
        (SERVICE_MONITOR, "monitoring.coreos.com/v1 (the ServiceMonitor CRD)"),
        (PROMETHEUS_RULE, "monitoring.coreos.com/v1 (the PrometheusRule CRD)"),
        (KEDA, "keda.sh/v1alpha1 (the ScaledObject CRD)"),
    ],
    ids=["ServiceMonitor", "PrometheusRule", "ScaledObject"],
)
def test_a_custom_resource_the_cluster_lacks_fails_the_render(
    values: dict[str, Any], api: str
) -> None:
    """Enabled but not served: a clear failure, never an object silently left out."""
    with pytest.raises(helm_python.HelmError, match=re.escape(f"does not serve {api}")):
        render(values, api_versions=())
    assert render(values)  # rendered where the cluster serves it


def test_the_default_install_needs_no_custom_resource() -> None:
    kinds = {manifest["kind"] for manifest in render({}, api_versions=())}
    assert not kinds & {kind for _, kind in crd_schemas.CUSTOM_RESOURCES}


# --- ServiceMonitor ----------------------------------------------------------------------------


def test_service_monitor_defaults_honour_bentomls_endpoint_label() -> None:
    monitor = _valid(only(render(SERVICE_MONITOR), "ServiceMonitor"))
    assert monitor["metadata"]["namespace"] == NAMESPACE
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert (endpoint["scheme"], endpoint["interval"], endpoint["scrapeTimeout"]) == (
        "http",
        "15s",
        "10s",
    )
    assert not {"relabelings", "metricRelabelings", "tlsConfig"} & set(endpoint)
    assert not {"jobLabel", "targetLabels"} & set(monitor["spec"])


def test_service_monitor_in_the_monitoring_namespace_with_every_option() -> None:
    relabel = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    drop = [{"sourceLabels": ["__name__"], "regex": "bentoml_.*", "action": "drop"}]
    tls = {"serverName": "tabserve.serving.svc", "ca": {"secret": {"name": "ca", "key": "ca.crt"}}}
    settings = {
        "enabled": True,
        "namespace": "monitoring",
        "honorLabels": False,
        "jobLabel": "app.kubernetes.io/name",
        "targetLabels": ["team"],
        "scheme": "https",
        "tlsConfig": tls,
        "interval": "30s",
        "scrapeTimeout": "20s",
        "relabelings": relabel,
        "metricRelabelings": drop,
    }
    monitor = _valid(only(render({"metrics": {"serviceMonitor": settings}}), "ServiceMonitor"))
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert monitor["spec"]["targetLabels"] == ["team"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is False
    assert (endpoint["scheme"], endpoint["tlsConfig"]) == ("https", tls)
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "20s")
    assert (endpoint["relabelings"], endpoint["metricRelabelings"]) == (relabel, drop)


BAD_MONITORING_VALUES = [
    ("metrics.serviceMonitor.scheme=ftp", "/metrics/serviceMonitor/scheme"),
    ("metrics.serviceMonitor.namespace=Monitoring", "/metrics/serviceMonitor/namespace"),
    (
        "metrics.prometheusRule.runbookBaseUrl=docs/runbooks",
        "/metrics/prometheusRule/runbookBaseUrl",
    ),
    ("metrics.prometheusRule.slo.availability=1", "/metrics/prometheusRule/slo/availability"),
    ("metrics.prometheusRule.alerts.TabserveHighErorRatio.disabled=true", "TabserveHighErorRatio"),
    ("metrics.prometheusRule.alerts.TabserveNoReadyReplicas.threshold=2", "threshold"),
    ("metrics.prometheusRule.alerts.TabserveHighErrorRatio.for=5 minutes", "/for"),
    ("metrics.prometheusRule.alerts.TabserveHighErrorRatio.severity=page", "/severity"),
    ("keda.idleReplicaCount=1", "/keda/idleReplicaCount"),
    ("keda.fallback.replicas=4", "/keda/fallback"),
    ("keda.authenticationRef.kind=Secret", "/keda/authenticationRef"),
    ("keda.authModes=token", "/keda/authModes"),
]


@pytest.mark.parametrize(
    ("setting", "expected"), BAD_MONITORING_VALUES, ids=[s for s, _ in BAD_MONITORING_VALUES]
)
def test_values_schema_rejects_bad_monitoring_values(setting: str, expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(expected)):
        render(helm_python.parse_set_string(setting))


# --- PrometheusRule ----------------------------------------------------------------------------


def _selectors(expr: str) -> list[tuple[str, str]]:
    return SELECTOR.findall(expr)


@pytest.mark.parametrize(
    ("values", "name", "hpa"),
    [
        ({}, RELEASE, RELEASE),
        ({"fullnameOverride": "ml.api"}, "ml.api", "ml.api"),
        (KEDA, RELEASE, f"keda-hpa-{RELEASE}"),
    ],
    ids=["default", "fullnameOverride", "keda"],
)
def test_every_rule_selects_only_this_releases_series(
    values: dict[str, Any], name: str, hpa: str
) -> None:
    """Two releases (or one release in two namespaces) must not alert on each other's series."""
    own = f'namespace="{NAMESPACE}", service="{name}"'
    pods = f'pod=~"{name.replace(".", "[.]")}-[a-z0-9]{{5,10}}-[a-z0-9]{{5}}"'
    kube = {
        "deployment": f'deployment="{name}"',
        "pod": pods,
        "horizontalpodautoscaler": f'horizontalpodautoscaler="{hpa}"',
    }
    rules = _rules({**values, **PROMETHEUS_RULE})
    for rule in rules:
        selectors = _selectors(rule["expr"])
        assert selectors, rule
        for metric, matchers in selectors:
            if metric.startswith(("tabserve", "up")):
                assert matchers.startswith(own), (metric, matchers)
            else:
                assert matchers.startswith(f'namespace="{NAMESPACE}", '), (metric, matchers)
                (kind,) = [k for k in kube if f"{k}=" in matchers or f"{k}=~" in matchers]
                assert kube[kind] in matchers, (metric, matchers)
    assert any("keda-hpa" in rule["expr"] for rule in rules) == ("keda" in values)


def test_alert_settings_threshold_for_severity_disabled_labels_runbooks() -> None:
    values = _rule_settings(
        runbookBaseUrl="https://wiki.example.com/runbooks/tabserve/",
        additionalRuleLabels={"team": "ml-platform", "severity": "ignored"},
        alerts={
            "TabserveHighErrorRatio": {"threshold": 0.02, "for": "10m", "severity": "warning"},
            "TabserveRequestsShed": {"disabled": True},
        },
    )
    rules = _rules(values)
    names = [rule.get("alert") for rule in rules]
    assert "TabserveRequestsShed" not in names and "TabserveHighErrorRatio" in names
    errors = _alert(values, "TabserveHighErrorRatio")
    assert ") > 0.02\n" in errors["expr"]
    assert "{{ 0.02 | humanizePercentage }}" in errors["annotations"]["description"]
    assert (errors["for"], errors["labels"]["severity"]) == ("10m", "warning")
    for rule in rules:
        if "alert" in rule:
            assert rule["labels"]["team"] == "ml-platform"
            assert rule["labels"]["severity"] != "ignored"
            url = f"https://wiki.example.com/runbooks/tabserve/{rule['alert'].lower()}"
            assert rule["annotations"]["runbook_url"] == url
        else:
            assert set(rule) == {"record", "expr"}  # recording rules take no alert settings


def test_a_rule_group_whose_alerts_are_all_disabled_is_left_out() -> None:
    values = _rule_settings(alerts={"TabserveModelNotLoaded": {"disabled": True}})
    groups = only(render(values), "PrometheusRule")["spec"]["groups"]
    assert "tabserve.models" not in [group["name"] for group in groups]


def test_burn_rate_alerts_follow_the_availability_objective() -> None:
    fast = _alert(_rule_settings(slo={"availability": 0.995}), "TabserveErrorBudgetBurnFast")
    factors = re.findall(r"> \(([0-9.]+) \* \(1 - 0\.995\)\)", fast["expr"])
    assert factors == ["14.4", "14.4", "6", "6"]
    slow = _alert(PROMETHEUS_RULE, "TabserveErrorBudgetBurnSlow")
    assert re.findall(r"> \(([0-9.]+) \* \(1 - 0\.999\)\)", slow["expr"]) == ["3", "3", "1", "1"]


def test_promtool_accepts_the_rules_of_a_customised_release(tmp_path: Path) -> None:
    """Placeholders filled with other names, thresholds and objectives still make valid rules."""
    require("prometheus")
    values = {
        "fullnameOverride": "ml.api",
        "keda": {"enabled": True},
        **_rule_settings(
            slo={"availability": 0.95},
            alerts={"TabservePodRestarting": {"threshold": 5}},
        ),
    }
    rule = only(render(values), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- KEDA ScaledObject -------------------------------------------------------------------------


def test_scaled_object_defaults() -> None:
    spec = _valid(only(render(KEDA), "ScaledObject"))["spec"]
    assert not {"idleReplicaCount", "fallback"} & set(spec)
    prometheus, cpu = spec["triggers"]
    query = f'sum(tabserve_requests_in_progress{{namespace="{NAMESPACE}", service="{RELEASE}"}})'
    assert prometheus["metadata"]["query"] == query
    assert "authenticationRef" not in prometheus and "authModes" not in prometheus["metadata"]
    assert cpu["type"] == "cpu"


def test_scaled_object_with_every_option() -> None:
    keda = {
        "enabled": True,
        "query": "sum(rate(tabserve_requests_total[1m]))",
        "threshold": "20",
        "authenticationRef": {"name": "prometheus-auth", "kind": "ClusterTriggerAuthentication"},
        "authModes": "bearer",
        "idleReplicaCount": 0,
        "fallback": {"failureThreshold": 3, "replicas": 4},
    }
    spec = _valid(only(render({"keda": keda}), "ScaledObject"))["spec"]
    assert spec["idleReplicaCount"] == 0
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 4}
    prometheus = spec["triggers"][0]
    assert prometheus["metadata"]["query"] == keda["query"]
    assert prometheus["metadata"]["threshold"] == "20"
    assert prometheus["metadata"]["authModes"] == "bearer"
    assert prometheus["authenticationRef"] == keda["authenticationRef"]


def test_an_authentication_ref_without_auth_modes_fails_the_render() -> None:
    values = {"keda": {"enabled": True, "authenticationRef": {"name": "prometheus-auth"}}}
    with pytest.raises(helm_python.HelmError, match=re.escape("keda.authenticationRef needs")):
        render(values)

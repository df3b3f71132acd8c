"""The chart under Flagger and Argo Rollouts: the analyses it renders (Flagger MetricTemplates,
Argo Rollouts AnalysisTemplates) and the recipes of docs/deploy.md (values, Canary, Rollout),
rendered by Helm's engine and validated against the tools' CRD schemas, fetched from their Go
modules (tests/chart/crd_schemas.py). What each tool then does to the chart's objects (Flagger's
primary pods and Services, Argo's scaling) is worked out from their documented rules and checked
against the rendered objects. Their queries meet a real Prometheus in test_canary_analysis.py."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.chart import crd_schemas
from tests.chart.manifests import (
    CHART,
    PROJECT,
    Manifest,
    generate,
    load_values,
    only,
    render,
    serving_container,
)
from tests.test_chart import SUPPORTED_KUBERNETES
from tests.test_chart_extensions import _kubernetes_problems

FLAGGER_API = "flagger.app/v1beta1"
ARGO_API = "argoproj.io/v1alpha1"
# A cluster with Flagger and Argo Rollouts beside the Prometheus Operator and KEDA.
CANARY_APIS = [*generate.CRD_APIS, FLAGGER_API, ARGO_API]
BOTH = {"canary": {"analysis": {"flagger": {"enabled": True}, "argo": {"enabled": True}}}}
ANALYSES = yaml.safe_load((CHART / "files" / "analyses.yaml").read_text())["analyses"]
THRESHOLDS = load_values(CHART / "values.yaml")["canary"]["analysis"]["thresholds"]

# The variables Flagger fills into a MetricTemplate's query (Go template actions), and Argo
# Rollouts' argument references.
FLAGGER_VARIABLE = re.compile(r"\{\{ *(\w+) *\}\}")
FLAGGER_VARIABLES = {"name", "namespace", "target", "service", "ingress", "interval"}
ARGO_ARG = re.compile(r"\{\{ *args\.([\w-]+) *\}\}")

DEPLOY_MD = (PROJECT / "docs" / "deploy.md").read_text()
RECIPE = re.compile(r"<!-- recipe: (?P<name>[\w-]+) -->\s*```yaml\n(?P<body>.*?)\n```", re.DOTALL)
RECIPES = {
    match["name"]: list(yaml.safe_load_all(match["body"])) for match in RECIPE.finditer(DEPLOY_MD)
}


def _recipe_values(name: str) -> dict[str, Any]:
    (values,) = RECIPES[name]
    return values


def _objects(name: str) -> list[Manifest]:
    return RECIPES[name]


def _of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in objects if m["kind"] == kind]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@pytest.fixture(scope="module")
def analysis_objects() -> list[Manifest]:
    return render(BOTH, CANARY_APIS)


# --- the analyses: rendered, valid for their CRDs, the tools' variables kept literal ------------


def test_every_analysis_is_rendered_for_both_tools(analysis_objects: list[Manifest]) -> None:
    names = [f"tabserve-{analysis['name']}" for analysis in ANALYSES]
    assert [m["metadata"]["name"] for m in _of_kind(analysis_objects, "MetricTemplate")] == names
    assert [m["metadata"]["name"] for m in _of_kind(analysis_objects, "AnalysisTemplate")] == names
    assert [analysis["name"] for analysis in ANALYSES] == [
        "error-ratio",
        "latency-p99",
        "rejection-ratio",
        "shadow-agreement",
    ]


def test_analysis_templates_match_their_crd_schema(analysis_objects: list[Manifest]) -> None:
    templates = [m for m in analysis_objects if m["apiVersion"] in (FLAGGER_API, ARGO_API)]
    assert len(templates) == 2 * len(ANALYSES)
    for manifest in templates:
        assert crd_schemas.errors(manifest) == [], manifest["metadata"]["name"]


@pytest.mark.parametrize(
    ("kind", "break_it", "expected"),
    [
        ("MetricTemplate", lambda s: s["provider"].update(type="prom"), "'prom' is not one of"),
        ("MetricTemplate", lambda s: s.pop("query"), "'query' is a required"),
        ("AnalysisTemplate", lambda s: s["metrics"][0].pop("provider"), "'provider' is a requ"),
        ("AnalysisTemplate", lambda s: s["metrics"][0].update(limit=1), "'limit' was unexpected"),
    ],
)
def test_crd_schemas_catch_broken_analysis_templates(
    analysis_objects: list[Manifest], kind: str, break_it: Any, expected: str
) -> None:
    manifest = yaml.safe_load(yaml.safe_dump(_of_kind(analysis_objects, kind)[0]))
    break_it(manifest["spec"])
    assert any(expected in error for error in crd_schemas.errors(manifest))


def test_flagger_queries_keep_flaggers_variables(analysis_objects: list[Manifest]) -> None:
    """Helm must not evaluate Flagger's {{ }} actions: they reach Flagger as written, and only
    the variables Flagger knows appear."""
    for template in _of_kind(analysis_objects, "MetricTemplate"):
        query = template["spec"]["query"]
        assert "${" not in query
        assert set(FLAGGER_VARIABLE.findall(query)) == {"namespace", "target", "interval"}
        assert set(FLAGGER_VARIABLE.findall(query)) <= FLAGGER_VARIABLES
        assert 'pod=~"{{ target }}-[a-z0-9]{5,10}-[a-z0-9]{5}"' in query
        assert "[{{ interval }}]" in query
        assert template["spec"]["provider"] == {
            "type": "prometheus",
            "address": "http://prometheus-operated.monitoring.svc:9090",
        }


def test_argo_queries_use_only_declared_args(analysis_objects: list[Manifest]) -> None:
    for template in _of_kind(analysis_objects, "AnalysisTemplate"):
        args = {arg["name"]: arg.get("value") for arg in template["spec"]["args"]}
        assert args == {"namespace": "serving", "rollout": "tabserve", "canary-hash": None}
        (metric,) = template["spec"]["metrics"]
        query = metric["provider"]["prometheus"]["query"]
        assert "${" not in query and "[1m]" in query
        assert set(ARGO_ARG.findall(query)) == set(args)
        assert 'pod=~"{{args.rollout}}-{{args.canary-hash}}-[a-z0-9]{5}"' in query


def test_argo_measurements_and_success_conditions_follow_the_values() -> None:
    argo = {"enabled": True, "interval": "30s", "count": 3, "failureLimit": 0}
    thresholds = {"errorRatio": 0.02, "latencyP99Seconds": 0.25, "shadowAgreement": 0.9}
    values = {"canary": {"analysis": {"argo": argo, "thresholds": thresholds}}}
    conditions = {}
    for template in _of_kind(render(values, CANARY_APIS), "AnalysisTemplate"):
        (metric,) = template["spec"]["metrics"]
        assert (metric["interval"], metric["count"], metric["failureLimit"]) == ("30s", 3, 0)
        assert "[30s]" in metric["provider"]["prometheus"]["query"]
        conditions[metric["name"]] = metric["successCondition"]
    assert conditions == {
        "error-ratio": "result[0] <= 0.02",
        "latency-p99": "result[0] <= 0.25",
        "rejection-ratio": f"result[0] <= {THRESHOLDS['rejectionRatio']}",
        "shadow-agreement": "result[0] >= 0.9",
    }


def test_only_the_enabled_tool_gets_templates() -> None:
    flagger = render({"canary": {"analysis": {"flagger": {"enabled": True}}}}, [FLAGGER_API])
    assert _of_kind(flagger, "MetricTemplate") and not _of_kind(flagger, "AnalysisTemplate")
    default = render({}, CANARY_APIS)
    assert not [m for m in default if m["apiVersion"] in (FLAGGER_API, ARGO_API)]


@pytest.mark.parametrize(
    ("tool", "api"), [("flagger", FLAGGER_API), ("argo", ARGO_API)], ids=["flagger", "argo"]
)
def test_an_analysis_crd_the_cluster_lacks_fails_the_render(tool: str, api: str) -> None:
    values = {"canary": {"analysis": {tool: {"enabled": True}}}}
    with pytest.raises(helm_python.HelmError, match=re.escape(f"does not serve {api}")):
        render(values)


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize("recipe", ["flagger-values", "argo-values"])
def test_recipe_values_render_valid_objects(recipe: str, kube_version: str) -> None:
    """Every object of the recipe's release against Kubernetes' schemas or its CRD's."""
    objects = render(_recipe_values(recipe), CANARY_APIS)
    assert _kubernetes_problems(objects, kube_version) == []


# --- Flagger: the recipe's values and Canary against what Flagger makes of the chart ----------


@pytest.fixture(scope="module")
def flagger_objects() -> list[Manifest]:
    return render(_recipe_values("flagger-values"), CANARY_APIS)


def _flagger_primary_labels(deployment: Manifest) -> dict[str, str]:
    """Flagger's copy of the pod labels for <target>-primary: its selector label (the first of
    app, name, app.kubernetes.io/name in the Deployment's selector) gets "-primary"."""
    selector = deployment["spec"]["selector"]["matchLabels"]
    label = next(key for key in ("app", "name", "app.kubernetes.io/name") if key in selector)
    labels = dict(deployment["spec"]["template"]["metadata"]["labels"])
    labels[label] = f"{selector[label]}-primary"
    return labels


def test_flagger_recipe_objects_match_their_crd_schemas() -> None:
    (canary,) = _objects("flagger-canary")
    assert crd_schemas.errors(canary) == []


def test_flagger_owns_the_services_and_prometheus_scrapes_its_primary_and_canary_ones(
    flagger_objects: list[Manifest],
) -> None:
    (canary,) = _objects("flagger-canary")
    assert not _of_kind(flagger_objects, "Service")
    deployment = only(flagger_objects, "Deployment")
    label = "app.kubernetes.io/name"
    value = deployment["spec"]["selector"]["matchLabels"][label]
    # Flagger labels each Service it makes with its selector label = the Service's name, plus
    # the Canary's labels for it.
    service = canary["spec"]["service"]
    made = {
        "tabserve": {label: "tabserve", **service.get("apex", {}).get("labels", {})},
        "tabserve-primary": {label: "tabserve-primary", **service["primary"]["labels"]},
        "tabserve-canary": {label: "tabserve-canary", **service["canary"]["labels"]},
    }
    monitor = only(flagger_objects, "ServiceMonitor")
    scraped = {
        name for name, labels in made.items() if selects(monitor["spec"]["selector"], labels)
    }
    assert scraped == {"tabserve-primary", "tabserve-canary"}  # the apex would scrape pods twice
    assert value == "tabserve"
    # portDiscovery: the container's named ports besides service.port, so the ServiceMonitor's
    # port and the Ingresses' ports exist on Flagger's Services as on the chart's.
    ports = {port["name"]: port["containerPort"] for port in serving_container(deployment)["ports"]}
    assert service["portDiscovery"] and ports[service["targetPort"]] == service["port"]
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= set(ports)
    relabel = monitor["spec"]["endpoints"][0]["relabelings"]
    assert relabel == [{"targetLabel": "service", "replacement": "tabserve"}]


def test_flagger_primary_pods_are_in_the_budget_and_the_network_policy(
    flagger_objects: list[Manifest],
) -> None:
    deployment = only(flagger_objects, "Deployment")
    canary_pods = deployment["spec"]["template"]["metadata"]["labels"]
    primary_pods = _flagger_primary_labels(deployment)
    assert primary_pods["app.kubernetes.io/name"] == "tabserve-primary"
    budget = only(flagger_objects, "PodDisruptionBudget")["spec"]["selector"]
    policy = only(flagger_objects, "NetworkPolicy")["spec"]["podSelector"]
    for selector in (budget, policy):
        assert selects(selector, canary_pods) and selects(selector, primary_pods)
        assert not selects(selector, {**primary_pods, "app.kubernetes.io/instance": "other"})
    # Without the value, the primary's pods would be left out: why it exists.
    default = render({})
    assert not selects(only(default, "PodDisruptionBudget")["spec"]["selector"], primary_pods)


def test_flagger_canary_targets_the_chart_and_its_analyses(flagger_objects: list[Manifest]) -> None:
    (canary,) = _objects("flagger-canary")
    spec = canary["spec"]
    hpa = only(flagger_objects, "HorizontalPodAutoscaler")
    assert spec["targetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tabserve"}
    assert hpa["spec"]["scaleTargetRef"] == spec["targetRef"]  # Flagger copies it for -primary
    assert spec["autoscalerRef"]["name"] == hpa["metadata"]["name"]
    templates = {m["metadata"]["name"] for m in _of_kind(flagger_objects, "MetricTemplate")}
    thresholds = {f"tabserve-{a['name']}": (a["bound"], a["threshold"]) for a in ANALYSES}
    for metric in spec["analysis"]["metrics"]:
        name = metric["templateRef"]["name"]
        assert name in templates
        bound, key = thresholds[name]
        assert metric["thresholdRange"] == {bound: THRESHOLDS[key]}, name  # as the values say


# --- Argo Rollouts: the recipe's values and Rollouts against the chart's objects ---------------


@pytest.fixture(scope="module")
def argo_objects() -> list[Manifest]:
    return render(_recipe_values("argo-values"), CANARY_APIS)


@pytest.mark.parametrize("recipe", ["argo-canary", "argo-blue-green"])
def test_argo_recipe_objects_are_valid(recipe: str) -> None:
    for manifest in _objects(recipe):
        if crd_schemas.has_schema(manifest):
            assert crd_schemas.errors(manifest) == [], manifest["kind"]
        else:
            kubernetes_validate.validate(manifest, "1.30.0", strict=True)


@pytest.mark.parametrize("recipe", ["argo-canary", "argo-blue-green"])
def test_argo_rollout_takes_the_deployment_and_the_autoscaler(
    argo_objects: list[Manifest], recipe: str
) -> None:
    (rollout,) = _of_kind(_objects(recipe), "Rollout")
    deployment = only(argo_objects, "Deployment")
    ref = rollout["spec"]["workloadRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert rollout["spec"]["selector"] == deployment["spec"]["selector"]
    assert selects(
        rollout["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    hpa = only(argo_objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert hpa == {"apiVersion": ARGO_API, "kind": "Rollout", "name": rollout["metadata"]["name"]}
    # The Rollout's pods (the Deployment's template) stay in the chart's Service and budget.
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": only(argo_objects, "Service")["spec"]["selector"]}, pods)
    assert selects(only(argo_objects, "PodDisruptionBudget")["spec"]["selector"], pods)


def test_argo_keda_scales_the_rollout_too() -> None:
    values = {**_recipe_values("argo-values"), "keda": {"enabled": True}}
    scaled = only(render(values, CANARY_APIS), "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "Rollout"
    assert crd_schemas.errors(scaled) == []


def test_without_autoscaling_the_deployment_leaves_the_count_to_the_rollout() -> None:
    values = {**_recipe_values("argo-values"), "autoscaling": {"enabled": False}}
    objects = render(values, CANARY_APIS)
    assert "replicas" not in only(objects, "Deployment")["spec"]
    assert not _of_kind(objects, "HorizontalPodAutoscaler")
    fixed = render({"autoscaling": {"enabled": False}})
    assert only(fixed, "Deployment")["spec"]["replicas"] == 2  # replicaCount, as before


@pytest.mark.parametrize("recipe", ["argo-canary", "argo-blue-green"])
def test_argo_rollout_analyses_exist_and_get_every_arg(
    argo_objects: list[Manifest], recipe: str
) -> None:
    (rollout,) = _of_kind(_objects(recipe), "Rollout")
    strategy = rollout["spec"]["strategy"]
    if "blueGreen" in strategy:
        analyses = [strategy["blueGreen"]["prePromotionAnalysis"]]
    else:
        analyses = [step["analysis"] for step in strategy["canary"]["steps"] if "analysis" in step]
    assert analyses
    templates = {m["metadata"]["name"]: m for m in _of_kind(argo_objects, "AnalysisTemplate")}
    for analysis in analyses:
        given = {arg["name"]: arg for arg in analysis["args"]}
        assert given["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
        for ref in analysis["templates"]:
            template = templates[ref["templateName"]]
            needed = {arg["name"] for arg in template["spec"]["args"] if "value" not in arg}
            assert needed <= set(given), ref


def test_argo_blue_green_switches_the_charts_service(argo_objects: list[Manifest]) -> None:
    preview, rollout = _objects("argo-blue-green")
    service = only(argo_objects, "Service")
    blue_green = rollout["spec"]["strategy"]["blueGreen"]
    assert blue_green["activeService"] == service["metadata"]["name"]
    assert blue_green["previewService"] == preview["metadata"]["name"]
    assert preview["spec"]["selector"] == service["spec"]["selector"]
    ports = {port["name"] for port in serving_container(only(argo_objects, "Deployment"))["ports"]}
    assert {port["targetPort"] for port in preview["spec"]["ports"]} <= ports


# --- values: the schema and the templates' guards ---------------------------------------------

BAD_VALUES = [
    ({"autoscaling": {"scaleTargetRef": {"kind": "Rollout"}}}, "/autoscaling/scaleTargetRef"),
    ({"service": {"enabled": "no"}}, "/service/enabled"),
    ({"metrics": {"serviceMonitor": {"selector": {"a": 1}}}}, "/metrics/serviceMonitor/selector"),
    ({"canary": {"analysis": {"prometheusAddress": "prometheus:9090"}}}, "prometheusAddress"),
    ({"canary": {"analysis": {"argo": {"interval": "1 minute"}}}}, "/canary/analysis/argo"),
    ({"canary": {"analysis": {"thresholds": {"errorRatio": 5}}}}, "errorRatio"),
    ({"canary": {"analysis": {"thresholds": {"p99": 1}}}}, "additional properties 'p99'"),
    ({"canary": {"flager": {}}}, "additional properties 'flager'"),
]


@pytest.mark.parametrize(("values", "expected"), BAD_VALUES, ids=lambda v: str(v)[:50])
def test_values_schema_rejects_bad_canary_values(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(expected)):
        render(values, CANARY_APIS)


def test_a_service_monitor_without_service_or_selector_fails_the_render() -> None:
    values = {"service": {"enabled": False}, "metrics": {"serviceMonitor": {"enabled": True}}}
    with pytest.raises(
        helm_python.HelmError, match=re.escape("needs metrics.serviceMonitor.selector")
    ):
        render(values)


def test_recipes_cover_both_tools_and_a_blue_green() -> None:
    assert set(RECIPES) == {
        "flagger-values",
        "flagger-canary",
        "argo-values",
        "argo-canary",
        "argo-blue-green",
    }

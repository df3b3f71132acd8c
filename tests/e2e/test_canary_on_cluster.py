"""Issue 15 on the real cluster: the chart under Flagger and Argo Rollouts, and the repository
API on a pod.

The tools' CRDs come from their Go modules, at the releases tests/chart/crd_schemas.py validates
against offline (and the Prometheus Operator's ServiceMonitor, which the Flagger recipe turns
on). No Flagger or Argo Rollouts controller runs here (there are no images of them), so the API
server is the judge: its structural schemas and strict field validation take or refuse the
chart's analysis templates and the recipes of docs/deploy.md, and the analyses' queries run
against the cluster's Prometheus as each tool would fill them in for this release's pods.

The tests share one release (the runbook's, with the API token of its section 7), installed
with the Argo recipe's values plus Flagger's templates, and run in file order: the last one
upgrades it to the Flagger recipe's values.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml

from tabserve.catalog import MODELS
from tests.chart import crd_schemas
from tests.e2e.cluster import (
    NAMESPACE,
    SELECTOR,
    install_command,
    kubectl_json,
    prometheus_query,
    ready_pods,
    remove_release,
    run,
    runbook,
    wait_until,
)
from tests.test_canary_analysis import argo_query, flagger_query
from tests.test_chart_canary import ANALYSES, ARGO_API, ARGO_ARG, FLAGGER_VARIABLE, RECIPES

# The release of cloudcoil's ServiceMonitor model (constraints.txt) that tests/chart/ checks
# the chart's ServiceMonitor against; the Flagger recipe's values turn that object on.
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.80.1")
SERVICE_MONITOR_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
TEMPLATES = {
    "MetricTemplate": "metrictemplates.flagger.app",
    "AnalysisTemplate": "analysistemplates.argoproj.io",
}
# The recipes' objects, by kind, as kubectl names them.
RESOURCES = {"Rollout": "rollouts.argoproj.io", "Canary": "canaries.flagger.app"}
# One pod is all these tests need (2 cores for everything); the HPA keeps it at that.
ONE_POD = "--set autoscaling.minReplicas=1"
AUTH = "--set auth.enabled=true --set auth.existingSecret=tabserve-api-token"
# What the tools judge a canary on; shadow-agreement has no series without shadow scoring.
JUDGED = ("error-ratio", "latency-p99", "rejection-ratio")
SCRAPE_INTERVAL_S = 5  # scripts/cluster/config/prometheus.yml
PREDICTIONS = 60
IRIS_ROUTE = "/v1/models/iris:predict"  # its metrics label too: a model's name is a bounded value


class Release(NamedTuple):
    url: str  # the Service's, reachable from this host
    auth: dict[str, str]  # the bearer header with the release's API token


def crd_files() -> list[Path]:
    """The CRD files of every custom resource these tests create, in Go's module cache."""
    pinned = {*crd_schemas.MODULE_RESOURCES.values(), (*PROMETHEUS_OPERATOR, SERVICE_MONITOR_CRD)}
    return [crd_schemas.module_dir(module, release) / path for module, release, path in pinned]


@pytest.fixture(scope="module")
def crds(cluster: None) -> Iterator[None]:
    files = [arg for path in sorted(crd_files()) for arg in ("-f", str(path))]
    # Server-side: Argo's CRDs outgrow the annotation a client-side apply keeps (256 KiB).
    run(["kubectl", "apply", "--server-side", *files])
    run(["kubectl", "wait", "--for=condition=Established", "--timeout=60s", *files])
    yield
    run(["kubectl", "delete", "--ignore-not-found", "--wait", *files], timeout=300)


def install(image: str, recipe: str, workdir: Path, *options: str) -> None:
    """The runbook's `helm upgrade --install` with the local cluster's values, a recipe's values
    and the API token."""
    values = workdir / f"{recipe}.yaml"
    values.write_text(yaml.safe_dump(RECIPES[recipe][0]))
    started = time.monotonic()
    run(f"{install_command(image)} -f {values} {AUTH} {ONE_POD} {' '.join(options)}", timeout=900)
    print(f"helm upgrade --install with {recipe}: {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def release(image: str, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    remove_release()  # what an interrupted earlier run left
    run(runbook("kubectl create namespace ml-serving"))
    run(runbook("kubectl -n ml-serving create secret generic tabserve-api-token"))
    workdir = tmp_path_factory.mktemp("canary-values")
    install(image, "argo-values", workdir, "--set canary.analysis.flagger.enabled=true")
    secret = kubectl_json("-n", NAMESPACE, "get", "secret", "tabserve-api-token")
    token = base64.b64decode(secret["data"]["api-token"]).decode()
    cluster_ip = kubectl_json("-n", NAMESPACE, "get", "service", "tabserve")["spec"]["clusterIP"]
    yield Release(f"http://{cluster_ip}:3000", {"Authorization": f"Bearer {token}"})
    remove_release()


def apply(objects: list[dict[str, Any]], *options: str) -> None:
    """kubectl apply with strict field validation: the API server refuses a field the schema
    lacks instead of dropping it (what it does by default, and what Helm gets)."""
    run(["kubectl", "apply", "--validate=strict", *options, "-f", "-"],
        stdin=yaml.safe_dump_all(objects))  # fmt: skip


def stored(resource: str, name: str | None = None) -> Any:
    """The API server's copy of one object, or every object of the kind in the namespace."""
    found = kubectl_json("-n", NAMESPACE, "get", resource, *([name] if name else []))
    return found if name else found["items"]


def contains(kept: Any, given: Any) -> bool:
    """Whether every field given is kept as given (the server may only add defaults)."""
    if isinstance(given, dict):
        return isinstance(kept, dict) and all(
            key in kept and contains(kept[key], value) for key, value in given.items()
        )
    if isinstance(given, list):
        return (
            isinstance(kept, list) and len(kept) == len(given) and all(map(contains, kept, given))
        )
    return kept == given


def test_the_api_server_takes_every_analysis_template_as_rendered(release: Release) -> None:
    manifest = run(["helm", "get", "manifest", "tabserve", "-n", NAMESPACE]).stdout
    rendered = [m for m in yaml.safe_load_all(manifest) if m and m["kind"] in TEMPLATES]
    assert len(rendered) == 2 * len(ANALYSES), [m["kind"] for m in rendered]
    apply(rendered, "--dry-run=server")
    for template in rendered:
        kept = stored(TEMPLATES[template["kind"]], template["metadata"]["name"])
        assert kept["spec"] == template["spec"], template["metadata"]["name"]
        if template["kind"] == "MetricTemplate":
            variables = set(FLAGGER_VARIABLE.findall(kept["spec"]["query"]))
            assert variables == {"namespace", "target", "interval"}, kept["spec"]["query"]
        else:
            (metric,) = kept["spec"]["metrics"]
            variables = set(ARGO_ARG.findall(metric["provider"]["prometheus"]["query"]))
            assert variables == {"namespace", "rollout", "canary-hash"}, metric


def serving_pod() -> dict[str, Any]:
    """The release's one ready pod (ONE_POD)."""
    (name,) = ready_pods(NAMESPACE, SELECTOR)
    return stored("pod", name)


def pod_url(pod: dict[str, Any]) -> str:
    """A pod's own HTTP port: the bridge routes pod addresses from this host."""
    return f"http://{pod['status']['podIP']}:3000"


def test_repository_api_through_the_service_and_on_one_pod(release: Release) -> None:
    index = f"{release.url}/v2/repository/index"
    assert httpx.post(index, timeout=30).status_code == 401
    listed = httpx.post(index, headers=release.auth, timeout=30)
    assert listed.status_code == 200, listed.text
    versions = {row["name"]: row for row in listed.json()}
    assert set(versions) == set(MODELS), listed.json()
    assert all(
        row["state"] == "READY" and "champion" in row["aliases"] for row in versions.values()
    )

    pod = serving_pod()
    version = versions["churn"]["version"]
    aliases = f"{pod_url(pod)}/v2/repository/models/churn/aliases"
    move = {"alias": "challenger", "version": version}
    assert httpx.post(aliases, json=move, timeout=30).status_code == 401
    moved = httpx.post(aliases, json=move, headers=release.auth, timeout=30)
    assert moved.status_code == 200, moved.text
    assert moved.json()["aliases"]["challenger"] == version, moved.json()
    answer = httpx.post(
        f"{pod_url(pod)}/v1/models/churn/versions/challenger:predict",
        json={"instances": [MODELS["churn"].example_instance()]},
        headers=release.auth,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == f"churn:{version}", answer.json()


def _iris_predictions(pod: str) -> float:
    """Iris predictions `pod` answered, as Prometheus last scraped them."""
    labels = f'namespace="{NAMESPACE}", pod="{pod}", route="{IRIS_ROUTE}"'
    result = prometheus_query(f"sum(tabserve_requests_total{{{labels}}})")
    return float(result[0]["value"][1]) if result else 0.0


def filled_queries(pod: dict[str, Any]) -> dict[str, str]:
    """The judging analyses' queries as the cluster keeps them, their variables filled in as
    each tool would for a new version running in `pod`: Flagger, the Deployment it watches
    (`tabserve`) and the Canary's metric interval; Argo Rollouts, the pod-template-hash of the
    pod's ReplicaSet."""
    (canary,) = RECIPES["flagger-canary"]
    metrics = {m["templateRef"]["name"]: m for m in canary["spec"]["analysis"]["metrics"]}
    queries = {}
    for template in stored(TEMPLATES["MetricTemplate"]):
        if metric := metrics.get(template["metadata"]["name"]):
            variables = {
                "target": "tabserve",
                "namespace": NAMESPACE,
                "interval": metric["interval"],
            }
            queries[f"flagger {metric['name']}"] = flagger_query(template, variables)
    passed = {"canary-hash": pod["metadata"]["labels"]["pod-template-hash"]}
    for template in stored(TEMPLATES["AnalysisTemplate"]):
        (metric,) = template["spec"]["metrics"]
        if metric["name"] in JUDGED:
            queries[f"argo {metric['name']}"] = argo_query(template, passed)
    return queries


def test_analysis_queries_give_a_value_for_the_releases_pod(release: Release) -> None:
    pod = serving_pod()
    name = pod["metadata"]["name"]
    before = _iris_predictions(name)
    body = {"instances": [MODELS["iris"].example_instance()]}
    with httpx.Client(base_url=release.url, headers=release.auth, timeout=30) as client:
        # The pod's first iris prediction starts its series, and rate() counts a series from its
        # first scrape: predictions all made before that scrape (60 take ~3.5 s, a scrape comes
        # every 5 s) would count for nothing and every query give NaN (seen in CI). So the rest
        # come once Prometheus has the series.
        assert client.post(IRIS_ROUTE, json=body).status_code == 200
        wait_until("Prometheus scrapes it", lambda: _iris_predictions(name) > before, timeout=60)
        for _ in range(PREDICTIONS):
            assert client.post(IRIS_ROUTE, json=body).status_code == 200
            time.sleep(0.05)
    wait_until("Prometheus scrapes the predictions",
               lambda: _iris_predictions(name) > before + PREDICTIONS, timeout=60)  # fmt: skip
    time.sleep(SCRAPE_INTERVAL_S + 1)  # one more scrape: rate() sees the last requests
    queries = filled_queries(pod)
    assert sorted(queries) == sorted(f"{tool} {a}" for tool in ("argo", "flagger") for a in JUDGED)
    values = {}
    for what, query in queries.items():
        result = prometheus_query(query)
        assert len(result) == 1, (what, query, result)
        values[what] = float(result[0]["value"][1])
    print(f"analyses over pod {name} after {PREDICTIONS} predictions: {values}")
    assert all(math.isfinite(value) for value in values.values()), values


def _able_to_scale() -> dict[str, str] | None:
    """The HPA's AbleToScale condition: whether it could read its target's scale subresource."""
    hpa = stored("horizontalpodautoscaler", "tabserve")
    conditions = hpa.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "AbleToScale"), None)


def _scales_the_rollout() -> bool:
    return (_able_to_scale() or {}).get("status") == "True"


def test_argo_recipes_are_taken_and_the_autoscaler_scales_the_rollout(release: Release) -> None:
    hpa = stored("horizontalpodautoscaler", "tabserve")
    target = {"apiVersion": ARGO_API, "kind": "Rollout", "name": "tabserve"}
    assert hpa["spec"]["scaleTargetRef"] == target
    before = wait_until("the HPA's first look at the Rollout", _able_to_scale, timeout=60)
    assert before["reason"] == "FailedGetScale", before  # no Rollout yet
    try:
        for recipe in ("argo-canary", "argo-blue-green"):
            apply(RECIPES[recipe])
            (rollout,) = [m for m in RECIPES[recipe] if m["kind"] == "Rollout"]
            kept = stored(RESOURCES["Rollout"], "tabserve")
            assert contains(kept["spec"], rollout["spec"]), (recipe, kept["spec"])
        # Argo's controller gives a Rollout without spec.replicas a count of 1 (its
        # rollout/controller.go: the scale subresource needs the field); none runs here.
        run(["kubectl", "-n", NAMESPACE, "patch", RESOURCES["Rollout"], "tabserve",
             "--type=merge", "-p", '{"spec": {"replicas": 1}}'])  # fmt: skip
        # The HPA reads and writes the Rollout's count through its scale subresource.
        wait_until("the HPA gets the Rollout's scale", _scales_the_rollout, timeout=60)
    finally:
        for recipe in ("argo-canary", "argo-blue-green"):
            run(["kubectl", "delete", "--ignore-not-found", "-f", "-"],
                stdin=yaml.safe_dump_all(RECIPES[recipe]))  # fmt: skip


def test_flagger_recipe_upgrades_the_release_and_its_canary_is_taken(
    release: Release, image: str, tmp_path: Path
) -> None:
    install(image, "flagger-values", tmp_path)
    # Flagger makes the Services; the chart's own is gone, its ServiceMonitor selects theirs.
    assert run(["kubectl", "-n", NAMESPACE, "get", "service", "tabserve"], check=False).returncode
    monitor = stored("servicemonitors.monitoring.coreos.com", "tabserve")
    selector = RECIPES["flagger-values"][0]["metrics"]["serviceMonitor"]["selector"]
    assert monitor["spec"]["selector"]["matchLabels"] == selector
    assert stored("horizontalpodautoscaler", "tabserve")["spec"]["scaleTargetRef"]["kind"] == (
        "Deployment"
    )
    (canary,) = RECIPES["flagger-canary"]
    apply([canary])
    assert contains(stored(RESOURCES["Canary"], "tabserve")["spec"], canary["spec"])
    templates = {m["metadata"]["name"] for m in stored(TEMPLATES["MetricTemplate"])}
    wanted = {metric["templateRef"]["name"] for metric in canary["spec"]["analysis"]["metrics"]}
    assert wanted <= templates, templates
    assert not stored(TEMPLATES["AnalysisTemplate"])  # the recipe leaves Argo's off

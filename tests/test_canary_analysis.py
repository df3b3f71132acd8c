"""The chart's canary analyses against a real Prometheus scraping a real `bentoml serve`.

Each query is taken from the rendered Flagger MetricTemplate or Argo Rollouts AnalysisTemplate
and its variables are filled in as the tool fills them for a release (Flagger: {{ target }},
{{ namespace }}, {{ interval }}; Argo Rollouts: the template's args, canary-hash from the new
ReplicaSet). The session's server stands in for the pods of each tool's release: Prometheus
scrapes it once per pod, under that pod's name and namespace, as the Prometheus Operator labels
a pod's series, so the queries must pick the new version's pod and leave the others out.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from observability.local_prometheus import Prometheus
from tests.chart.manifests import Manifest, render
from tests.data import instances
from tests.server import ServerProcess
from tests.system_packages import require
from tests.test_chart_canary import ARGO_ARG, BOTH, CANARY_APIS, FLAGGER_VARIABLE

WINDOW = "1m"  # the Canary's metric interval (Flagger) and canary.analysis.argo.interval
NEW_HASH = "7d9c4b8f6d"  # the new ReplicaSet's pod-template-hash
NEW_POD = f"tabserve-{NEW_HASH}-x2x9k"
# Per tool: the namespace of its release, and its pods (the new version's first).
PODS = {
    # Flagger: the new version runs in the Deployment it watches, the old in its copy.
    "flagger": ("flagger-release", [NEW_POD, "tabserve-primary-5c8d7b6f4-q8w7e"]),
    # Argo Rollouts: both versions are ReplicaSets of the Rollout, told apart by their hash.
    "argo": ("argo-release", [NEW_POD, "tabserve-5c8d7b6f4-q8w7e"]),
}
# What each tool passes for the release above.
FLAGGER_VARIABLES = {"target": "tabserve", "namespace": PODS["flagger"][0], "interval": WINDOW}
ARGO_ARGS = {"canary-hash": NEW_HASH, "namespace": PODS["argo"][0]}
# No series until shadow scoring exists: the query must parse, but has nothing to return.
NO_SERIES_YET = {"shadow-agreement"}
PREDICTIONS = 60


def flagger_query(template: Manifest, variables: dict[str, str] = FLAGGER_VARIABLES) -> str:
    """The query as Flagger runs it: its template actions replaced by the release's values."""

    def value(match: re.Match[str]) -> str:
        return variables[match[1]]

    return FLAGGER_VARIABLE.sub(value, template["spec"]["query"])


def argo_query(template: Manifest, passed: dict[str, str] = ARGO_ARGS) -> str:
    """The query as Argo Rollouts runs it: the template's args (defaults, then the Rollout's)."""
    args = {arg["name"]: arg.get("value") for arg in template["spec"]["args"]}
    args["rollout"] = "tabserve"
    args |= passed
    (metric,) = template["spec"]["metrics"]
    return ARGO_ARG.sub(lambda match: args[match[1]], metric["provider"]["prometheus"]["query"])


def _queries() -> list[tuple[str, str, str]]:
    """(tool, analysis, query) for every rendered template."""
    found = []
    for template in render(BOTH, CANARY_APIS):
        analysis = template["metadata"]["name"].removeprefix("tabserve-")
        if template["kind"] == "MetricTemplate":
            found.append(("flagger", analysis, flagger_query(template)))
        elif template["kind"] == "AnalysisTemplate":
            found.append(("argo", analysis, argo_query(template)))
    return found


QUERIES = _queries()


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    require("prometheus")
    labels = [
        {"namespace": namespace, "pod": pod} for namespace, pods in PODS.values() for pod in pods
    ]
    target = server.metrics_url.split("/")[2]
    workdir: Path = tmp_path_factory.mktemp("canary-prometheus")
    with Prometheus.start([target], workdir, 1.0, rule_files=(), target_labels=labels) as running:
        _wait_until(running, f"count(up == 1) == {len(labels)}", "the first scrape of every pod")
        # Requests after the first scrape, over a few scrapes: rate() sees them grow.
        served = f'sum(tabserve_requests_total{{pod="{NEW_POD}", code="200"}})'
        before = running.query(served)["data"]["result"]
        count = float(before[0]["value"][1]) if before else 0
        rows = instances("iris", 5)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for number in range(PREDICTIONS):
                body = {"instances": rows[number % 5 : number % 5 + 1]}
                assert client.post("/v1/models/iris:predict", json=body).status_code == 200
                time.sleep(0.05)
        _wait_until(running, f"{served} >= {count + PREDICTIONS}", "the load")
        time.sleep(2)  # one more scrape: rate() needs two samples after the last request
        yield running


def _wait_until(prometheus: Prometheus, condition: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while not prometheus.query(condition)["data"]["result"]:
        assert time.monotonic() < deadline, f"Prometheus did not scrape {what} in 30 s"
        time.sleep(0.3)


def test_every_analysis_is_run_for_both_tools() -> None:
    analyses = {analysis for _, analysis, _ in QUERIES}
    assert {"error-ratio", "latency-p99", "rejection-ratio", "shadow-agreement"} == analyses
    assert len(QUERIES) == 2 * len(analyses)


@pytest.mark.parametrize(
    ("tool", "analysis", "query"), QUERIES, ids=[f"{t}:{a}" for t, a, _ in QUERIES]
)
def test_analysis_query_runs_on_real_metrics(
    prometheus: Prometheus, tool: str, analysis: str, query: str
) -> None:
    answer = prometheus.query(query)
    assert answer["status"] == "success", answer  # a syntax error: status "error", bad_data
    if analysis in NO_SERIES_YET:
        return  # valid PromQL; tabserve_shadow_comparisons_total has no series yet
    (result,) = answer["data"]["result"]
    value = float(result["value"][1])
    assert math.isfinite(value), (analysis, value)
    if analysis == "latency-p99":
        assert 0 < value <= 10, value  # the histogram's buckets end at 10 s
    else:
        assert 0 <= value <= 1, value  # ratios; these requests were all answered 200


@pytest.mark.parametrize("tool", PODS)
def test_each_query_selects_the_new_versions_pod_alone(prometheus: Prometheus, tool: str) -> None:
    """Every series of the same server, under all its pod names: each query's selector keeps
    the new version's pod and neither the old version's nor another release's."""
    for query_tool, analysis, query in QUERIES:
        if query_tool != tool:
            continue
        for selector in set(re.findall(r"\{(namespace=[^}]*?pod=~\"[^\"]+\")", query)):
            pods = prometheus.query(f"group by (namespace, pod) (up{{{selector}}})")
            found = {(s["metric"]["namespace"], s["metric"]["pod"]) for s in pods["data"]["result"]}
            assert found == {(PODS[tool][0], NEW_POD)}, (analysis, selector)

"""The chart on a real cluster, in the order an operator meets it: install and test it as
docs/deploy.md says, call it through its Service, roll it out and evict its pods under load
without dropping a request, autoscale it on request load and back, score a CSV with its batch
Job, scale it by hand, roll it back, and uninstall it without leaving anything behind.

The tests share one release and run in file order; each prints what it measured (`make e2e`
shows it in the summary).
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tabserve.catalog import MODELS
from tests.dashboard_queries import queries, substituted
from tests.e2e.cluster import (
    NAMESPACE,
    PROJECT,
    SELECTOR,
    STATE,
    answers_every_model,
    install_command,
    kubectl_json,
    locust,
    prometheus_query,
    ready_pods,
    remove_release,
    run,
    runbook,
    wait_until,
    wait_until_empty,
)

# Scale down 15 s after the load instead of 5 minutes, so the suite sees it.
FAST_SCALE_DOWN = "--set autoscaling.behavior.scaleDown.stabilizationWindowSeconds=15"


@pytest.fixture(scope="module")
def service(image: str) -> Iterator[str]:
    """The release, installed as the runbook says (plus the local cluster's values); yields the
    Service's ClusterIP URL, reachable from this host."""
    remove_release()  # what an interrupted earlier run left
    run(runbook("kubectl create namespace ml-serving"))
    started = time.monotonic()
    run(f"{install_command(image)} {FAST_SCALE_DOWN}", timeout=900)
    print(f"helm install --wait: {time.monotonic() - started:.0f} s to 2 ready pods")
    cluster_ip = kubectl_json("-n", NAMESPACE, "get", "service", "tabserve")["spec"]["clusterIP"]
    yield f"http://{cluster_ip}:3000"
    remove_release()


def helm_upgrade(*settings: str, timeout: float = 900) -> None:
    run(
        ["helm", "upgrade", "tabserve", "helm/tabserve", "-n", NAMESPACE, "--reuse-values",
         *(arg for setting in settings for arg in ("--set", setting)), "--wait", "--timeout=10m"],
        timeout=timeout,
    )  # fmt: skip


def replicas() -> tuple[int, int]:
    """(ready, wanted) pods of the Deployment."""
    status = kubectl_json("-n", NAMESPACE, "get", "deployment", "tabserve")
    return status["status"].get("readyReplicas", 0), status["spec"]["replicas"]


def test_helm_test_passes(service: str) -> None:
    output = run(runbook("helm test tabserve -n ml-serving"), timeout=300).stdout
    assert "Phase:          Succeeded" in output, output


def test_service_answers_rest_and_grpc_from_the_host(service: str) -> None:
    answers_every_model(service)
    # The metrics have a port of their own; the prediction port keeps no /metrics.
    assert httpx.get(f"{service}/metrics", timeout=10).status_code == 404
    assert httpx.get(f"{service[:-4]}8002/metrics", timeout=10).status_code == 200
    # Prometheus scrapes the metrics port, and BentoML's own `endpoint` label (the route)
    # survives the scrape's target label of the same name (the port name, from the
    # ServiceMonitor's conventions): the dashboards group by it.
    routes = wait_until(
        "Prometheus has BentoML's request series with their route as `endpoint`",
        lambda: prometheus_query('bentoml_service_request_total{endpoint="/readyz"}'),
        timeout=60,
    )
    assert all(series["metric"]["namespace"] == NAMESPACE for series in routes)
    # On by default. (This cluster's bridge CNI does not enforce NetworkPolicy: the policy's
    # content is checked offline, tests/test_chart.py.)
    policy = kubectl_json("-n", NAMESPACE, "get", "networkpolicy", "tabserve")
    assert {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]} == {
        "http",
        "grpc",
        "metrics",
    }


def test_rollout_to_a_new_revision_under_load_drops_nothing(service: str, tmp_path: Path) -> None:
    before = set(ready_pods(NAMESPACE, SELECTOR))
    with locust(service, tmp_path, users=8) as load:
        time.sleep(10)
        started = time.monotonic()
        helm_upgrade("config.maxInstances=999")  # a config change: the pods roll
        run(runbook("kubectl -n ml-serving rollout status deployment/tabserve"), timeout=600)
        rollout = time.monotonic() - started
        time.sleep(5)
        result = load.stop()
    after = set(ready_pods(NAMESPACE, SELECTOR))
    print(f"rollout: {rollout:.0f} s, {result.requests} requests, {result.failures} failed")
    assert not before & after, "the pods did not roll"
    assert result.failures == 0, result.failure_lines
    assert result.requests > 200 and all(count for count, _ in result.by_name.values())


def evict(pod: str) -> str:
    """The Eviction API, as `kubectl drain` uses it; '' when allowed, else the refusal."""
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod}}
    answer = run(
        ["kubectl", "create", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/eviction",
         "-f", "-"],
        stdin=json.dumps(eviction),
        check=False,
    )  # fmt: skip
    return "" if answer.returncode == 0 else answer.stderr


def test_evictions_respect_the_disruption_budget_and_drop_nothing(
    service: str, tmp_path: Path
) -> None:
    with locust(service, tmp_path, users=8) as load:
        time.sleep(10)
        pods = ready_pods(NAMESPACE, SELECTOR)
        outcomes = [evict(pod) for pod in pods]  # a drain: every pod at once
        # minAvailable 1: all but the last are evicted; the last waits for a replacement.
        assert outcomes[:-1] == [""] * (len(pods) - 1), outcomes
        assert "disruption budget" in outcomes[-1], outcomes[-1]
        wait_until(
            "the last pod evicted once its replacements are ready",
            lambda: evict(pods[-1]) == "",
            timeout=300,
            interval=5,
        )
        wait_until("2 ready pods again", lambda: replicas()[0] >= 2, timeout=300)
        result = load.stop()
    print(f"evictions of {len(pods)} pods: {result.requests} requests, {result.failures} failed")
    assert result.failures == 0, result.failure_lines


def in_flight_per_pod() -> float | None:
    """The custom metric the HPA reads, as prometheus-adapter serves it."""
    api = f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}"
    path = f"{api}/pods/*/tabserve_requests_in_progress"
    answer = run(["kubectl", "get", "--raw", path], check=False)
    if answer.returncode != 0:
        return None
    items = json.loads(answer.stdout)["items"]
    values = [float(item["value"].removesuffix("m")) / 1000 if item["value"].endswith("m")
              else float(item["value"]) for item in items]  # fmt: skip
    return sum(values) / len(values) if values else None


def test_autoscaling_on_request_load_scales_out_and_back(service: str, tmp_path: Path) -> None:
    wait_until("back at the minimum of 2 pods", lambda: replicas() == (2, 2), timeout=300)
    assert in_flight_per_pod() is not None, "prometheus-adapter serves no in-flight metric"
    timeline: list[tuple[int, int, float | None]] = []
    started = time.monotonic()

    def scaled_out() -> bool:
        timeline.append((round(time.monotonic() - started), replicas()[1], in_flight_per_pod()))
        return timeline[-1][1] > 2

    with locust(service, tmp_path, users=48, classes=("HotPathUser",)) as load:
        wait_until("the HPA adds pods under load", scaled_out, timeout=240, interval=5)
        hpa = kubectl_json("-n", NAMESPACE, "get", "hpa", "tabserve")
        time.sleep(20)
        result = load.stop()
    print(f"under load ({result.requests} requests, {result.failures} failed): "
          f"(s, wanted replicas, in-flight per pod) {timeline}")  # fmt: skip
    assert result.failures == 0, result.failure_lines
    metrics = {m["type"]: m for m in hpa["status"]["currentMetrics"]}
    in_flight = float(metrics["Pods"]["pods"]["current"]["averageValue"].removesuffix("m"))
    assert in_flight > 0, metrics

    started = time.monotonic()
    wait_until("back to 2 pods once the load stopped", lambda: replicas()[1] == 2, timeout=300)
    print(f"scaled back to 2 pods {time.monotonic() - started:.0f} s after the load stopped")


# Shadow scoring compares two versions of a model, and the image holds one of each: its panels
# have no series here. tests/test_prometheus.py checks them with real data (two churn versions).
CLUSTER_QUERIES = [query for query in queries() if "tabserve_shadow_" not in query[2]]


@pytest.mark.parametrize(("dashboard", "title", "expr"), CLUSTER_QUERIES)
def test_dashboard_queries_return_data_for_the_pods(
    service: str, dashboard: str, title: str, expr: str
) -> None:
    """After the load above (within the 5-minute rate window): every panel, Kubernetes ones
    included, shows these pods."""
    result = prometheus_query(substituted(expr, namespace=NAMESPACE, __rate_interval="5m"))
    values = [float(series["value"][1]) for series in result]
    assert values, f"{dashboard} / {title}: no data for {expr}"
    assert any(math.isfinite(value) for value in values), f"{title}: only NaN"


def test_batch_job_scores_a_csv_and_upgrades_keep_working(service: str) -> None:
    data = STATE / "e2e-batch"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    shutil.copy(PROJECT / "data" / "sms_spam.csv", data / "in.csv")
    shutil.chown(data, 1034, 1034)  # the image's user writes the output there
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "tabserve-e2e-batch"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(data), "type": "Directory"},
            "claimRef": {"namespace": NAMESPACE, "name": "batch-data"},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "batch-data", "namespace": NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": "tabserve-e2e-batch",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    run(["kubectl", "apply", "-f", "-"], stdin=json.dumps({"kind": "List", "apiVersion": "v1",
                                                          "items": [volume, claim]}))  # fmt: skip
    try:
        for revision_change in ("batch.enabled=true", "config.maxInstances=998"):
            helm_upgrade(
                revision_change,
                "batch.existingClaim=batch-data",
                "batch.model=spam",
                "batch.resources.requests.cpu=200m",
            )
            revision = json.loads(run(["helm", "-n", NAMESPACE, "status", "tabserve",
                                       "-o", "json"]).stdout)["version"]  # fmt: skip
            job = f"job/tabserve-batch-r{revision}"
            run(["kubectl", "-n", NAMESPACE, "wait", "--for=condition=complete", job,
                 "--timeout=300s"], timeout=320)  # fmt: skip
            scored = (data / "out.csv").read_text().splitlines()
            inputs = (data / "in.csv").read_text().splitlines()
            assert len(scored) == len(inputs), (len(scored), len(inputs))
            print(f"batch Job {job}: {len(scored) - 1} rows scored")
    finally:
        helm_upgrade("batch.enabled=false")
        run(["kubectl", "-n", NAMESPACE, "delete", "pvc", "batch-data", "--wait"], check=False)
        run(["kubectl", "delete", "pv", "tabserve-e2e-batch", "--wait"], check=False)
        shutil.rmtree(data, ignore_errors=True)


def test_api_token_from_a_mounted_secret(service: str) -> None:
    """Section 7 of the runbook: the token in a Secret, mounted as a file, read by the service
    and by the helm test pod; without it predictions get 401 and gRPC UNAUTHENTICATED."""
    predict = f"{service}/v1/models/iris:predict"
    body = {"instances": [MODELS["iris"].example_instance()]}
    run(runbook("kubectl -n ml-serving create secret generic tabserve-api-token"))
    try:
        enable = runbook(
            "helm upgrade --install tabserve helm/tabserve -n ml-serving --reuse-values"
        )
        run(f"{enable} --wait --timeout 10m", timeout=900)
        secret = kubectl_json("-n", NAMESPACE, "get", "secret", "tabserve-api-token")
        token = base64.b64decode(secret["data"]["api-token"]).decode()
        assert httpx.post(predict, json=body, timeout=30).status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert httpx.post(predict, json=body, headers=bearer, timeout=30).status_code == 200
        client = grpcclient.InferenceServerClient(service.removeprefix("http://")[:-4] + "8001")
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("iris")
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.get_model_metadata("iris", headers={"authorization": f"Bearer {token}"})
        output = run(runbook("helm test tabserve -n ml-serving"), timeout=300).stdout
        assert "Phase:          Succeeded" in output, output
        env = kubectl_json("-n", NAMESPACE, "get", "deployment", "tabserve")["spec"]["template"]
        assert "TABSERVE_API_TOKEN" not in json.dumps(env).replace("TABSERVE_API_TOKEN_FILE", "")
    finally:
        helm_upgrade("auth.enabled=false", "auth.existingSecret=")
        run(["kubectl", "-n", NAMESPACE, "delete", "secret", "tabserve-api-token"], check=False)
    assert httpx.post(predict, json=body, timeout=30).status_code == 200


def test_scale_by_hand_then_roll_back(service: str) -> None:
    helm_upgrade("autoscaling.enabled=false", "replicaCount=3")
    assert replicas() == (3, 3)
    assert run(["kubectl", "-n", NAMESPACE, "get", "hpa", "tabserve"], check=False).returncode
    history = run(runbook("helm -n ml-serving history tabserve")).stdout
    assert "deployed" in history and "superseded" in history, history
    rollback = runbook("helm -n ml-serving rollback tabserve <revision>").replace("<revision>", "1")
    run(f"{rollback} --wait --timeout 10m", timeout=900)
    # Revision 1 (autoscaled) carries a replica count: Helm's merge once deleted the field here
    # and Kubernetes set 1, so the release fell to one pod until the HPA acted.
    assert replicas()[1] >= 2, replicas()
    run(runbook("kubectl -n ml-serving rollout status deployment/tabserve"), timeout=600)
    config = kubectl_json("-n", NAMESPACE, "get", "configmap", "tabserve")["data"]
    assert config["TABSERVE_MAX_INSTANCES"] == "1000"  # revision 1's value again
    run(runbook("kubectl -n ml-serving get hpa tabserve"))  # the HPA is back


def test_uninstall_leaves_nothing_behind(service: str) -> None:
    run(["helm", "uninstall", "tabserve", "-n", NAMESPACE, "--wait"], timeout=300)
    wait_until_empty(NAMESPACE)

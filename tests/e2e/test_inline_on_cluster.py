"""Inline mode on the real cluster, as docs/deploy.md (section 3) turns it on: a release in the
default split (an API worker and a model runner per pod) switched to inline mode (the models in
the API worker, no runner process) under load drops no request, its new pods run no runner, and
they answer every protocol and the chart's `helm test`, and Prometheus has their models and
model calls.

One release of one pod (autoscaling may add more under the load); the tests run in file order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabserve.catalog import MODELS
from tests.e2e.cluster import (
    NAMESPACE,
    SELECTOR,
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
)

ONE_POD = "--set autoscaling.minReplicas=1"
SWITCH = "helm upgrade tabserve helm/tabserve -n ml-serving --reuse-values --set-string"
# Each process's command line, one per line, from inside the pod's container.
COMMAND_LINES = """
import pathlib
for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
    try:
        print(cmdline.read_bytes().replace(b"\\0", b" ").decode())
    except OSError:  # the process ended meanwhile
        pass
"""


@pytest.fixture(scope="module")
def release(image: str) -> Iterator[str]:
    """A split release (the chart's default), installed as the runbook says; yields its
    Service's ClusterIP URL."""
    remove_release()
    run(runbook("kubectl create namespace ml-serving"))
    run(f"{install_command(image)} {ONE_POD}", timeout=900)
    cluster_ip = kubectl_json("-n", NAMESPACE, "get", "service", "tabserve")["spec"]["clusterIP"]
    yield f"http://{cluster_ip}:3000"
    remove_release()


def runs_a_model_runner(pod: str) -> bool:
    """Whether one of the pod's processes is a BentoML worker of the model runner service."""
    processes = run(
        ["kubectl", "-n", NAMESPACE, "exec", pod, "-c", "tabserve", "--",
         "python", "-c", COMMAND_LINES],
    ).stdout  # fmt: skip
    assert "bentoml" in processes, processes  # the listing did see the server
    return "--service-name model_runner" in processes


def test_switching_a_release_to_inline_mode_under_load_drops_nothing(
    release: str, tmp_path: Path
) -> None:
    split = set(ready_pods(NAMESPACE, SELECTOR))
    assert all(runs_a_model_runner(pod) for pod in split)
    with locust(release, tmp_path, users=4) as load:
        time.sleep(5)
        started = time.monotonic()
        run(runbook(SWITCH), timeout=300)
        run(runbook("kubectl -n ml-serving rollout status deployment/tabserve"), timeout=600)
        switch = time.monotonic() - started
        time.sleep(5)
        result = load.stop()
    print(f"switch to inline mode: {switch:.0f} s, {result.requests} requests, "
          f"{result.failures} failed")  # fmt: skip
    assert result.failures == 0, result.failure_lines
    assert result.requests > 100 and all(count for count, _ in result.by_name.values())
    inline = set(ready_pods(NAMESPACE, SELECTOR))
    assert inline and not inline & split, "the pods did not roll"
    assert not any(runs_a_model_runner(pod) for pod in inline)


def test_inline_pods_answer_every_protocol_and_helm_test(release: str) -> None:
    answers_every_model(release)
    output = run(runbook("helm test tabserve -n ml-serving"), timeout=300).stdout
    assert "Phase:          Succeeded" in output, output


def test_prometheus_has_the_models_and_model_calls_of_the_inline_pods(release: str) -> None:
    """The model metrics, recorded in the API worker now, reach Prometheus through the pod's
    metrics port: the dashboards' Inference row has data, and TabserveModelNotLoaded (which
    watches tabserve_model_loaded) stays quiet."""
    pods = f'namespace="{NAMESPACE}", pod=~"{"|".join(ready_pods(NAMESPACE, SELECTOR))}"'
    calls = f"sum(tabserve_inference_rows_count{{{pods}}}) > 0"
    wait_until("Prometheus has their model calls", lambda: prometheus_query(calls), timeout=60)
    loaded = prometheus_query(f"min by (model) (tabserve_model_loaded{{{pods}}}) == 1")
    assert {series["metric"]["model"] for series in loaded} == set(MODELS), loaded

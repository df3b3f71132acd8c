"""/metrics of a real `bentoml serve`: declared names and labels, exact counts, bounded labels."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tabserve import metrics
from tabserve.catalog import MODELS
from tests.data import instances
from tests.declared_metrics import BENTOML, DRIFT, TABSERVE
from tests.server import ServerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess) -> Samples:
    response = httpx.get(server.metrics_url, timeout=30)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value for (sample, pairs), value in samples.items() if sample == name and wanted <= pairs
    )


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(pairs)[label] for (sample, pairs) in samples if sample == name}


@pytest.fixture(scope="module")
def server(
    trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with ServerProcess.start(tmp_path_factory.mktemp("metrics") / "serve.log") as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as session:
        yield session


def predict(client: httpx.Client, model: str, rows: list[dict]) -> list[str]:
    response = client.post(f"/v1/models/{model}:predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    return [prediction["label"] for prediction in response.json()["predictions"]]


def test_in_flight_gauge_exists_before_the_first_request(
    client: httpx.Client, server: ServerProcess
) -> None:
    """The HPA's metric: missing on a pod that served nothing yet, an HPA never scales down.
    (First in this module: its server has served no prediction yet.)"""
    samples = scrape(server)
    assert label_values(samples, "tabserve_requests_in_progress", "protocol") == {"rest", "grpc"}
    assert total(samples, "tabserve_requests_in_progress") == 0


def test_every_declared_metric_is_exposed_with_its_labels(
    client: httpx.Client, server: ServerProcess
) -> None:
    for name in MODELS:
        predict(client, name, instances(name, 2))
    client.post("/v1/models/iris:predict", json={"instances": [{}]})
    client.post("/v1/models/churn:explain", json={"instances": instances("churn", 1)})

    response = httpx.get(server.metrics_url, timeout=30)
    families = {
        (f"{family.name}_total" if family.type == "counter" else family.name): family
        for family in text_string_to_metric_families(response.text)
    }
    for name, (kind, labels) in {**TABSERVE, **BENTOML}.items():
        assert name in families, f"{name} is not exposed"
        family = families[name]
        assert family.type == kind, name
        exposed = {label for sample in family.samples for label in sample.labels} - {"le"}
        assert exposed == labels, name
    ours = {name for name in families if name.startswith("tabserve_")}
    # The drift gauges appear once enough rows were served (tests/test_drift.py checks them).
    assert ours - set(DRIFT) == set(TABSERVE), "an undeclared tabserve_ metric: declare, document"


def test_predictions_scores_and_runner_rows_count_every_instance(
    client: httpx.Client, server: ServerProcess
) -> None:
    before = scrape(server)
    answers = {"churn": predict(client, "churn", instances("churn", 7))}
    answers["drug"] = predict(client, "drug", instances("drug", 9))
    after = scrape(server)

    for model, labels in answers.items():
        for class_name, count in Counter(labels).items():
            counted = total(
                after, "tabserve_predictions_total", model=model, **{"class": class_name}
            )
            counted -= total(
                before, "tabserve_predictions_total", model=model, **{"class": class_name}
            )
            assert counted == count, (model, class_name)
        for name in ("tabserve_prediction_score_count", "tabserve_inference_rows_sum"):
            grown = total(after, name, model=model) - total(before, name, model=model)
            assert grown == len(labels), (model, name)
        runs = total(after, "tabserve_inference_duration_seconds_count", model=model)
        assert runs > total(before, "tabserve_inference_duration_seconds_count", model=model)
    tag = client.get("/v1/models/churn").json()["tag"]
    assert label_values(after, "tabserve_predictions_total", "version") >= {tag.split(":")[1]}


def test_churn_scores_are_the_positive_class_probability(
    client: httpx.Client, server: ServerProcess
) -> None:
    """Sum and buckets as `observe` would record them, one score at a time. metrics.observe_all
    records a batch through prometheus-client's private fields: this is what the multiprocess
    scrape makes of them (the in-process comparison is the last test of this file)."""
    before = scrape(server)
    rows = instances("churn", 60, seed=5)
    response = client.post("/v1/models/churn:predict", json={"instances": rows})
    after = scrape(server)
    scores = np.array([p["probabilities"]["churned"] for p in response.json()["predictions"]])
    grown = total(after, "tabserve_prediction_score_sum", model="churn")
    grown -= total(before, "tabserve_prediction_score_sum", model="churn")
    assert grown == pytest.approx(scores.sum(), abs=1e-6)
    bounds = label_values(after, "tabserve_prediction_score_bucket", "le")
    assert len(bounds) == 21  # 20 bins and +Inf
    for bound in bounds:
        counted = total(after, "tabserve_prediction_score_bucket", model="churn", le=bound)
        counted -= total(before, "tabserve_prediction_score_bucket", model="churn", le=bound)
        assert counted == np.count_nonzero(scores <= float(bound)), bound
    in_bins = np.searchsorted(sorted(float(bound) for bound in bounds), scores)
    assert len(set(in_bins.tolist())) > 1, "every score in one bin: the check proves little"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"instances": [{}]}', "missing"),
        (b'{"instances": [{"sepal_length_cm": -5}]}', "greater_than_equal"),
        (b'{"instances": [{"sepal_length_cm": "5"}]}', "float_type"),
        (b'{"instances": [', "json_invalid"),
        (b'{"instances": []}', "too_short"),
    ],
)
def test_each_rejected_request_is_counted_once_by_reason(
    client: httpx.Client, body: bytes, reason: str, server: ServerProcess
) -> None:
    before = scrape(server)
    headers = {"content-type": "application/json"}
    response = client.post("/v1/models/iris:predict", content=body, headers=headers)
    assert response.status_code in (400, 422)
    after = scrape(server)
    rejected = "tabserve_rejected_inputs_total"
    assert (
        total(after, rejected, model="iris", reason=reason)
        - total(before, rejected, model="iris", reason=reason)
        == 1
    )
    assert total(after, rejected) - total(before, rejected) == 1


def test_rest_requests_are_labelled_by_route_template_and_bounded_method(
    client: httpx.Client, server: ServerProcess
) -> None:
    before = scrape(server)
    assert client.get(f"/v1/models/no-such-{uuid.uuid4().hex}").status_code == 404
    # A real method outside the bounded set (httptools refuses made-up ones with 400 itself).
    assert client.request("TRACE", "/v1/models").status_code == 405
    after = scrape(server)
    name = "tabserve_requests_total"
    labels = {
        "protocol": "rest",
        "route": "/v1/models/{model_name}",
        "method": "GET",
        "code": "404",
    }
    assert total(after, name, **labels) - total(before, name, **labels) == 1
    labels = {"route": "/v1/models", "method": "OTHER", "code": "405"}
    assert total(after, name, **labels) - total(before, name, **labels) == 1
    duration = "tabserve_request_duration_seconds_count"
    assert total(after, duration) - total(before, duration) >= 2
    assert "TRACE" not in label_values(after, name, "method")


# --- refused predictions of the other protocols -------------------------------------------------
IRIS_FEATURES = MODELS["iris"].feature_names


def _iris_tensors(petal_width_cm: float) -> list[dict]:
    """V2 REST input tensors of one iris row (the example, but for petal_width_cm)."""
    row = {**MODELS["iris"].example_instance(), "petal_width_cm": petal_width_cm}
    return [{"name": f, "datatype": "FP64", "shape": [1], "data": [row[f]]} for f in IRIS_FEATURES]


def _v2_rest(server: ServerProcess, inputs: list[dict]) -> str:
    url = f"{server.url}/v2/models/iris/infer"
    return str(httpx.post(url, json={"inputs": inputs}, timeout=30).status_code)


def _grpc(server: ServerProcess, request: service_pb2.ModelInferRequest) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as error:
            return error.code().name
    return "OK"


def _grpc_iris(petal_width_cm: float, raw_entries: int = 0) -> service_pb2.ModelInferRequest:
    """One iris row as typed contents; `raw_entries` > 0 adds raw_input_contents as well."""
    tensors = [
        service_pb2.ModelInferRequest.InferInputTensor(
            name=tensor["name"],
            datatype="FP64",
            shape=[1],
            contents=service_pb2.InferTensorContents(fp64_contents=tensor["data"]),
        )
        for tensor in _iris_tensors(petal_width_cm)
    ]
    raw = [b"\0" * 8] * raw_entries
    return service_pb2.ModelInferRequest(model_name="iris", inputs=tensors, raw_input_contents=raw)


def _tabpy(server: ServerProcess, columns: list[list]) -> str:
    url = f"{server.url}/query/iris"
    return str(httpx.post(url, json={"data": columns}, timeout=30).status_code)


REFUSED_PREDICTIONS = {
    # id: (call, answer expected, reason expected; None: any, counted once)
    "v2 rest value out of bounds": (
        lambda server: _v2_rest(server, _iris_tensors(500)),
        "422",
        "less_than_equal",
    ),
    "v2 rest shape and data disagree": (
        lambda server: _v2_rest(server, [{**_iris_tensors(0.2)[0], "shape": [2]}]),
        "400",
        None,
    ),
    "grpc value out of bounds": (
        lambda server: _grpc(server, _grpc_iris(500)),
        "INVALID_ARGUMENT",
        "less_than_equal",
    ),
    "grpc raw and typed contents mixed": (
        lambda server: _grpc(server, _grpc_iris(0.2, raw_entries=1)),
        "INVALID_ARGUMENT",
        None,
    ),
    "tabpy value out of bounds": (
        lambda server: _tabpy(server, [[5.1], [3.5], [1.4], [500]]),
        "422",
        "less_than_equal",
    ),
    "tabpy wrong number of columns": (
        lambda server: _tabpy(server, [[5.1], [3.5]]),
        "422",
        None,
    ),
}


@pytest.mark.parametrize(
    ("call", "answer", "reason"),
    list(REFUSED_PREDICTIONS.values()),
    ids=list(REFUSED_PREDICTIONS),
)
def test_each_protocol_s_refused_prediction_is_counted_once(
    server: ServerProcess, call, answer: str, reason: str | None
) -> None:
    before = scrape(server)
    assert call(server) == answer
    after = scrape(server)
    rejected = "tabserve_rejected_inputs_total"
    assert total(after, rejected, model="iris") - total(before, rejected, model="iris") == 1
    if reason is not None:
        counted = total(after, rejected, model="iris", reason=reason)
        assert counted - total(before, rejected, model="iris", reason=reason) == 1


# One route of each router our app includes (V1, TabPy, V2) and of the page mount: path sent,
# route template expected as the label.
ROUTES_OF_EACH_ROUTER = [
    ("/v1/models/iris", "/v1/models/{model_name}"),
    ("/info", "/info"),
    ("/v2/models/iris/versions/1/ready", "/v2/models/{model_name}/versions/{version}/ready"),
    ("/ui/app.js", "/ui/{path}"),
]


def test_every_router_s_paths_become_their_route_template(
    client: httpx.Client, server: ServerProcess
) -> None:
    """FastAPI keeps an included router as one opaque entry of the app's routes; the route
    table of tabserve.http_metrics reaches into it (`original_router`, not public API). Should a
    FastAPI upgrade change that, these paths become `<unmatched>` here, in our request metrics
    and in BentoML's `endpoint` label alike."""
    before = scrape(server)
    for path, _ in ROUTES_OF_EACH_ROUTER:
        assert client.get(path).status_code < 500, path
    after = scrape(server)
    for path, template in ROUTES_OF_EACH_ROUTER:
        for name, labels in (
            ("tabserve_requests_total", {"protocol": "rest", "route": template, "method": "GET"}),
            ("bentoml_service_request_total", {"service_name": "tabserve", "endpoint": template}),
        ):
            counted = total(after, name, **labels) - total(before, name, **labels)
            assert counted == 1, (
                f"{path} was not counted as {template} in {name}: see http_metrics._leaf_routes"
            )


def test_unknown_paths_and_model_names_add_no_series(
    client: httpx.Client, server: ServerProcess
) -> None:
    def probe(count: int) -> list[str]:
        paths = [f"/scan-{uuid.uuid4().hex}/{n}" for n in range(count)]
        paths += [f"/v1/models/m{uuid.uuid4().hex}:predict" for _ in range(count)]
        for path in paths:
            assert client.post(path, json={"instances": [{}]}).status_code == 404
        return paths

    probe(3)  # creates the <unmatched> and template series once
    settled = scrape(server)
    paths = probe(40)
    after = scrape(server)
    assert set(after) - set(settled) == set(), "a request path or model name became a label"
    text = httpx.get(server.metrics_url, timeout=30).text
    assert not [path for path in paths if path in text]
    endpoint = "bentoml_service_request_total"
    assert (
        total(after, endpoint, endpoint="<unmatched>")
        - total(settled, endpoint, endpoint="<unmatched>")
        == 40
    )
    assert label_values(after, "tabserve_rejected_inputs_total", "model") <= set(MODELS)


def test_model_info_loaded_and_training_scores(client: httpx.Client, server: ServerProcess) -> None:
    samples = scrape(server)
    for listed in client.get("/v1/models").json()["models"]:
        model, version = listed["name"], listed["tag"].split(":")[1]
        assert total(samples, "tabserve_model_loaded", model=model) == 1
        info = {"model": model, "version": version, "tag": listed["tag"]}
        assert total(samples, "tabserve_model_info", framework=listed["framework"], **info) == 1
        accuracy = total(
            samples,
            "tabserve_model_training_score",
            model=model,
            version=version,
            metric="accuracy",
        )
        assert accuracy == listed["metrics"]["accuracy"]


def test_metrics_have_a_port_of_their_own(client: httpx.Client, server: ServerProcess) -> None:
    """Only /metrics on the metrics port, and no /metrics on the prediction port: a
    NetworkPolicy can then open the one to Prometheus and the other to clients."""
    moved = client.get("/metrics")
    assert moved.status_code == 404
    assert str(server.metrics_port) in moved.json()["error"]
    metrics_root = server.metrics_url.removesuffix("/metrics")
    assert httpx.get(f"{metrics_root}/v1/models", timeout=10).status_code == 404
    body = {"instances": instances("iris", 1)}
    predict_there = httpx.post(f"{metrics_root}/v1/models/iris:predict", json=body, timeout=10)
    assert predict_there.status_code in (404, 405)
    scraped = httpx.get(server.metrics_url, timeout=10)
    assert scraped.headers["content-type"].startswith("text/plain")
    assert scraped.headers["x-content-type-options"] == "nosniff"


def test_metrics_port_zero_serves_them_on_the_http_port(
    trained_store: Path, tmp_path: Path
) -> None:
    env = {"TABSERVE_METRICS_PORT": "0"}
    with ServerProcess.start(tmp_path / "serve.log", env) as shared:
        assert shared.metrics_url == f"{shared.url}/metrics"
        predict_route = {"route": "/v1/models/iris:predict", "code": "200"}
        with httpx.Client(base_url=shared.url, timeout=30) as session:
            predict(session, "iris", instances("iris", 1))
        assert total(scrape(shared), "tabserve_requests_total", **predict_route) == 1


def test_several_workers_of_both_services_are_merged_into_one_scrape(
    trained_store: Path, tmp_path: Path
) -> None:
    """2 API workers and 2 runner workers: every scrape, whichever worker answers it, counts the
    requests and model calls of all four processes."""
    env = {"TABSERVE_API_WORKERS": "2", "TABSERVE_RUNNER_WORKERS": "2"}
    requests = 60
    with (
        ServerProcess.start(tmp_path / "serve.log", env) as workers,
        httpx.Client(base_url=workers.url, timeout=30) as session,
    ):
        rows = instances("spam", requests)
        with ThreadPoolExecutor(max_workers=8) as pool:
            labels = list(pool.map(lambda row: predict(session, "spam", [row]), rows))
        assert len(labels) == requests
        for _ in range(4):
            samples = scrape(workers)
            assert total(samples, "tabserve_predictions_total", model="spam") == requests
            assert total(samples, "tabserve_inference_rows_sum", model="spam") == requests
            predict_route = {"route": "/v1/models/spam:predict", "code": "200"}
            assert total(samples, "tabserve_requests_total", **predict_route) == requests
            assert total(samples, "tabserve_model_loaded", model="spam") == 1


def test_observe_all_records_what_observe_records_value_by_value() -> None:
    scores = np.concatenate(
        [np.random.default_rng(3).random(500), [0.0, 0.05, 0.1, 0.95, 1.0, 1.5, -0.2]]
    )
    registry = CollectorRegistry()
    by_one = Histogram("by_one", "", buckets=metrics._SCORE_BUCKETS, registry=registry)
    together = Histogram("together", "", buckets=metrics._SCORE_BUCKETS, registry=registry)

    for score in scores.tolist():
        by_one.observe(score)
    metrics.observe_all(together, scores)

    def samples(name: str) -> dict[tuple[str, str], float]:
        """Buckets, count and sum; not `_created`, the time each histogram was made."""
        family = next(f for f in registry.collect() if f.name == name)
        return {
            (s.name.removeprefix(name), s.labels.get("le", "")): s.value
            for s in family.samples
            if s.name != f"{name}_created"
        }

    assert samples("together") == pytest.approx(samples("by_one"), rel=1e-12)

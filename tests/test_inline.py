"""Inline mode (TABSERVE_INLINE_MODELS): the API worker holds the models and calls them itself.

The same service with no runner process must answer exactly as the split one does, on every
protocol, and still merge concurrent requests for a model into shared model calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tc
from bentoml._internal.models.model import ModelStore

from tabserve.catalog import MODELS
from tabserve.dataplane import runner_api_name
from tabserve.inline import LOOP_MAX_ROWS, InlineRunner
from tabserve.instances import rows_from_instances
from tabserve.loaded_models import LoadedModels
from tabserve.model_input import from_rows, versioned
from tests.data import expected_probabilities, instances
from tests.model_versions import VersionStore
from tests.oip_tensors import assert_same_answers, infer_inputs, v1_answers
from tests.server import ServerProcess
from tests.test_metrics import scrape, total

CONCURRENT_REQUESTS = 100


@pytest.fixture(scope="module")
def inline(
    version_store: VersionStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Inline, with churn in two versions (the champion is the session's, as the split
    server's) and the challenger shadowing it."""
    log = tmp_path_factory.mktemp("inline") / "bentoml-serve.log"
    env = {"TABSERVE_INLINE_MODELS": "true", **version_store.settings()}
    with ServerProcess.start(log, env=env, store=version_store.path) as process:
        yield process


def test_no_runner_process_runs(inline: ServerProcess) -> None:
    assert inline.workers("model_runner") == []
    assert len(inline.workers("tabserve")) == 1


@pytest.mark.parametrize("model_name", MODELS)
def test_every_model_answers_as_the_split_service_does(
    inline: ServerProcess, server: ServerProcess, model_name: str
) -> None:
    rows = instances(model_name, 20, seed=3)
    inline_labels, inline_probabilities = v1_answers(inline.url, model_name, rows)
    split_labels, split_probabilities = v1_answers(server.url, model_name, rows)
    assert inline_labels == split_labels
    np.testing.assert_allclose(inline_probabilities, split_probabilities, rtol=0, atol=1e-12)


def test_the_models_are_loaded_and_timed_in_the_api_worker(inline: ServerProcess) -> None:
    assert httpx.get(f"{inline.url}/readyz").status_code == 200
    before = scrape(inline)
    v1_answers(inline.url, "iris", instances("iris", 3))
    after = scrape(inline)
    for model_name in MODELS:
        assert total(after, "tabserve_model_loaded", model=model_name) == 1
    rows = "tabserve_inference_rows_sum"
    assert total(after, rows, model="iris") - total(before, rows, model="iris") == 3


async def _fire(url: str, model: str, rows: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENT_REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(f"/v1/models/{model}:predict", json={"instances": [row]}) for row in rows)
        )


def test_concurrent_requests_are_merged_into_shared_model_calls(inline: ServerProcess) -> None:
    # Not churn: the fixture shadows churn, and each shadow call is a model call too.
    rows = instances("admission", CONCURRENT_REQUESTS, seed=11)
    calls = "tabserve_inference_rows_count"
    before = total(scrape(inline), calls, model="admission")
    responses = asyncio.run(_fire(inline.url, "admission", rows))
    model_calls = total(scrape(inline), calls, model="admission") - before

    assert [r.status_code for r in responses] == [200] * CONCURRENT_REQUESTS
    expected = expected_probabilities(responses[0].json()["model"], rows)
    served = np.array([r.json()["predictions"][0]["probabilities"]["admitted"] for r in responses])
    np.testing.assert_allclose(served, expected[:, 0], rtol=0, atol=1e-12)
    print(f"\n{CONCURRENT_REQUESTS} concurrent requests -> {model_calls:g} model calls")
    assert 0 < model_calls < CONCURRENT_REQUESTS / 2


def test_grpc_answers_as_v1_does(inline: ServerProcess) -> None:
    rows = instances("admission", 8, seed=5)
    with tc.InferenceServerClient(f"127.0.0.1:{inline.grpc_port}") as client:
        result = client.infer("admission", infer_inputs(tc, "admission", rows, binary=True))
    assert_same_answers(result, v1_answers(inline.url, "admission", rows))


@pytest.mark.parametrize("model_name", ["churn", "spam"])
def test_explanations_match_the_split_service(
    inline: ServerProcess, server: ServerProcess, model_name: str
) -> None:
    body = {"instances": instances(model_name, 5, seed=2)}
    inline_answer = httpx.post(f"{inline.url}/v1/models/{model_name}:explain", json=body)
    split_answer = httpx.post(f"{server.url}/v1/models/{model_name}:explain", json=body)
    assert inline_answer.status_code == split_answer.status_code == 200
    assert inline_answer.json() == split_answer.json()


def test_versions_and_shadow_scoring_work_inline(
    inline: ServerProcess, version_store: VersionStore
) -> None:
    rows = instances("churn", 30, seed=4)
    url = f"{inline.url}/v1/models/churn/versions/challenger"
    for verb in ("predict", "explain"):
        answer = httpx.post(f"{url}:{verb}", json={"instances": rows})
        assert answer.json()["model"] == f"churn:{version_store.second}", answer.text
    before = total(scrape(inline), "tabserve_shadow_comparisons_total", model="churn")
    v1_answers(inline.url, "churn", rows)
    deadline = time.monotonic() + 30
    while total(scrape(inline), "tabserve_shadow_comparisons_total", model="churn") < before + 30:
        assert time.monotonic() < deadline, "no shadow comparison inline"
        time.sleep(0.2)


def test_repository_calls_change_the_inline_models(version_store: VersionStore) -> None:
    """In-process: the inline runner's repository calls run on their own thread and change
    the models its predictions use."""
    first, second = version_store.first, version_store.second
    models = LoadedModels(
        {"churn": MODELS["churn"]},
        lambda name: [f"churn:{first}"],
        {},
        threads=1,
        unload_grace_s=0,
        fetch=ModelStore(version_store.path).get,
    )
    runner = InlineRunner(models, calls_in_flight=1)
    spec = MODELS["churn"]
    row = from_rows(spec, [tuple(instances("churn", 1)[0].get(f) for f in spec.feature_names)])

    async def scenario() -> None:
        loaded = await runner.load_version("churn", second)
        assert loaded["status"] == 200 and loaded["version"] == second
        moved = await runner.set_alias("churn", "champion", second)
        assert moved["status"] == 200
        assert {v["tag"]: v["aliases"] for v in moved["versions"]} == {
            f"churn:{first}": [],
            f"churn:{second}": ["champion"],
        }
        unloaded = await runner.unload_version("churn", first)
        assert [v["tag"] for v in unloaded["versions"]] == [f"churn:{second}"]
        answer = await runner.predict_churn(
            np.concatenate([versioned(second, row), versioned(first, row)])
        )
        assert not np.isnan(answer[0]).any() and np.isnan(answer[1]).all()
        refused = await runner.unload_version("churn", second)
        assert refused["status"] == 409 and "champion" in refused["error"]

    asyncio.run(scenario())


class _ThreadRecordingModels(LoadedModels):
    """The real models, noting the thread each prediction ran on."""

    def __init__(self) -> None:
        super().__init__(
            {name: MODELS[name] for name in ("churn", "admission")},
            lambda name: [f"{name}:latest"],
            {},
            threads=1,
            unload_grace_s=0,
        )
        self.threads: list[int] = []

    def predict_proba(self, model_name: str, batch: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return super().predict_proba(model_name, batch)


def test_small_calls_of_a_cheap_model_run_on_the_event_loop(trained_store: Path) -> None:
    """In-process: a few rows of a model whose calls cost under LOOP_CALL_MAX_S skip the hop to a
    thread; a model of unknown or higher cost, and a call of many rows, still go to a thread."""
    models = _ThreadRecordingModels()
    runner = InlineRunner(models, calls_in_flight=1)

    def rows(model_name: str, count: int) -> np.ndarray:
        version = models.aliases[model_name]["champion"]
        spec = MODELS[model_name]
        return versioned(
            version, from_rows(spec, rows_from_instances(model_name, instances(model_name, count)))
        )

    async def scenario() -> list[str]:
        loop_thread = threading.get_ident()
        calls = [
            *[("churn", 1)] * 3,  # its cost is not known at first, and a first call costs more
            ("churn", LOOP_MAX_ROWS + 1),
            *[("admission", 1)] * 3,  # a scikit-learn pipeline: milliseconds per call
        ]
        for model_name, count in calls:
            await getattr(runner, runner_api_name(model_name))(rows(model_name, count))
        return ["loop" if t == loop_thread else "thread" for t in models.threads]

    where = asyncio.run(scenario())
    assert (where[0], where[2], where[3], where[4:]) == ("thread", "loop", "thread", ["thread"] * 3)

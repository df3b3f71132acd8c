"""Concurrency: 200 simultaneous single-row requests are all answered correctly, and they were
merged into far fewer runner calls. Two places can merge, and each is counted apart:

* the API worker's MergedCalls (tabserve/runner_calls.py) sends the requests that wait for a
  model into one runner call: the runner's own request count (BentoML's
  `bentoml_service_request_total` of `model_runner`) says how many calls reached it;
* the runner's adaptive batching merges the calls that wait for a model into one model call: the
  runner's rows-per-call histogram (`tabserve_inference_rows`) says how many model calls ran.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from tests.data import expected_probabilities, instances
from tests.test_metrics import Samples, scrape, total

CONCURRENT_REQUESTS = 200


def _counts(samples: Samples) -> dict[str, float]:
    """Churn rows and calls at each stage, summed over the workers."""
    return {
        "rows": total(samples, "tabserve_inference_rows_sum", model="churn"),
        "model calls": total(samples, "tabserve_inference_rows_count", model="churn"),
        "runner calls": total(
            samples,
            "bentoml_service_request_total",
            service_name="model_runner",
            endpoint="/predict_churn",
        ),
    }


async def _fire(url: str, rows: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENT_REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post("/v1/models/churn:predict", json={"instances": [row]}) for row in rows)
        )


def test_concurrent_single_rows_are_merged_in_the_api_and_all_correct(server) -> None:
    rows = instances("churn", CONCURRENT_REQUESTS, seed=7)
    before = _counts(scrape(server))
    responses = asyncio.run(_fire(server.url, rows))
    after = _counts(scrape(server))

    assert [r.status_code for r in responses] == [200] * CONCURRENT_REQUESTS
    expected = expected_probabilities(responses[0].json()["model"], rows)
    served = np.array([r.json()["predictions"][0]["probabilities"]["churned"] for r in responses])
    np.testing.assert_allclose(served, expected[:, 0], rtol=0, atol=1e-12)
    counted = {stage: after[stage] - before[stage] for stage in after}
    print(f"\n{CONCURRENT_REQUESTS} requests -> {counted}")
    assert counted["rows"] == CONCURRENT_REQUESTS
    # MergedCalls: far fewer runner calls than requests.
    assert counted["runner calls"] < CONCURRENT_REQUESTS / 2, counted
    # The runner can only merge further, never split a call.
    assert 0 < counted["model calls"] <= counted["runner calls"], counted

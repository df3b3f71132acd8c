"""Concurrency: 200 simultaneous single-row requests are all answered correctly, and they were
merged into far fewer model calls (by the API worker's MergedCalls and the runner's adaptive
batching; the runner's rows-per-call histogram says so)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.data import expected_probabilities, instances

CONCURRENT_REQUESTS = 200


def _rows_per_model_call(metrics_text: str, model: str) -> tuple[float, float]:
    """(rows, model calls) from tabserve_inference_rows, summed over the runner's workers."""
    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "tabserve_inference_rows":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count


async def _fire(url: str, rows: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENT_REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post("/v1/models/churn:predict", json={"instances": [row]}) for row in rows)
        )


def test_concurrent_single_rows_are_batched_and_all_correct(server) -> None:
    rows = instances("churn", CONCURRENT_REQUESTS, seed=7)
    before = _rows_per_model_call(httpx.get(server.metrics_url).text, "churn")

    responses = asyncio.run(_fire(server.url, rows))

    assert [r.status_code for r in responses] == [200] * CONCURRENT_REQUESTS
    tag = responses[0].json()["model"]
    expected = expected_probabilities(tag, rows)
    served = np.array([r.json()["predictions"][0]["probabilities"]["churned"] for r in responses])
    np.testing.assert_allclose(served, expected[:, 0], rtol=0, atol=1e-12)

    after = _rows_per_model_call(httpx.get(server.metrics_url).text, "churn")
    rows_batched, model_calls = after[0] - before[0], after[1] - before[1]
    assert rows_batched == CONCURRENT_REQUESTS
    # Fewer model calls than requests: concurrent requests were merged into batches.
    assert model_calls < CONCURRENT_REQUESTS / 2, (rows_batched, model_calls)
    print(
        f"\n{CONCURRENT_REQUESTS} requests -> {model_calls:.0f} model calls "
        f"(mean batch {rows_batched / model_calls:.1f} rows)"
    )

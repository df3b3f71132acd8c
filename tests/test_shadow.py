"""ShadowScorer in this process: sampling, the bounded queue, comparisons, drops, shutdown.

The shadow version here is an async function standing in for the data plane's call to a second
model version (it answers from fixed probabilities, sleeps or fails as a test needs), so every
outcome can be provoked; the metrics are the real ones, read from this process's registry. The
server-level test, with two real model versions, lives with the data plane's wiring.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tabserve.catalog import MODELS, ModelSpec
from tabserve.dataplane import Predictions
from tabserve.errors import ModelNotFound, ModelUnavailable
from tabserve.settings import get_settings
from tabserve.shadow import ShadowScorer, ShadowTarget
from tests.declared_metrics import SHADOW

CHURN = MODELS["churn"]  # binary: the score is P(churned)
IRIS = MODELS["iris"]  # multi-class: the score is the probability of the answered class
QUEUE = 64


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def dropped(model: str, reason: str) -> float:
    return value("tabserve_shadow_dropped_total", model=model, reason=reason)


def comparisons(model: str, version: str, shadow_version: str, outcome: str) -> float:
    labels = {"version": version, "shadow_version": shadow_version, "outcome": outcome}
    return value("tabserve_shadow_comparisons_total", model=model, **labels)


def answer(spec: ModelSpec, tag: str, probabilities: list[list[float]]) -> Predictions:
    array = np.asarray(probabilities)
    return Predictions(spec, tag, array, array.argmax(axis=1))


def rows(count: int) -> np.ndarray:
    """Row i is [i]: the test versions below answer row i from their i-th probabilities."""
    return np.arange(count).reshape(count, 1)


STUCK = float("inf")  # a call that never answers (until the consumer is stopped)


class Version:
    """A model version as the shadow call reaches it: answers rows from its probabilities. Each
    call follows the next step of `script`, if any: an exception is raised, a number of seconds
    is slept before answering (STUCK: forever), None answers at once."""

    def __init__(
        self,
        tag: str,
        probabilities: list[list[float]],
        script: list[BaseException | float | None] | None = None,
    ) -> None:
        self.tag = tag
        self.probabilities = np.asarray(probabilities)
        self.script = list(script or [])
        self.calls: list[tuple[str, str, int]] = []  # (model, target, rows)

    async def __call__(self, spec: ModelSpec, target: str, rows: np.ndarray) -> Predictions:
        self.calls.append((spec.name, target, len(rows)))
        step = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            raise step
        if step == STUCK:
            await asyncio.Event().wait()
        elif step:
            await asyncio.sleep(step)
        array = self.probabilities[[row[0] for row in rows]]
        return Predictions(spec, self.tag, array, array.argmax(axis=1))


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Lets the consumer run until `condition` holds (bounded: the machine is shared)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the shadow consumer did not get there in time"
        await asyncio.sleep(0.005)


def shadow(scorer: ShadowScorer, offers: list[Predictions], until: Callable[[], bool]) -> None:
    """Starts the scorer, offers each answer (with as many rows), lets the consumer run until
    `until` holds, and stops it: the life of an API worker, in short."""

    async def run() -> None:
        await scorer.start()
        for primary in offers:
            scorer.offer(primary, rows(len(primary.best)))
        await eventually(until)
        await scorer.stop()

    asyncio.run(run())


# --- comparisons -------------------------------------------------------------------------------
def test_agreement_is_counted_per_row_and_the_score_difference_observed() -> None:
    primary = answer(CHURN, "churn:agree1", [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    # Row 2 changes class (0.6 -> 0.45 churned); the others keep it with other scores.
    challenger = Version("churn:agree2", [[0.8, 0.2], [0.25, 0.75], [0.45, 0.55], [0.3, 0.7]])
    scorer = ShadowScorer({"churn": ShadowTarget("challenger", 1.0)}, QUEUE, challenger)
    difference = "tabserve_shadow_score_difference"
    sum_before = value(f"{difference}_sum", model="churn")
    count_before = value(f"{difference}_count", model="churn")
    unchanged_before = value(f"{difference}_bucket", model="churn", le="0.01")
    calls_before = value("tabserve_shadow_duration_seconds_count", model="churn")

    shadow(scorer, [primary], until=lambda: comparisons("churn", "agree1", "agree2", "agree") == 3)
    assert challenger.calls == [("churn", "challenger", 4)]
    assert comparisons("churn", "agree1", "agree2", "disagree") == 1
    # |P(churned) shadow - answered| per row: 0.1 + 0.05 + 0.15 + 0 (a binary model's score is
    # the positive class's probability whatever class was predicted)
    assert value(f"{difference}_sum", model="churn") - sum_before == pytest.approx(0.3)
    assert value(f"{difference}_count", model="churn") - count_before == 4
    assert value(f"{difference}_bucket", model="churn", le="0.01") - unchanged_before == 1
    assert value("tabserve_shadow_duration_seconds_count", model="churn") == calls_before + 1


def test_a_multi_class_score_is_the_probability_of_the_answered_class() -> None:
    primary = answer(IRIS, "iris:multi1", [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    challenger = Version("iris:multi2", [[0.3, 0.6, 0.1], [0.1, 0.2, 0.7]])
    scorer = ShadowScorer({"iris": ShadowTarget("iris:multi2", 1.0)}, QUEUE, challenger)
    before = value("tabserve_shadow_score_difference_sum", model="iris")

    shadow(scorer, [primary], until=lambda: comparisons("iris", "multi1", "multi2", "agree") == 1)
    assert comparisons("iris", "multi1", "multi2", "disagree") == 1
    # Row 0: setosa answered; the shadow gives setosa 0.3 (not its own best class's 0.6).
    # Row 1: virginica both, 0.8 against 0.7.
    after = value("tabserve_shadow_score_difference_sum", model="iris")
    assert after - before == pytest.approx(0.4 + 0.1)


def test_a_target_that_is_the_answering_version_is_skipped() -> None:
    primary = answer(CHURN, "churn:same", [[0.9, 0.1]])
    champion = Version("churn:same", [[0.9, 0.1]])
    scorer = ShadowScorer({"churn": ShadowTarget("champion", 1.0)}, QUEUE, champion)
    before = dropped("churn", "same_version")

    shadow(scorer, [primary], until=lambda: dropped("churn", "same_version") == before + 1)
    assert comparisons("churn", "same", "same", "agree") == 0


# --- sampling ------------------------------------------------------------------------------------
def test_a_fraction_of_the_model_s_requests_is_shadowed_and_unlisted_models_never() -> None:
    offers = 4000
    challenger = Version("v2", [[0.5, 0.5]])
    targets = {"churn": ShadowTarget("challenger", 0.25), "spam": ShadowTarget("v2", 1.0)}
    scorer = ShadowScorer(targets, offers + 1, challenger, rng=random.Random(7))
    churn = answer(CHURN, "churn:sampling", [[0.5, 0.5]])
    iris = answer(IRIS, "iris:sampling", [[1.0, 0.0, 0.0]])
    # Queued last (fraction 1): once the shadow sees it, it has seen every sampled churn request.
    last = answer(MODELS["spam"], "spam:sampling", [[0.5, 0.5]])

    async def test() -> None:
        for _ in range(offers):
            scorer.offer(churn, rows(1))
            scorer.offer(iris, rows(1))  # not shadowed
        scorer.offer(last, rows(1))
        await scorer.start()
        await eventually(lambda: ("spam", "v2", 1) in challenger.calls)
        await scorer.stop()

    asyncio.run(test())
    shadowed = [call for call in challenger.calls if call[0] == "churn"]
    print(f"fraction 0.25 of {offers} requests: {len(shadowed)} shadowed")
    # Binomial(4000, 0.25): mean 1000, standard deviation 27; 5 of them either way.
    assert 1000 - 140 < len(shadowed) < 1000 + 140
    assert len(challenger.calls) == len(shadowed) + 1  # and the last one; no iris


# --- drops ---------------------------------------------------------------------------------------
def test_a_full_queue_drops_at_once_and_stop_drops_what_waits() -> None:
    challenger = Version("churn:stuck2", [[0.5, 0.5]] * 3, script=[STUCK])
    scorer = ShadowScorer({"churn": ShadowTarget("challenger", 1.0)}, 2, challenger)
    primary = answer(CHURN, "churn:stuck1", [[0.5, 0.5]] * 3)
    before = {reason: dropped("churn", reason) for reason in ("queue_full", "stopped")}

    async def test() -> None:
        await scorer.start()
        scorer.offer(primary, rows(3))
        await eventually(lambda: len(challenger.calls) == 1)  # in flight, never answering
        started = time.perf_counter()
        for _ in range(5):
            scorer.offer(primary, rows(3))  # 2 queued, 3 dropped
        print(f"5 offers while the shadow is stuck: {(time.perf_counter() - started) * 1e6:.0f} us")
        await asyncio.wait_for(scorer.stop(), timeout=10)  # does not wait for the stuck call
        scorer.offer(primary, rows(3))  # after stop: dropped, not queued for nobody

    asyncio.run(test())
    assert dropped("churn", "queue_full") - before["queue_full"] == 3 * 3  # counted in rows
    # the call in flight, the two queued, the offer after stop
    assert dropped("churn", "stopped") - before["stopped"] == 4 * 3
    assert len(challenger.calls) == 1


def test_failing_and_slow_shadows_are_dropped_by_reason_and_the_consumer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script: list[BaseException | float | None] = [
        ModelUnavailable("the model runner is overloaded; retry shortly"),
        ModelNotFound("no version of churn is aliased challenger"),
        RuntimeError("a bug in the shadow path"),
        5.0,  # over the timeout
        None,  # answers
    ]
    challenger = Version("churn:fails2", [[0.1, 0.9]], script=script)
    targets = {"churn": ShadowTarget("challenger", 1.0)}
    scorer = ShadowScorer(targets, QUEUE, challenger, timeout_s=0.2)
    primary = answer(CHURN, "churn:fails1", [[0.2, 0.8]])
    reasons = ("unavailable", "error", "timeout")
    before = {reason: dropped("churn", reason) for reason in reasons}

    shadow(
        scorer,
        [primary] * len(script),
        until=lambda: comparisons("churn", "fails1", "fails2", "agree") == 1,
    )
    after = {reason: dropped("churn", reason) - before[reason] for reason in reasons}
    assert after == {"unavailable": 2, "error": 1, "timeout": 1}
    assert len(challenger.calls) == len(script)
    # Logged when it starts failing and when it works again, not once per failed request.
    logged = [record.getMessage() for record in caplog.records if record.name == "tabserve.shadow"]
    assert logged == [
        "shadow scoring fails (unavailable): model churn, target 'challenger': the model runner "
        "is overloaded; retry shortly",
        "shadow scoring works again",
    ]


def test_drop_reasons_of_shadowed_models_exist_from_the_start() -> None:
    targets = {"admission": ShadowTarget("challenger", 0.5)}
    scorer = ShadowScorer(targets, QUEUE, Version("admission:v2", [[1.0, 0.0]]))

    async def test() -> None:
        await scorer.start()
        await scorer.stop()

    asyncio.run(test())
    reasons = {sample.labels["reason"]: sample.value for sample in _dropped_samples("admission")}
    assert reasons == dict.fromkeys(
        ("queue_full", "error", "timeout", "unavailable", "same_version", "stopped"), 0.0
    )
    assert not _dropped_samples("drug")  # not shadowed anywhere in this module: no series


def _dropped_samples(model: str) -> list[Sample]:
    (family,) = [f for f in REGISTRY.collect() if f.name == "tabserve_shadow_dropped"]
    return [s for s in family.samples if s.name.endswith("_total") and s.labels["model"] == model]


# --- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        ('{"churn": {"target": "challenger", "fraction": 0.1}}', None),
        ('{"nope": {"target": "v2", "fraction": 0.1}}', "TABSERVE_SHADOW names unknown models"),
        ('{"churn": {"target": "v2", "fraction": 0}}', "TABSERVE_SHADOW.CHURN.FRACTION: Input"),
        ('{"churn": {"target": "v2", "fraction": 1.5}}', "TABSERVE_SHADOW.CHURN.FRACTION: Input"),
        ('{"churn": {"target": "v2", "fration": 0.5}}', "TABSERVE_SHADOW.CHURN.FRATION: Unexp"),
        ('{"churn": {"target": "", "fraction": 0.5}}', "TABSERVE_SHADOW.CHURN.TARGET: String"),
        ('{"churn": "challenger"}', "TABSERVE_SHADOW.CHURN: Input should be a dictionary"),
        ("churn=challenger", 'error parsing value for field "shadow"'),
    ],
)
def test_the_shadow_setting_is_validated_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, shadow: str, message: str | None
) -> None:
    monkeypatch.setenv("TABSERVE_SHADOW", shadow)
    get_settings.cache_clear()
    try:
        if message is None:
            assert get_settings().shadow == {"churn": ShadowTarget("challenger", 0.1)}
            return
        with pytest.raises(SystemExit) as stopped:
            get_settings()
        assert str(stopped.value).startswith("tabserve cannot start, invalid settings:\n  ")
        assert message in str(stopped.value)
    finally:
        get_settings.cache_clear()


def test_the_shadow_metrics_are_exposed_as_declared() -> None:
    """What dashboards, alerts and the canary templates rely on (tests/declared_metrics.py)."""
    primary = answer(CHURN, "churn:declared1", [[0.9, 0.1]])
    scorer = ShadowScorer(
        {"churn": ShadowTarget("v2", 1.0)}, QUEUE, Version("churn:declared2", [[0.1, 0.9]])
    )
    shadow(
        scorer,
        [primary],
        until=lambda: comparisons("churn", "declared1", "declared2", "disagree") == 1,
    )

    families = {
        (f"{family.name}_total" if family.type == "counter" else family.name): family
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
    }
    for name, (kind, labels) in SHADOW.items():
        family = families[name]
        assert family.type == kind, name
        assert {label for sample in family.samples for label in sample.labels} - {"le"} == labels

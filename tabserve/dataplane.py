"""The data plane: validated rows in, predictions out, whatever protocol carried them.

Every protocol front end (V1 REST, the Open Inference Protocol over REST and gRPC, TabPy) turns
its request into rows (tabserve.instances validates them), calls this one object, and renders
its `Predictions` in its own shape. service.py makes one per API worker and hands it to the routes
(app state) and to the gRPC server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from typing import Any

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException

from tabserve import metrics
from tabserve.catalog import MODELS, ModelSpec
from tabserve.drift.monitor import DriftMonitor
from tabserve.errors import ModelNotFound, ModelUnavailable, PayloadTooLarge
from tabserve.instances import refusals_counted
from tabserve.payloads import PayloadLog
from tabserve.runner_calls import MergedCalls, call_with_retries, within_deadline
from tabserve.schemas import ModelInfo, Row
from tabserve.settings import Settings

# How long a readiness answer is reused: probes, the gRPC health loop and clients all ask, and the
# runner is asked at most once per interval per API worker.
READY_RECHECK_S = 1.0


def runner_api_name(model_name: str) -> str:
    """The runner's batched API for one model."""
    return f"predict_{model_name}"


def explainer_api_name(model_name: str) -> str:
    """The runner's (unbatched) explain API for one model."""
    return f"explain_{model_name}"


@dataclass(frozen=True)
class Predictions:
    """A model's answer for some rows, which each protocol renders in its own shape."""

    spec: ModelSpec
    tag: str  # the model that answered (name:version)
    probabilities: np.ndarray  # (rows, classes), columns in spec.class_names order
    best: np.ndarray  # (rows,): the index of each row's most probable class

    @cached_property
    def labels(self) -> list[str]:
        """The most probable class of each row."""
        classes = self.spec.class_names
        return [classes[index] for index in self.best.tolist()]

    def class_probabilities(self, class_name: str) -> list[float]:
        return self.probabilities[:, self.spec.class_names.index(class_name)].tolist()


@dataclass(frozen=True)
class Explained(Predictions):
    """Predictions with each row's per-feature contributions (tabserve.explanations)."""

    # float32 (rows, outputs, features + 1): per output, the spec's features in order, then the
    # base value; a row's sum over the last axis is the model's margin for that output.
    contributions: np.ndarray
    outputs: tuple[str, ...]  # the class each output explains
    scale: str  # "log-odds" or "probability"
    tokens: list[list[tuple[str, float]]] | None  # text models: per row, its top tokens


@contextmanager
def runner_faults_unavailable(timeout_s: float) -> Iterator[None]:
    """A runner that cannot answer now becomes ModelUnavailable (HTTP 503 with Retry-After, gRPC
    UNAVAILABLE): no answer within the deadline (stopped, restarting, swamped), a connection
    that failed even after the retries (killed), or its own 503 (queue deadline passed). Any
    other runner error is a bug and stays one (500)."""
    try:
        yield
    except TimeoutError:
        raise ModelUnavailable(
            f"the model runner did not answer within {timeout_s:g} s; retry shortly"
        ) from None
    except aiohttp.ClientError as error:
        raise ModelUnavailable(
            f"the model runner is not reachable ({error}); retry shortly"
        ) from error
    except BentoMLException as error:
        if error.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
            raise ModelUnavailable("the model runner is overloaded; retry shortly") from error
        raise


class DataPlane:
    """The models of the catalog behind one runner: what is loaded, whether it is ready, and
    rows in, scores out. Protocols resolve the model (`spec`) and validate the rows themselves
    (tabserve.instances), then call `predict`."""

    def __init__(
        self,
        runner: Any,
        settings: Settings,
        models: Mapping[str, ModelSpec] = MODELS,
        payload_log: PayloadLog | None = None,
    ) -> None:
        # `runner`: awaitable calls to the models: service.ModelRunner's (its dependency proxy's
        # `to_async`), or the API worker's own in inline mode (tabserve/inline.py).
        self._runner = runner
        self._payload_log = payload_log  # None: payload logging is off
        self._models = models
        self._timeout_s = settings.runner_timeout_s
        self._max_rows = settings.batch_max_size
        self._max_in_flight = settings.runner_calls_in_flight
        self._explain_max_rows = settings.explain_max_rows
        self._infos: dict[str, ModelInfo] | None = None
        self._merged_calls: dict[str, MergedCalls] = {}
        self._ready = False
        self._recheck_ready_at = 0.0
        self._drift = DriftMonitor(settings)

    # --- model registry ---------------------------------------------------------------------
    async def model_infos(self) -> dict[str, ModelInfo]:
        """What the runner loaded (tags resolved to versions): asked once, then refreshed by
        each readiness check."""
        if self._infos is None:
            await self._describe()
        assert self._infos is not None
        return self._infos

    async def _describe(self) -> None:
        with runner_faults_unavailable(self._timeout_s):
            described = await within_deadline(self._runner.describe(), self._timeout_s)
        self._infos = {item["name"]: ModelInfo(**item) for item in described}

    async def ready(self) -> bool:
        """Every model of the catalog loaded in a runner that answered lately.

        The runner is asked again once READY_RECHECK_S has passed (callers meanwhile get the
        last answer), so a runner that stops answering turns this false within
        runner_timeout_s + READY_RECHECK_S, and a runner that is back turns it true again:
        /readyz, V2 readiness and gRPC health follow the runner without an API restart.
        """
        if time.monotonic() >= self._recheck_ready_at:
            self._recheck_ready_at = float("inf")  # one check at a time
            try:
                await self._describe()
                self._ready = set(self._infos or ()) == set(self._models)
            except ModelUnavailable:
                self._ready = False
            finally:
                self._recheck_ready_at = time.monotonic() + READY_RECHECK_S
        return self._ready

    def spec(self, model_name: str) -> ModelSpec:
        """The model a request names: looked up once per request, by its protocol's route."""
        try:
            return self._models[model_name]
        except KeyError:
            raise ModelNotFound(
                f"unknown model {model_name!r}; available: {', '.join(self._models)}"
            ) from None

    async def model_info(self, spec: ModelSpec) -> ModelInfo:
        return (await self.model_infos())[spec.name]

    # --- prediction -------------------------------------------------------------------------
    async def predict(self, spec: ModelSpec, rows: list[Row]) -> Predictions:
        """Validated rows (tabserve.instances) -> the loaded model's probabilities for them."""
        info = await self.model_info(spec)
        with runner_faults_unavailable(self._timeout_s):
            probabilities = await self._runner_calls(spec.name).predict(rows)
        best = probabilities.argmax(axis=1)
        metrics.record_predictions(spec, info.tag, probabilities, best)
        self._drift.observe(spec, info, rows, probabilities, best)
        answer = Predictions(spec, info.tag, probabilities, best)
        if self._payload_log is not None:
            self._payload_log.offer(answer, rows)
        return answer

    async def explain(self, spec: ModelSpec, rows: list[Row]) -> Explained:
        """Validated rows -> the model's probabilities and each row's contributions. Costly per
        row, so at most explain_max_rows per request, and one runner call each (not merged:
        see service.ModelRunner). Not counted as predictions: the metrics of served traffic
        would count a row twice when a client explains what it predicted."""
        limit = self._explain_max_rows
        if len(rows) > limit:
            with refusals_counted(spec.name):
                raise PayloadTooLarge.at(
                    "instances",
                    f"{len(rows)} rows to explain; the limit is {limit} per request "
                    "(explain_max_rows)",
                )
        info = await self.model_info(spec)
        api = getattr(self._runner, explainer_api_name(spec.name))
        with runner_faults_unavailable(self._timeout_s):
            answer = await within_deadline(call_with_retries(api, rows), self._timeout_s)
        probabilities = np.asarray(answer["probabilities"])
        tokens = answer["tokens"]
        return Explained(
            spec,
            info.tag,
            probabilities,
            probabilities.argmax(axis=1),
            contributions=np.asarray(answer["contributions"], dtype=np.float32),
            outputs=tuple(answer["outputs"]),
            scale=answer["scale"],
            tokens=None if tokens is None else [[tuple(pair) for pair in row] for row in tokens],
        )

    def _runner_calls(self, model_name: str) -> MergedCalls:
        # Made on first use: BentoML's client learns the runner's API names when it connects.
        if model_name not in self._merged_calls:
            self._merged_calls[model_name] = MergedCalls(
                getattr(self._runner, runner_api_name(model_name)),
                max_rows=self._max_rows,
                max_in_flight=self._max_in_flight,
                timeout_s=self._timeout_s,
            )
        return self._merged_calls[model_name]

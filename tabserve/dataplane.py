"""The data plane: validated rows in, predictions out, whatever protocol carried them.

Every protocol front end (V1 REST, the Open Inference Protocol over REST and gRPC, TabPy) turns
its request into the model's input array (tabserve/model_input.py; validated by
tabserve.instances, or column by column by tabserve/columns.py), calls this one object, and
renders its `Predictions` in its own shape. service.py makes one per API worker and hands it to
the routes (app state) and to the gRPC server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from typing import Any, NoReturn

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException

from tabserve import metrics
from tabserve.catalog import MODELS, ModelSpec
from tabserve.drift.monitor import DriftMonitor
from tabserve.errors import (
    ModelNotFound,
    ModelUnavailable,
    PayloadTooLarge,
    RepositoryConflict,
    repository_refusal,
)
from tabserve.instances import refusals_counted
from tabserve.model_input import versioned
from tabserve.model_versions import ModelVersions
from tabserve.payloads import PayloadLog
from tabserve.runner_calls import MergedCalls, call_with_retries, within_deadline
from tabserve.schemas import ModelInfo, RepositoryAnswer, Row
from tabserve.settings import Settings
from tabserve.shadow import ShadowScorer

# How long a readiness answer is reused: probes, gRPC health checks and clients all ask, and the
# runner is asked at most once per interval per API worker.
READY_RECHECK_S = 1.0
# How often an API worker re-reads the runner's models when nobody asks (no probe, no gRPC health
# check): a restarted runner (a newer `latest`), another worker's repository calls or a runner that
# stopped answering reach this worker's routes within it. Not every second: idle, that read was
# half the CPU of the served tree (docs/performance.md, "Where a lone request's CPU goes").
RUNNER_REFRESH_S = 5.0

logger = logging.getLogger(__name__)


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
        self._repository_timeout_s = settings.repository_timeout_s
        self._repository_refusal = _repository_refusal(settings)
        self._infos: dict[str, ModelVersions] | None = None
        self._describes_asked = self._describe_applied = 0
        self._merged_calls: dict[tuple[str, bool], MergedCalls] = {}
        self._ready = False
        self._recheck_ready_at = 0.0
        self._refresher: asyncio.Task[None] | None = None
        self._drift = DriftMonitor(settings)
        # None unless settings.shadow names a model: then a sample of its requests is also
        # scored by a second version, after the answer (tabserve/shadow.py).
        self._shadow = (
            ShadowScorer(settings.shadow, settings.shadow_queue_size, self._shadow_score)
            if settings.shadow
            else None
        )

    async def start(self) -> None:
        """The background parts of this worker: payload sinks, the shadow scorer, the refresh
        of the runner's models."""
        self._refresher = asyncio.create_task(self._refresh_runner_view())
        if self._payload_log is not None:
            await self._payload_log.start()
        if self._shadow is not None:
            await self._shadow.start()

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._shadow is not None:
            await self._shadow.stop()
        if self._payload_log is not None:
            await self._payload_log.stop()

    # --- model registry ---------------------------------------------------------------------
    async def model_infos(self) -> dict[str, ModelVersions]:
        """What the runner loaded (tags resolved to versions, aliases): asked once, then
        refreshed by each readiness check and each repository call."""
        if self._infos is None:
            await self._describe()
        assert self._infos is not None
        return self._infos

    async def _describe(self) -> None:
        # A readiness check and a repository call may describe at once: the answer to the
        # later question wins, so a slow readiness answer never brings back old aliases.
        self._describes_asked += 1
        asked = self._describes_asked
        # Retried like a prediction: the refresh and the probes come every 5 s, the runner's
        # server closes a connection idle for 5 s, so a describe often meets one it is closing.
        with runner_faults_unavailable(self._timeout_s):
            described = await within_deadline(
                call_with_retries(self._runner.describe), self._timeout_s
            )
        if asked > self._describe_applied:
            self._describe_applied = asked
            self._infos = ModelVersions.from_described(described)

    async def _refresh_runner_view(self) -> None:
        while True:  # until stop() cancels it
            await asyncio.sleep(RUNNER_REFRESH_S)
            try:
                await self.ready()
            except Exception:  # a bug: logged, and the next refresh tries again
                logger.exception("refreshing the runner's models failed")

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
                infos = self._infos or {}
                self._ready = all(name in infos and infos[name].servable for name in self._models)
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

    async def model_versions(self, spec: ModelSpec) -> ModelVersions:
        try:
            return (await self.model_infos())[spec.name]
        except KeyError:  # a runner that is still loading it
            raise ModelUnavailable(
                f"model {spec.name!r} is not loaded yet; retry shortly"
            ) from None

    async def model_info(self, spec: ModelSpec, version: str = "") -> ModelInfo:
        """The loaded version a request names ("": the champion; an alias; a version)."""
        return (await self.model_versions(spec)).resolve(version)

    # --- prediction -------------------------------------------------------------------------
    async def predict(
        self, spec: ModelSpec, features: np.ndarray, version: str = ""
    ) -> Predictions:
        """Validated rows, as the model's input array (tabserve/model_input.py) -> the
        probabilities of the model version the request names (see `model_info`), resolved once,
        when the request is accepted; counted as served (metrics, drift, payload log) and
        offered to the shadow scorer."""
        info = await self.model_info(spec, version)
        answer = await self._score(spec, info, features)
        metrics.record_predictions(spec, info.tag, answer.probabilities, answer.best)
        self._drift.observe(spec, info, features, answer.probabilities, answer.best)
        if self._payload_log is not None:
            self._payload_log.offer(answer, features)
        if self._shadow is not None:
            self._shadow.offer(answer, features)
        return answer

    async def _shadow_score(
        self, spec: ModelSpec, target: str, features: np.ndarray
    ) -> Predictions:
        return await self._score(spec, await self.model_info(spec, target), features, shadow=True)

    async def _score(
        self, spec: ModelSpec, info: ModelInfo, features: np.ndarray, shadow: bool = False
    ) -> Predictions:
        """The rows scored by one loaded version, and nothing recorded: a prediction's own
        scoring, and the shadow scorer's."""
        with runner_faults_unavailable(self._timeout_s):
            probabilities = await self._runner_calls(spec.name, shadow).predict(
                versioned(info.version, features)
            )
        if np.isnan(probabilities[0, 0]):  # the runner no longer holds the version
            self._version_gone(info)
        return Predictions(spec, info.tag, probabilities, probabilities.argmax(axis=1))

    async def explain(self, spec: ModelSpec, rows: list[Row], version: str = "") -> Explained:
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
        info = await self.model_info(spec, version)
        api = getattr(self._runner, explainer_api_name(spec.name))
        with runner_faults_unavailable(self._timeout_s):
            answer = await within_deadline(
                call_with_retries(api, rows, version=info.version), self._timeout_s
            )
        if "missing" in answer:
            self._version_gone(info)
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

    def _version_gone(self, info: ModelInfo) -> NoReturn:
        """The runner no longer holds the version (it scores NaN, or explains nothing): unloaded
        after this worker's listing was taken (tabserve/loaded_models.py). The listing is
        refreshed; a retry goes to what the aliases name now."""
        self._recheck_ready_at = 0.0
        raise ModelUnavailable(
            f"{info.tag} was unloaded while this request was routed to it; retry"
        )

    # --- the repository (tabserve/protocols/repository.py) -----------------------------------
    async def load(self, spec: ModelSpec, version: str, alias: str | None) -> ModelVersions:
        """Load a version (a version, a tag, or `latest`), then point `alias` at it."""
        loaded, versions = await self._repository_call("load_version", spec.name, version)
        if alias is None:
            return versions
        return await self.set_alias(spec, alias, loaded)

    async def unload(self, spec: ModelSpec, version: str) -> ModelVersions:
        return (await self._repository_call("unload_version", spec.name, version))[1]

    async def set_alias(self, spec: ModelSpec, alias: str, version: str | None) -> ModelVersions:
        return (await self._repository_call("set_alias", spec.name, alias, version))[1]

    async def _repository_call(
        self, api_name: str, model_name: str, *args: str | None
    ) -> tuple[str, ModelVersions]:
        """The runner's answer: the version it loaded or moved to, and the model's versions."""
        if self._repository_refusal:
            raise RepositoryConflict(self._repository_refusal)
        api = getattr(self._runner, api_name)
        timeout_s = self._repository_timeout_s
        with runner_faults_unavailable(timeout_s):
            answer: RepositoryAnswer = await within_deadline(
                call_with_retries(api, model_name, *args), timeout_s
            )
        if answer["status"] != HTTPStatus.OK:
            raise repository_refusal(answer["status"], answer["error"])
        await self._describe()
        return answer["version"], ModelVersions.from_described(answer["versions"])[model_name]

    def _runner_calls(self, model_name: str, shadow: bool = False) -> MergedCalls:
        """A model's merged runner calls. Shadow calls have their own: a request must never
        wait for a shadow call holding the model's in-flight slots (p99 +22% at 50 req/s with
        every request shadowed, when they shared them)."""
        # Made on first use: BentoML's client learns the runner's API names when it connects.
        key = (model_name, shadow)
        if key not in self._merged_calls:
            self._merged_calls[key] = MergedCalls(
                getattr(self._runner, runner_api_name(model_name)),
                max_rows=self._max_rows,
                max_in_flight=self._max_in_flight,
                timeout_s=self._timeout_s,
            )
        return self._merged_calls[key]


def _repository_refusal(settings: Settings) -> str:
    """Why this pod cannot take repository calls, or "": a call changes the one process it
    reaches, so it needs exactly one process holding the models."""
    if settings.inline_models and settings.api_workers > 1:
        count, holders = settings.api_workers, "API workers (inline mode), each holding the models"
    elif not settings.inline_models and settings.runner_workers > 1:
        count, holders = settings.runner_workers, "runner workers"
    else:
        return ""
    return (
        f"the repository API changes the one process holding the models, and this service runs "
        f"{count} {holders}: set TABSERVE_MODEL_VERSIONS and TABSERVE_MODEL_ALIASES instead"
    )

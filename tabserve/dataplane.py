"""The data plane: validated request in, model answer out, whatever protocol carried it.

Every protocol front end (the V1 REST routes, later the Open Inference Protocol and TabPy) calls
this one object, so validation, the runner call and the response shape exist once.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException

from tabserve import metrics
from tabserve.catalog import MODELS, ModelSpec
from tabserve.errors import ModelNotFound, ModelUnavailable
from tabserve.instances import validated_rows
from tabserve.schemas import ModelInfo, Prediction, PredictResponse, Row

# Extra attempts after a connection-level failure calling the runner (see DataPlane._call_runner).
RUNNER_CONNECTION_RETRIES = 3


def runner_api_name(model_name: str) -> str:
    """The runner's batched API for one model."""
    return f"predict_{model_name}"


class DataPlane:
    def __init__(self, runner: Any) -> None:
        # `runner`: awaitable calls to service.ModelRunner (its dependency proxy's `to_async`).
        self._runner = runner
        self._infos: dict[str, ModelInfo] | None = None

    # --- model registry ---------------------------------------------------------------------
    async def model_infos(self) -> dict[str, ModelInfo]:
        """What the runner loaded (tags resolved to versions), asked once and then cached."""
        if self._infos is None:
            try:
                described = await self._runner.describe()
            except BentoMLException as error:
                raise ModelUnavailable(f"the model runner is not available: {error}") from error
            self._infos = {item["name"]: ModelInfo(**item) for item in described}
        return self._infos

    async def ready(self) -> bool:
        try:
            infos = await self.model_infos()
        except ModelUnavailable:
            return False
        return set(infos) == set(MODELS)

    def spec(self, model_name: str) -> ModelSpec:
        try:
            return MODELS[model_name]
        except KeyError:
            raise ModelNotFound(
                f"unknown model {model_name!r}; available: {', '.join(MODELS)}"
            ) from None

    async def model_info(self, model_name: str) -> ModelInfo:
        self.spec(model_name)
        return (await self.model_infos())[model_name]

    # --- prediction -------------------------------------------------------------------------
    def parse_rows(self, model_name: str, body: bytes) -> list[Row]:
        """JSON body -> rows in feature order, or a 400/422 naming the field and the reason."""
        self.spec(model_name)
        return validated_rows(model_name, body)

    async def predict_rows(self, model_name: str, rows: list[Row]) -> PredictResponse:
        spec = self.spec(model_name)
        info = await self.model_info(model_name)
        try:
            probabilities = await self._call_runner(runner_api_name(model_name), rows)
        except BentoMLException as error:
            if error.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
                raise ModelUnavailable("the model runner is overloaded; retry shortly") from error
            raise
        metrics.record_predictions(spec, info.tag, probabilities)
        return PredictResponse(predictions=_predictions(spec, probabilities), model=info.tag)

    async def _call_runner(self, api_name: str, rows: list[Row]) -> np.ndarray:
        """Call a runner API, retrying when a pooled connection broke before an answer came.

        BentoML's API->runner client keeps idle connections for 15 s, the runner's server closes
        them after 5 s, so a request can be written into a connection the runner is closing
        ("Broken pipe", bentoml/BentoML#4971). The broken connection leaves the pool; the next
        attempt takes another. Prediction has no side effects, so retrying is safe.
        """
        call = getattr(self._runner, api_name)
        for _ in range(RUNNER_CONNECTION_RETRIES):
            try:
                return await call(rows)
            except aiohttp.ClientConnectionError:
                continue
        return await call(rows)

    async def predict(self, model_name: str, body: bytes) -> PredictResponse:
        return await self.predict_rows(model_name, self.parse_rows(model_name, body))


def _predictions(spec: ModelSpec, probabilities: np.ndarray) -> list[Prediction]:
    classes = spec.class_names
    best = np.asarray(probabilities).argmax(axis=1)
    return [
        Prediction(
            label=classes[index], probabilities=dict(zip(classes, row.tolist(), strict=True))
        )
        for index, row in zip(best, probabilities, strict=True)
    ]

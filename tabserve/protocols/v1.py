"""The V1 REST protocol: KServe V1 / TF-Serving style `instances` in, `predictions` out.

GET  /v1/models                  every model: tag, metrics, input schema
GET  /v1/models/{name}           one model
POST /v1/models/{name}:predict   {"instances": [{feature: value, ...}, ...]}
GET  /v1/models/{name}:predict?feature=value&...   one instance, for the simplest clients
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.convertors import StringConvertor, register_url_convertor

from tabserve.catalog import MODELS, ModelSpec
from tabserve.dataplane import DataPlane, Predictions
from tabserve.errors import InvalidInput, UriTooLong
from tabserve.instances import instance_from_text, refusals_counted, rows_from_body
from tabserve.protocols.http import dataplane, read_json_body
from tabserve.schemas import ErrorDetail, ErrorResponse, request_model
from tabserve.settings import get_settings


class ModelNameConvertor(StringConvertor):
    """A path segment without ':' so `/v1/models/churn:predict` is never read as a model name
    (a GET there is then a 405, not an "unknown model 'churn:predict'")."""

    regex = "[^/:]+"


register_url_convertor("model_name", ModelNameConvertor())

router = APIRouter(prefix="/v1", tags=["V1 REST"])
Plane = Annotated[DataPlane, Depends(dataplane)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The body is not JSON.",
        404: "No such model.",
        413: "The body is larger than the limit.",
        415: "The body is not application/json.",
        422: "The instances do not fit the model's schema; `details` names each field.",
        503: "The model runner is overloaded or not loaded yet; retry later.",
    }.items()
}


@router.get("/models", summary="List the models")
async def list_models(plane: Plane) -> dict[str, list[dict[str, Any]]]:
    infos = await plane.model_infos()
    return {"models": [info.describe() for info in infos.values()]}


@router.get("/models/{model_name:model_name}", summary="Describe one model", responses=_ERRORS)
async def describe_model(model_name: str, plane: Plane) -> dict[str, Any]:
    return (await plane.model_info(plane.spec(model_name))).describe()


# --- the response -------------------------------------------------------------------------------
class Prediction(BaseModel):
    label: str = Field(description="The most probable class.")
    probabilities: dict[str, float] = Field(description="Probability of every class.")


# The predict routes' `response_model`, for the OpenAPI document; `_answer` writes it.
class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str = Field(description="Tag of the model that answered (name:version).")


def _answer(scores: Predictions) -> Response:
    """A PredictResponse, serialized straight from the arrays by pydantic-core: a pydantic object
    per row cost 7 ms per 1000 rows, this ~1 ms. FastAPI would validate the body again, so the
    routes return a Response."""
    classes = scores.spec.class_names
    predictions = [
        {"label": label, "probabilities": dict(zip(classes, row, strict=True))}
        for label, row in zip(scores.labels, scores.probabilities.tolist(), strict=True)
    ]
    body = pydantic_core.to_json({"predictions": predictions, "model": scores.tag})
    return Response(body, media_type="application/json")


# --- prediction routes ---------------------------------------------------------------------------
def _predict_endpoint(spec: ModelSpec) -> Callable[..., Awaitable[Response]]:
    async def predict(request: Request, plane: Plane) -> Response:
        body = await read_json_body(request)
        with refusals_counted(spec.name):
            rows = rows_from_body(spec.name, body)
        return _answer(await plane.predict(spec, rows))

    predict.__name__ = f"predict_{spec.name}"
    return predict


def _request_body(model_name: str) -> dict[str, Any]:
    """OpenAPI for a body we parse ourselves (see app._openapi_with_request_schemas)."""
    schema_ref = f"#/components/schemas/{request_model(model_name).__name__}"
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": schema_ref}}},
        }
    }


# One route per model, so the OpenAPI document carries each model's exact request schema;
# the body is parsed by tabserve.instances (pydantic-core's JSON parser) rather than by FastAPI.
for _name, _spec in MODELS.items():
    router.add_api_route(
        f"/models/{_name}:predict",
        _predict_endpoint(_spec),
        methods=["POST"],
        response_model=PredictResponse,
        summary=f"Predict: {_spec.title}",
        description=_spec.use_case,
        responses=_ERRORS,
        openapi_extra=_request_body(_name),
    )


@router.post("/models/{model_name:model_name}:predict", include_in_schema=False)
async def predict_unknown_model(model_name: str, plane: Plane) -> None:
    plane.spec(model_name)  # raises ModelNotFound: every known model has its own route above


@router.get(
    "/models/{model_name:model_name}:predict",
    summary="Predict one instance given as query parameters",
    description="`?feature=value&...`: each value is read by its feature's kind (numbers, "
    "integers, true/false, category names, text), then checked exactly as the POST route checks "
    "a JSON instance; errors name `instances[0].<feature>`. An empty value means not given.",
    response_model=PredictResponse,
    responses={
        **_ERRORS,
        414: {"model": ErrorResponse, "description": "The query string is over the limit."},
    },
)
async def predict_from_query(model_name: str, request: Request, plane: Plane) -> Response:
    spec = plane.spec(model_name)
    limit = get_settings().max_query_bytes
    size = len(request.scope["query_string"])
    if size > limit:
        raise UriTooLong.at("query", f"{size} bytes; the limit is {limit} (send a POST body)")
    with refusals_counted(spec.name):
        rows = rows_from_body(spec.name, {"instances": [_query_instance(spec, request)]})
    return _answer(await plane.predict(spec, rows))


def _query_instance(spec: ModelSpec, request: Request) -> dict[str, Any]:
    # One count per name: getlist() per name rescanned every parameter (8000 took 1.5 s).
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise InvalidInput.listing(
            [
                ErrorDetail(field=f"instances[0].{name}", reason="given more than once")
                for name in repeated
            ]
        )
    # Too many names are refused by rows_from_body (check_bounds) before the schema sees them.
    return instance_from_text(spec.name, dict(request.query_params))

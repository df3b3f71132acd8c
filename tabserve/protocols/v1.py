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

from fastapi import APIRouter, Depends, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor

from tabserve.catalog import MODELS
from tabserve.dataplane import DataPlane, Scores
from tabserve.errors import InvalidInput, UriTooLong
from tabserve.instances import instance_from_text, validate_instances
from tabserve.protocols.http import dataplane, read_json_body
from tabserve.schemas import ErrorDetail, ErrorResponse, PredictResponse, request_model
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
    return (await plane.model_info(model_name)).describe()


def _answer(scores: Scores) -> Response:
    # Serialized by the data plane; FastAPI would validate the body again (PredictResponse is
    # each predict route's `response_model`, for the OpenAPI document).
    return Response(scores.v1_json(), media_type="application/json")


def _predict_endpoint(model_name: str) -> Callable[..., Awaitable[Response]]:
    async def predict(request: Request, plane: Plane) -> Response:
        return _answer(await plane.predict(model_name, await read_json_body(request)))

    predict.__name__ = f"predict_{model_name}"
    return predict


def _request_body(model_name: str) -> dict[str, Any]:
    """OpenAPI for a body we parse ourselves (see app.openapi_with_request_schemas)."""
    schema_ref = f"#/components/schemas/{request_model(model_name).__name__}"
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": schema_ref}}},
        }
    }


# One route per model, so the OpenAPI document carries each model's exact request schema;
# the body is parsed by the data plane (pydantic-core's JSON parser) rather than by FastAPI.
for _name, _spec in MODELS.items():
    router.add_api_route(
        f"/models/{_name}:predict",
        _predict_endpoint(_name),
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
    plane.spec(model_name)
    limit = get_settings().max_query_bytes
    size = len(request.scope["query_string"])
    if size > limit:
        raise UriTooLong.at("query", f"{size} bytes; the limit is {limit} (send a POST body)")
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
    # Too many names are refused by validate_instances before the schema sees them.
    instance = instance_from_text(model_name, dict(request.query_params))
    return _answer(await plane.predict_rows(model_name, validate_instances(model_name, [instance])))

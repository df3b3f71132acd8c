"""The V1 REST protocol: KServe V1 / TF-Serving style `instances` in, `predictions` out.

GET  /v1/models                  every model: tag, metrics, input schema, versions, aliases
GET  /v1/models/{name}           one model
POST /v1/models/{name}:predict   {"instances": [{feature: value, ...}, ...]}
GET  /v1/models/{name}:predict?feature=value&...   one instance, for the simplest clients
POST /v1/models/{name}:explain   same body as :predict; per instance the prediction and each
                                 feature's contribution to the model's margin
GET|POST /v1/models/{name}/versions/{version}[:predict|:explain]   the same, for one loaded
                                 version or alias (the routes above follow `champion`)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field
from starlette.convertors import StringConvertor, register_url_convertor

from tabserve.catalog import MODELS, ModelSpec
from tabserve.dataplane import DataPlane, Explained, Predictions
from tabserve.errors import InvalidInput, UriTooLong
from tabserve.instances import instance_from_text, refusals_counted, rows_from_body
from tabserve.large_bodies import in_turns, row_slices, rows_from_json
from tabserve.model_input import from_rows
from tabserve.protocols.http import dataplane, read_json_body
from tabserve.schemas import ErrorDetail, ErrorResponse, Row, request_model
from tabserve.settings import get_settings


class ModelNameConvertor(StringConvertor):
    """A path segment without ':' so `/v1/models/churn:predict` is never read as a model name
    (a GET there is then a 405, not an "unknown model 'churn:predict'")."""

    regex = "[^/:]+"


register_url_convertor("model_name", ModelNameConvertor())
register_url_convertor("version", ModelNameConvertor())  # a version or an alias

router = APIRouter(prefix="/v1", tags=["V1 REST"])
Plane = Annotated[DataPlane, Depends(dataplane)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The body is not JSON.",
        404: "No such model, or no such version of it.",
        413: "The body is larger than the limit.",
        415: "The body is not application/json.",
        422: "The instances do not fit the model's schema; `details` names each field.",
        503: "The model runner is overloaded or not loaded yet; retry later.",
    }.items()
}
_EXPLAIN_ERRORS = {
    **_ERRORS,
    413: {
        "model": ErrorResponse,
        "description": "The body is larger than the limit, or has more instances than "
        "explain_max_rows.",
    },
}


@router.get("/models", summary="List the models")
async def list_models(plane: Plane) -> dict[str, list[dict[str, Any]]]:
    infos = await plane.model_infos()
    return {"models": [info.describe() for info in infos.values()]}


@router.get("/models/{model_name:model_name}", summary="Describe one model", responses=_ERRORS)
async def describe_model(model_name: str, plane: Plane) -> dict[str, Any]:
    return (await plane.model_versions(plane.spec(model_name))).describe()


@router.get(
    "/models/{model_name:model_name}/versions/{version:version}",
    summary="Describe one version of a model",
    responses=_ERRORS,
)
async def describe_version(model_name: str, version: str, plane: Plane) -> dict[str, Any]:
    return (await plane.model_info(plane.spec(model_name), version)).describe()


# --- the response -------------------------------------------------------------------------------
class Prediction(BaseModel):
    label: str = Field(description="The most probable class.")
    probabilities: dict[str, float] = Field(description="Probability of every class.")


# The predict routes' `response_model`, for the OpenAPI document; `_answer` writes it.
class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str = Field(description="Tag of the model that answered (name:version).")


async def _answer(scores: Predictions) -> Response:
    """A PredictResponse, serialized straight from the arrays by pydantic-core: a pydantic object
    per row cost 7 ms per 1000 rows, this ~1 ms. FastAPI would validate the body again, so the
    routes return a Response. Built a slice of rows per turn of the event loop (large_bodies)."""
    classes = scores.spec.class_names
    rows = list(zip(scores.labels, scores.probabilities.tolist(), strict=True))
    predictions: list[dict[str, Any]] = []
    async for part in in_turns(row_slices(rows)):
        predictions += [
            {"label": label, "probabilities": dict(zip(classes, row, strict=True))}
            for label, row in part
        ]
    body = pydantic_core.to_json({"predictions": predictions, "model": scores.tag})
    return Response(body, media_type="application/json")


class FeatureContribution(BaseModel):
    feature: str
    contribution: float


class TokenContribution(BaseModel):
    token: str
    contribution: float


class OutputExplanation(BaseModel):
    explained_class: str = Field(alias="class", description="The class whose margin this is.")
    base_value: float = Field(description="The margin before any feature is known.")
    margin: float = Field(description="base_value plus every contribution: the model's margin.")
    contributions: dict[str, float] = Field(description="Each feature's share of the margin.")
    top: list[FeatureContribution] = Field(
        description="Every feature, largest absolute contribution first."
    )


class Explanation(Prediction):
    scale: str = Field(
        description="The scale of margins and contributions: 'log-odds', or 'probability' for "
        "a model without a margin."
    )
    outputs: list[OutputExplanation] = Field(
        description="One per explained class: the second class of a binary model, every class "
        "of a multi-class one."
    )
    tokens: list[TokenContribution] | None = Field(
        None, description="Text models only: the words that weighed most, largest first."
    )


# The explain routes' `response_model`, for the OpenAPI document; `_explained` writes it.
class ExplainResponse(BaseModel):
    explanations: list[Explanation]
    model: str = Field(description="Tag of the model that answered (name:version).")


def _explained(answer: Explained) -> Response:
    """An ExplainResponse, built from the arrays as `_answer` builds a PredictResponse."""
    classes = answer.spec.class_names
    explanations = []
    rows = zip(
        answer.labels, answer.probabilities.tolist(), answer.contributions.tolist(), strict=True
    )
    for row, (label, probabilities, contributions) in enumerate(rows):
        explanation: dict[str, Any] = {
            "label": label,
            "probabilities": dict(zip(classes, probabilities, strict=True)),
            "scale": answer.scale,
            "outputs": [
                _output_explanation(answer.spec, explained_class, values)
                for explained_class, values in zip(answer.outputs, contributions, strict=True)
            ],
        }
        if answer.tokens is not None:
            explanation["tokens"] = [
                {"token": token, "contribution": value} for token, value in answer.tokens[row]
            ]
        explanations.append(explanation)
    body = pydantic_core.to_json({"explanations": explanations, "model": answer.tag})
    return Response(body, media_type="application/json")


def _output_explanation(spec: ModelSpec, explained_class: str, values: list[float]) -> dict:
    """One class's contributions (the spec's features in order, then the base value)."""
    per_feature = dict(zip(spec.feature_names, values[:-1], strict=True))
    ranked = sorted(per_feature.items(), key=lambda item: abs(item[1]), reverse=True)
    return {
        "class": explained_class,
        "base_value": values[-1],
        "margin": math.fsum(values),
        "contributions": per_feature,
        "top": [{"feature": name, "contribution": value} for name, value in ranked],
    }


# --- prediction and explanation routes ----------------------------------------------------------
async def _rows(spec: ModelSpec, request: Request) -> list[Row]:
    """A POST body's instances, validated (counted when refused)."""
    body = await read_json_body(request)
    with refusals_counted(spec.name):
        return await rows_from_json(spec.name, body)


def _predict_endpoint(spec: ModelSpec, versioned: bool) -> Callable[..., Awaitable[Response]]:
    async def predict(request: Request, plane: Plane) -> Response:
        features = from_rows(spec, await _rows(spec, request))
        return await _answer(await plane.predict(spec, features, _version(request)))

    predict.__name__ = f"predict_{spec.name}{'_version' if versioned else ''}"
    return predict


def _explain_endpoint(spec: ModelSpec, versioned: bool) -> Callable[..., Awaitable[Response]]:
    async def explain(request: Request, plane: Plane) -> Response:
        return _explained(await plane.explain(spec, await _rows(spec, request), _version(request)))

    explain.__name__ = f"explain_{spec.name}{'_version' if versioned else ''}"
    return explain


def _version(request: Request) -> str:
    """The version or alias a versioned route names; "" (the champion) on the others. Read from
    the path, not a parameter: on the unversioned routes FastAPI would make it a query one."""
    return request.path_params.get("version", "")


async def _declare_version(
    version: Annotated[str, Path(description="A loaded version of the model, or an alias.")],
) -> None:
    """Declares the versioned routes' `{version}` in the OpenAPI document (`_version` reads it)."""


def _request_body(model_name: str) -> dict[str, Any]:
    """OpenAPI for a body we parse ourselves (see app._openapi_with_request_schemas)."""
    schema_ref = f"#/components/schemas/{request_model(model_name).__name__}"
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": schema_ref}}},
        }
    }


# One route per model and verb, so the OpenAPI document carries each model's exact request
# schema; the body is parsed by tabserve.instances (pydantic-core's JSON parser), not by FastAPI.
_EXPLAIN_DESCRIPTION = (
    "Each instance's prediction and every feature's contribution to the model's margin; at "
    "most explain_max_rows instances."
)
for _name, _spec in MODELS.items():
    for _verb, _endpoint, _response, _errors, _description in (
        ("predict", _predict_endpoint, PredictResponse, _ERRORS, _spec.use_case),
        ("explain", _explain_endpoint, ExplainResponse, _EXPLAIN_ERRORS, _EXPLAIN_DESCRIPTION),
    ):
        for _path, _versioned in (("", False), ("/versions/{version:version}", True)):
            router.add_api_route(
                f"/models/{_name}{_path}:{_verb}",
                _endpoint(_spec, _versioned),
                methods=["POST"],
                dependencies=[Depends(_declare_version)] if _versioned else [],
                response_model=_response,
                summary=f"{_verb.title()}: {_spec.title}"
                + (" (one version)" if _versioned else ""),
                description=_description,
                responses=_errors,
                openapi_extra=_request_body(_name),
            )


@router.post("/models/{model_name:model_name}:predict", include_in_schema=False)
@router.post("/models/{model_name:model_name}:explain", include_in_schema=False)
@router.post(
    "/models/{model_name:model_name}/versions/{version:version}:predict", include_in_schema=False
)
@router.post(
    "/models/{model_name:model_name}/versions/{version:version}:explain", include_in_schema=False
)
async def unknown_model(model_name: str, plane: Plane) -> None:
    plane.spec(model_name)  # raises ModelNotFound: every known model has its own routes above


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
    return await _answer(await plane.predict(spec, from_rows(spec, rows)))


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

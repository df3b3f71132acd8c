"""The model repository API (Triton's shape): which model versions this service holds, and
changing them while it serves.

POST /v2/repository/index                        every loaded version: name, version, state,
                                                 aliases
POST /v2/repository/models/{name}/load           {"parameters": {"version": "<v>"|"latest",
                                                 "alias": "<alias>"}}, both optional: load a
                                                 version from the model store, then point the
                                                 alias at it
POST /v2/repository/models/{name}/unload         {"parameters": {"version": "<v>"}}: drop a
                                                 version no alias names
POST /v2/repository/models/{name}/aliases        {"alias": "<alias>", "version": "<v>"|null}:
                                                 move (or, null, remove) an alias

A change applies to the process holding the models: the runner (one runner worker), or the API
worker in inline mode (one API worker); in other layouts the calls answer 409 (configure
versions with TABSERVE_MODEL_VERSIONS / TABSERVE_MODEL_ALIASES instead). Changes last until the
process restarts: configuration is what a restarted pod loads. The calls that change anything
need the API token (TABSERVE_API_TOKEN): without one configured they answer 403.
How a load, an unload and an alias move keep requests in flight whole: tabserve/loaded_models.py.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tabserve.dataplane import DataPlane
from tabserve.errors import InvalidInput, RepositoryLocked
from tabserve.instances import parse_json
from tabserve.model_versions import ModelVersions
from tabserve.protocols.http import dataplane, error_route, read_json_body
from tabserve.schemas import DEFAULT_ALIAS
from tabserve.settings import get_settings

router = APIRouter(
    prefix="/v2/repository",
    tags=["Model repository"],
    route_class=error_route(lambda error: {"error": error.one_line()}),
)
Plane = Annotated[DataPlane, Depends(dataplane)]

_NAME = Field(min_length=1, max_length=128)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class LoadParameters(_Body):
    version: Annotated[str, _NAME] = "latest"
    alias: Annotated[str, _NAME] | None = None


class LoadRequest(_Body):
    parameters: LoadParameters = Field(default_factory=LoadParameters)


class UnloadParameters(_Body):
    version: Annotated[str, _NAME]


class UnloadRequest(_Body):
    parameters: UnloadParameters


class AliasRequest(_Body):
    alias: Annotated[str, _NAME]
    version: Annotated[str, _NAME] | None = Field(description="null removes the alias")


class IndexRequest(_Body):
    ready: bool = False  # Triton's flag; every version listed here is ready


Body = TypeVar("Body", bound=_Body)


async def _body(request: Request, model: type[Body]) -> Body:
    """The JSON body as `model`; an empty body is `{}`. A problem names its field (422)."""
    body = await read_json_body(request)
    try:
        return model.model_validate(parse_json(body) if body.strip() else {})
    except ValidationError as error:
        raise InvalidInput.from_validation(error) from None


def _changes_allowed() -> None:
    if get_settings().api_token is None:
        raise RepositoryLocked(
            "the repository API changes what this service serves: set TABSERVE_API_TOKEN "
            "(or TABSERVE_API_TOKEN_FILE) and send it as a bearer token"
        )


def _listing(model: ModelVersions) -> dict[str, Any]:
    return {
        "name": model.name,
        "aliases": dict(sorted(model.aliases.items())),
        "versions": [info.describe() for info in model.versions.values()],
    }


@router.post("/index", summary="Every loaded model version")
async def index(request: Request, plane: Plane) -> list[dict[str, Any]]:
    await _body(request, IndexRequest)
    return [
        {"name": model.name, "version": version, "state": "READY", "aliases": list(info.aliases)}
        for model in (await plane.model_infos()).values()
        for version, info in model.versions.items()
    ]


@router.post("/models/{model_name}/load", summary="Load a version (and point an alias at it)")
async def load(model_name: str, request: Request, plane: Plane) -> dict[str, Any]:
    _changes_allowed()
    spec = plane.spec(model_name)
    parameters = (await _body(request, LoadRequest)).parameters
    return _listing(await plane.load(spec, parameters.version, parameters.alias))


@router.post("/models/{model_name}/unload", summary="Unload a version no alias names")
async def unload(model_name: str, request: Request, plane: Plane) -> dict[str, Any]:
    _changes_allowed()
    spec = plane.spec(model_name)
    parameters = (await _body(request, UnloadRequest)).parameters
    return _listing(await plane.unload(spec, parameters.version))


@router.post(
    "/models/{model_name}/aliases",
    summary=f"Point an alias at a loaded version (the unversioned routes follow {DEFAULT_ALIAS})",
)
async def set_alias(model_name: str, request: Request, plane: Plane) -> dict[str, Any]:
    _changes_allowed()
    spec = plane.spec(model_name)
    body = await _body(request, AliasRequest)
    return _listing(await plane.set_alias(spec, body.alias, body.version))

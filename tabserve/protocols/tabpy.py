"""Tableau's analytics extension protocol, as TabPy serves it, for the models of the catalog.

GET  /info              what the server supports (Tableau's "Test Connection" reads it)
GET  /endpoints         the endpoints: `<model>` answers the predicted class of each row;
                        `<model>_probability` (binary models) the probability of the positive class
POST /query/{endpoint}  {"data": [column, column, ...]}: one column per feature, in the model's
                        feature order; or {"data": {feature: column, ...}}
POST /evaluate          {"script": "return tabpy.query('churn', _arg1, ..., _argN)['response']",
                         "data": {"_arg1": column, ...}}

TabPy runs /evaluate scripts as Python. We never run anything: a script is parsed with `ast` and
accepted only when it is exactly that one `tabpy.query` call on the `_argN` columns; any other
script is a 400. Errors use TabPy's body, {"message": ..., "info": ...}, which Tableau shows.
"""

from __future__ import annotations

import ast
import re
import textwrap
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError

from tabserve import __version__
from tabserve.catalog import MODELS, ModelSpec
from tabserve.dataplane import DataPlane, Predictions
from tabserve.errors import InvalidInput, ModelNotFound, ServingError
from tabserve.instances import (
    as_feature_type,
    check_instance_count,
    parse_json,
    refusals_counted,
    rows_from_body,
)
from tabserve.model_input import from_rows
from tabserve.protocols.http import dataplane, error_route, read_json_body
from tabserve.schemas import ErrorDetail, Row
from tabserve.settings import get_settings

SCRIPT_FORM = "return tabpy.query('<endpoint>', _arg1, ..., _argN)['response']"
# A real script of that form is a few hundred characters; the cap keeps the parser's work small.
MAX_SCRIPT_CHARS = 10_000
_ARGUMENT = re.compile(r"_arg[1-9][0-9]*")
# TabPy counts redeployments of an endpoint in `version`; ours never change while the server
# runs (the model store tag, given as `tag`, says which model answered).
_ENDPOINT_VERSION = 1
_STARTED = int(time.time())


class ScriptRejected(ServingError):
    """An /evaluate script that is not the one accepted form."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    spec: ModelSpec
    # The class whose probability each row gets; None: the predicted class's name.
    scored_class: str | None = None

    @property
    def description(self) -> str:
        if self.scored_class is None:
            return f"{self.spec.title}: the predicted class ({', '.join(self.spec.class_names)})."
        return f"{self.spec.title}: the probability of '{self.scored_class}'."

    def docstring(self) -> str:
        """The argument order a Tableau calculation must follow."""
        arguments = ", ".join(f"_arg{i} = {name}" for i, name in enumerate(self.feature_names, 1))
        return f"{self.spec.use_case} Arguments: {arguments}."

    @property
    def feature_names(self) -> list[str]:
        return self.spec.feature_names

    def answer(self, scores: Predictions) -> list[Any]:
        if self.scored_class is None:
            return scores.labels
        return scores.class_probabilities(self.scored_class)


def _endpoints() -> dict[str, Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    for spec in MODELS.values():
        endpoints[spec.name] = Endpoint(spec.name, spec)
        if spec.positive_class is not None:
            name = f"{spec.name}_probability"
            endpoints[name] = Endpoint(name, spec, spec.positive_class)
    return endpoints


ENDPOINTS = _endpoints()


def find_endpoint(name: str) -> Endpoint:
    try:
        return ENDPOINTS[name]
    except KeyError:
        raise ModelNotFound(
            f"unknown endpoint {name!r}; available: {', '.join(ENDPOINTS)}"
        ) from None


# --- errors in TabPy's shape ----------------------------------------------------------------------
def _tabpy_error(error: ServingError) -> dict[str, Any]:
    """TabPy's error body, which its own client reads."""
    info: dict[str, Any] = {"details": [detail.model_dump() for detail in error.details]}
    if error.omitted:
        info["details_omitted"] = error.omitted
    return {"message": error.message, "info": info}


router = APIRouter(tags=["Tableau (TabPy)"], route_class=error_route(_tabpy_error))
Plane = Annotated[DataPlane, Depends(dataplane)]


# --- request bodies -------------------------------------------------------------------------------
Body = TypeVar("Body", bound=BaseModel)


class QueryBody(BaseModel):
    # A list: positional arguments (TabPy's client sends `query(name, *args)` so); a dict: named.
    data: list[Any] | dict[str, Any]


class EvaluateBody(BaseModel):
    script: str
    data: dict[str, Any] = {}


def _parse_body(model: type[Body], body: bytes) -> Body:
    try:
        return model.model_validate(parse_json(body))
    except ValidationError as error:
        raise InvalidInput.from_validation(error) from None


# --- columns -> rows -> answer --------------------------------------------------------------------
def _as_column(value: Any) -> list[Any]:
    """Tableau sends a list per argument; a single value is a column of one row."""
    return value if isinstance(value, list) else [value]


def _instances(spec: ModelSpec, columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Feature-named columns -> one instance per row."""
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidInput(
            f"the columns differ in length: {lengths}",
            [ErrorDetail(field="data", reason="every column must have one value per row")],
        )
    check_instance_count(max(lengths.values(), default=0))  # before a dict is built per row
    features = {feature.name: feature for feature in spec.features}
    rows = zip(*columns.values(), strict=True)
    return [
        {
            name: as_feature_type(features[name], value) if name in features else value
            for name, value in zip(columns, row, strict=True)
        }
        for row in rows
    ]


def _positional(target: Endpoint, columns: list[Any]) -> dict[str, list[Any]]:
    """Columns in the model's feature order -> feature-named columns."""
    if len(columns) != len(target.feature_names):
        raise InvalidInput(
            f"{target.name} takes {len(target.feature_names)} arguments, got {len(columns)}",
            [ErrorDetail(field="data", reason=target.docstring())],
        )
    return {
        feature: _as_column(column)
        for feature, column in zip(target.feature_names, columns, strict=True)
    }


def _rows(target: Endpoint, columns: dict[str, list[Any]]) -> list[Row]:
    return rows_from_body(target.spec.name, {"instances": _instances(target.spec, columns)})


# --- /evaluate's one accepted script --------------------------------------------------------------
def parse_script(script: str) -> tuple[str, list[str]]:
    """`return tabpy.query('<endpoint>', _arg1, ...)['response']` -> (endpoint, argument names).

    Only parsed, never compiled or run: anything but that exact shape is a ScriptRejected.
    """
    if len(script) > MAX_SCRIPT_CHARS:
        raise ScriptRejected.at("script", f"longer than {MAX_SCRIPT_CHARS} characters")
    source = textwrap.dedent(script).strip()
    try:
        module = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ScriptRejected.at("script", f"not valid Python: {error}") from None
    match module.body:
        case [
            ast.Return(
                value=ast.Subscript(
                    value=ast.Call(
                        func=ast.Attribute(value=ast.Name(id="tabpy"), attr="query"),
                        args=[ast.Constant(value=str() as name), *arguments],
                        keywords=[],
                    ),
                    slice=ast.Constant(value="response"),
                )
            )
        ]:
            pass
        case _:
            raise ScriptRejected.at(
                "script", f"only scripts of the form {SCRIPT_FORM} are accepted"
            )
    names = []
    for argument in arguments:
        if not (isinstance(argument, ast.Name) and _ARGUMENT.fullmatch(argument.id)):
            # Quoted from the source, never ast.unparse: it recurses, and `not not ... _arg1`
            # nested a few hundred deep raised RecursionError (a 500).
            quoted = ast.get_source_segment(source, argument) or type(argument).__name__
            raise ScriptRejected.at(
                "script",
                f"tabpy.query arguments must be the columns _arg1 ... _argN, not {quoted!r}",
            )
        names.append(argument.id)
    return name, names


def _script_columns(target: Endpoint, names: list[str], data: dict[str, Any]) -> list[Any]:
    missing = [name for name in names if name not in data]
    if missing:
        raise ScriptRejected.at(
            "data",
            f"the script uses {', '.join(missing)} but the data has only {', '.join(data) or '-'}",
        )
    if len(names) != len(target.feature_names):
        raise ScriptRejected.at(
            "script",
            f"{target.name} takes {len(target.feature_names)} arguments, the script passes "
            f"{len(names)}; {target.docstring()}",
        )
    return [data[name] for name in names]


# --- routes ---------------------------------------------------------------------------------------
def _features() -> dict[str, Any]:
    features: dict[str, Any] = {
        "evaluate_enabled": True,
        "gzip_enabled": False,
        "arrow_enabled": False,
    }
    if get_settings().api_token is not None:
        # As TabPy says it: Tableau then sends the user name and password (the token) as Basic.
        features["authentication"] = {"required": True, "methods": {"basic-auth": {}}}
    return features


@router.get("/info", summary="TabPy server information")
async def info() -> dict[str, Any]:
    return {
        "description": "tabserve: the catalog's models as TabPy endpoints (scripts are not run)",
        "creation_time": str(_STARTED),
        "state_path": "",
        "server_version": __version__,
        "name": "tabserve",
        "versions": {"v1": {"features": _features()}},
    }


@router.get("/endpoints", summary="The TabPy endpoints: one per model (and per scored class)")
async def list_endpoints() -> dict[str, dict[str, Any]]:
    return {
        target.name: {
            "description": target.description,
            "docstring": target.docstring(),
            "type": "model",
            "version": _ENDPOINT_VERSION,
            "dependencies": [],
            "creation_time": _STARTED,
            "last_modified_time": _STARTED,
            "target": None,
            "is_public": True,
        }
        for target in ENDPOINTS.values()
    }


@router.post("/query/{name}", summary="Query an endpoint with columns of feature values")
async def query(name: str, request: Request, plane: Plane) -> dict[str, Any]:
    target = find_endpoint(name)
    raw = await read_json_body(request)
    with refusals_counted(target.spec.name):
        body = _parse_body(QueryBody, raw)
        if isinstance(body.data, list):
            columns = _positional(target, body.data)
        else:
            columns = {feature: _as_column(column) for feature, column in body.data.items()}
        rows = _rows(target, columns)
    scores = await plane.predict(target.spec, from_rows(target.spec, rows))
    return {
        "response": target.answer(scores),
        "version": _ENDPOINT_VERSION,
        "model": target.name,
        "uuid": str(uuid.uuid4()),
        "tag": scores.tag,
    }


@router.post("/evaluate", summary="Tableau's SCRIPT_* call, restricted to one tabpy.query")
async def evaluate(request: Request, plane: Plane) -> list[Any]:
    # Refusals before the script names its endpoint are not counted: they belong to no model.
    body = _parse_body(EvaluateBody, await read_json_body(request))
    name, names = parse_script(body.script)
    if name not in ENDPOINTS:
        raise ScriptRejected.at(
            "script", f"unknown endpoint {name!r}; available: {', '.join(ENDPOINTS)}"
        )
    target = ENDPOINTS[name]
    with refusals_counted(target.spec.name):
        rows = _rows(target, _positional(target, _script_columns(target, names, body.data)))
    return target.answer(await plane.predict(target.spec, from_rows(target.spec, rows)))

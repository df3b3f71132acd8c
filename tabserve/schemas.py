"""Request and response models, generated from the catalog's feature declarations.

Generated, not hand-written, so a schema cannot drift from the model it guards. Numbers are
strict (a JSON string "5" is not a number), finite and within the feature's plausible bounds;
categories are exact; unknown fields are rejected so a misspelt feature is not silently imputed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from tabserve.catalog import MODELS, ModelSpec
from tabserve.features import Feature, Kind
from tabserve.settings import get_settings

_STRICT = ConfigDict(extra="forbid", strict=True)

# A row is one instance's feature values in the spec's feature order; None = not given.
Row = tuple[Any, ...]

# The alias the unversioned routes follow; every model has it (tabserve/loaded_models.py).
DEFAULT_ALIAS = "champion"
_ALIAS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
# A repository call's answer from the process holding the models: {"status": 200, "versions":
# [...]} or {"status": 4xx, "error": "..."}. Plain data, so it crosses the API-runner hop as is.
RepositoryAnswer = dict[str, Any]


def is_alias_name(name: str) -> bool:
    """Aliases share the version slot of the routes (`/versions/champion`) and become metric
    labels: a short token."""
    return _ALIAS_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class ModelInfo:
    """What the API tells callers about a loaded model version (the runner's `describe`)."""

    name: str
    tag: str
    framework: str
    metadata: dict[str, Any]
    aliases: tuple[str, ...] = ()  # the aliases naming this version

    @property
    def version(self) -> str:
        return self.tag.rpartition(":")[2]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tag": self.tag,
            "version": self.version,
            "aliases": list(self.aliases),
            "framework": self.framework,
            **self.metadata,
        }


def _field_type(feature: Feature, max_text_chars: int) -> Any:
    description = feature.description
    match feature.kind:
        case Kind.NUMBER:
            return Annotated[
                float,
                Field(
                    ge=feature.minimum,
                    le=feature.maximum,
                    allow_inf_nan=False,
                    description=description,
                ),
            ]
        case Kind.INTEGER:
            return Annotated[
                int, Field(ge=feature.minimum, le=feature.maximum, description=description)
            ]
        case Kind.BOOLEAN:
            return Annotated[bool, Field(description=description)]
        case Kind.CATEGORY:
            return Annotated[Literal[feature.categories], Field(description=description)]
        case Kind.TEXT:
            return Annotated[
                str,
                Field(min_length=1, max_length=max_text_chars, description=description),
            ]
    raise AssertionError(feature.kind)


def _instance_model(spec: ModelSpec, max_text_chars: int) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for feature in spec.features:
        annotation = _field_type(feature, max_text_chars)
        if feature.required:
            fields[feature.name] = (annotation, Field(examples=[feature.example]))
        else:
            fields[feature.name] = (annotation | None, Field(None, examples=[feature.example]))
    return create_model(
        f"{spec.name.title()}Instance", __config__=_STRICT, __doc__=spec.use_case, **fields
    )


@cache
def request_model(model_name: str) -> type[BaseModel]:
    """`{"instances": [{feature: value, ...}, ...]}` for one model (KServe V1 row format)."""
    settings = get_settings()
    spec = MODELS[model_name]
    instance = _instance_model(spec, settings.max_text_chars)
    return create_model(
        f"{spec.name.title()}PredictRequest",
        __config__=_STRICT,
        instances=(
            list[instance],  # type: ignore[valid-type]
            Field(
                min_length=1,
                max_length=settings.max_instances,
                examples=[[spec.example_instance()]],
            ),
        ),
    )


class ErrorDetail(BaseModel):
    field: str = Field(description="Where the problem is, e.g. 'instances[0].age'.")
    reason: str = Field(description="What is wrong with it.")


class ErrorResponse(BaseModel):
    error: str = Field(description="One line saying what went wrong.")
    details: list[ErrorDetail] = Field(default_factory=list)
    details_omitted: int | None = Field(
        None, description="How many more problems there were than `details` lists."
    )

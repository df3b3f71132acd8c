"""JSON schemas of the custom resources the chart renders (ServiceMonitor, PrometheusRule,
KEDA ScaledObject).

They come from PyPI's cloudcoil model packages, generated from the upstream CRDs'
openAPIV3Schema (prometheus-operator v0.80.1, KEDA v2.16.1; versions pinned in constraints.txt),
so no CRD file is copied into this repository. The generated models ignore unknown fields, so
every object schema is made closed here, as the API server's structural-schema pruning would
drop (and `kubectl --validate=strict` reject) an unknown field.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring
from pydantic import BaseModel

CUSTOM_RESOURCES: dict[tuple[str, str], type[BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
}

# Free-form maps in ObjectMeta (labels, annotations) keep their additionalProperties.
_OPEN_MAPS = ("additionalProperties", "patternProperties")


def _closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in closed and not any(key in closed for key in _OPEN_MAPS):
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@cache
def validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    model = CUSTOM_RESOURCES[(api_version, kind)]
    schema = _closed(model.model_json_schema(by_alias=True))
    return jsonschema.Draft202012Validator(schema)


def errors(manifest: dict[str, Any]) -> list[str]:
    """Every way the object breaks its CRD schema, as '<path>: <message>' lines."""
    check = validator(manifest["apiVersion"], manifest["kind"])
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in check.iter_errors(manifest)
    ]

"""JSON schemas of the custom resources the chart renders (ServiceMonitor, PrometheusRule,
KEDA ScaledObject, Gateway API HTTPRoute and GRPCRoute).

No CRD file is copied into this repository:
- ServiceMonitor, PrometheusRule and ScaledObject come from PyPI's cloudcoil model packages,
  generated from the upstream CRDs' openAPIV3Schema (prometheus-operator v0.80.1, KEDA v2.16.1;
  versions pinned in constraints.txt).
- The Gateway API has no such package; its Go module (sigs.k8s.io/gateway-api) carries the CRDs
  under config/crd/standard/, so `go mod download` fetches the release from the Go module proxy
  into Go's module cache and the openAPIV3Schema is read from there, for the oldest release with
  GRPCRoute v1 and the newest. Their CEL rules (x-kubernetes-validations) are left to the API
  server.
The generated models ignore unknown fields, so every object schema is made closed here, as the
API server's structural-schema pruning would drop (and `kubectl --validate=strict` reject) an
unknown field.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring
from pydantic import BaseModel

CUSTOM_RESOURCES: dict[tuple[str, str], type[BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
}

# Gateway API releases checked: the first with GRPCRoute in v1, and the newest.
GATEWAY_API_RELEASES = ("v1.1.0", "v1.6.3")
# (apiVersion, kind) -> the CRD's plural, which names its file in config/crd/standard/.
GATEWAY_API_RESOURCES = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "grpcroutes",
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


def _gateway_api_schema(release: str, api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of one Gateway API kind in one release, from its Go module."""
    try:
        download = subprocess.run(
            ["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{release}"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GOTOOLCHAIN": "local"},
        )
    except subprocess.CalledProcessError as error:
        message = f"go mod download sigs.k8s.io/gateway-api@{release}: {error.stderr}"
        raise RuntimeError(message) from error
    plural = GATEWAY_API_RESOURCES[(api_version, kind)]
    crds = Path(json.loads(download.stdout)["Dir"]) / "config" / "crd" / "standard"
    crd = yaml.safe_load((crds / f"gateway.networking.k8s.io_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api_version.split("/")[1]]
    return version["schema"]["openAPIV3Schema"]


@cache
def validators(api_version: str, kind: str) -> dict[str, jsonschema.Draft202012Validator]:
    """Schema source (a model package, or a Gateway API release) -> the kind's validator."""
    if (api_version, kind) in CUSTOM_RESOURCES:
        model = CUSTOM_RESOURCES[(api_version, kind)]
        schemas = {model.__module__: model.model_json_schema(by_alias=True)}
    else:
        schemas = {
            release: _gateway_api_schema(release, api_version, kind)
            for release in GATEWAY_API_RELEASES
        }
    return {
        source: jsonschema.Draft202012Validator(_closed(schema))
        for source, schema in schemas.items()
    }


def errors(manifest: dict[str, Any]) -> list[str]:
    """Every way the object breaks its CRD schema, as '<path>: <message>' lines (prefixed with
    the Gateway API release for its kinds)."""
    checks = validators(manifest["apiVersion"], manifest["kind"])
    return [
        ("" if len(checks) == 1 else f"{source}: ")
        + f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for source, check in checks.items()
        for error in check.iter_errors(manifest)
    ]

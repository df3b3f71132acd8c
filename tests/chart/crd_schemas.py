"""JSON schemas of the custom resources the chart renders (ServiceMonitor, PrometheusRule,
KEDA ScaledObject, Gateway API HTTPRoute and GRPCRoute, Flagger MetricTemplate, Argo Rollouts
AnalysisTemplate) and of those docs/deploy.md applies beside it (Flagger Canary, Argo Rollout).

No CRD file is copied into this repository:
- ServiceMonitor, PrometheusRule and ScaledObject come from PyPI's cloudcoil model packages,
  generated from the upstream CRDs' openAPIV3Schema (prometheus-operator v0.80.1, KEDA v2.16.1;
  versions pinned in constraints.txt).
- The Gateway API has no such package; its Go module (sigs.k8s.io/gateway-api) carries the CRDs
  under config/crd/standard/, so `go mod download` fetches the release from the Go module proxy
  into Go's module cache and the openAPIV3Schema is read from there, for the oldest release with
  GRPCRoute v1 and the newest. Their CEL rules (x-kubernetes-validations) are left to the API
  server.
- Flagger and Argo Rollouts likewise, from their Go modules (github.com/fluxcd/flagger:
  artifacts/flagger/crd.yaml; github.com/argoproj/argo-rollouts: manifests/crds/), each at one
  pinned release: the newest on the module proxy for Flagger, the newest Argo Rollouts release
  that this Go toolchain can download (later ones require a newer Go).
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

FLAGGER = ("github.com/fluxcd/flagger", "v1.36.1")
ARGO_ROLLOUTS = ("github.com/argoproj/argo-rollouts", "v1.10.0")
# (apiVersion, kind) -> (Go module, release, the file of its CRD in the module).
MODULE_RESOURCES = {
    ("flagger.app/v1beta1", "MetricTemplate"): (*FLAGGER, "artifacts/flagger/crd.yaml"),
    ("flagger.app/v1beta1", "Canary"): (*FLAGGER, "artifacts/flagger/crd.yaml"),
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): (
        *ARGO_ROLLOUTS,
        "manifests/crds/analysis-template-crd.yaml",
    ),
    ("argoproj.io/v1alpha1", "Rollout"): (*ARGO_ROLLOUTS, "manifests/crds/rollout-crd.yaml"),
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


def module_dir(module: str, release: str) -> Path:
    """Where a Go module's release lies in Go's module cache (downloaded there if missing)."""
    try:
        download = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{release}"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GOTOOLCHAIN": "local"},
        )
    except subprocess.CalledProcessError as error:
        message = f"go mod download {module}@{release}: {error.stdout}{error.stderr}"
        raise RuntimeError(message) from error
    return Path(json.loads(download.stdout)["Dir"])


def _module_schema(
    module: str, release: str, crd_file: str, api_version: str, kind: str
) -> dict[str, Any]:
    """The openAPIV3Schema of one kind and version in a CRD file of a Go module's release."""
    path = module_dir(module, release) / crd_file
    group, version_name = api_version.split("/")
    (crd,) = [
        crd
        for crd in yaml.safe_load_all(path.read_text())
        if crd and (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    ]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == version_name]
    return version["schema"]["openAPIV3Schema"]


@cache
def validators(api_version: str, kind: str) -> dict[str, jsonschema.Draft202012Validator]:
    """Schema source (a model package, a Go module release, or a Gateway API release) -> the
    kind's validator."""
    key = (api_version, kind)
    if key in CUSTOM_RESOURCES:
        model = CUSTOM_RESOURCES[key]
        schemas = {model.__module__: model.model_json_schema(by_alias=True)}
    elif key in MODULE_RESOURCES:
        module, release, crd_file = MODULE_RESOURCES[key]
        schemas = {f"{module}@{release}": _module_schema(module, release, crd_file, *key)}
    else:
        crd_file = (
            f"config/crd/standard/gateway.networking.k8s.io_{GATEWAY_API_RESOURCES[key]}.yaml"
        )
        schemas = {
            release: _module_schema("sigs.k8s.io/gateway-api", release, crd_file, *key)
            for release in GATEWAY_API_RELEASES
        }
    return {
        source: jsonschema.Draft202012Validator(_closed(schema))
        for source, schema in schemas.items()
    }


def has_schema(manifest: dict[str, Any]) -> bool:
    """Whether the object is a custom resource this module knows the schema of."""
    key = (manifest["apiVersion"], manifest["kind"])
    return key in CUSTOM_RESOURCES or key in MODULE_RESOURCES or key in GATEWAY_API_RESOURCES


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

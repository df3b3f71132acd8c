"""Render the Helm chart with Helm's own Go engine (helm-python-sdk) and walk the objects."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]
CHART = PROJECT / "helm" / "tabserve"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "tabserve"
NAMESPACE = "serving"

Manifest = dict[str, Any]


def load_script(path: Path) -> ModuleType:
    """A project script (k8s/generate.py, helm/generate_docs.py) as a module: they are run as
    files, not imported from a package."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_script(PROJECT / "k8s" / "generate.py")  # `make k8s`


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(
    values: dict[str, Any], api_versions: Sequence[str] = generate.CRD_APIS
) -> list[Manifest]:
    """Every object the chart renders with these values (NOTES.txt left out), on a cluster that
    serves `api_versions` beside Kubernetes' own (by default the Prometheus Operator and KEDA)."""
    return manifests(generate.render(values, RELEASE, NAMESPACE, tuple(api_versions)))


def manifests(rendered: dict[str, str]) -> list[Manifest]:
    """The objects of Helm's rendered templates (template path -> text), NOTES.txt left out."""
    return [
        manifest
        for template, text in sorted(rendered.items())
        if template.endswith(".yaml")
        for manifest in yaml.safe_load_all(text)
        if manifest
    ]


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of this kind (and name, when given)."""
    found = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def service_config(manifests: list[Manifest]) -> dict[str, str]:
    """The serving pods' environment: the ConfigMap named like the release (not a dashboard's)."""
    return only(manifests, "ConfigMap", RELEASE)["data"]


def pod_templates(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """(owner object, pod template {metadata, spec}) for every object that makes pods."""
    for manifest in manifests:
        match manifest["kind"]:
            case "Pod":
                yield manifest, manifest
            case "Deployment" | "Job":
                yield manifest, manifest["spec"]["template"]
            case "CronJob":
                yield manifest, manifest["spec"]["jobTemplate"]["spec"]["template"]


def serving_container(deployment: Manifest) -> dict[str, Any]:
    """The chart's own container of the serving pod (sidecars may stand beside it)."""
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tabserve"
    ]
    return container

"""The plain manifests (k8s/), built by the real kustomize: the one `kubectl apply -k` embeds,
built from the Go module proxy by `scripts/cluster/build.sh kustomize` (cached, ~1 min once).

The base, each component on the base and each overlay must build, give objects valid for the
Kubernetes schemas (or their CRD's), carry nothing that only Helm uses, and behave as the chart
does: a config change rolls the pods, KEDA replaces the HPA. tests/e2e/test_kustomize_on_cluster.py
applies the example overlay on a real cluster.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devtools.go_tools import go_tool
from tests.chart import crd_schemas
from tests.chart.manifests import PROJECT, Manifest, generate, only, render, service_config

SUPPORTED_KUBERNETES = ("1.30.0", "1.37.0")  # as tests/test_chart.py
K8S = PROJECT / "k8s"
OVERLAY_NAMESPACE = "ml-serving"  # the example overlays'


@pytest.fixture(scope="module")
def kustomize() -> Path:
    """The kustomize binary of scripts/cluster/versions.env, built once into the cluster cache."""
    return go_tool("kustomize", "kustomize")


def build(kustomize: Path, directory: Path) -> list[Manifest]:
    result = subprocess.run(
        [kustomize, "build", directory], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [m for m in yaml.safe_load_all(result.stdout) if m]


def write_kustomization(directory: Path, **fields: Any) -> Path:
    """A kustomization in directory, its paths relative to it as kustomize wants them."""
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("resources", "components"):
        if key in fields:
            fields[key] = [os.path.relpath(path, directory) for path in fields[key]]
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({**kustomization, **fields}))
    return directory


def _base_with(component: str, directory: Path) -> Path:
    return write_kustomization(
        directory / component,
        resources=[K8S / "base"],
        components=[K8S / "components" / component],
    )


TARGETS = ["base", "overlays/example", "overlays/full"] + [
    f"base+{name}" for name in generate.COMPONENT_VALUES
]


@pytest.fixture(scope="module")
def built(kustomize: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    scratch = tmp_path_factory.mktemp("kustomize")
    directories = {
        target: _base_with(target.removeprefix("base+"), scratch)
        if target.startswith("base+")
        else K8S / target
        for target in TARGETS
    }
    return {target: build(kustomize, directory) for target, directory in directories.items()}


# --- generated from the chart ---------------------------------------------------------------


def test_generated_files_equal_the_rendered_chart() -> None:
    expected = generate.render_tree()
    stale = {path for path, content in expected.items() if (K8S / path).read_text() != content}
    assert generate.generated_files() == expected.keys(), "k8s/ is stale: run `make k8s`"
    assert not stale, f"{sorted(map(str, stale))} stale: run `make k8s`"


def test_base_has_the_charts_objects_and_configuration(built: dict[str, list[Manifest]]) -> None:
    values = yaml.safe_load(generate.BASE_VALUES.read_text()) or {}
    chart = [m for m in render(values) if m["kind"] != "Pod"]  # the `helm test` pod stays out
    base = built["base"]

    def ids(objects: list[Manifest]) -> list[tuple[str, str]]:
        return sorted(
            (m["kind"], m["metadata"]["name"]) for m in objects if m["kind"] != "ConfigMap"
        )

    assert ids(base) == ids(chart)
    assert only(base, "ConfigMap")["data"] == service_config(chart)


def test_env_file_round_trip_keeps_every_value(kustomize: Path, tmp_path: Path) -> None:
    """The chart's ConfigMap reaches kustomize as a .env file: JSON, '=', '#' and quotes must
    come back unchanged."""
    data = {"TABSERVE_MODEL_TAGS": '{"churn": "churn:v2abc"}', "A": "x=y # not a comment",
            "B": "'single'", "C": "", "D": " padded "}  # fmt: skip
    (tmp_path / "config.env").write_text(generate.env_file({"data": data}))
    kustomization = write_kustomization(
        tmp_path, configMapGenerator=[{"name": "config", "envs": ["config.env"]}]
    )
    assert only(build(kustomize, kustomization), "ConfigMap")["data"] == data


# --- every build --------------------------------------------------------------------------------


def _metadata(value: Any) -> Iterator[dict[str, Any]]:
    """Every metadata block of an object: its own, its pod template's, ..."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "metadata" and isinstance(item, dict):
                yield item
            yield from _metadata(item)
    elif isinstance(value, list):
        for item in value:
            yield from _metadata(item)


@pytest.mark.parametrize("target", TARGETS)
def test_builds_are_valid_and_carry_no_helm_metadata(
    built: dict[str, list[Manifest]], target: str
) -> None:
    for manifest in built[target]:
        name = f"{target}: {manifest['kind']}/{manifest['metadata']['name']}"
        if (manifest["apiVersion"], manifest["kind"]) in crd_schemas.CUSTOM_RESOURCES:
            assert crd_schemas.errors(manifest) == [], name
        else:
            for version in SUPPORTED_KUBERNETES:
                kubernetes_validate.validate(manifest, version, strict=True)
        for metadata in _metadata(manifest):
            labels, annotations = metadata.get("labels", {}), metadata.get("annotations", {})
            assert not set(labels) & set(generate.HELM_ONLY_LABELS), name
            assert "Helm" not in labels.values(), name
            assert not [a for a in annotations if a.startswith(("checksum/", "helm.sh/"))], name


def test_overlays_put_everything_in_their_namespace(built: dict[str, list[Manifest]]) -> None:
    for overlay in ("overlays/example", "overlays/full"):
        assert {m["metadata"].get("namespace") for m in built[overlay]} == {OVERLAY_NAMESPACE}
    assert {m["metadata"].get("namespace") for m in built["base"]} == {None}


# --- behaviour ----------------------------------------------------------------------------------


def _config_name(objects: list[Manifest]) -> str:
    deployment = only(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (source,) = container["envFrom"]
    name = source["configMapRef"]["name"]
    assert only(objects, "ConfigMap", name)
    return name


def test_a_config_change_rolls_the_pods(
    built: dict[str, list[Manifest]], kustomize: Path, tmp_path: Path
) -> None:
    """The Deployment refers to the ConfigMap by its hashed name: new data, new name, new pods."""
    base_name = _config_name(built["base"])
    assert base_name.startswith("tabserve-") and base_name != "tabserve"
    changed = write_kustomization(
        tmp_path,
        resources=[K8S / "base"],
        configMapGenerator=[
            {"name": "tabserve", "behavior": "merge", "literals": ["TABSERVE_MAX_INSTANCES=10"]}
        ],
    )
    assert _config_name(build(kustomize, changed)) not in (base_name, "tabserve")
    assert _config_name(build(kustomize, K8S / "base")) == base_name


def test_example_overlay_sets_workers_image_and_hpa_metric(
    built: dict[str, list[Manifest]],
) -> None:
    objects = built["overlays/example"]
    config = only(objects, "ConfigMap")["data"]
    assert config["TABSERVE_API_WORKERS"] == config["TABSERVE_RUNNER_WORKERS"] == "2"
    assert config.keys() == only(built["base"], "ConfigMap")["data"].keys()
    (container,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/tabserve:0.1.0"
    assert container["resources"]["limits"]["cpu"] == "4"
    metrics = only(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {metric["type"] for metric in metrics} == {"Resource", "Pods"}
    assert only(objects, "Service", "tabserve-grpc-headless")["spec"]["clusterIP"] == "None"


def test_keda_component_replaces_the_hpa(built: dict[str, list[Manifest]]) -> None:
    objects = built["base+keda"]
    assert not [m for m in objects if m["kind"] == "HorizontalPodAutoscaler"]
    target = only(objects, "ScaledObject")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "tabserve")
    assert only(built["base"], "HorizontalPodAutoscaler")


def test_full_overlay_points_keda_and_monitoring_at_its_namespace(
    built: dict[str, list[Manifest]],
) -> None:
    objects = built["overlays/full"]
    (trigger,) = [t for t in only(objects, "ScaledObject")["spec"]["triggers"]
                  if t["type"] == "prometheus"]  # fmt: skip
    assert f'namespace="{OVERLAY_NAMESPACE}"' in trigger["metadata"]["query"]
    monitor = only(objects, "ServiceMonitor")
    # No namespaceSelector: a ServiceMonitor then selects Services in its own namespace.
    assert "namespaceSelector" not in monitor["spec"]
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert only(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not [m for m in objects if m["kind"] == "HorizontalPodAutoscaler"]
    dashboards = [m for m in objects if m["kind"] == "ConfigMap" and "grafana_dashboard" in
                  m["metadata"]["labels"]]  # fmt: skip
    assert dashboards

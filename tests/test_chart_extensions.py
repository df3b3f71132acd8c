"""The chart's extension points, the ones a platform team expects of a chart it adopts: extra
environment, volumes and containers, raw scheduling and autoscaling fields, labels and
annotations on every object, Service traffic policies, the PodDisruptionBudget's other fields,
a pod without a CPU limit, and the replica count kept when autoscaling takes over.

Every value is rendered by Helm's own engine and the objects validated against the Kubernetes
schemas of the oldest and newest supported versions, as tests/test_chart.py does for the value
sets of helm/tabserve/ci/.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.chart import crd_schemas
from tests.chart.fake_apiserver import deployment, fake_apiserver
from tests.chart.manifests import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    Manifest,
    load_values,
    manifests,
    only,
    pod_templates,
    render,
    service_config,
    serving_container,
)
from tests.test_chart import SUPPORTED_KUBERNETES

CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

# Every new value at once, as a platform team would set them.
EXTENDED: dict[str, Any] = {
    "commonLabels": {"team": "ml-platform"},
    "deploymentAnnotations": {"example.com/owner": "ml-platform"},
    "extraEnv": [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {
            "name": "OTEL_EXPORTER_OTLP_HEADERS",
            "valueFrom": {"secretKeyRef": {"name": "otel", "key": "headers"}},
        },
        {"name": "TABSERVE_MAX_INSTANCES", "value": "200"},
    ],
    "extraEnvFrom": [{"secretRef": {"name": "tabserve-extra"}}],
    "extraVolumes": [{"name": "corporate-ca", "configMap": {"name": "corporate-ca"}}],
    "extraVolumeMounts": [
        {"name": "corporate-ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}
    ],
    "initContainers": [{"name": "wait-for-store", "image": "busybox:1.37", "command": ["true"]}],
    "sidecars": [{"name": "log-shipper", "image": "fluent-bit:4.0", "args": ["-q"]}],
    "topologySpreadConstraints": [
        {
            "maxSkew": 2,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "tabserve"}},
        }
    ],
    "autoscaling": {
        "behavior": {
            "scaleDown": {"selectPolicy": "Disabled"},
            "scaleUp": {
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 15},
                    {"type": "Pods", "value": 2, "periodSeconds": 15},
                ],
            },
        }
    },
    "service": {
        "type": "LoadBalancer",
        "labels": {"example.com/exposed": "true"},
        "externalTrafficPolicy": "Local",
        "trafficDistribution": "PreferClose",
    },
    "podDisruptionBudget": {
        "minAvailable": "",
        "maxUnavailable": "25%",
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    },
    "batch": {"enabled": True, "existingClaim": "data"},
}


@pytest.fixture(scope="module")
def extended() -> list[Manifest]:
    return render(EXTENDED)


@pytest.fixture(scope="module")
def default_objects() -> list[Manifest]:
    return render({})


def _pod_spec(objects: list[Manifest], kind: str) -> dict[str, Any]:
    (template,) = [t for owner, t in pod_templates(objects) if owner["kind"] == kind]
    return template["spec"]


def _kubernetes_problems(objects: list[Manifest], kube_version: str) -> list[str]:
    """Each object against its schema: Kubernetes' own, or its CRD's for a custom resource."""
    problems = []
    for manifest in objects:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if crd_schemas.has_schema(manifest):
            problems += [f"{name}: {error}" for error in crd_schemas.errors(manifest)]
            continue
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name}: {'.'.join(map(str, error.path))}: {error.message}")
    return problems


# Value sets beside EXTENDED, for the fields it cannot hold at the same time.
OTHER_VALUE_SETS = {
    "no-cpu-limit": {
        "resources": {"limits": {"cpu": None}},
        "workers": {"api": 1, "runner": 1, "modelThreads": 2},
    },
    "node-port-cluster-policy": {
        "service": {"type": "NodePort", "externalTrafficPolicy": "Cluster"},
        "podDisruptionBudget": {"unhealthyPodEvictionPolicy": "IfHealthyBudget"},
        "topologySpread": {"whenUnsatisfiable": "DoNotSchedule"},
    },
    "fixed-replicas-cronjob": {
        "autoscaling": {"enabled": False},
        "batch": {"enabled": True, "existingClaim": "data", "schedule": "0 2 * * *"},
        **{
            key: EXTENDED[key]
            for key in ("commonLabels", "extraEnv", "extraVolumes", "extraVolumeMounts")
        },
    },
}
VALUE_SETS = {"extended": EXTENDED, **OTHER_VALUE_SETS}


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_extended_objects_are_valid_for_kubernetes(values: dict, kube_version: str) -> None:
    assert _kubernetes_problems(render(values), kube_version) == []


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
def test_extended_chart_lints_clean(kube_version: str) -> None:
    report = helm_python.lint(CHART, EXTENDED, strict=True, kube_version=f"v{kube_version}")
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []


def test_schema_validation_catches_a_broken_extension(extended: list[Manifest]) -> None:
    """The validation above can fail: a sidecar with a misspelt field is refused."""
    broken = [yaml.safe_load(yaml.safe_dump(m)) for m in extended]
    _pod_spec(broken, "Deployment")["containers"][-1]["imagePullPolicyy"] = "Always"
    problems = _kubernetes_problems(broken, SUPPORTED_KUBERNETES[0])
    assert any("imagePullPolicyy" in problem for problem in problems), problems


# --- extra environment, volumes and containers -------------------------------------------------


def test_extra_env_and_volumes_reach_the_serving_and_batch_containers(
    extended: list[Manifest],
) -> None:
    for kind in ("Deployment", "Job"):
        pod = _pod_spec(extended, kind)
        container = pod["containers"][0]
        assert container["env"][-3:] == EXTENDED["extraEnv"], kind
        assert container["envFrom"] == [
            {"configMapRef": {"name": RELEASE}},
            *EXTENDED["extraEnvFrom"],
        ], kind
        assert container["volumeMounts"][-1] == EXTENDED["extraVolumeMounts"][0], kind
        assert pod["volumes"][-1] == EXTENDED["extraVolumes"][0], kind


def test_init_containers_and_sidecars_join_the_serving_pod_only(extended: list[Manifest]) -> None:
    serving = _pod_spec(extended, "Deployment")
    assert serving["initContainers"] == EXTENDED["initContainers"]
    assert [c["name"] for c in serving["containers"]] == ["tabserve", "log-shipper"]
    assert serving["containers"][1] == EXTENDED["sidecars"][0]
    batch = _pod_spec(extended, "Job")
    assert "initContainers" not in batch and len(batch["containers"]) == 1


def test_extra_env_keeps_the_token_file_of_auth() -> None:
    values = {"auth": {"enabled": True, "token": "a-token-of-16-chars-or-more"}}
    container = serving_container(only(render({**values, **EXTENDED}), "Deployment"))
    names = [variable["name"] for variable in container["env"]]
    assert names == ["TABSERVE_API_TOKEN_FILE"] + [v["name"] for v in EXTENDED["extraEnv"]]


def test_plain_config_extra_env_still_goes_to_the_configmap() -> None:
    objects = render({"config": {"extraEnv": {"TABSERVE_BATCH_MAX_LATENCY_MS": "50"}}})
    assert service_config(objects)["TABSERVE_BATCH_MAX_LATENCY_MS"] == "50"
    assert "env" not in serving_container(only(objects, "Deployment"))


# --- scheduling and autoscaling ------------------------------------------------------------------


def test_generated_spread_counts_each_replica_set_apart(default_objects: list[Manifest]) -> None:
    constraints = _pod_spec(default_objects, "Deployment")["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    for constraint in constraints:
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
        assert constraint["labelSelector"]["matchLabels"] == _selector(default_objects)


@pytest.mark.parametrize("spread_enabled", [True, False])
def test_raw_topology_spread_constraints_are_used_as_is(spread_enabled: bool) -> None:
    values = {
        "topologySpreadConstraints": EXTENDED["topologySpreadConstraints"],
        "topologySpread": {"enabled": spread_enabled},
    }
    pod = _pod_spec(render(values), "Deployment")
    assert pod["topologySpreadConstraints"] == EXTENDED["topologySpreadConstraints"]


def test_default_hpa_behaviour_is_unchanged(default_objects: list[Manifest]) -> None:
    behavior = only(default_objects, "HorizontalPodAutoscaler")["spec"]["behavior"]
    assert behavior == {
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        },
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 30}],
        },
    }


def test_raw_hpa_behavior_is_used_as_is(extended: list[Manifest]) -> None:
    behavior = only(extended, "HorizontalPodAutoscaler")["spec"]["behavior"]
    raw = EXTENDED["autoscaling"]["behavior"]
    assert behavior["scaleUp"] == {"stabilizationWindowSeconds": 0, **raw["scaleUp"]}
    # No policies given: the shorthand's, with the raw selectPolicy.
    assert behavior["scaleDown"] == {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Disabled",
        "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
    }


# --- labels and annotations ----------------------------------------------------------------------


def _selector(objects: list[Manifest]) -> dict[str, str]:
    return only(objects, "Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_common_labels_are_on_every_object_and_pod(values_file) -> None:
    """Every kind of object the value sets render: the helm test Pod, ConfigMaps, Secrets, PDB,
    HPA or ScaledObject, batch Job or CronJob, and the pods their templates make."""
    values = {**load_values(values_file), "commonLabels": {"team": "ml-platform"}}
    objects = render(values)
    labelled = [m["metadata"] for m in objects] + [t["metadata"] for _, t in pod_templates(objects)]
    for metadata in labelled:
        assert metadata["labels"]["team"] == "ml-platform", metadata.get("name")
        assert metadata["labels"]["app.kubernetes.io/version"] == CHART_VERSION
    assert _selector(objects) == {
        "app.kubernetes.io/name": "tabserve",
        "app.kubernetes.io/instance": RELEASE,
    }


def test_serving_pods_name_their_version_and_component_outside_the_selector() -> None:
    objects = render({"image": {"tag": "0.2.0"}, "podLabels": {"tier": "gold"}})
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == "0.2.0"
    assert labels["app.kubernetes.io/component"] == "server"
    assert labels["tier"] == "gold"
    assert "helm.sh/chart" not in labels, "a chart bump alone would roll the pods"
    assert set(_selector(objects)) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}


def test_deployment_annotations_go_on_the_deployment_only(extended: list[Manifest]) -> None:
    deployment_ = only(extended, "Deployment")
    annotations = deployment_["metadata"]["annotations"]
    assert annotations["example.com/owner"] == "ml-platform"
    assert any(key.startswith("checkov.io/skip") for key in annotations)
    assert "example.com/owner" not in deployment_["spec"]["template"]["metadata"]["annotations"]


# --- the Service ---------------------------------------------------------------------------------


def test_service_labels_and_traffic_policies(extended: list[Manifest]) -> None:
    service = only(extended, "Service", RELEASE)
    assert service["metadata"]["labels"]["example.com/exposed"] == "true"
    assert service["metadata"]["labels"]["team"] == "ml-platform"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["spec"]["trafficDistribution"] == "PreferClose"
    assert service["spec"]["selector"] == _selector(extended)


def test_default_service_sets_no_traffic_policy(default_objects: list[Manifest]) -> None:
    spec = only(default_objects, "Service", RELEASE)["spec"]
    assert spec["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in spec and "trafficDistribution" not in spec


# --- the PodDisruptionBudget ---------------------------------------------------------------------


def test_pdb_can_bound_unavailable_pods_instead(extended: list[Manifest]) -> None:
    spec = only(extended, "PodDisruptionBudget")["spec"]
    assert spec == {
        "maxUnavailable": "25%",
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": _selector(extended)},
    }


def test_default_pdb_is_unchanged(default_objects: list[Manifest]) -> None:
    spec = only(default_objects, "PodDisruptionBudget")["spec"]
    assert spec == {"minAvailable": 1, "selector": {"matchLabels": _selector(default_objects)}}


# --- no CPU limit --------------------------------------------------------------------------------


def test_a_pod_without_cpu_limit_takes_its_worker_counts_from_the_values() -> None:
    objects = render(OTHER_VALUE_SETS["no-cpu-limit"])
    assert "cpu" not in serving_container(only(objects, "Deployment"))["resources"]["limits"]
    config = service_config(objects)
    counts = ("TABSERVE_API_WORKERS", "TABSERVE_RUNNER_WORKERS", "TABSERVE_MODEL_THREADS")
    assert [config[key] for key in counts] == ["1", "1", "2"]


# --- the replica count when an autoscaler owns it ------------------------------------------------


def _rendered_replicas(values: dict[str, Any], live: list[dict[str, Any]] | None) -> int | None:
    """spec.replicas of the Deployment as Helm renders it: offline (`helm template`, live None)
    or against an API server whose namespace holds the `live` Deployments."""
    if live is None:
        return only(render(values), "Deployment")["spec"].get("replicas")
    chart = helm_python.Chart.load(CHART)
    with (
        fake_apiserver(NAMESPACE, live) as url,
        helm_python.Config(kube_apiserver=url, namespace=NAMESPACE) as config,
    ):
        rendered = config.render(chart, values, name=RELEASE, namespace=NAMESPACE)
    return only(manifests(rendered), "Deployment")["spec"].get("replicas")


AUTOSCALED = {"autoscaling": {"enabled": True, "minReplicas": 3}}
REPLICA_CASES = [
    # Fixed count: always replicaCount.
    ({"autoscaling": {"enabled": False}, "replicaCount": 4}, None, 4),
    ({"autoscaling": {"enabled": False}, "replicaCount": 4}, [deployment(RELEASE, 7)], 4),
    # No cluster (helm template, GitOps, k8s/base): left out, so applies never reset the HPA.
    (AUTOSCALED, None, None),
    ({"keda": {"enabled": True}}, None, None),
    # Installing: minReplicas, kept in the revision for a later rollback to it.
    (AUTOSCALED, [], 3),
    (AUTOSCALED, [deployment("another-app", 9)], 3),
    # Upgrading (from fixed replicas or not): the live count, which the HPA keeps managing.
    (AUTOSCALED, [deployment("another-app", 9), deployment(RELEASE, 5)], 5),
    # KEDA shares the helper, but not this case: a cluster-aware render (helm-python-sdk's
    # Config.render) cannot declare KEDA's API, so the chart's CRD check refuses it.
]


@pytest.mark.parametrize(
    ("values", "live", "expected"),
    REPLICA_CASES,
    ids=[
        "fixed",
        "fixed-live",
        "hpa-offline",
        "keda-offline",
        "install",
        "install-beside",
        "upgrade",
    ],
)
def test_replicas_survive_the_switch_to_autoscaling(
    values: dict[str, Any], live: list[dict[str, Any]] | None, expected: int | None
) -> None:
    """Helm's three-way merge deleted spec.replicas on the switch from fixed replicas to the
    HPA, and Kubernetes set 1: the release fell to one pod until the HPA acted."""
    assert _rendered_replicas(values, live) == expected


# --- bad values: the schema or a template check refuses them -------------------------------------

REFUSED_BY_SCHEMA = [
    ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
    ({"extraEnv": [{"name": "A", "value": 1}]}, "/extraEnv/0/value"),
    ({"extraEnv": {"A": "b"}}, "/extraEnv"),
    ({"extraEnvFrom": [{"secret": {"name": "x"}}]}, "/extraEnvFrom/0"),
    ({"extraVolumeMounts": [{"name": "ca"}]}, "/extraVolumeMounts/0"),
    ({"sidecars": [{"image": "envoy"}]}, "/sidecars/0"),
    ({"topologySpreadConstraints": [{"maxSkew": 1}]}, "/topologySpreadConstraints/0"),
    (
        {"autoscaling": {"behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0}]}}}},
        "/autoscaling/behavior/scaleUp/policies/0",
    ),
    ({"autoscaling": {"behavior": {"scaleDown": {"selectPolicy": "Off"}}}}, "selectPolicy"),
    ({"commonLabels": {"app.kubernetes.io/name": "x"}}, "app.kubernetes.io/name"),
    ({"podLabels": {"app.kubernetes.io/version": "x"}}, "app.kubernetes.io/version"),
    ({"service": {"externalTrafficPolicy": "Nearest"}}, "/service/externalTrafficPolicy"),
    ({"service": {"trafficDistribution": "Nearby"}}, "/service/trafficDistribution"),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, "/podDisruptionBudget/maxUnavailable"),
    (
        {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "Never"}},
        "/podDisruptionBudget/unhealthyPodEvictionPolicy",
    ),
    ({"resources": {"limits": {"memory": None}}}, "memory"),
]


@pytest.mark.parametrize(("values", "expected"), REFUSED_BY_SCHEMA, ids=lambda v: str(v)[:60])
def test_values_schema_refuses_bad_extensions(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(expected)):
        render(values)


NO_CPU = {"resources": {"limits": {"cpu": None}}}
CPU_MESSAGE = (
    "resources.limits.cpu is unset: set it, or set workers.api, workers.runner and "
    "workers.modelThreads"
)
PDB_MESSAGE = "podDisruptionBudget needs exactly one of minAvailable and maxUnavailable"
REFUSED_BY_TEMPLATES = [
    (NO_CPU, CPU_MESSAGE),
    ({**NO_CPU, "workers": {"api": 2, "runner": 2}}, CPU_MESSAGE),
    ({**NO_CPU, "workers": {"modelThreads": 2}}, CPU_MESSAGE),
    ({"podDisruptionBudget": {"maxUnavailable": 1}}, PDB_MESSAGE),
    ({"podDisruptionBudget": {"minAvailable": ""}}, PDB_MESSAGE),
    (
        {"service": {"externalTrafficPolicy": "Local"}},
        "service.externalTrafficPolicy applies to external traffic only: set service.type to "
        "NodePort or LoadBalancer",
    ),
]


@pytest.mark.parametrize(("values", "expected"), REFUSED_BY_TEMPLATES, ids=lambda v: str(v)[:60])
def test_inconsistent_extensions_fail_the_render(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(expected)):
        render(values)


# --- the defaults --------------------------------------------------------------------------------


def test_defaults_add_no_extension(default_objects: list[Manifest]) -> None:
    """A default render makes the same objects as before the extension points, labels aside."""
    assert sorted((m["kind"], m["metadata"]["name"]) for m in default_objects) == [
        ("ConfigMap", "tabserve"),
        ("Deployment", "tabserve"),
        ("HorizontalPodAutoscaler", "tabserve"),
        ("NetworkPolicy", "tabserve"),
        ("Pod", "tabserve-test"),
        ("PodDisruptionBudget", "tabserve"),
        ("Service", "tabserve"),
        ("ServiceAccount", "tabserve"),
    ]
    deployment_ = only(default_objects, "Deployment")
    pod = deployment_["spec"]["template"]["spec"]
    assert "replicas" not in deployment_["spec"]
    assert "initContainers" not in pod and [c["name"] for c in pod["containers"]] == ["tabserve"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "bentoml-home"]
    container = pod["containers"][0]
    assert "env" not in container
    assert container["envFrom"] == [{"configMapRef": {"name": RELEASE}}]
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp", "bentoml-home"]
    assert container["resources"]["limits"]["cpu"] == "2"

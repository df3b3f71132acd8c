"""The Helm chart and the plain manifests, proven offline with real engines.

Helm's own Go engine (helm-python-sdk) lints and renders every ci/*-values.yaml; every object is
validated against the Kubernetes schemas of the oldest and newest supported versions
(kubernetes-validate) or its CRD's schema; cross-checks compare the chart with a real
`bentoml serve` (probe paths, metrics, the prediction `helm test` makes); checkov scans the
rendered manifests; the copies in the chart must equal what `make k8s` generates (k8s/ itself:
tests/test_kustomize.py).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python
import httpx
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tabserve.catalog import MODELS
from tabserve.settings import Settings
from tests.chart import crd_schemas, policy
from tests.chart.manifests import (
    CHART,
    CI_VALUES,
    PROJECT,
    Manifest,
    generate,
    load_values,
    only,
    pod_templates,
    render,
    service_config,
    serving_container,
)
from tests.declared_metrics import BENTOML, TABSERVE
from tests.system_packages import missing

# Oldest and newest supported.
SUPPORTED_KUBERNETES = ("1.30.0", "1.37.0")
HTTP_PORT = 3000  # BentoML's default port, which the image serves on (docs/image.md)


@pytest.fixture(scope="module", params=CI_VALUES, ids=lambda path: path.name)
def value_set(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[Manifest]]:
    values = load_values(request.param)
    return values, render(values)


@pytest.fixture(scope="module")
def default_objects() -> list[Manifest]:
    return render({})


# --- Helm's lint, the Kubernetes schemas, the CRD schemas --------------------------------------


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_chart_lints_clean(values_file: Path, kube_version: str) -> None:
    report = helm_python.lint(
        CHART, load_values(values_file), strict=True, kube_version=f"v{kube_version}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
def test_every_object_is_valid_for_kubernetes(value_set: tuple, kube_version: str) -> None:
    _, objects = value_set
    for manifest in objects:
        if crd_schemas.has_schema(manifest):
            continue
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except SchemaNotFoundError:
            pytest.fail(f"{name}: no schema for {manifest['apiVersion']} in {kube_version}")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            pytest.fail(f"{name} invalid for Kubernetes {kube_version}: {path}: {error.message}")


def test_custom_resources_match_their_crd_schema(value_set: tuple) -> None:
    _, objects = value_set
    for manifest in objects:
        if crd_schemas.has_schema(manifest):
            assert crd_schemas.errors(manifest) == [], manifest["kind"]


def test_the_value_sets_cover_every_custom_resource() -> None:
    kinds = {m["kind"] for path in CI_VALUES for m in render(load_values(path))}
    assert {kind for _, kind in crd_schemas.CUSTOM_RESOURCES} <= kinds


@pytest.mark.parametrize(
    ("kind", "break_it", "expected"),
    [
        (
            "ServiceMonitor",
            lambda s: s["endpoints"][0].update(prot="http"),
            "'prot' was unexpected",
        ),
        ("ServiceMonitor", lambda s: s["endpoints"][0].update(interval=15), "interval"),
        ("ScaledObject", lambda s: s["triggers"][0].pop("type"), "'type' is a required"),
        ("ScaledObject", lambda s: s.update(minReplicaCount="two"), "minReplicaCount"),
    ],
)
def test_crd_schemas_catch_broken_objects(kind: str, break_it: Any, expected: str) -> None:
    values = {"keda": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}}
    manifest = only(render(values), kind)
    break_it(manifest["spec"])
    assert any(expected in error for error in crd_schemas.errors(manifest))


# --- values.schema.json and the templates' own guards -------------------------------------------

BAD_VALUES = [
    ("replicaCount=0", "minimum"),
    ("replicaCaunt=2", "additional properties 'replicaCaunt' not allowed"),
    ("resources.limits.cpu=lots", "/resources/limits/cpu"),
    ("workers.api=-1", "/workers/api"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("image.digest=latest", "/image/digest"),
    ("ports.grpc=70000", "/ports/grpc"),
    ("service.type=Magic", "/service/type"),
    ("probes.readiness.path=readyz", "/probes/readiness/path"),
    ("strategy.rollingUpdate.maxUnavailable=1", "/strategy/rollingUpdate/maxUnavailable"),
    ("securityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation"),
    ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
    ("autoscaling.targetCPUUtilizationPercentage=150", "targetCPUUtilizationPercentage"),
    ("autoscaling.requestsMetric.name=in-flight", "/autoscaling/requestsMetric/name"),
    ("keda.serverAddress=prometheus:9090", "/keda/serverAddress"),
    ("auth.token=short", "/auth/token"),
    ("batch.schedule=every night", "/batch/schedule"),
    ("metrics.serviceMonitor.interval=15", "/metrics/serviceMonitor/interval"),
    ("lifecycle.terminationGracePeriodSeconds=0", "terminationGracePeriodSeconds"),
    ("config.modelTags.churn=latest", "/config/modelTags/churn"),
]


@pytest.mark.parametrize(("setting", "expected"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_values_schema_rejects_bad_values(setting: str, expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(expected)):
        render(helm_python.parse_set_string(setting))


GUARDED = [
    ("lifecycle.preStopSleepSeconds=60", "must be shorter than"),
    ("auth.enabled=true", "auth.token (or auth.existingSecret) is required"),
    ("batch.enabled=true", "batch.existingClaim is required"),
    (
        "autoscaling.targetCPUUtilizationPercentage=0,autoscaling.requestsMetric.enabled=false",
        "autoscaling.enabled needs a metric",
    ),
    ("metrics.dashboards.enabled=true,metrics.dashboards.label=", "/metrics/dashboards/label"),
]


@pytest.mark.parametrize(("setting", "expected"), GUARDED, ids=[s for s, _ in GUARDED])
def test_inconsistent_values_fail_the_render(setting: str, expected: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(expected)):
        render(helm_python.parse_set_string(setting))


# --- workers and threads follow the CPU limit ------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "api", "runner", "threads"),
    [
        ("250m", 1, 1, 1),
        ("1", 1, 1, 1),
        ("1500m", 1, 1, 1),
        ("2", 1, 1, 1),
        (2.5, 1, 1, 1),
        ("3", 1, 1, 2),
        ("4", 2, 2, 1),
        ("4000m", 2, 2, 1),
        ("8", 4, 4, 1),
        ("16", 8, 8, 1),
    ],
)
def test_worker_and_thread_counts_follow_the_cpu_limit(
    cpu: str | float, api: int, runner: int, threads: int
) -> None:
    config = service_config(render({"resources": {"limits": {"cpu": cpu}}}))
    assert (config["TABSERVE_API_WORKERS"], config["TABSERVE_RUNNER_WORKERS"]) == (
        str(api),
        str(runner),
    )
    assert config["TABSERVE_MODEL_THREADS"] == config["OMP_NUM_THREADS"] == str(threads)
    # Never more busy threads than cores (one core at least): no OpenMP oversubscription.
    assert runner * threads <= max(
        1, int(float(str(cpu).rstrip("m")) / (1000 if "m" in str(cpu) else 1))
    )


def test_explicit_worker_counts_win() -> None:
    values = {"workers": {"api": 3, "runner": 2, "modelThreads": 4}}
    config = service_config(render(values))
    assert [
        config[k]
        for k in (
            "TABSERVE_API_WORKERS",
            "TABSERVE_RUNNER_WORKERS",
            "TABSERVE_MODEL_THREADS",
            "OMP_NUM_THREADS",
        )
    ] == ["3", "2", "4", "4"]


def test_every_setting_the_configmap_passes_exists_in_the_service() -> None:
    values = {"config": {"modelTags": {"churn": "churn:abc"}}}
    config = service_config(render(values))
    settings = {f"TABSERVE_{name.upper()}" for name in Settings.model_fields}
    ours = {key for key in config if key.startswith("TABSERVE_")}
    assert ours <= settings, ours - settings
    assert json.loads(config["TABSERVE_MODEL_TAGS"]) == {"churn": "churn:abc"}


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict) -> str:
        deployment = only(render(values), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"config": {"maxInstances": 10}})
    assert checksum({}) == checksum({"replicaCount": 5})


# --- cross-checks between the objects ---------------------------------------------------------


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_services_select_exactly_the_serving_pods(value_set: tuple) -> None:
    _, objects = value_set
    deployment = only(objects, "Deployment")
    for service in (m for m in objects if m["kind"] in ("Service", "PodDisruptionBudget")):
        spec = service["spec"]
        selector = (
            spec["selector"]["matchLabels"]
            if "matchLabels" in spec["selector"]
            else spec["selector"]
        )
        for owner, template in pod_templates(objects):
            picked = _matches(selector, template["metadata"]["labels"])
            assert picked == (owner is deployment), (service["kind"], owner["kind"])


def test_service_ports_and_probes_use_container_ports(value_set: tuple) -> None:
    _, objects = value_set
    container = serving_container(only(objects, "Deployment"))
    port_names = {port["name"] for port in container["ports"]}
    for service in (m for m in objects if m["kind"] == "Service"):
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == HTTP_PORT


@pytest.mark.parametrize(("port", "setting"), [("grpc", "grpc_port"), ("metrics", "metrics_port")])
def test_side_ports_match_the_service_settings(value_set: tuple, port: str, setting: str) -> None:
    _, objects = value_set
    default_port = Settings.model_fields[setting].default
    container = serving_container(only(objects, "Deployment"))
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port] == default_port
    assert service_config(objects)[f"TABSERVE_{setting.upper()}"] == str(default_port)


def test_autoscalers_target_the_deployment(value_set: tuple) -> None:
    _, objects = value_set
    deployment = only(objects, "Deployment")
    scalers = [m for m in objects if m["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert len(scalers) <= 1, "an HPA and a ScaledObject would fight over the replica count"
    for scaler in scalers:
        target = scaler["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == (
            deployment["apiVersion"],
            deployment["kind"],
            deployment["metadata"]["name"],
        )
        assert "replicas" not in deployment["spec"], "a fixed replica count fights the autoscaler"


def test_default_hpa_scales_on_cpu_only_and_scales_down_slowly(
    default_objects: list[Manifest],
) -> None:
    """While any HPA metric is missing Kubernetes never scales down: the request-load metric
    needs prometheus-adapter, so a default install must not ask for it (found on a cluster)."""
    hpa = only(default_objects, "HorizontalPodAutoscaler")["spec"]
    assert [metric["type"] for metric in hpa["metrics"]] == ["Resource"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    with_adapter = render({"autoscaling": {"requestsMetric": {"enabled": True}}})
    metrics = only(with_adapter, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {metric["type"] for metric in metrics} == {"Resource", "Pods"}


def test_default_image_is_the_one_make_image_tags(default_objects: list[Manifest]) -> None:
    """`make image` tags tabserve:<project version>; a default install must ask for exactly that
    (it asked for an image nothing built)."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    container = serving_container(only(default_objects, "Deployment"))
    assert container["image"] == f"tabserve:{project['version']}"


def test_one_off_batch_job_is_a_new_object_per_release_revision() -> None:
    """A Job's pod template is immutable: under one fixed name every later `helm upgrade` failed."""
    job = only(render({"batch": {"enabled": True, "existingClaim": "data"}}), "Job")
    assert job["metadata"]["name"] == "tabserve-batch-r1"  # helm-python-sdk renders revision 1


def test_ingress_and_service_monitor_point_at_the_service(value_set: tuple) -> None:
    _, objects = value_set
    service = next(m for m in objects if m["kind"] == "Service" and "clusterIP" not in m["spec"])
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    for ingress in (m for m in objects if m["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in service_ports
    for monitor in (m for m in objects if m["kind"] == "ServiceMonitor"):
        assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def test_honoured_labels_change_only_the_endpoint_label() -> None:
    """The ServiceMonitor honours the scraped labels so BentoML's `endpoint` (the route) is not
    renamed `exported_endpoint` by the Operator's target label of the same name; no other
    exported label may collide with a target label, or honouring would hide where it came from."""
    (endpoint,) = only(
        render({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor"
    )["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True and endpoint["port"] == "metrics"
    exported = {
        label
        for metrics in (BENTOML, TABSERVE)
        for _, labels in metrics.values()
        for label in labels
    }
    target_labels = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}
    assert exported & target_labels == {"endpoint"}


def test_the_token_is_a_file_from_the_rendered_secret() -> None:
    """Never an env var (CKV_K8S_35): the Secret's key mounted read-only, its path in
    TABSERVE_API_TOKEN_FILE, in the serving pods and the helm test pod."""
    objects = render({"auth": {"enabled": True, "token": "a-token-of-16-chars-or-more"}})
    secret = only(objects, "Secret")
    for _, template in pod_templates(objects):
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "TABSERVE_API_TOKEN" not in env
        path = Path(env["TABSERVE_API_TOKEN_FILE"]["value"])
        (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        assert mount["readOnly"] is True
        (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        (item,) = volume["secret"]["items"]
        assert item["key"] in secret["data"] and item["path"] == path.name


def test_a_new_token_rolls_the_pods() -> None:
    def annotations(token: str) -> dict[str, str]:
        objects = render({"auth": {"enabled": True, "token": token}})
        return only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]

    assert annotations("a-token-of-16-chars-or-more") != annotations("another-token-of-16-chars")


def _ports(rule: dict[str, Any]) -> set[str | int]:
    return {port["port"] for port in rule["ports"]}


def test_network_policy_is_on_and_opens_each_port_to_its_own_callers(
    default_objects: list[Manifest],
) -> None:
    policy = only(default_objects, "NetworkPolicy")
    deployment = only(default_objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    clients, scrapers = policy["spec"]["ingress"]
    assert _ports(clients) == {"http", "grpc"}
    assert clients["from"] == [{"podSelector": {}}]  # the release namespace only
    assert _ports(scrapers) == {"metrics"}  # Prometheus reaches the metrics and nothing else
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert scrapers["from"] == [{"namespaceSelector": {"matchLabels": monitoring}}]
    (dns,) = policy["spec"]["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}


def test_the_ingress_controller_may_reach_the_serving_ports_when_there_is_an_ingress() -> None:
    objects = render({"ingress": {"enabled": True}})
    clients, _ = only(objects, "NetworkPolicy")["spec"]["ingress"]
    controller = load_values(CHART / "values.yaml")["networkPolicy"]["ingressController"]
    assert clients["from"] == [{"podSelector": {}}, controller]


def test_every_pod_is_pulled_and_placed_like_the_serving_pods() -> None:
    """The helm test and batch pods run the same image: on a cluster that needs a pull secret
    or dedicated nodes, they would otherwise never start."""
    placement = {
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"pool": "ml"},
        "tolerations": [{"key": "ml", "operator": "Exists", "effect": "NoSchedule"}],
    }
    batch = {"enabled": True, "existingClaim": "data"}
    objects = render({**placement, "batch": batch})
    kinds = []
    for owner, template in pod_templates(objects):
        kinds.append(owner["kind"])
        for field, value in placement.items():
            assert template["spec"][field] == value, (owner["kind"], field)
    assert sorted(kinds) == ["Deployment", "Job", "Pod"]


def test_pods_are_locked_down(value_set: tuple) -> None:
    _, objects = value_set
    for owner, template in pod_templates(objects):
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, owner["kind"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["securityContext"]["runAsNonRoot"] is True
        mounts_tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in mounts_tmp, f"{owner['kind']}: no writable /tmp"


def test_rollouts_drop_no_requests(default_objects: list[Manifest]) -> None:
    deployment = only(default_objects, "Deployment")["spec"]
    pod = deployment["template"]["spec"]
    hook = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(re.fullmatch(r'touch "\$TABSERVE_DRAIN_FILE" && sleep (\d+)', hook[-1]).group(1))
    assert 0 < pause < pod["terminationGracePeriodSeconds"]
    config = service_config(default_objects)
    assert config["TABSERVE_DRAIN_FILE"].startswith("/tmp/")
    # gRPC clients rotated off within the pause, with room for gRPC's +10% jitter.
    assert 0 < float(config["TABSERVE_GRPC_MAX_CONNECTION_AGE_S"]) * 1.1 < pause - 2
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert only(default_objects, "PodDisruptionBudget")["spec"]["minAvailable"] >= 1


def test_bentoml_home_is_a_writable_volume() -> None:
    """BentoML creates directories (its stores, the workers' shared metrics) under BENTOML_HOME
    at start-up: with a read-only root filesystem it must be an emptyDir (seen failing with
    `Read-only file system: '/home/bentoml/bentos'` in the image otherwise)."""
    values = {"batch": {"enabled": True, "existingClaim": "data"}}
    objects = render(values)
    home = service_config(objects)["BENTOML_HOME"]
    for owner, template in pod_templates(objects):
        if owner["kind"] == "Pod":
            continue  # the helm test pod only imports the catalog; BentoML does not start
        volumes = {v["name"] for v in template["spec"]["volumes"] if "emptyDir" in v}
        (container,) = template["spec"]["containers"]
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounted.get(home) in volumes, f"{owner['kind']}: BENTOML_HOME is not writable"
        assert {"configMapRef": {"name": "tabserve"}} in container["envFrom"]


# --- cross-checks against a real server -------------------------------------------------------


def test_probe_paths_answer_on_a_real_server(default_objects: list[Manifest], server) -> None:
    container = serving_container(only(default_objects, "Deployment"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path


def _exported_metrics(server) -> set[str]:
    """Metric families on /metrics once the server has answered a prediction (in multiprocess
    mode a family appears only after its first sample)."""
    body = {"instances": [MODELS["iris"].example_instance()]}
    assert httpx.post(f"{server.url}/v1/models/iris:predict", json=body, timeout=30).is_success
    text = httpx.get(server.metrics_url, timeout=10).text
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", promql))


def test_every_autoscaling_metric_is_exported_by_the_service(server) -> None:
    exported = _exported_metrics(server)
    with_adapter = {"autoscaling": {"requestsMetric": {"enabled": True}}}
    hpa = only(render(with_adapter), "HorizontalPodAutoscaler")["spec"]["metrics"]
    hpa_names = {m["pods"]["metric"]["name"] for m in hpa if m["type"] == "Pods"}
    keda = only(render({"keda": {"enabled": True}}), "ScaledObject")["spec"]["triggers"]
    keda_names = {
        n for t in keda if t["type"] == "prometheus" for n in _metric_names(t["metadata"]["query"])
    }
    adapter = yaml.safe_load((PROJECT / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    rules = adapter["rules"]["custom"]
    adapter_series = {n for rule in rules for n in _metric_names(rule["seriesQuery"])}
    adapter_serves = {rule["name"]["as"] for rule in rules}
    assert hpa_names and keda_names and adapter_series
    assert hpa_names <= adapter_serves, "the HPA asks for a metric the adapter does not serve"
    assert hpa_names | keda_names | adapter_series <= exported


def test_the_helm_test_prediction_works_on_a_real_server(server) -> None:
    pod = only(render({}), "Pod")
    script = pod["spec"]["containers"][0]["args"][0]
    model = load_values(CHART / "values.yaml")["tests"]["model"]
    assert f'model = "{model}"' in script and "/v1/models/{model}:predict" in script
    body = {"instances": [MODELS[model].example_instance()]}
    response = httpx.post(f"{server.url}/v1/models/{model}:predict", json=body, timeout=30)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


# --- the chart's copies of observability/ (k8s/ is tests/test_kustomize.py's) -----------------


def test_chart_copies_equal_the_observability_sources() -> None:
    sources = generate.chart_file_sources()
    for copy, source in sources.items():
        if source.exists():
            assert copy.exists() and copy.read_bytes() == source.read_bytes(), (
                f"{copy} is stale: run `make k8s`"
            )
        else:
            assert not copy.exists(), f"{copy} has no source: run `make k8s`"
    stray = set((CHART / "files" / "dashboards").glob("*.json")) - set(sources)
    assert not stray, f"dashboards without a source: {stray}; run `make k8s`"


# --- policy scan ----------------------------------------------------------------------------


def test_policy_scan_has_no_failures_and_every_skip_is_justified(tmp_path: Path) -> None:
    if not policy.CHECKOV.exists():
        missing(f"needs checkov ({policy.CHECKOV} not found); `make checkov` installs it")
    for values_file in CI_VALUES:
        objects = render(load_values(values_file))
        (tmp_path / f"{values_file.stem}.yaml").write_text(yaml.safe_dump_all(objects))
    report = policy.scan(tmp_path)
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= len(CI_VALUES) * 5
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{skipped['check_id']} skipped without a reason"

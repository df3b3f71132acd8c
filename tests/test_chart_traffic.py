"""Traffic from outside the cluster: the chart's Ingresses (HTTP and gRPC) and its Gateway API
routes (HTTPRoute, GRPCRoute), rendered by Helm's engine and validated against the Kubernetes
schemas and the Gateway API CRDs (tests/chart/crd_schemas.py)."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.chart import crd_schemas
from tests.chart.manifests import CHART, Manifest, load_values, only, render

# What `helm install` sees on a cluster with the Gateway API CRDs (`helm template --api-versions`).
GATEWAY_API = ["gateway.networking.k8s.io/v1/HTTPRoute", "gateway.networking.k8s.io/v1/GRPCRoute"]
PARENTS = [{"name": "public", "namespace": "gateway-infra", "sectionName": "https"}]
BOTH_ROUTES = {
    "parentRefs": PARENTS,
    "http": {"enabled": True, "hostnames": ["tabserve.example.com"]},
    "grpc": {"enabled": True, "hostnames": ["grpc.tabserve.example.com"]},
}
SUPPORTED_KUBERNETES = ("1.30.0", "1.37.0")  # as tests/test_chart.py


def _routes(gateway: dict[str, Any]) -> list[Manifest]:
    return render({"gateway": gateway}, GATEWAY_API)


def _service_ports(objects: list[Manifest]) -> dict[str, int]:
    service = only(objects, "Service", "tabserve")
    return {port["name"]: port["port"] for port in service["spec"]["ports"]}


def _clients(objects: list[Manifest]) -> list[dict[str, Any]]:
    """The NetworkPolicy's peers allowed to reach HTTP and gRPC."""
    clients = only(objects, "NetworkPolicy")["spec"]["ingress"][0]
    assert {port["port"] for port in clients["ports"]} == {"http", "grpc"}
    return clients["from"]


# --- Ingress: one per port ----------------------------------------------------------------------


def test_grpc_ingress_proxies_grpc_to_the_grpc_port() -> None:
    objects = render(load_values(CHART / "ci" / "ingress-values.yaml"))
    http, grpc = only(objects, "Ingress", "tabserve"), only(objects, "Ingress", "tabserve-grpc")
    ports = _service_ports(objects)
    for ingress, port in ((http, "http"), (grpc, "grpc")):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": "tabserve", "port": {"name": port}}
        assert port in ports
    # ingress-nginx proxies to the pods over HTTP/1.1 unless told the backend speaks gRPC.
    assert grpc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert "nginx.ingress.kubernetes.io/backend-protocol" not in http["metadata"]["annotations"]
    assert grpc["spec"]["tls"] == [
        {"secretName": "tabserve-grpc-tls", "hosts": ["grpc.tabserve.example.com"]}
    ]
    assert grpc["spec"]["ingressClassName"] == "nginx"


def test_grpc_ingress_alone_and_its_annotations_merge_with_the_backend_protocol() -> None:
    annotations = {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}
    objects = render({"grpcIngress": {"enabled": True, "annotations": annotations}})
    (ingress,) = [m for m in objects if m["kind"] == "Ingress"]
    assert ingress["metadata"]["name"] == "tabserve-grpc"
    assert ingress["metadata"]["annotations"] == {
        **annotations,
        "nginx.ingress.kubernetes.io/backend-protocol": "GRPC",
    }


def test_the_ingress_controller_may_reach_the_pods_for_the_grpc_ingress_alone() -> None:
    controller = load_values(CHART / "values.yaml")["networkPolicy"]["ingressController"]
    clients = _clients(render({"grpcIngress": {"enabled": True}}))
    assert clients == [{"podSelector": {}}, controller]


# --- Gateway API routes ---------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
def test_every_traffic_object_is_valid(kube_version: str) -> None:
    objects = render(
        {"gateway": BOTH_ROUTES, "ingress": {"enabled": True}, "grpcIngress": {"enabled": True}},
        GATEWAY_API,
    )
    kinds = {m["kind"] for m in objects}
    assert {"Ingress", "HTTPRoute", "GRPCRoute"} <= kinds
    for manifest in objects:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in crd_schemas.GATEWAY_API_RESOURCES:
            assert crd_schemas.errors(manifest) == [], manifest["kind"]
        elif key not in crd_schemas.CUSTOM_RESOURCES:
            kubernetes_validate.validate(manifest, kube_version, strict=True)


def test_each_route_sends_its_protocol_to_its_service_port() -> None:
    objects = _routes(BOTH_ROUTES)
    ports = _service_ports(objects)
    for kind, port, values in (("HTTPRoute", "http", "http"), ("GRPCRoute", "grpc", "grpc")):
        spec = only(objects, kind)["spec"]
        assert spec["parentRefs"] == PARENTS
        assert spec["hostnames"] == BOTH_ROUTES[values]["hostnames"]
        (rule,) = spec["rules"]
        assert "matches" not in rule  # every path / every method
        # A backendRef names the Service's port by number: the Gateway API has no port names.
        assert rule["backendRefs"] == [{"name": "tabserve", "port": ports[port]}]


def test_filters_extra_rules_and_own_parents_are_valid_routes() -> None:
    header = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"set": [{"name": "X-Env", "value": "prod"}]},
    }
    redirect = {
        "matches": [{"path": {"type": "Exact", "value": "/old"}}],
        "filters": [
            {
                "type": "RequestRedirect",
                "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/ui/"}},
            }
        ],
    }
    health = {"matches": [{"method": {"service": "grpc.health.v1.Health"}}],
              "backendRefs": [{"name": "tabserve", "port": 8001}]}  # fmt: skip
    gateway = {
        "parentRefs": PARENTS,
        "http": {"enabled": True, "filters": [header], "extraRules": [redirect]},
        # Its own listener: no hostname conflict with the HTTPRoute.
        "grpc": {"enabled": True, "parentRefs": [{"name": "public", "sectionName": "grpc"}],
                 "filters": [header], "extraRules": [health]},
    }  # fmt: skip
    objects = _routes(gateway)
    http, grpc = only(objects, "HTTPRoute"), only(objects, "GRPCRoute")
    assert http["spec"]["rules"][0]["filters"] == [header]
    assert http["spec"]["rules"][1] == redirect
    assert grpc["spec"]["parentRefs"] == gateway["grpc"]["parentRefs"]
    assert grpc["spec"]["rules"][1] == health
    for route in (http, grpc):
        assert crd_schemas.errors(route) == []


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda s: s["rules"][0]["backendRefs"][0].update(prot=3000), "'prot' was unexpected"),
        (lambda s: s["rules"][0]["backendRefs"][0].update(port="http"), "'http' is not of type"),
        (lambda s: s["parentRefs"][0].pop("name"), "'name' is a required property"),
        (lambda s: s.update(hostnames=["Tabserve_Example"]), "does not match"),
    ],
)
@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_crd_schemas_catch_broken_routes(kind: str, break_it: Any, expected: str) -> None:
    route = only(_routes(BOTH_ROUTES), kind)
    break_it(route["spec"])
    problems = crd_schemas.errors(route)
    for release in crd_schemas.GATEWAY_API_RELEASES:
        assert any(p.startswith(f"{release}: ") and expected in p for p in problems), problems


def test_gateway_proxies_may_reach_the_pods_when_a_route_is_on() -> None:
    controller = load_values(CHART / "values.yaml")["networkPolicy"]["gatewayController"]
    for route in ("http", "grpc"):
        clients = _clients(_routes({"parentRefs": PARENTS, route: {"enabled": True}}))
        assert clients == [{"podSelector": {}}, controller], route
    assert _clients(render({})) == [{"podSelector": {}}]


GUARDED = [
    (
        {"gateway": {"parentRefs": PARENTS, "http": {"enabled": True}}},
        [],
        "the cluster does not serve gateway.networking.k8s.io/v1/HTTPRoute; install the Gateway "
        "API CRDs (standard channel), or with `helm template` pass --api-versions",
    ),
    (
        {"gateway": {"parentRefs": PARENTS, "grpc": {"enabled": True}}},
        GATEWAY_API[:1],  # Gateway API before v1.1: HTTPRoute only
        "the cluster does not serve gateway.networking.k8s.io/v1/GRPCRoute",
    ),
    (
        {"gateway": {"grpc": {"enabled": True}}},
        GATEWAY_API,
        "gateway.grpc.enabled needs a Gateway: set gateway.parentRefs",
    ),
    (
        {"gateway": {**BOTH_ROUTES, "grpc": {"enabled": True}}},
        GATEWAY_API,
        "gateway.http and gateway.grpc attach to the same Gateways with a hostname in common",
    ),
    (
        {
            "gateway": {
                **BOTH_ROUTES,
                "grpc": {"enabled": True, "hostnames": ["tabserve.example.com"]},
            }
        },
        GATEWAY_API,
        "with a hostname in common",
    ),
]


@pytest.mark.parametrize(("values", "api_versions", "expected"), GUARDED)
def test_routes_fail_clearly_without_their_api_or_gateway(
    values: dict[str, Any], api_versions: list[str], expected: str
) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(expected)):
        render(values, api_versions)


BAD_VALUES = [
    ("gateway.parentRefs[0].sectionName=https", "missing property 'name'"),
    ("gateway.http.hostnames[0]=Tabserve_Example", "/gateway/http/hostnames/0"),
    ("gateway.grpc.filters[0].requestHeaderModifier=x", "missing property 'type'"),
    ("gateway.http.enabeld=true", "additional properties 'enabeld' not allowed"),
    ("grpcIngress.hosts[0].paths[0].path=grpc", "/grpcIngress/hosts/0/paths/0/path"),
    ("grpcIngress.tls[0].hosts[0]=a.example.com", "missing property 'secretName'"),
    (
        "networkPolicy.gatewayController.namespaceSelector=null,"
        "networkPolicy.gatewayController.podSelector=null",
        "/networkPolicy/gatewayController",
    ),
]


@pytest.mark.parametrize(("setting", "expected"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_values_schema_rejects_bad_traffic_values(setting: str, expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(expected)):
        render(helm_python.parse_set_string(setting), GATEWAY_API)

"""The metric names and label sets the dashboards and alert rules rely on, declared by hand.

Deliberately not imported from tabserve.metrics: a metric renamed there (or by a BentoML upgrade)
must fail tests/test_metrics.py instead of silently emptying a dashboard panel.
"""

from __future__ import annotations

# name as exposed (counters with `_total`) -> (type, label names; `le` of histograms left out)
TABSERVE = {
    "tabserve_requests_total": ("counter", {"protocol", "route", "method", "code"}),
    "tabserve_request_duration_seconds": ("histogram", {"protocol", "route", "method", "code"}),
    "tabserve_requests_in_progress": ("gauge", {"protocol"}),
    "tabserve_shed_requests_total": ("counter", {"protocol"}),
    "tabserve_predictions_total": ("counter", {"model", "version", "class"}),
    "tabserve_prediction_score": ("histogram", {"model"}),
    "tabserve_rejected_inputs_total": ("counter", {"model", "reason"}),
    "tabserve_inference_duration_seconds": ("histogram", {"model"}),
    "tabserve_inference_rows": ("histogram", {"model"}),
    "tabserve_explanation_duration_seconds": ("histogram", {"model"}),
    "tabserve_model_info": ("gauge", {"model", "version", "tag", "framework"}),
    "tabserve_model_alias": ("gauge", {"model", "alias", "version"}),
    "tabserve_model_training_score": ("gauge", {"model", "version", "metric"}),
    "tabserve_model_loaded": ("gauge", {"model"}),
}

# Only exposed while payload logging is on (tests/test_payload_log.py checks them there).
PAYLOAD_LOG = {
    "tabserve_payload_records_written_total": ("counter", {"sink"}),
    "tabserve_payload_records_dropped_total": ("counter", {"sink", "reason"}),
}

# Exposed only once an API worker's drift window holds Settings.drift_min_rows rows of a model
# (tabserve/drift/monitor.py): tests/test_drift.py sends them and checks these.
DRIFT = {
    "tabserve_feature_drift_psi": ("gauge", {"model", "version", "feature"}),
    "tabserve_score_drift_psi": ("gauge", {"model", "version"}),
}

# Exposed only for the models Settings.shadow names (tabserve/shadow.py), once the API worker runs
# its shadow scorer; the comparisons once a shadow call has answered.
SHADOW = {
    "tabserve_shadow_comparisons_total": (
        "counter",
        {"model", "version", "shadow_version", "outcome"},
    ),
    "tabserve_shadow_score_difference": ("histogram", {"model"}),
    "tabserve_shadow_duration_seconds": ("histogram", {"model"}),
    "tabserve_shadow_dropped_total": ("counter", {"model", "reason"}),
}

_BENTOML_REQUEST = {"endpoint", "service_name", "service_version", "runner_name"}
BENTOML = {
    "bentoml_service_request_total": ("counter", _BENTOML_REQUEST | {"http_response_code"}),
    "bentoml_service_request_duration_seconds": (
        "histogram",
        _BENTOML_REQUEST | {"http_response_code"},
    ),
    "bentoml_service_request_in_progress": ("gauge", _BENTOML_REQUEST),
    "bentoml_service_last_request_timestamp_seconds": (
        "gauge",
        {"pid", "service_name", "service_version", "runner_name"},
    ),
    "bentoml_service_adaptive_batch_size": (
        "histogram",
        {"runner_name", "worker_index", "method_name", "service_version", "service_name"},
    ),
}

# Only a Kubernetes cluster has these (kube-state-metrics, cAdvisor via the kubelet): the
# dashboard's pod row and the Kubernetes alerts use them; locally they can only be checked for
# syntax.
KUBERNETES = frozenset(
    {
        "kube_deployment_status_replicas_available",
        "kube_deployment_spec_replicas",
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "kube_horizontalpodautoscaler_status_current_replicas",
        "kube_horizontalpodautoscaler_spec_max_replicas",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "kube_pod_container_status_restarts_total",
        "kube_pod_container_resource_limits",
    }
)


def series_names(name: str, kind: str) -> set[str]:
    """The sample names a family exposes (a histogram: _bucket, _sum, _count)."""
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


KNOWN_SERIES = {
    series
    for declared in (TABSERVE, DRIFT, SHADOW, BENTOML)
    for name, (kind, _) in declared.items()
    for series in series_names(name, kind)
} | KUBERNETES

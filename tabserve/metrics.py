"""Every Prometheus metric tabserve defines (prefix `tabserve_`), and the calls that record them.

BentoML starts every worker of every service (API and model runner) with the same
PROMETHEUS_MULTIPROC_DIR, so prometheus-client writes these samples to per-process files there
and the service port's `/metrics` (BentoML's route) merges all of them: one scrape target per pod.
Gauges therefore declare how processes combine (`multiprocess_mode`).

Every label has a bounded set of values: model names come from the catalog (never from the
request), reasons from pydantic's fixed list of error types or our error classes, routes from the
route table (tabserve.http_metrics), HTTP methods from a fixed list.
docs/observability.md is the reference for operators.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from tabserve.catalog import MODELS, ModelSpec
from tabserve.schemas import ModelInfo

if typing.TYPE_CHECKING:
    from tabserve.dataplane import Predictions  # which records its metrics here

Protocol = Literal["rest", "grpc"]

# A label value no request can produce: paths start with "/", model names are identifiers.
UNKNOWN = "<unknown>"
UNMATCHED_ROUTE = "<unmatched>"

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Latencies from a sub-millisecond cached GET to a 1000-row batch on a busy 2-core pod.
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Predictions are probabilities: 20 equal bins show a drifting distribution without many series.
_SCORE_BUCKETS = tuple(round(step / 20, 2) for step in range(1, 21))
# |score difference| of two versions on a row: fine near 0, where versions that agree sit.
_SCORE_DIFFERENCE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# Rows per model call: powers of two up to the largest batch (Settings.batch_max_size, 1000).
_ROW_BUCKETS = tuple(2.0**power for power in range(11))

# --- protocol front ends ------------------------------------------------------------------------
_REQUEST_LABELS = ("protocol", "route", "method", "code")
REQUESTS = Counter(
    "tabserve_requests_total",
    "Requests answered by a protocol front end. REST: route template, HTTP method and status; "
    "gRPC: route = service, method = RPC name, code = gRPC status name.",
    _REQUEST_LABELS,
)
REQUEST_DURATION = Histogram(
    "tabserve_request_duration_seconds",
    "Time from receiving a request to sending its last byte, per protocol, route and code.",
    _REQUEST_LABELS,
    buckets=_LATENCY_BUCKETS_S,
)
SHED_REQUESTS = Counter(
    "tabserve_shed_requests_total",
    "Requests refused at once (HTTP 503, gRPC RESOURCE_EXHAUSTED) because their API worker had "
    "max_in_flight requests running and max_queued waiting. Not in tabserve_requests_total.",
    ("protocol",),
)
REQUESTS_IN_PROGRESS = Gauge(
    "tabserve_requests_in_progress",
    "Requests being handled now, summed over the live API worker processes.",
    ("protocol",),
    multiprocess_mode="livesum",
)
# Each protocol's series exists from the start, at 0. The HPA scales on this gauge (through
# prometheus-adapter): a new pod that has not served a request yet had no series, so the metric
# was missing for it, and while a metric is missing an HPA never scales down (seen on a cluster).
for _protocol in typing.get_args(Protocol):
    REQUESTS_IN_PROGRESS.labels(_protocol)

# --- data plane (API service) ----------------------------------------------------------------
PREDICTIONS = Counter(
    "tabserve_predictions_total",
    "Instances predicted, by model, model version and predicted class.",
    ("model", "version", "class"),
)
PREDICTION_SCORE = Histogram(
    "tabserve_prediction_score",
    "Predicted probability per instance: of the positive class for binary models, of the "
    "predicted class for multi-class ones. A shifting distribution is the first sign of drift.",
    ("model",),
    buckets=_SCORE_BUCKETS,
)
REJECTED_INPUTS = Counter(
    "tabserve_rejected_inputs_total",
    "Prediction requests refused before reaching a model, by model and reason (the pydantic "
    "error type of the first problem, or the tabserve error class).",
    ("model", "reason"),
)

# --- payload logging (API service; tabserve/payloads) --------------------------------------------
PAYLOAD_RECORDS_WRITTEN = Counter(
    "tabserve_payload_records_written_total",
    "Sampled prediction rows a payload sink delivered: written to a file (Parquet: when its "
    "file ends) or accepted by the CloudEvents receiver.",
    ("sink",),
)
PAYLOAD_RECORDS_DROPPED = Counter(
    "tabserve_payload_records_dropped_total",
    "Sampled prediction rows a payload sink lost, by reason: queue_full, write_error (files), "
    "timeout, connection, status, error (the CloudEvents receiver).",
    ("sink", "reason"),
)

# --- feature drift (API service; tabserve/drift/monitor.py) ------------------------------------
# Each API worker compares its own window of served rows with the training distribution. The
# workers share the traffic at random (SO_REUSEPORT, one Service), so each window is a sample of
# the same traffic: the worst live worker's value is exported ("livemax"), so that drift any
# worker sees can alert; a worker's window needs Settings.drift_min_rows rows before it exports,
# which bounds the sampling noise a max over workers could pick up. A dead worker's value goes.
FEATURE_DRIFT_PSI = Gauge(
    "tabserve_feature_drift_psi",
    "Population Stability Index of a feature over an API worker's last served rows against the "
    "model's training data (max over live workers). < 0.1 stable, 0.1-0.2 shifting, > 0.2 drift.",
    ("model", "version", "feature"),
    multiprocess_mode="livemax",
)
SCORE_DRIFT_PSI = Gauge(
    "tabserve_score_drift_psi",
    "Population Stability Index of the model's score (positive-class probability, or the "
    "predicted class of a multi-class model) over an API worker's last served rows against "
    "its hold-out predictions at training (max over live workers).",
    ("model", "version"),
    multiprocess_mode="livemax",
)

# --- shadow scoring (API service; tabserve/shadow.py) -------------------------------------------
# A sample of a model's requests is also scored by a second version after the answer is computed;
# these compare the two. Names fixed: the canary analysis templates query them.
SHADOW_DROP_REASONS = ("queue_full", "error", "timeout", "unavailable", "same_version", "stopped")
SHADOW_COMPARISONS = Counter(
    "tabserve_shadow_comparisons_total",
    "Rows scored by both a model's answering version and its shadow version, by whether their "
    "predicted classes agree (outcome: agree, disagree).",
    ("model", "version", "shadow_version", "outcome"),
)
SHADOW_SCORE_DIFFERENCE = Histogram(
    "tabserve_shadow_score_difference",
    "Per shadowed row, |shadow score - answered score|; the score as in "
    "tabserve_prediction_score (a multi-class shadow: its probability of the answered class).",
    ("model",),
    buckets=_SCORE_DIFFERENCE_BUCKETS,
)
SHADOW_DURATION = Histogram(
    "tabserve_shadow_duration_seconds",
    "Time of one completed shadow call (a sampled request's rows scored by the shadow version).",
    ("model",),
    buckets=_LATENCY_BUCKETS_S,
)
SHADOW_DROPPED = Counter(
    "tabserve_shadow_dropped_total",
    "Sampled rows not compared, by reason: queue_full (the API worker's shadow queue), error, "
    "timeout, unavailable (the shadow call failed), same_version (the shadow target is the "
    "version that answered), stopped (queued at shutdown).",
    ("model", "reason"),
)

# --- model runner -------------------------------------------------------------------------------
INFERENCE_DURATION = Histogram(
    "tabserve_inference_duration_seconds",
    "Time of one model call in the runner (one adaptive batch).",
    ("model",),
    buckets=_LATENCY_BUCKETS_S,
)
INFERENCE_ROWS = Histogram(
    "tabserve_inference_rows",
    "Rows in one model call (in the runner, or the API worker in inline mode): how much "
    "batching merged.",
    ("model",),
    buckets=_ROW_BUCKETS,
)
EXPLANATION_DURATION = Histogram(
    "tabserve_explanation_duration_seconds",
    "Time of one explanation call in the runner (probabilities and contributions of up to "
    "explain_max_rows rows). Kept apart from tabserve_inference_duration_seconds: an "
    "explanation costs many times a prediction and would skew its latencies.",
    ("model",),
    buckets=_LATENCY_BUCKETS_S,
)
MODEL_INFO = Gauge(
    "tabserve_model_info",
    "1 for each model version a runner process holds (tag, version, framework), 0 once it "
    "was unloaded.",
    ("model", "version", "tag", "framework"),
    multiprocess_mode="livemax",
)
MODEL_TRAINING_SCORE = Gauge(
    "tabserve_model_training_score",
    "Hold-out metric measured at training time, from the model's store metadata.",
    ("model", "version", "metric"),
    multiprocess_mode="livemax",
)
MODEL_ALIAS = Gauge(
    "tabserve_model_alias",
    "1 for the version an alias names now, 0 for the versions it named before (a version's "
    "other metrics carry `version`: join on it to see them by alias).",
    ("model", "alias", "version"),
    multiprocess_mode="livemax",
)
MODEL_LOADED = Gauge(
    "tabserve_model_loaded",
    "1 once a live runner process has loaded the model, 0 while it is loading.",
    ("model",),
    multiprocess_mode="livemax",
)


def version_of(tag: str) -> str:
    """'churn:abc123' -> 'abc123'."""
    return tag.rpartition(":")[2]


# --- recording: protocols -----------------------------------------------------------------------
def http_method_label(method: str) -> str:
    """Clients may send any token as an HTTP method; only the standard ones become labels."""
    return method if method in _HTTP_METHODS else "OTHER"


def record_request(
    protocol: Protocol, route: str, method: str, code: int | str, seconds: float
) -> None:
    """One answered request. gRPC callers pass the service as `route`, the RPC name as `method`
    and the status name (`grpc.StatusCode.X.name`) as `code`."""
    labels = (protocol, route, method, str(code))
    REQUESTS.labels(*labels).inc()
    REQUEST_DURATION.labels(*labels).observe(seconds)


def record_shed(protocol: Protocol) -> None:
    SHED_REQUESTS.labels(protocol).inc()


def declare_shed_series() -> None:
    """Shedding is rare: expose its series at 0 from the start, so that rate() and the alert
    see the first refusals instead of a series appearing out of nothing."""
    for protocol in typing.get_args(Protocol):
        SHED_REQUESTS.labels(protocol)


@contextmanager
def requests_in_progress(protocol: Protocol) -> Iterator[None]:
    with REQUESTS_IN_PROGRESS.labels(protocol).track_inprogress():
        yield


# --- recording: data plane ----------------------------------------------------------------------
def model_label(model_name: str) -> str:
    """Callers choose the model name in the URL: only catalog names become label values."""
    return model_name if model_name in MODELS else UNKNOWN


def record_rejection(model_name: str, reason: str) -> None:
    """One refused prediction request, counted once however many problems it had. `reason` is
    the refusal's `ServingError.reason_label`: pydantic's error type of its first problem or a
    tabserve error class name (e.g. 'PayloadTooLarge')."""
    REJECTED_INPUTS.labels(model_label(model_name), reason).inc()


def record_predictions(
    spec: ModelSpec, tag: str, probabilities: np.ndarray, best: np.ndarray
) -> None:
    """`best`: each row's most probable class index (the data plane's argmax, taken once)."""
    version = version_of(tag)
    for index, count in enumerate(np.bincount(best, minlength=len(spec.class_names))):
        if count:
            PREDICTIONS.labels(spec.name, version, spec.class_names[index]).inc(int(count))
    observe_all(PREDICTION_SCORE.labels(spec.name), prediction_scores(spec, probabilities, best))


def prediction_scores(spec: ModelSpec, probabilities: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Each row's score: the positive class's probability for binary models, else the
    probability of the class `best` names (the row's predicted class, or another model's: shadow
    scoring compares two versions' probabilities of the same class)."""
    if spec.positive_class is None:
        return np.take_along_axis(probabilities, best[:, np.newaxis], axis=1)[:, 0]
    return probabilities[:, spec.class_names.index(spec.positive_class)]


def observe_all(histogram: Histogram, values: np.ndarray) -> None:
    """`histogram.observe(v)` for every value, in one update per bucket.

    prometheus-client has no bulk observe, and one call per row cost 1.7 ms per 1000-row
    request. This writes what `observe` would (the sum, and each value counted in the first
    bucket whose bound it does not exceed) through the same private fields; a test compares
    it with `observe` call for call, so a prometheus-client upgrade that changes them fails
    there rather than here.
    """
    bounds = np.asarray(histogram._upper_bounds)
    per_bucket = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(np.sum(values)))
    # A NaN lands past the +Inf bucket and is dropped, as `observe` drops it.
    for bucket, count in zip(histogram._buckets, per_bucket.tolist(), strict=False):
        if count:
            bucket.inc(count)


# --- recording: payload logging -----------------------------------------------------------------
def declare_payload_series(sinks: Iterable[str]) -> None:
    """Each sink's written count from 0, so rate() sees its first records."""
    for sink in sinks:
        PAYLOAD_RECORDS_WRITTEN.labels(sink)


def record_payloads_written(sink: str, records: int) -> None:
    PAYLOAD_RECORDS_WRITTEN.labels(sink).inc(records)


def record_payloads_dropped(sink: str, reason: str, records: int) -> None:
    PAYLOAD_RECORDS_DROPPED.labels(sink, reason).inc(records)


# --- recording: feature drift --------------------------------------------------------------------
def record_drift(
    model_name: str, tag: str, score_psi: float, feature_psi: dict[str, float]
) -> None:
    """The PSIs of one model version's drift window (tabserve/drift/monitor.py)."""
    version = version_of(tag)
    SCORE_DRIFT_PSI.labels(model_name, version).set(score_psi)
    for feature, value in feature_psi.items():
        FEATURE_DRIFT_PSI.labels(model_name, version, feature).set(value)


# --- recording: shadow scoring -------------------------------------------------------------------
def declare_shadow_series(model_names: Iterable[str]) -> None:
    """Drops are rare: each shadowed model's reasons from 0, as declare_shed_series does."""
    for name in model_names:
        for reason in SHADOW_DROP_REASONS:
            SHADOW_DROPPED.labels(name, reason)


def record_shadow_dropped(model_name: str, reason: str, rows: int) -> None:
    SHADOW_DROPPED.labels(model_name, reason).inc(rows)


def record_shadow_comparison(primary: Predictions, shadow: Predictions, seconds: float) -> None:
    """One completed shadow call: the same rows as answered (`primary`) and as the shadow
    version scored them, `seconds` after the call started."""
    spec = primary.spec
    SHADOW_DURATION.labels(spec.name).observe(seconds)
    agree = int(np.count_nonzero(primary.best == shadow.best))
    versions = (spec.name, version_of(primary.tag), version_of(shadow.tag))
    # Both outcomes counted, even by 0: an agreement ratio needs both series from the start.
    SHADOW_COMPARISONS.labels(*versions, "agree").inc(agree)
    SHADOW_COMPARISONS.labels(*versions, "disagree").inc(len(primary.best) - agree)
    difference = np.abs(
        prediction_scores(spec, shadow.probabilities, primary.best)
        - prediction_scores(spec, primary.probabilities, primary.best)
    )
    observe_all(SHADOW_SCORE_DIFFERENCE.labels(spec.name), difference)


# --- recording: model runner --------------------------------------------------------------------
@contextmanager
def inference_timer(model_name: str, rows: int) -> Iterator[None]:
    """Times one model call and records its row count."""
    INFERENCE_ROWS.labels(model_name).observe(rows)
    started = time.perf_counter()
    try:
        yield
    finally:
        INFERENCE_DURATION.labels(model_name).observe(time.perf_counter() - started)


@contextmanager
def explanation_timer(model_name: str) -> Iterator[None]:
    """Times one explanation call in the runner."""
    started = time.perf_counter()
    try:
        yield
    finally:
        EXPLANATION_DURATION.labels(model_name).observe(time.perf_counter() - started)


def record_models_loading(model_names: Iterable[str]) -> None:
    """Before a runner process loads anything: every model it will load reads 0."""
    for name in model_names:
        MODEL_LOADED.labels(name).set(0)


def record_model_loaded(info: ModelInfo) -> None:
    version = version_of(info.tag)
    MODEL_INFO.labels(info.name, version, info.tag, info.framework).set(1)
    for metric, value in info.metadata.get("metrics", {}).items():
        MODEL_TRAINING_SCORE.labels(info.name, version, metric).set(value)
    MODEL_LOADED.labels(info.name).set(1)


def record_model_unloaded(info: ModelInfo) -> None:
    version = version_of(info.tag)
    MODEL_INFO.labels(info.name, version, info.tag, info.framework).set(0)


def record_alias(model_name: str, alias: str, previous: str | None, version: str | None) -> None:
    """An alias moved from `previous` to `version` (either None: it is new, or removed)."""
    if previous is not None and previous != version:
        MODEL_ALIAS.labels(model_name, alias, previous).set(0)
    if version is not None:
        MODEL_ALIAS.labels(model_name, alias, version).set(1)

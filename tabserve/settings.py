"""Every runtime knob of the service, in one typed object.

Each field can be overridden by an environment variable named ``TABSERVE_<FIELD>`` (upper case),
e.g. ``TABSERVE_MAX_INSTANCES=500``. Model tags are overridden per model with
``TABSERVE_MODEL_TAGS='{"churn": "churn:3x7k2..."}'`` (JSON); unnamed models use ``<name>:latest``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pydantic_settings
from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_settings import BaseSettings, SettingsConfigDict

from tabserve.catalog import MODELS

ENV_PREFIX = "TABSERVE_"
API_TOKEN_MIN_CHARS = 16
# A token file is a few dozen bytes; reading at most this much keeps a path pointing at a log or
# a device (/dev/zero) from filling the memory at start-up.
_TOKEN_FILE_MAX_BYTES = 4096


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ShadowTarget:
    """Where a share of one model's traffic is also scored (tabserve/shadow.py). Unknown keys are
    refused: a misspelt "fraction" would otherwise leave shadow scoring silently off."""

    target: str = Field(min_length=1)  # an alias ("challenger") or an exact version
    fraction: float = Field(gt=0, le=1)  # of the model's requests, sampled per request


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    # --- request limits -------------------------------------------------------------------
    max_instances: int = Field(
        1000, ge=1, description="Most instances (rows) accepted in one predict request."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes."
    )
    max_text_chars: int = Field(
        5000, ge=1, description="Longest text accepted in a free-text feature."
    )
    max_keys_per_instance: int = Field(
        32,
        ge=1,
        description="Most keys one instance may have (the widest model has 13 features), checked "
        "before validation: a body of unknown keys costs one error per instance, not one per "
        "key. Also bounds the query-string parameters of a GET prediction.",
    )
    max_query_bytes: int = Field(
        16384,
        ge=256,
        description="Longest query string of a GET prediction, in bytes; longer is a 414. Long "
        "texts go in a POST body.",
    )
    max_error_details: int = Field(
        20,
        ge=1,
        description="Most problems listed in one error answer; the rest are counted "
        "(`details_omitted`), so a body with thousands of bad fields gets a small answer.",
    )
    explain_max_rows: int = Field(
        100,
        ge=1,
        description="Most rows one explanation request (V1 :explain, the Open Inference "
        "`contributions` output) may hold; more is a 413. An explanation costs many times a "
        "prediction per row, so this bounds what one request can take of the runner.",
    )
    max_drained_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="A body over max_body_bytes is still read (and dropped) up to this size "
        "before the 413: clients that send the whole body before reading the answer (urllib, "
        "many proxies) then read the 413 instead of a reset connection. Larger bodies get the "
        "413 and the connection is closed.",
    )

    # --- model store ------------------------------------------------------------------------
    model_tags: dict[str, str] = Field(
        default_factory=dict,
        description="Model name -> BentoML model tag. Unlisted models use '<name>:latest'. "
        "This version is the model's champion unless model_aliases names another.",
    )
    model_versions: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Model name -> further BentoML tags to load beside the model_tags one, "
        "each reachable on the versioned routes (`/v1/models/<m>/versions/<v>:predict`, "
        "`/v2/models/<m>/versions/<v>/infer`, gRPC `model_version`) and packed into the bento.",
    )
    model_aliases: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Model name -> {alias: version} at start, e.g. `{"churn": '
        '{"challenger": "abc123"}}`. The unversioned routes follow `champion` (by default '
        "the model_tags version). Aliases move at run time through the repository API.",
    )
    repository_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest a repository call (load, unload, alias) may take in the model "
        "runner: a load reads and checks a model from the store.",
    )
    unload_grace_s: float = Field(
        3.0,
        ge=0,
        description="An unloaded version stops taking new requests at once and is freed this "
        "much later, so requests that API workers already routed to it still finish.",
    )

    # --- processes and threads ----------------------------------------------------------------
    api_workers: int = Field(1, ge=1, description="Worker processes of the API service.")
    runner_workers: int = Field(1, ge=1, description="Worker processes of the model runner.")
    inline_models: bool = Field(
        False,
        description="Each API worker holds the models and calls them itself: no runner process, "
        "no API-to-runner hop (most of a lone request's CPU; docs/performance.md). Costs the "
        "ML libraries and the models in every API worker, and inference no longer scales "
        "apart from the API.",
    )
    model_threads: int = Field(
        1,
        ge=1,
        description="Threads one model call may use (XGBoost nthread). Keep workers x threads "
        "within the CPU limit: oversubscribed OpenMP threads cost more than they give.",
    )

    # --- adaptive batching (the runner's batched predict APIs) ----------------------------------
    batch_max_size: int = Field(
        1000, ge=1, description="Most rows the runner merges into one model call."
    )
    batch_max_latency_ms: int = Field(
        1000,
        ge=1,
        description="Longest a request may wait in the runner's queue before it is refused "
        "with 503 (BentoML's max_latency_ms).",
    )
    batch_max_wait_ms: float = Field(
        0,
        ge=0,
        description="Longest the runner holds a request, while the model is idle, to gather a "
        "bigger batch. 0 = send it at once: batches still form from the requests that arrive "
        "while a model call runs. BentoML's own estimate of this wait grows under load and "
        "then taxes every request at low load (docs/performance.md).",
    )
    runner_calls_in_flight: int = Field(
        1,
        ge=1,
        description="Runner calls an API worker keeps open per model. Requests that arrive "
        "while they run are merged into the next call (tabserve/runner_calls.py), so the "
        "API-to-runner hop is paid once per batch, not once per request.",
    )

    runner_timeout_s: float = Field(
        3.0,
        gt=0,
        description="Deadline of one API-to-runner call (and of the readiness check). A runner "
        "that does not answer in time (stopped, restarting, swamped) fails the call with 503 "
        "instead of holding it; a request waits at most twice this (the call in flight, then "
        "its own). Healthy calls take milliseconds; the runner itself refuses requests queued "
        "longer than batch_max_latency_ms.",
    )

    # --- admission (per API worker; tabserve/admission.py) ---------------------------------------
    max_in_flight: int = Field(
        128,
        ge=1,
        description="Requests (HTTP and gRPC together) an API worker handles at once. Most of "
        "them wait for a merged runner call, so too few caps the throughput (16 served ~420 "
        "req/s in a flood the worker could serve at ~970); too many lengthens each turn of the "
        "event loop, and with it the time to refuse the excess.",
    )
    max_queued: int = Field(
        128,
        ge=0,
        description="Requests that may wait for an in-flight slot, oldest first; beyond that "
        "a request is refused at once (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED). "
        "With max_in_flight it bounds the wait: (max_in_flight + max_queued) / throughput, "
        "~150 ms for single rows at ~1700 req/s; together they absorb a burst of 256 "
        "concurrent requests per worker. Probes and /metrics are never refused.",
    )

    # --- large bodies (per API worker; tabserve/large_bodies.py) ----------------------------
    large_body_bytes: int = Field(
        65536,
        ge=0,
        description="A V1 body larger than this is validated in slices of slice_rows instances, "
        "the event loop answering other requests between slices: validated whole, 1000 rows "
        "held it 4-8 ms and the single rows behind them waited.",
    )
    slice_rows: int = Field(
        100,
        ge=1,
        description="Rows of a large V1 request validated, and of its answer built, at a time "
        "(~0.5 ms for 100 churn rows): the longest one slice holds the event loop.",
    )
    large_bodies_at_once: int = Field(
        1,
        ge=1,
        description="Large bodies an API worker validates at a time; the others wait their "
        "turn without holding the event loop, so each turn of the loop holds at most this many "
        "slices however many large requests arrive together.",
    )

    # --- per-request logging --------------------------------------------------------------------
    access_log: bool = Field(
        False,
        description="Log every HTTP request (BentoML's access log) in the API and the runner. "
        "Off by default: it costs as much CPU as a single-row prediction (docs/performance.md).",
    )
    trace_requests: bool = Field(
        False,
        description="OpenTelemetry spans for every request, exported when a BentoML tracing "
        "exporter is configured. Off by default, as spans nobody exports still cost CPU.",
    )

    # --- payload logging (tabserve/payloads) -----------------------------------------------------
    payload_log_sample_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of prediction requests whose rows (inputs and outputs) are logged; "
        "0 = payload logging off. Sampled by request, so a request's rows are kept together. "
        "The inputs may be personal data: see docs/observability.md before turning it on.",
    )
    payload_log_queue: int = Field(
        1000,
        ge=1,
        description="Sampled requests each sink may hold waiting to be written, per API worker. "
        "A full queue drops the request's records (counted in "
        "tabserve_payload_records_dropped_total): logging never slows or fails a prediction.",
    )
    payload_log_format: Literal["jsonl", "parquet", "none"] = Field(
        "jsonl",
        description="Files the sampled rows go to, in payload_log_dir: `jsonl` (one JSON object "
        "per row, readable as it is written), `parquet` (one file per rotation), or `none` "
        "(only the HTTP sink, payload_log_url).",
    )
    payload_log_dir: Path = Field(
        Path("/tmp/tabserve-payloads"),
        description="Directory of the payload files. Each API worker writes its own files "
        "(payloads-w<worker>-<UTC time>.<format>), so workers never interleave.",
    )
    payload_log_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="A payload file is closed and a new one started once it holds this many "
        "bytes (for Parquet: of the rows' JSON, before compression; its rows wait in memory "
        "until the file ends).",
    )
    payload_log_max_age_s: float = Field(
        3600.0,
        gt=0,
        description="A payload file is also closed once it is this old, so files of a quiet "
        "service still end, and Parquet rows reach the disk.",
    )
    payload_log_max_files: int = Field(
        4,
        ge=1,
        description="Payload files kept per API worker, the one being written included; the "
        "oldest are deleted. The disk they take: API workers x max_files x max_bytes (each file "
        "may end one request's rows past max_bytes); the defaults fit the chart's /tmp.",
    )
    payload_log_url: str | None = Field(
        None,
        description="If set, every sampled request is also POSTed here as two CloudEvents in "
        "KServe's logger format (org.kubeflow.serving.inference.request and .response).",
    )
    payload_log_timeout_s: float = Field(
        1.0,
        gt=0,
        description="Deadline of one CloudEvent POST; a sink that does not answer in time "
        "loses that event (counted), never retried.",
    )
    payload_log_concurrency: int = Field(
        4,
        ge=1,
        description="CloudEvent POSTs in flight at once per API worker; requests beyond wait "
        "in the sink's queue (payload_log_queue).",
    )

    # --- gRPC (Open Inference Protocol; tabserve/protocols/grpc) ----------------------------------
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the gRPC inference service (with health and reflection); 0 turns "
        "it off. Every API worker binds it with SO_REUSEPORT (see docs/protocols.md).",
    )
    grpc_host: str = Field(
        "0.0.0.0",
        description="Address the gRPC server listens on (BentoML's HTTP host is set separately, "
        "by `bentoml serve --host`).",
    )
    grpc_max_connection_age_s: float = Field(
        30.0,
        ge=0,
        description="A gRPC connection older than this is asked to go (a graceful GOAWAY: calls "
        "in flight finish, the client reconnects for the next ones); 0 = never. gRPC clients "
        "keep one connection, so without it they never reach pods added by a scale-out, and "
        "stay on a terminating pod until its server stops, which cancels calls that race the "
        "stop. The chart sets half the preStop pause, so every client has moved by SIGTERM.",
    )

    # --- metrics (tabserve/metrics_server.py) ----------------------------------------------------
    metrics_port: int = Field(
        8002,
        ge=0,
        le=65535,
        description="Port serving /metrics (Prometheus), away from the prediction routes, so a "
        "NetworkPolicy can open it to the monitoring namespace alone; the HTTP port's /metrics "
        "then answers 404. Every API worker binds it with SO_REUSEPORT. 0 = /metrics on the HTTP "
        "port, as BentoML serves it.",
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server listens on.")

    # --- feature drift (tabserve/drift) ---------------------------------------------------------
    drift_window_rows: int = Field(
        10_000,
        ge=0,
        description="Served rows per model version each API worker compares with the model's "
        "training distribution (the Population Stability Index gauges); 0 turns drift "
        "monitoring off. The window holds the last 3/4 to all of this many rows: it moves in "
        "quarters, each a count per bin, so its memory is bounded whatever the traffic (a "
        "request larger than a quarter lands whole in one).",
    )
    drift_min_rows: int = Field(
        1000,
        ge=1,
        description="Rows a worker's window must hold before it exports a PSI: on fewer, the "
        "PSI is mostly sampling noise (10 bins over 100 rows read ~0.1 with no drift at all). "
        "At most drift_window_rows x 3/4, or the PSI would stop being refreshed as the window "
        "moves.",
    )

    # --- shadow scoring (tabserve/shadow.py) -----------------------------------------------------
    shadow: dict[str, ShadowTarget] = Field(
        default_factory=dict,
        description='Model name -> {"target": alias or version, "fraction": share of its '
        "requests in (0, 1]}: that share of the model's requests is also scored by the target "
        "version after the answer is computed, off the request's path, and the two compared "
        "(tabserve_shadow_* metrics). Unlisted models are not shadowed.",
    )
    shadow_queue_size: int = Field(
        64,
        ge=1,
        description="Sampled requests waiting for their shadow call, per API worker; when full, "
        "more are dropped (counted in tabserve_shadow_dropped_total), never waited for. One "
        "shadow call runs at a time per worker, so this bounds the work and memory shadowing "
        "can take.",
    )

    # --- access ---------------------------------------------------------------------------------
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token required on the prediction routes (REST, gRPC, TabPy); unset "
        "(and no api_token_file) = open. Probes, /metrics and the web page's static assets never "
        "need it. Surrounding whitespace is dropped (a Secret's trailing newline would otherwise "
        f"lock every client out). At least {API_TOKEN_MIN_CHARS} visible ASCII characters, so "
        "an empty or placeholder Secret fails at start-up instead of opening the API.",
    )
    api_token_file: Path | None = Field(
        None,
        description="File holding the bearer token, e.g. a Kubernetes Secret mounted as a "
        "volume; its content, surrounding whitespace dropped, is the token, read once at "
        "start-up. Same rules as api_token; set one of the two, not both. An empty, missing or "
        "unreadable file, or a short token, fails the start-up.",
    )

    # --- shutdown -------------------------------------------------------------------------------
    drain_file: str = Field(
        "/tmp/tabserve-draining",
        description="While this file exists every HTTP response says `Connection: close`, so "
        "keep-alive clients reconnect to other pods; the chart's preStop hook creates it "
        "(tabserve/draining.py).",
    )
    shutdown_drain_s: float = Field(
        5.0,
        ge=0,
        description="After SIGTERM the model runner keeps answering this long before it stops, "
        "so the API workers can finish the requests they accepted (BentoML signals every "
        "process at once). Keep preStop pause + this well under terminationGracePeriodSeconds.",
    )

    @field_validator("api_token", mode="before")
    @classmethod
    def _strip_api_token(cls, value: Any) -> Any:
        """Whitespace around the token is an artefact of how it was stored (`echo`, a Secret
        made from a file), never what clients send: dropped, then the token is checked."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return _checked_token(value.strip(), f"{ENV_PREFIX}API_TOKEN")
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_api_token_file(cls, values: Any) -> Any:
        """api_token from api_token_file's content. Before the fields are validated, as the
        model is frozen: the token in effect is always `api_token`, wherever it came from."""
        path = values.get("api_token_file") if isinstance(values, dict) else None
        if not isinstance(path, str | Path):  # unset; or not a path, which its field refuses
            return values
        if values.get("api_token") is not None:
            raise ValueError(
                f"{ENV_PREFIX}API_TOKEN and {ENV_PREFIX}API_TOKEN_FILE are both set: set one "
                "(the file, for a mounted Secret)"
            )
        return {**values, "api_token": SecretStr(_token_from_file(str(path)))}

    @field_validator("shadow")
    @classmethod
    def _shadow_models_exist(cls, shadow: dict[str, ShadowTarget]) -> dict[str, ShadowTarget]:
        unknown = sorted(set(shadow) - set(MODELS))
        if unknown:
            raise ValueError(
                f"{ENV_PREFIX}SHADOW names unknown models {unknown}; models: {', '.join(MODELS)}"
            )
        return shadow

    @model_validator(mode="after")
    def _versions_name_known_models(self) -> Settings:
        """A misspelt model name would silently load nothing (or alias nothing)."""
        for setting in ("model_tags", "model_versions", "model_aliases"):
            unknown = sorted(set(getattr(self, setting)) - set(MODELS))
            if unknown:
                raise ValueError(
                    f"{ENV_PREFIX}{setting.upper()}: unknown model(s) {', '.join(unknown)}; "
                    f"the models are {', '.join(MODELS)}"
                )
        return self

    @model_validator(mode="after")
    def _drift_min_rows_fit_the_window(self) -> Settings:
        """The window holds at least 3/4 of drift_window_rows once it moves: a larger minimum
        would export a PSI and then drop it again."""
        if self.drift_window_rows and self.drift_min_rows * 4 > self.drift_window_rows * 3:
            raise ValueError(
                f"{ENV_PREFIX}DRIFT_MIN_ROWS ({self.drift_min_rows}) is over 3/4 of "
                f"{ENV_PREFIX}DRIFT_WINDOW_ROWS ({self.drift_window_rows})"
            )
        return self

    @property
    def max_json_values(self) -> int:
        """Most values (and keys) a JSON body may hold, counted on its bytes before it is parsed:
        parsed, a value costs up to ~60 bytes of memory, so 8 MB of `{},` would be 170 MB.
        Derived from the instance limits: a V1 body needs a key and a value per feature and one
        object per instance; V2 and TabPy bodies need fewer (a value per feature and row)."""
        return self.max_instances * (2 * self.max_keys_per_instance + 2) + 1024

    def tag_for(self, model_name: str) -> str:
        return self.model_tags.get(model_name, f"{model_name}:latest")

    def tags_for(self, model_name: str) -> list[str]:
        """Every version to load for a model at start: its default tag first."""
        extra = self.model_versions.get(model_name, [])
        return [self.tag_for(model_name), *extra]


def _token_from_file(path: str) -> str:
    if not path.strip():  # Path("") would be ".", the working directory
        raise ValueError(f"{ENV_PREFIX}API_TOKEN_FILE is set but empty: give the token file's path")
    setting = f"{ENV_PREFIX}API_TOKEN_FILE={path}"
    try:
        with open(path, "rb") as file:
            content = file.read(_TOKEN_FILE_MAX_BYTES + 1)
    except OSError as error:  # missing, a directory, not readable by this user, ...
        raise ValueError(f"{setting}: cannot read the token file: {error.strerror}") from None
    if len(content) > _TOKEN_FILE_MAX_BYTES:
        raise ValueError(f"{setting}: larger than {_TOKEN_FILE_MAX_BYTES} bytes, not a token")
    try:
        token = content.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{setting}: the token must be ASCII text") from None
    return _checked_token(token.strip(), setting)


def _checked_token(token: str, setting: str) -> str:
    """The token, if clients can send it and it is not trivially guessed. Visible ASCII only:
    gRPC metadata carries only ASCII, and a line break or space inside cannot be sent in a
    header (a multi-line Secret would lock every client out)."""
    if not token:
        raise ValueError(f"{setting}: the token is empty")
    if len(token) < API_TOKEN_MIN_CHARS:
        raise ValueError(
            f"{setting}: the token has {len(token)} characters, at least "
            f"{API_TOKEN_MIN_CHARS} are needed"
        )
    if not all("!" <= character <= "~" for character in token):
        raise ValueError(
            f"{setting}: the token may hold only visible ASCII characters (no spaces or line "
            "breaks inside)"
        )
    return token


class SettingsError(SystemExit):
    """Settings the service cannot start with. A SystemExit carrying its message, so `bentoml
    serve` (which imports service.py, and with it the settings, before it starts any worker) stops
    with exit status 1 and only this message on stderr, not a traceback through BentoML and click
    that ends in pydantic's error (which also echoed the rejected value: a too-short token)."""

    def __init__(self, error: ValidationError) -> None:
        problems = "\n".join(f"  {_describe(problem)}" for problem in error.errors())
        super().__init__(f"tabserve cannot start, invalid settings:\n{problems}")


def _describe(problem: Any) -> str:
    # Our validators' messages name the variable already; pydantic's own ("Input should be a
    # valid integer") get it from the field they are about.
    if problem["type"] == "value_error":
        return str(problem["ctx"]["error"])
    variable = ENV_PREFIX + ".".join(str(part) for part in problem["loc"]).upper()
    return f"{variable}: {problem['msg']}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(error) from None
    except pydantic_settings.SettingsError as error:
        # A JSON setting (TABSERVE_MODEL_TAGS, TABSERVE_SHADOW) that is not JSON fails in
        # pydantic-settings, before validation: the same one-line message, not a traceback.
        problem = f"{error}: {error.__cause__}" if error.__cause__ else str(error)
        raise SystemExit(f"tabserve cannot start, invalid settings:\n  {problem}") from None

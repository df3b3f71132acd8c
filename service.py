"""The BentoML services: where a request enters and where the models run.

    ModelAPI     the API service (entry point): HTTP routes, validation, response shaping.
                 It calls the runner through `bentoml.depends`; in inline mode
                 (TABSERVE_INLINE_MODELS, tabserve/inline.py) it holds the models itself and
                 no runner process runs.
    ModelRunner  the runner: loads every model of the catalog from the model store (each in the
                 versions configured, tabserve/loaded_models.py) and serves one batched
                 predict API per model, so BentoML's adaptive batching merges concurrent
                 requests for the same model into one model call; and the repository calls
                 (load, unload, alias) that change its versions while it serves.

Serve with `bentoml serve service:ModelAPI` (see the Makefile). Configuration: tabserve/settings.py.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml
import numpy as np

from tabserve import bentoml_runtime, metrics, payloads
from tabserve.admission import AdmissionMiddleware
from tabserve.app import create_app
from tabserve.catalog import MODELS
from tabserve.dataplane import DataPlane, explainer_api_name, runner_api_name
from tabserve.draining import DrainingMiddleware
from tabserve.http_metrics import endpoint_labeller
from tabserve.metrics_server import MetricsMovedMiddleware, MetricsServer
from tabserve.payloads import PayloadLog
from tabserve.protocols.http import serve_with
from tabserve.protocols.oip import OpenInference
from tabserve.request_context import RequestContextMiddleware
from tabserve.schemas import RepositoryAnswer, Row
from tabserve.security_headers import SecurityHeadersMiddleware
from tabserve.settings import get_settings

if TYPE_CHECKING:
    from tabserve.loaded_models import LoadedModels
    from tabserve.protocols.grpc.server import GrpcServer

settings = get_settings()


def _model_attribute(model_name: str, index: int) -> str:
    return f"{model_name}_model" if index == 0 else f"{model_name}_model_{index}"


class ModelRunner:
    """All models in one process: each gets its own batch queue, and they share the memory
    and the start-up cost of one Python process (one process per model would cost ~150 MB each
    on a 2-core pod for no gain: the models are small and CPU-bound)."""

    def __init__(self) -> None:
        bentoml_runtime.check_replacements_in_effect(bentoml_runtime.RUNNER_REPLACEMENTS)
        bentoml_runtime.stop_later_on_sigterm(settings.shutdown_drain_s)
        self.models = _load_models()
        bentoml_runtime.freeze_startup_objects()

    @bentoml.api
    def describe(self) -> list[dict]:
        """The loaded model versions: name, resolved tag, framework, metadata, aliases."""
        return self.models.describe()

    # The repository (tabserve/protocols/repository.py). Async, each call's work in a thread
    # of its own: BentoML runs a service's sync APIs one at a time (its `threads` setting,
    # default 1), so a sync load, or an unload waiting out its grace period, would hold up
    # every prediction (seen: requests stalled 1 s and got 503 during an unload).
    @bentoml.api
    async def load_version(self, model_name: str, version: str) -> RepositoryAnswer:
        return await asyncio.to_thread(self.models.load, model_name, version)

    @bentoml.api
    async def unload_version(self, model_name: str, version: str) -> RepositoryAnswer:
        return await asyncio.to_thread(self.models.unload, model_name, version)

    @bentoml.api
    async def set_alias(self, model_name: str, alias: str, version: str | None) -> RepositoryAnswer:
        return await asyncio.to_thread(self.models.set_alias, model_name, alias, version)


def _load_models() -> LoadedModels:
    """Every model of the catalog in its configured versions, from the model store (the bento's
    own, once built: it packs the versions `_declare_models` declares)."""
    # Imported here, in a process that holds models only: the ML libraries cost ~155 MB in every
    # process that imports them, and the arbiter (and API workers, unless inline) never touch one.
    from tabserve.loaded_models import LoadedModels

    return LoadedModels(
        MODELS,
        settings.tags_for,
        settings.model_aliases,
        threads=settings.model_threads,
        unload_grace_s=settings.unload_grace_s,
    )


def _batched_predict(model_name: str) -> bentoml.api:
    # A versioned batch (tabserve/model_input.py): a numpy array, which BentoML takes as it is
    # (pickled as raw bytes, not validated row by row) and concatenates with the other calls'.
    def predict(self: ModelRunner, batch: np.ndarray) -> bentoml_runtime.JsonArray:
        return self.models.predict_proba(model_name, batch)

    predict.__name__ = runner_api_name(model_name)
    return bentoml.api(
        batchable=True,
        max_batch_size=settings.batch_max_size,
        max_latency_ms=settings.batch_max_latency_ms,
    )(predict)


def _explainer(model_name: str) -> bentoml.api:
    # Not batched: explanations are rare, capped at explain_max_rows and cost far more per row
    # than a prediction, so merging them with others saves little and would make the
    # predictions of a batch wait for them. Async, run in a thread of its own, for the same
    # reason: BentoML runs a service's sync APIs (the batched predictions) one at a time.
    async def explain(self: ModelRunner, rows: list[Row], version: str) -> dict:
        return await asyncio.to_thread(self.models.explain, model_name, version, rows)

    explain.__name__ = explainer_api_name(model_name)
    return bentoml.api(explain)


def _declare_models(service_class: type) -> None:
    """The catalog decides which models exist: one model store reference per model and
    configured version. The bento packs the models its services declare; the API declares them
    too, for inline mode."""
    for name in MODELS:
        for index, tag in enumerate(settings.tags_for(name)):
            setattr(service_class, _model_attribute(name, index), bentoml.models.BentoModel(tag))


_declare_models(ModelRunner)
for _name in MODELS:  # one batched predict API and one explain API per model
    setattr(ModelRunner, runner_api_name(_name), _batched_predict(_name))
    setattr(ModelRunner, explainer_api_name(_name), _explainer(_name))

bentoml_runtime.bound_batching_wait()
bentoml_runtime.fix_request_timeout_leak()
_request_logging = bentoml_runtime.request_logging(settings)
ModelRunner = bentoml.service(
    name="model_runner",
    workers=settings.runner_workers,
    # BentoML 1.4.30+ renews the API->runner HTTP session every 100 requests or 300 s and closes
    # the old one while concurrent calls still use it ("Connector is closed" -> 500s under load;
    # bentoml/BentoML#5544). Runner and API share a pod: nothing to rotate, so never renew.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9},
    **_request_logging,
)(ModelRunner)


http_app = create_app()
# BentoML labels its request metrics with the raw path: they get a bounded value instead.
bentoml_runtime.bound_metric_paths(
    endpoint_labeller(
        http_app.router.routes, [method.route for method in ModelRunner.apis.values()]
    )
)


class ModelAPI:
    # Inline mode declares no runner: BentoML then starts no runner process.
    if not settings.inline_models:
        runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        bentoml_runtime.check_replacements_in_effect(bentoml_runtime.API_REPLACEMENTS)
        metrics.declare_shed_series()
        payload_log = PayloadLog.from_settings(settings)  # None unless turned on
        self.dataplane = DataPlane(self._model_calls(), settings, payload_log=payload_log)
        # One of each per worker, shared by every request: the HTTP routes find them in the
        # app's state, the gRPC server is given the protocol.
        self.open_inference = OpenInference(self.dataplane, settings)
        serve_with(http_app, self.dataplane, self.open_inference)
        self.grpc_server: GrpcServer | None = None
        self.metrics_server: MetricsServer | None = None
        bentoml_runtime.freeze_startup_objects()

    def _model_calls(self) -> Any:
        """Awaitable calls to the models: the runner's, or this worker's own in inline mode."""
        if settings.inline_models:
            from tabserve.inline import InlineRunner

            return InlineRunner(_load_models(), settings.runner_calls_in_flight)
        # The runner's APIs are synchronous functions; `to_async` gives awaitable calls to them.
        return self.runner.to_async

    @bentoml.on_startup
    async def start_metrics(self) -> None:
        """/metrics on its own port, in this worker (tabserve/metrics_server.py)."""
        if settings.metrics_port:
            self.metrics_server = MetricsServer(settings.metrics_host, settings.metrics_port)
            await self.metrics_server.start()

    @bentoml.on_shutdown
    async def stop_metrics(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """The Open Inference Protocol over gRPC, in this worker (tabserve/protocols/grpc)."""
        if settings.grpc_port:
            # Imported here, in the API worker only: gRPC costs the arbiter ~9 MB it never uses.
            from tabserve.protocols.grpc.server import GrpcServer

            self.grpc_server = GrpcServer(self.open_inference, settings)
            await self.grpc_server.start()

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop()

    @bentoml.on_startup
    async def start_dataplane(self) -> None:
        """The data plane's background parts in this worker: payload sinks (tabserve/payloads),
        the shadow scorer (tabserve/shadow.py)."""
        await self.dataplane.start()

    @bentoml.on_shutdown
    async def stop_dataplane(self) -> None:
        await self.dataplane.stop()

    async def __is_ready__(self) -> bool:
        """/readyz: ready while the runner answers, with every model of the catalog loaded."""
        return await self.dataplane.ready()


_declare_models(ModelAPI)
ModelAPI = bentoml.asgi_app(http_app, path="/")(
    bentoml.service(
        name="tabserve",
        workers=settings.api_workers,
        # /readyz asks the runner through __is_ready__, with a deadline; BentoML's own runner
        # probe would be a second request per probe, whose timeout error turns /readyz into a 500.
        runner_probe={"enabled": False},
        **_request_logging,
    )(ModelAPI)
)
# Per API worker: at most max_in_flight requests at once, max_queued waiting, the rest shed.
ModelAPI.add_asgi_middleware(AdmissionMiddleware)
if payloads.enabled(settings):  # the protocol and request id of each logged prediction
    ModelAPI.add_asgi_middleware(RequestContextMiddleware)
if settings.metrics_port:  # /metrics is served on its own port (tabserve/metrics_server.py)
    ModelAPI.add_asgi_middleware(MetricsMovedMiddleware, metrics_port=settings.metrics_port)
# Around the whole app, BentoML's own layers included: every HTTP answer carries them, those of
# BentoML's routes and the ones BentoML and the admission write themselves (504, 429, 503, 500).
bentoml_runtime.wrap_entry_app(
    SecurityHeadersMiddleware,
    DrainingMiddleware,  # once the pod is terminating, clients are told to reconnect elsewhere
)

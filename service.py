"""The BentoML services: where a request enters and where the models run.

    ModelAPI     the API service (entry point): HTTP routes, validation, response shaping.
                 It holds no model; it calls the runner through `bentoml.depends`.
    ModelRunner  the runner: loads every model of the catalog from the model store and serves
                 one batched predict API per model, so BentoML's adaptive batching merges
                 concurrent requests for the same model into one model call.

Serve with `bentoml serve service:ModelAPI` (see the Makefile). Configuration: tabserve/settings.py.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml

from tabserve import bentoml_runtime, metrics
from tabserve.admission import AdmissionMiddleware
from tabserve.app import create_app
from tabserve.catalog import MODELS
from tabserve.dataplane import DataPlane, explainer_api_name, runner_api_name
from tabserve.draining import DrainingMiddleware
from tabserve.http_metrics import endpoint_labeller
from tabserve.metrics_server import MetricsMovedMiddleware, MetricsServer
from tabserve.protocols.http import serve_with
from tabserve.protocols.oip import OpenInference
from tabserve.schemas import Row
from tabserve.security_headers import SecurityHeadersMiddleware
from tabserve.settings import get_settings

if TYPE_CHECKING:
    from tabserve.protocols.grpc.server import GrpcServer

settings = get_settings()


def _model_attribute(model_name: str) -> str:
    return f"{model_name}_model"


class ModelRunner:
    """All models in one process: each gets its own batch queue, and they share the memory
    and the start-up cost of one Python process (one process per model would cost ~150 MB each
    on a 2-core pod for no gain: the models are small and CPU-bound)."""

    def __init__(self) -> None:
        # Imported here, in the runner process only: the ML libraries cost ~155 MB in every
        # process that imports them, and the arbiter and API workers never touch a model.
        from tabserve.inference import LoadedModel

        bentoml_runtime.check_replacements_in_effect(bentoml_runtime.RUNNER_REPLACEMENTS)
        bentoml_runtime.stop_later_on_sigterm(settings.shutdown_drain_s)
        metrics.record_models_loading(MODELS)
        self.loaded = {
            name: LoadedModel(spec, getattr(self, _model_attribute(name)), settings.model_threads)
            for name, spec in MODELS.items()
        }
        for model in self.loaded.values():
            metrics.record_model_loaded(model.info)
        bentoml_runtime.freeze_startup_objects()

    @bentoml.api
    def describe(self) -> list[dict]:
        """The loaded models: name, resolved tag, framework, metadata."""
        return [vars(model.info) for model in self.loaded.values()]


def _batched_predict(model_name: str) -> bentoml.api:
    def predict(self: ModelRunner, rows: list[Row]) -> bentoml_runtime.JsonArray:
        with metrics.inference_timer(model_name, len(rows)):
            return self.loaded[model_name].predict_proba(rows)

    predict.__name__ = runner_api_name(model_name)
    return bentoml.api(
        batchable=True,
        max_batch_size=settings.batch_max_size,
        max_latency_ms=settings.batch_max_latency_ms,
    )(predict)


def _explainer(model_name: str) -> bentoml.api:
    # Not batched: explanations are rare, capped at explain_max_rows and cost far more per row
    # than a prediction, so merging them with others saves little and would make the
    # predictions of a batch wait for them.
    def explain(self: ModelRunner, rows: list[Row]) -> dict:
        model = self.loaded[model_name]
        with metrics.explanation_timer(model_name):
            probabilities = model.predict_proba(rows)
            explanation = model.explain(rows)
        # Plain JSON: a few thousand numbers at most, so its cost crossing to the API is small.
        return {
            "probabilities": probabilities.tolist(),
            "contributions": explanation.contributions.tolist(),
            "outputs": list(explanation.outputs),
            "scale": explanation.scale,
            "tokens": explanation.tokens,
        }

    explain.__name__ = explainer_api_name(model_name)
    return bentoml.api(explain)


# The catalog decides which models exist: one store reference, one batched predict API and one
# explain API per model.
for _name in MODELS:
    setattr(
        ModelRunner, _model_attribute(_name), bentoml.models.BentoModel(settings.tag_for(_name))
    )
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


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    name="tabserve",
    workers=settings.api_workers,
    # /readyz asks the runner through __is_ready__, with a deadline; BentoML's own runner probe
    # would be a second request per probe, whose timeout error turns /readyz into a 500.
    runner_probe={"enabled": False},
    **_request_logging,
)
class ModelAPI:
    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        bentoml_runtime.check_replacements_in_effect(bentoml_runtime.API_REPLACEMENTS)
        metrics.declare_shed_series()
        # The runner's APIs are synchronous functions; `to_async` gives awaitable calls to them.
        self.dataplane = DataPlane(self.runner.to_async, settings)
        # One of each per worker, shared by every request: the HTTP routes find them in the
        # app's state, the gRPC server is given the protocol.
        self.open_inference = OpenInference(self.dataplane, settings)
        serve_with(http_app, self.dataplane, self.open_inference)
        self.grpc_server: GrpcServer | None = None
        self.metrics_server: MetricsServer | None = None
        bentoml_runtime.freeze_startup_objects()

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

    async def __is_ready__(self) -> bool:
        """/readyz: ready while the runner answers, with every model of the catalog loaded."""
        return await self.dataplane.ready()


# Per API worker: at most max_in_flight requests at once, max_queued waiting, the rest shed.
ModelAPI.add_asgi_middleware(AdmissionMiddleware)
if settings.metrics_port:  # /metrics is served on its own port (tabserve/metrics_server.py)
    ModelAPI.add_asgi_middleware(MetricsMovedMiddleware, metrics_port=settings.metrics_port)
# Around the whole app, BentoML's own layers included: every HTTP answer carries them, those of
# BentoML's routes and the ones BentoML and the admission write themselves (504, 429, 503, 500).
bentoml_runtime.wrap_entry_app(
    SecurityHeadersMiddleware,
    DrainingMiddleware,  # once the pod is terminating, clients are told to reconnect elsewhere
)

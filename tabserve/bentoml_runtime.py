"""How tabserve runs inside BentoML 1.4: process-level settings and the few places where
BentoML's own behaviour has to be adjusted. Each item says what it fixes and where that was
measured; service.py applies them.

Three BentoML classes are replaced by assignment, the only hook BentoML 1.4 leaves: its
adaptive-batching optimizer, its request-timeout middleware and its request-metrics middleware;
and the method that builds a service's ASGI app is wrapped, to put middleware around all of it.
Should an upgrade rename or stop using one, the assignment would silently do nothing; so each
replacement notes when BentoML builds it, and `check_replacements_in_effect` fails the worker's
start-up when one was not built.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Annotated, Any

import numpy as np
from _bentoml_sdk.service import factory as bentoml_sdk_service
from bentoml._internal.marshal import dispatcher as bentoml_dispatcher
from bentoml._internal.server.http import instruments as bentoml_instruments
from bentoml._internal.server.http import traffic as bentoml_traffic
from bentoml.validators import ContentType
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tabserve.settings import Settings, get_settings

# Names of the replacement classes BentoML has built in this process.
_built: set[str] = set()

# The media type BentoML infers for an array anyway, declared so that BentoML does not rebuild
# the output's JSON schema on every response to infer it (12% of the runner's CPU under load).
JsonArray = Annotated[np.ndarray, ContentType("application/json")]


def freeze_startup_objects() -> None:
    """Exclude everything built at start-up (modules, models, app) from garbage collection.

    A worker holds ~225k long-lived objects, and each full collection walked them all: a
    100-150 ms pause of every request in flight, the p99 under load. Frozen, a full collection
    only sees what requests allocate (CPython's gc.freeze, meant for exactly this).
    """
    gc.collect()
    gc.freeze()


def stop_later_on_sigterm(delay_s: float) -> None:
    """Defer this process's SIGTERM handler (uvicorn's: stop listening, finish, exit) by delay_s.

    On SIGTERM `bentoml serve` signals the API workers and the runner at the same moment. The
    runner would close its socket at once, and every request an API worker had accepted but not
    yet forwarded would fail with 500 (seen in tests/test_graceful_shutdown.py). The runner keeps
    answering for delay_s while the API workers, which stop accepting at once, drain.
    """
    stop = signal.getsignal(signal.SIGTERM)

    def deferred(signum: int, frame: FrameType | None) -> None:
        if callable(stop):
            threading.Timer(delay_s, stop, (signum, frame)).start()

    signal.signal(signal.SIGTERM, deferred)


class _BoundedWaitOptimizer(bentoml_dispatcher.Optimizer):
    """BentoML's adaptive-batching optimizer with its idle wait capped by the settings.

    BentoML waits before each batch for the average of recent waits, and under load those
    include the time spent queued behind the running batch: after a burst, a lone request
    waited ~15 ms for company that never came (docs/performance.md). Replacing the class
    before the runner's app is built is the only hook BentoML 1.4 leaves for it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _built.add(type(self).__name__)

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = min(self.wait, get_settings().batch_max_wait_ms / 1000)


def bound_batching_wait() -> None:
    """Install _BoundedWaitOptimizer (CorkDispatcher looks the class up when it is built)."""
    _replace(bentoml_dispatcher, "Optimizer", _BoundedWaitOptimizer)


class _RequestDeadlineMiddleware(bentoml_traffic.TimeoutMiddleware):
    """BentoML's request timeout (504 when no response has started in `timeout` s), without
    its per-request leak.

    BentoML 1.4 schedules a timer per request (`loop.call_later`, 60 s by default) that it never
    cancels, plus a future and an extra task: every request leaves a timer, a future and a
    callback on the event loop for a minute. At 2000 requests/s that is ~120k live timers:
    +100 MB of RSS per API worker, and CPU per request rose from 0.43 to 0.74 ms within a minute
    of load (docs/performance.md). Here `asyncio.timeout` owns the deadline and drops it when
    the request ends; once the response starts, the deadline is lifted, as in BentoML.
    A TimeoutError of the app's own (not this deadline) propagates as the error it is.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        super().__init__(app, timeout)
        _built.add(type(self).__name__)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        response_started = False

        async def send_lifting_deadline(message: Any) -> None:
            nonlocal response_started
            if not response_started:
                response_started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with asyncio.timeout(self.timeout) as deadline:
                await self.app(scope, receive, send_lifting_deadline)
        except TimeoutError:
            if not deadline.expired():
                raise
            error = f"Not able to process the request in {self.timeout} seconds"
            await JSONResponse({"error": error}, status_code=504)(scope, receive, send)


def fix_request_timeout_leak() -> None:
    """Install _RequestDeadlineMiddleware; BentoML imports the class when it builds each app."""
    _replace(bentoml_traffic, "TimeoutMiddleware", _RequestDeadlineMiddleware)


class _BoundedPathMetrics(bentoml_instruments.RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics (`bentoml_service_request_*`), with `endpoint` bounded.

    BentoML labels them with the raw request path, before any routing, so every distinct path
    (a 404 scan, a fuzzer) added ~13 KB of samples to the worker's multiprocess files for good:
    5000 random paths grew them by 75 MB and a /metrics scrape then took 20 s. Here BentoML's
    middleware sees `endpoint_label(path)` instead (a known path, a route template, or
    `<unmatched>`, tabserve.http_metrics), and the app behind it the real path.
    """

    endpoint_label: Callable[[str], str]  # set by bound_metric_paths

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        super().__init__(_with_real_path(app), **options)
        _built.add(type(self).__name__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        path = scope["path"]
        labelled = {**scope, "path": self.endpoint_label(path), _REAL_PATH: path}
        await super().__call__(labelled, receive, send)


_REAL_PATH = "tabserve.path"


def _with_real_path(app: ASGIApp) -> ASGIApp:
    async def real_path(scope: Scope, receive: Receive, send: Send) -> None:
        if _REAL_PATH in scope:
            scope["path"] = scope.pop(_REAL_PATH)  # our own copy of the scope
        await app(scope, receive, send)

    return real_path


def bound_metric_paths(endpoint_label: Callable[[str], str]) -> None:
    """Install _BoundedPathMetrics with `endpoint_label` (a route match per distinct path,
    cached for the paths real traffic repeats; the cache is bounded, junk paths cannot grow it).
    """
    _BoundedPathMetrics.endpoint_label = staticmethod(functools.lru_cache(256)(endpoint_label))
    _replace(bentoml_instruments, "RunnerTrafficMetricsMiddleware", _BoundedPathMetrics)


class _OutermostMiddleware:
    """The entry service's whole ASGI app inside `middleware` (outermost first).

    BentoML puts the middleware of `Service.add_asgi_middleware` inside its own layers: its
    request metrics, the request deadline (504), its concurrency limit (traffic.max_concurrency,
    429) and Starlette's error handler (500) all wrap it, so the answers those layers write
    never passed through it (the 504 lacked the browser security headers). Middleware that must
    see every response goes here instead (`wrap_entry_app`).
    """

    middleware: tuple[Callable[[ASGIApp], ASGIApp], ...] = ()  # set by wrap_entry_app

    def __init__(self, app: ASGIApp) -> None:
        for middleware in reversed(self.middleware):
            app = middleware(app)
        self.app = app
        _built.add(type(self).__name__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def wrap_entry_app(*middleware: Callable[[ASGIApp], ASGIApp]) -> None:
    """Wrap `middleware` (outermost first) around the entry service's app as BentoML builds it
    (`Service.to_asgi`, which BentoML's worker calls; the runner's app is left as it is).
    A method is wrapped, not the app factory class replaced: its module is not imported in the
    arbiter, and importing it here would cost the arbiter ~4 MB."""
    _OutermostMiddleware.middleware = middleware
    build = getattr(bentoml_sdk_service.Service, "to_asgi", None)
    if not callable(build):
        raise RuntimeError(
            "bentoml Service.to_asgi is gone: this BentoML is not the one tabserve adjusts "
            "(bentoml_runtime.py); check what the upgrade changed"
        )

    @functools.wraps(build)
    def to_asgi(self: Any, is_main: bool = True) -> ASGIApp:
        app = build(self, is_main=is_main)
        return _OutermostMiddleware(app) if is_main else app

    bentoml_sdk_service.Service.to_asgi = to_asgi


def _replace(module: Any, name: str, replacement: type) -> None:
    if not isinstance(getattr(module, name, None), type):
        raise RuntimeError(
            f"{module.__name__}.{name} is gone: this BentoML is not the one tabserve adjusts "
            "(bentoml_runtime.py); check what the upgrade changed"
        )
    setattr(module, name, replacement)


# What BentoML builds with each service's app: the runner's also has batching dispatchers;
# only the entry service's (the API's) is wrapped.
API_REPLACEMENTS = (_RequestDeadlineMiddleware, _BoundedPathMetrics, _OutermostMiddleware)
RUNNER_REPLACEMENTS = (_RequestDeadlineMiddleware, _BoundedPathMetrics, _BoundedWaitOptimizer)


def check_replacements_in_effect(replacements: tuple[type, ...]) -> None:
    """Fail start-up unless BentoML built each replacement in this process. Called from a
    service's __init__: BentoML builds the dispatchers and the middleware stack before it."""
    missing = [cls.__name__ for cls in replacements if cls.__name__ not in _built]
    if missing:
        raise RuntimeError(
            f"BentoML did not use tabserve's {', '.join(missing)} (bentoml_runtime.py): it no "
            "longer builds the class it replaces; an upgrade changed it"
        )


def request_logging(settings: Settings) -> dict[str, Any]:
    """BentoML service config: per-request access log lines and OpenTelemetry spans only when
    asked for (each costs about as much CPU as a single-row prediction)."""
    return {
        "logging": {"access": {"enabled": settings.access_log}},
        **({} if settings.trace_requests else {"tracing": {"excluded_urls": [".*"]}}),
    }

"""What a lone request costs inside the API worker's ASGI app, layer by layer (no socket).

Builds the entry service's app as BentoML's worker does (`ModelAPI.to_asgi()`, inline mode,
production settings), runs its lifespan, and sends single-row churn V1 requests one at a time
to each of its layers in turn (entering at a layer skips the layers outside it), in interleaved
rounds so the machine's drift hits every layer alike. Prints the process CPU per request when
entering at each layer, and each layer's own share (the difference to the next one inside).
`--profile` prints cProfile's top functions of the whole app instead.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.bench.asgi_price [--rounds R] [--block N]

Multiprocess metrics are written to a temporary directory, as in a served worker.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware

ENV = {
    "OMP_NUM_THREADS": "1",
    "TABSERVE_INLINE_MODELS": "true",
    "TABSERVE_MODEL_THREADS": "1",
    "TABSERVE_GRPC_PORT": "0",  # their servers are priced by the served probe, not here
    "TABSERVE_METRICS_PORT": "0",
}
PATH = "/v1/models/churn:predict"


def _layers(app: Any) -> list[Any]:
    """The app's layers from the outside in, down to the FastAPI app's exit stack (its router
    and the route inside it). Each layer's inner app: a middleware's `.app`, a Starlette app's
    built middleware stack, a router's mounted app, a wrapping function's closure."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Router

    layers = [app]
    while not isinstance(app, AsyncExitStackMiddleware):
        if isinstance(app, Starlette):
            app = app.middleware_stack
        elif isinstance(app, Router):
            app = next(route.app for route in app.routes if isinstance(route, Mount))
        elif hasattr(app, "app"):
            app = app.app
        else:
            cells = (cell.cell_contents for cell in app.__closure__)
            app = next(inner for inner in cells if callable(inner))
        layers.append(app)
    return layers


async def _lifespan(app: Any) -> asyncio.Queue[dict[str, Any]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    asyncio.get_running_loop().create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    message = await outbox.get()
    assert message["type"] == "lifespan.startup.complete", message
    return inbox


def _request(path: str, body: bytes, app: Any) -> tuple[dict[str, Any], Callable[..., Any]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:3000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
        "state": {},
        "app": app,  # what the Starlette app the layer sits in would have set
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # a disconnect never comes: the client waits
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return scope, receive


async def _drive(layer: Any, app: Any, bodies: list[bytes], count: int) -> float:
    """CPU seconds of `count` requests sent to `layer` one at a time (`app`: the Starlette app
    it sits in)."""
    statuses: set[int] = set()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    started = time.process_time()
    for index in range(count):
        scope, receive = _request(PATH, bodies[index % len(bodies)], app)
        await layer(scope, receive, send)
    spent = time.process_time() - started
    assert statuses == {200}, (type(layer), statuses)
    return spent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds over every layer")
    parser.add_argument("--block", type=int, default=100, help="requests per layer and round")
    parser.add_argument("--profile", action="store_true", help="cProfile the whole app")
    args = parser.parse_args()
    os.environ.update(ENV)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="asgi-price-"))
    import service  # after the environment: it reads the settings when imported
    from loadtests.bench.peers import v1_bodies

    entry = service.ModelAPI.to_asgi(is_main=True)
    await _lifespan(entry)
    bodies = [body.encode() for body in v1_bodies()]
    await _drive(entry, entry, bodies, 300)  # warm-up; builds the middleware stacks
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await _drive(entry, entry, bodies, args.rounds * args.block)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
        return
    layers = _layers(entry)
    # The Starlette app each layer sits in: BentoML's down to its router, then ours.
    fastapi_at = next(i for i, layer in enumerate(layers) if layer is service.http_app)
    apps = [layers[3]] * fastapi_at + [service.http_app] * (len(layers) - fastapi_at)
    spent = [[0.0] * args.rounds for _ in layers]
    for round_ in range(args.rounds):  # interleaved: the machine's drift hits every layer alike
        for depth, layer in enumerate(layers):
            spent[depth][round_] = await _drive(layer, apps[depth], bodies, args.block)
    print("ms of CPU per request: entering at this layer / this layer's own (median of rounds)")
    per_request = [[s / args.block * 1000 for s in rounds] for rounds in spent]
    per_request.append([0.0] * args.rounds)  # nothing inside the innermost layer
    for depth, layer in enumerate(layers):
        total, inner = per_request[depth], per_request[depth + 1]
        own = statistics.median(t - i for t, i in zip(total, inner, strict=True))
        kind = layer if callable(layer) and hasattr(layer, "__qualname__") else type(layer)
        name = f"{kind.__module__}.{kind.__qualname__}"
        print(f"{statistics.median(total):7.3f} {own:7.3f}  {name}")


if __name__ == "__main__":
    asyncio.run(main())

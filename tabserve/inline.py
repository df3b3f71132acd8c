"""Inline mode: the API worker holds the models and calls them itself.

A request then costs no second process: no pickling, no HTTP exchange with the runner, no batch
dispatcher. That is most of a lone request's CPU (docs/performance.md). What is lost: inference
no longer scales apart from the API (each API worker holds every model, ~155 MB of ML libraries
plus the models), and the runner's adaptive batching across API workers; an API worker still
merges its own concurrent requests per model (tabserve/runner_calls.py).

`InlineRunner` offers the calls the runner service's client offers (`describe`, one
`predict_<model>` and one `explain_<model>` per model, all awaitable), so the DataPlane does not
know where models run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from tabserve.dataplane import explainer_api_name, runner_api_name
from tabserve.loaded_models import LoadedModels
from tabserve.schemas import Row

T = TypeVar("T")


class InlineRunner:
    def __init__(self, models: LoadedModels, calls_in_flight: int) -> None:
        self._models = models
        # Model calls run off the event loop: a 1000-row call takes tens of milliseconds, and the
        # loop meanwhile keeps reading, validating and answering other requests. One thread per
        # call the DataPlane may have in flight, so no call waits for a thread.
        self._executor = ThreadPoolExecutor(
            len(models.loaded) * calls_in_flight, thread_name_prefix="inline-model"
        )
        for name in models.loaded:
            setattr(self, runner_api_name(name), partial(self._call, models.predict_proba, name))
            setattr(self, explainer_api_name(name), partial(self._call, models.explain, name))

    async def describe(self) -> list[dict[str, Any]]:
        return self._models.describe()

    async def _call(
        self, method: Callable[[str, list[Row]], T], model_name: str, rows: list[Row]
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, method, model_name, rows)

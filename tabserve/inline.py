"""Inline mode: the API worker holds the models and calls them itself.

A request then costs no second process: no pickling, no HTTP exchange with the runner, no batch
dispatcher. That is most of a lone request's CPU (docs/performance.md). What is lost: inference
no longer scales apart from the API (each API worker holds every model, ~155 MB of ML libraries
plus the models), and the runner's adaptive batching across API workers; an API worker still
merges its own concurrent requests per model (tabserve/runner_calls.py).

`InlineRunner` offers the calls the runner service's client offers (`describe`, one
`predict_<model>` and one `explain_<model>` per model, the repository calls, all awaitable), so
the DataPlane does not know where models run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from tabserve.dataplane import explainer_api_name, runner_api_name
from tabserve.loaded_models import LoadedModels
from tabserve.schemas import RepositoryAnswer

# A prediction of at most LOOP_MAX_ROWS rows, of a model whose last such call took at most
# LOOP_CALL_MAX_S of CPU, runs on the event loop: the hop to a thread and back costs ~0.12 ms of
# CPU, a fifth of a one-row XGBoost call. Not a row count alone: a scikit-learn pipeline costs
# 3-18 ms per call whatever its rows (docs/performance.md), too long to stall the loop for. A
# one-row churn call costs 0.5-0.8 ms, more on a busy machine: 2 ms keeps it on the loop.
LOOP_MAX_ROWS = 16
LOOP_CALL_MAX_S = 0.002


class InlineRunner:
    def __init__(self, models: LoadedModels, calls_in_flight: int) -> None:
        self._models = models
        # Model calls run off the event loop: a 1000-row call takes tens of milliseconds, and the
        # loop meanwhile keeps reading, validating and answering other requests. One thread per
        # call the DataPlane may have in flight, so no call waits for a thread.
        self._executor = ThreadPoolExecutor(
            len(models.loaded) * calls_in_flight, thread_name_prefix="inline-model"
        )
        # A repository call (a load takes seconds) has its own thread: predictions never wait.
        self._repository = ThreadPoolExecutor(1, thread_name_prefix="inline-repository")
        # CPU seconds of each model's last call of at most LOOP_MAX_ROWS rows; unknown at first.
        self._small_call_s = dict.fromkeys(models.loaded, float("inf"))
        for name in models.loaded:
            setattr(self, runner_api_name(name), partial(self._predict, name))
            setattr(self, explainer_api_name(name), partial(self._explain, name))

    async def describe(self) -> list[dict[str, Any]]:
        return self._models.describe()

    async def load_version(self, model_name: str, version: str) -> RepositoryAnswer:
        return await self._change(self._models.load, model_name, version)

    async def unload_version(self, model_name: str, version: str) -> RepositoryAnswer:
        return await self._change(self._models.unload, model_name, version)

    async def set_alias(self, model_name: str, alias: str, version: str | None) -> RepositoryAnswer:
        return await self._change(self._models.set_alias, model_name, alias, version)

    async def _predict(self, model_name: str, batch: np.ndarray) -> Any:
        if len(batch) > LOOP_MAX_ROWS:
            return await self._call(self._models.predict_proba, model_name, batch)
        if self._small_call_s[model_name] <= LOOP_CALL_MAX_S:
            return self._timed_predict(model_name, batch)
        return await self._call(self._timed_predict, model_name, batch)

    def _timed_predict(self, model_name: str, batch: np.ndarray) -> Any:
        started = time.thread_time()  # the call's own CPU, not the machine's contention
        try:
            return self._models.predict_proba(model_name, batch)
        finally:
            self._small_call_s[model_name] = time.thread_time() - started

    async def _explain(self, model_name: str, rows: list[Any], version: str) -> dict[str, Any]:
        return await self._call(self._models.explain, model_name, version, rows)

    def _call(self, method: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, method, *args)

    def _change(self, method: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._repository, method, *args)

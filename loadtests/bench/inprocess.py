"""The in-process ceiling: how fast the churn model predicts with no server at all.

Two ways: XGBoost's own `inplace_predict` on a ready float32 array (the floor of any server),
and tabserve's `LoadedModel.predict_proba` on rows as the runner gets them (what our runner adds
before the model). Each is timed for single rows and for 1000-row batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import bentoml
import numpy as np
import xgboost

from loadtests.payloads import PAYLOADS, instances
from tabserve.catalog import MODELS
from tabserve.inference import LoadedModel
from tabserve.training import XGBOOST_MODEL_FILE

BATCH_ROWS = 1000


@dataclass(frozen=True)
class Ceiling:
    name: str
    single_row_per_s: float
    batch_rows_per_s: float


def _rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of `call`, run back to back for about `seconds`."""
    call()  # warm-up: first-call allocations are not the steady state
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        call()
        count += 1
    return count / elapsed


def ceilings(model: bentoml.Model, seconds: float = 2.0) -> list[Ceiling]:
    features = PAYLOADS["churn"]["features"]
    rows = [[row[name] for name in features] for row in instances("churn", BATCH_ROWS)]
    booster = xgboost.Booster(model_file=model.path_of(XGBOOST_MODEL_FILE))
    booster.set_param({"nthread": 1})
    one = np.asarray(rows[:1], dtype=np.float32)
    batch = np.asarray(rows, dtype=np.float32)
    loaded = LoadedModel(MODELS["churn"], model, threads=1)
    return [
        Ceiling(
            "xgboost inplace_predict",
            _rate(lambda: booster.inplace_predict(one), seconds),
            _rate(lambda: booster.inplace_predict(batch), seconds) * BATCH_ROWS,
        ),
        Ceiling(
            "tabserve LoadedModel.predict_proba",
            _rate(lambda: loaded.predict_proba(rows[:1]), seconds),
            _rate(lambda: loaded.predict_proba(rows), seconds) * BATCH_ROWS,
        ),
    ]

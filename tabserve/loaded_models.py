"""Every model of the catalog loaded in one process, each call timed.

The runner service holds one of these; so does each API worker in inline mode
(`TABSERVE_INLINE_MODELS`, tabserve/inline.py). Importing this module imports the ML libraries
(~155 MB per process): only a process that holds models imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import bentoml
import numpy as np
from threadpoolctl import threadpool_limits

from tabserve import metrics
from tabserve.catalog import ModelSpec
from tabserve.inference import LoadedModel
from tabserve.schemas import Row


class LoadedModels:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        stored: Callable[[str], bentoml.Model],
        threads: int,
    ) -> None:
        """`stored(name)`: the model store's entry for a model (its service's BentoModel)."""
        metrics.record_models_loading(specs)
        self.loaded = {
            name: LoadedModel(spec, stored(name), threads) for name, spec in specs.items()
        }
        # Once the models are loaded, every library's thread pool exists: scikit-learn's OpenMP
        # (HistGradientBoosting) and numpy's BLAS start a thread per core, and on a pod's CPU
        # share the idle ones spin (one admission row cost 117 ms of CPU with 2 threads on 2
        # cores). XGBoost gets the same count as its nthread (LoadedModel).
        threadpool_limits(limits=threads)
        for model in self.loaded.values():
            metrics.record_model_loaded(model.info)

    def describe(self) -> list[dict[str, Any]]:
        """The loaded models: name, resolved tag, framework, metadata."""
        return [vars(model.info) for model in self.loaded.values()]

    def predict_proba(self, model_name: str, rows: list[Row]) -> np.ndarray:
        with metrics.inference_timer(model_name, len(rows)):
            return self.loaded[model_name].predict_proba(rows)

    def explain(self, model_name: str, rows: list[Row]) -> dict[str, Any]:
        """Probabilities and per-feature contributions (tabserve/explanations.py), as plain JSON:
        a few thousand numbers at most (explain_max_rows), cheap to send from the runner."""
        model = self.loaded[model_name]
        with metrics.explanation_timer(model_name):
            probabilities = model.predict_proba(rows)
            explanation = model.explain(rows)
        return {
            "probabilities": probabilities.tolist(),
            "contributions": explanation.contributions.tolist(),
            "outputs": list(explanation.outputs),
            "scale": explanation.scale,
            "tokens": explanation.tokens,
        }

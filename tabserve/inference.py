"""Load a model from the BentoML store and turn rows into class probabilities.

This is the only module that knows how each framework stores and predicts; the runner service
calls it and nothing else touches a model object.
"""

from __future__ import annotations

from collections.abc import Sequence

import bentoml
import numpy as np
import pandas as pd
import xgboost

from tabserve import integrity, model_input
from tabserve.catalog import ModelSpec
from tabserve.explanations import Explanation, explainer_for
from tabserve.schemas import ModelInfo, Row
from tabserve.training import XGBOOST_MODEL_FILE


class LoadedModel:
    def __init__(self, spec: ModelSpec, stored: bentoml.Model, threads: int) -> None:
        # Before any framework reads a file: a pickle runs code as it loads.
        integrity.verify(stored)
        self.spec = spec
        self.info = ModelInfo(
            name=spec.name,
            tag=str(stored.tag),
            framework=spec.framework,
            metadata=dict(stored.info.metadata),
        )
        if spec.framework == "xgboost":
            self._booster = xgboost.Booster(model_file=stored.path_of(XGBOOST_MODEL_FILE))
            # One OpenMP pool per process fighting another for the same cores costs far more
            # than it gives; the thread count follows the CPU share (Settings.model_threads).
            self._booster.set_param({"nthread": threads})
        else:
            self._pipeline = bentoml.sklearn.load_model(stored)
        # Built at load: a model that cannot be explained fails here, not on a request.
        self._explainer = explainer_for(
            spec, self._booster if spec.framework == "xgboost" else self._pipeline
        )

    def _model_input(self, rows: Sequence[Row] | np.ndarray) -> np.ndarray | pd.DataFrame:
        """Rows, or their input array (tabserve/model_input.py), as the model takes them: a
        float32 matrix (XGBoost) or a DataFrame (pipeline)."""
        features = rows if isinstance(rows, np.ndarray) else model_input.from_rows(self.spec, rows)
        if self.spec.framework == "xgboost":
            return features.astype(np.float32)
        # Column by column: numbers as float64 (None -> NaN, booleans -> 0/1), so the
        # pipeline's imputers and scalers see floats; the rest as Python objects.
        return pd.DataFrame(
            {
                feature.name: features[:, position].astype(
                    np.float64 if feature.is_numeric else object
                )
                for position, feature in enumerate(self.spec.features)
            }
        )

    def predict_proba(self, rows: Sequence[Row] | np.ndarray) -> np.ndarray:
        """(n, classes) probabilities, columns in `spec.class_names` order."""
        inputs = self._model_input(rows)
        if self.spec.framework == "xgboost":
            positive = self._booster.inplace_predict(inputs)
            return np.column_stack([1.0 - positive, positive])
        return self._pipeline.predict_proba(inputs)

    def explain(self, rows: Sequence[Row] | np.ndarray) -> Explanation:
        """Each feature's contribution to the margin of each explained class (explanations.py);
        the caller bounds the number of rows."""
        return self._explainer.explain(self._model_input(rows))

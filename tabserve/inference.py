"""Load a model from the BentoML store and turn rows into class probabilities.

This is the only module that knows how each framework stores and predicts; the runner service
calls it and nothing else touches a model object.
"""

from __future__ import annotations

import bentoml
import numpy as np
import pandas as pd
import xgboost

from tabserve import integrity
from tabserve.catalog import ModelSpec
from tabserve.explanations import Explanation
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
        self._float_columns = [f.name for f in spec.features if f.is_numeric]

    def predict_proba(self, rows: list[Row]) -> np.ndarray:
        """(n, classes) probabilities, columns in `spec.class_names` order."""
        if self.spec.framework == "xgboost":
            matrix = np.asarray(rows, dtype=np.float32)
            positive = self._booster.inplace_predict(matrix)
            return np.column_stack([1.0 - positive, positive])
        frame = pd.DataFrame(rows, columns=self.spec.feature_names)
        # None -> NaN and booleans -> 0/1, so the pipeline's imputers and scalers see floats.
        frame[self._float_columns] = frame[self._float_columns].astype("float64")
        return self._pipeline.predict_proba(frame)

    def explain(self, rows: list[Row]) -> Explanation:
        """Per-feature contributions to each row's margin (tabserve.explanations)."""
        if self.spec.framework != "xgboost":
            raise NotImplementedError(f"no explanations for {self.spec.framework} models yet")
        matrix = xgboost.DMatrix(
            np.asarray(rows, dtype=np.float32), feature_names=self.spec.feature_names
        )
        contributions = self._booster.predict(matrix, pred_contribs=True)
        return Explanation(contributions[:, None, :], self.spec.class_names[1:], "log-odds", None)

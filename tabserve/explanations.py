"""Per-feature contributions to a model's prediction.

A stand-in until the algorithms of branch `explain-core` land: XGBoost's exact tree SHAP only
(`pred_contribs`); the interface is the one the serving side is built against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Explanation:
    contributions: np.ndarray  # float32 (rows, outputs, features + 1): per output, one column per
    # spec feature in ModelSpec.feature_names order, the base value LAST;
    # contributions.sum(axis=2) == the model's margin for that output
    outputs: tuple[str, ...]  # the class each output explains: binary -> (class_names[1],),
    # multiclass -> spec.class_names
    scale: str  # "log-odds" (margin) | "probability" (a model with no margin)
    # text features: per row, top tokens + contribution
    tokens: list[list[tuple[str, float]]] | None

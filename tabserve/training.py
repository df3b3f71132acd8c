"""Fit, evaluate and save the models of the catalog into the BentoML model store."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import sklearn
import xgboost
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split

from tabserve import datasets, integrity
from tabserve.catalog import ModelSpec
from tabserve.drift.reference import REFERENCE_KEY, Reference, feature_binning, score_binning
from tabserve.estimators import SEED
from tabserve.features import Kind

HOLDOUT_FRACTION = 0.25
XGBOOST_MODEL_FILE = "model.ubj"


@dataclass(frozen=True)
class TrainedModel:
    spec: ModelSpec
    estimator: Any
    metrics: dict[str, float]
    training_ranges: dict[str, Any]
    dataset_sha256: str
    rows: int
    drift_reference: Reference


def _encode_labels(spec: ModelSpec, labels: pd.Series) -> np.ndarray:
    """Class names -> 0..k-1 in the spec's order (XGBoost needs integer labels)."""
    unknown = set(labels) - set(spec.class_names)
    if unknown:
        raise ValueError(f"{spec.name}: labels {sorted(unknown)} are not in the spec's classes")
    return labels.map({name: index for index, name in enumerate(spec.class_names)}).to_numpy()


def _training_ranges(spec: ModelSpec, features: pd.DataFrame) -> dict[str, Any]:
    ranges: dict[str, Any] = {}
    for feature in spec.features:
        column = features[feature.name]
        if feature.is_numeric:
            ranges[feature.name] = {
                "min": float(column.min()),
                "max": float(column.max()),
                "missing_fraction": round(float(column.isna().mean()), 4),
            }
        elif feature.kind is Kind.CATEGORY:
            ranges[feature.name] = {"categories_seen": sorted(column.dropna().unique().tolist())}
        else:
            lengths = column.str.len()
            ranges[feature.name] = {
                "min_chars": int(lengths.min()),
                "max_chars": int(lengths.max()),
            }
    return ranges


def _drift_reference(
    spec: ModelSpec, estimator: Any, x_train: pd.DataFrame, x_test: pd.DataFrame
) -> Reference:
    """What served traffic is compared with (tabserve/drift): the features as the model learned
    them (training rows), its score on rows it did not learn from (hold-out)."""
    features = {}
    for feature in spec.features:
        column = x_train[feature.name]
        values = column.astype(object).where(column.notna(), None).tolist()  # NaN -> None
        features[feature.name] = feature_binning(feature, values)
    return Reference(
        features=features,
        score=score_binning(spec, estimator.predict_proba(x_test)),
        rows=len(x_train),
        score_rows=len(x_test),
    )


def _check_against_spec(spec: ModelSpec, features: pd.DataFrame) -> None:
    """The data must fit the declared features, or the served schema would lie about the model."""
    if list(features.columns) != spec.feature_names:
        raise ValueError(f"{spec.name}: columns {list(features.columns)} != spec features")
    for feature in spec.features:
        column = features[feature.name]
        if feature.required and column.isna().any():
            raise ValueError(f"{spec.name}.{feature.name}: required but missing in the data")
        if feature.kind is Kind.CATEGORY:
            undeclared = set(column.dropna()) - set(feature.categories)
            if undeclared:
                raise ValueError(f"{spec.name}.{feature.name}: undeclared {sorted(undeclared)}")
        elif feature.minimum is not None:
            present = column.dropna()
            if ((present < feature.minimum) | (present > feature.maximum)).any():
                raise ValueError(f"{spec.name}.{feature.name}: values outside declared bounds")


def _evaluate(spec: ModelSpec, estimator: Any, features: pd.DataFrame, y: np.ndarray) -> dict:
    probabilities = estimator.predict_proba(features)
    predicted = probabilities.argmax(axis=1)
    metrics = {
        "accuracy": accuracy_score(y, predicted),
        "macro_f1": f1_score(y, predicted, average="macro"),
    }
    if len(spec.class_names) == 2:
        metrics["roc_auc"] = roc_auc_score(y, probabilities[:, 1])
    else:
        metrics["roc_auc_ovr"] = roc_auc_score(
            y, probabilities, multi_class="ovr", labels=range(len(spec.class_names))
        )
    return {name: round(float(value), 4) for name, value in metrics.items()}


def dataset_sha256(spec: ModelSpec, data_dir: Path) -> str:
    if spec.dataset_file is None:
        return datasets.iris_sha256()
    return datasets.sha256_of(data_dir / spec.dataset_file)


def train(spec: ModelSpec, data_dir: Path = datasets.DATA_DIR, fast: bool = False) -> TrainedModel:
    path = data_dir / spec.dataset_file if spec.dataset_file else None
    features, labels = spec.load_dataset(path)
    _check_against_spec(spec, features)
    y = _encode_labels(spec, labels)
    x_train, x_test, y_train, y_test = train_test_split(
        features, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=SEED
    )
    estimator = spec.build_estimator(fast)
    estimator.fit(x_train, y_train)
    return TrainedModel(
        spec=spec,
        estimator=estimator,
        metrics=_evaluate(spec, estimator, x_test, y_test),
        training_ranges=_training_ranges(spec, features),
        dataset_sha256=dataset_sha256(spec, data_dir),
        rows=len(features),
        drift_reference=_drift_reference(spec, estimator, x_train, x_test),
    )


def model_metadata(trained: TrainedModel) -> dict[str, Any]:
    spec = trained.spec
    metadata = {
        "framework": spec.framework,
        "title": spec.title,
        "use_case": spec.use_case,
        "metrics": trained.metrics,
        "holdout_fraction": HOLDOUT_FRACTION,
        "rows": trained.rows,
        "features": [feature.describe() for feature in spec.features],
        "training_ranges": trained.training_ranges,
        "class_names": list(spec.class_names),
        REFERENCE_KEY: trained.drift_reference.to_json(),
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "xgboost": xgboost.__version__,
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "bentoml": bentoml.__version__,
        },
    }
    if spec.positive_class:  # BentoML metadata cannot hold None
        metadata["positive_class"] = spec.positive_class
    return metadata


def save(trained: TrainedModel) -> bentoml.Model:
    """Save to the model store with the SHA-256 of each file in the metadata (checked at load,
    tabserve/integrity.py); returns the stored model."""
    spec = trained.spec
    labels = {"use_case": spec.name, "dataset_sha256": trained.dataset_sha256}
    metadata = model_metadata(trained)
    if spec.framework == "sklearn":
        saved = bentoml.sklearn.save_model(
            spec.name, trained.estimator, labels=labels, metadata=metadata
        )
    else:
        # XGBoost models are stored in XGBoost's own UBJSON format, readable by any later
        # XGBoost, instead of a pickle. (bentoml.xgboost.save_model would also need the `xgboost`
        # distribution's metadata, which the slimmer `xgboost-cpu` wheel does not provide.)
        with bentoml.models.create(spec.name, labels=labels, metadata=metadata) as saved:
            trained.estimator.get_booster().save_model(saved.path_of(XGBOOST_MODEL_FILE))
    # The digests of the files as they lie in the store. Should this process die before they
    # are written, the model has none and is refused at load, never served unverified.
    stored = bentoml.models.get(saved.tag)
    integrity.record(stored)
    return stored

"""Training: data cleaning, determinism, metadata, and the train -> store -> load round trip."""

from __future__ import annotations

import bentoml
import numpy as np
import pandas as pd
import pytest

from tabserve import datasets
from tabserve.catalog import MODELS
from tabserve.inference import LoadedModel
from tabserve.training import save, train
from tests.server import run_training


def _rows(spec_name: str, frame: pd.DataFrame) -> list[list]:
    """DataFrame rows -> API rows (None for NaN), as the data plane hands them to the runner."""
    spec = MODELS[spec_name]
    clean = frame[spec.feature_names].astype(object).where(frame.notna(), None)
    return clean.to_numpy().tolist()


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_through_the_store_gives_identical_predictions(name: str) -> None:
    spec = MODELS[name]
    trained = train(spec, fast=True)
    stored = save(trained)
    loaded = LoadedModel(spec, bentoml.models.get(stored.tag), threads=1)

    features, _ = spec.load_dataset(
        datasets.DATA_DIR / spec.dataset_file if spec.dataset_file else None
    )
    sample = features.sample(n=min(200, len(features)), random_state=0)
    served = loaded.predict_proba(_rows(name, sample))

    if spec.framework == "xgboost":
        expected = trained.estimator.predict_proba(sample.astype("float32"))
    else:
        expected = trained.estimator.predict_proba(sample)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    assert served.shape == (len(sample), len(spec.class_names))
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_training_is_deterministic(name: str) -> None:
    first, second = train(MODELS[name], fast=True), train(MODELS[name], fast=True)
    assert first.metrics == second.metrics
    assert first.training_ranges == second.training_ranges


def test_saved_model_carries_labels_and_metadata() -> None:
    spec = MODELS["admission"]
    stored = save(train(spec, fast=True))
    info = bentoml.models.get(stored.tag).info

    assert info.labels == {
        "use_case": "admission",
        "dataset_sha256": datasets.sha256_of(datasets.DATA_DIR / "ktas_triage.csv"),
    }
    meta = info.metadata
    assert [f["name"] for f in meta["features"]] == spec.feature_names
    assert meta["class_names"] == ["admitted", "discharged"]
    assert meta["positive_class"] == "admitted"
    assert set(meta["metrics"]) == {"accuracy", "macro_f1", "roc_auc"}
    assert 0.5 < meta["metrics"]["roc_auc"] <= 1.0
    assert {"scikit-learn", "xgboost", "bentoml", "python"} <= set(meta["versions"])
    # Ranges seen in training, including how often a vital was not measured.
    assert meta["training_ranges"]["o2_saturation"]["missing_fraction"] > 0.4
    assert meta["training_ranges"]["sex"] == {"categories_seen": ["female", "male"]}


def test_admission_cleaning_handles_the_messy_published_file() -> None:
    features, labels = datasets.load_admission(datasets.DATA_DIR / "ktas_triage.csv")
    # Only the settled disposition codes: 797 discharged, 373 ward + 8 ICU admitted.
    assert labels.value_counts().to_dict() == {"discharged": 797, "admitted": 381}
    # '??' and blanks became NaN (imputed in the pipeline), never zeros or strings.
    assert features["heart_rate"].isna().sum() > 0
    assert features["o2_saturation"].dtype == np.float64
    # No pain reported -> score 0, even though the file holds a spreadsheet error there.
    assert (features.loc[features["pain"] == 0, "pain_score"] == 0).all()
    assert features["pain_score"].dropna().between(0, 10).all()
    # Decimal commas are not in these columns, but '36,5'-style values would parse too.
    assert features["temperature_c"].dropna().between(35, 42).all()


def test_drug_labels_are_normalised() -> None:
    _, labels = datasets.load_drug(datasets.DATA_DIR / "drug200.csv")
    assert labels.value_counts().to_dict() == {
        "drugY": 91,
        "drugX": 54,
        "drugA": 23,
        "drugB": 16,
        "drugC": 16,
    }


def test_churn_columns_get_snake_case_names() -> None:
    features, labels = datasets.load_churn(datasets.DATA_DIR / "iranian_churn.csv")
    assert list(features.columns) == MODELS["churn"].feature_names
    assert labels.value_counts().to_dict() == {"retained": 2655, "churned": 495}


def test_train_cli_only_and_if_missing(trained_store) -> None:
    result = run_training("--fast", "--only", "iris")
    assert "iris:" in result.stdout and "accuracy=" in result.stdout
    assert "churn:" not in result.stdout
    # Everything is in the store already: --if-missing trains nothing.
    skipped = run_training("--fast", "--if-missing")
    assert "nothing to train" in skipped.stdout

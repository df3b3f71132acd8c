"""Explanations, in-process on the models train.py stored: contributions plus the base value are
the model's margin for every catalog model, our TreeSHAP is XGBoost's on the same trees, and
every transformed column is credited to a feature the caller sent."""

from __future__ import annotations

import json
import re
import time

import bentoml
import numpy as np
import pandas as pd
import pytest
import xgboost
from scipy.special import expit, softmax
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from tabserve import datasets
from tabserve.catalog import MODELS, ModelSpec
from tabserve.explanations import TOP_TOKENS, column_map, explainer_for
from tabserve.features import Feature, Kind
from tabserve.inference import LoadedModel
from tabserve.schemas import Row
from tabserve.training import XGBOOST_MODEL_FILE
from tabserve.treeshap import Tree, TreeShap

# Contributions are float32: summed, they hold a margin of up to ~20 to about 1e-6 relative.
MARGIN_TOLERANCE = 1e-4
SAMPLE_ROWS = 300  # dataset rows explained per model (every row of the smaller sets)
UNKNOWN = "not-a-category"


def dataset_rows(spec: ModelSpec) -> list[Row]:
    """Rows spread over the whole data set (missing vitals included), None for NaN."""
    features, _ = spec.load_dataset(
        datasets.DATA_DIR / spec.dataset_file if spec.dataset_file else None
    )
    sample = features.iloc[:: max(1, len(features) // SAMPLE_ROWS)]
    return [tuple(row) for row in sample.astype(object).where(sample.notna(), None).to_numpy()]


def odd_rows(spec: ModelSpec) -> list[Row]:
    """The example with every optional feature missing, and with each category unknown (the
    one-hot encoders ignore it)."""
    example = spec.example_instance()
    missing = {**example, **{f.name: None for f in spec.features if not f.required}}
    rows = [missing]
    for feature in spec.features:
        if feature.kind is Kind.CATEGORY:
            rows.append({**example, feature.name: UNKNOWN})
    return [tuple(row.get(name) for name in spec.feature_names) for row in rows]


def frame_of(spec: ModelSpec, rows: list[Row]) -> pd.DataFrame:
    numeric = {f.name: "float64" for f in spec.features if f.is_numeric}
    return pd.DataFrame(rows, columns=spec.feature_names).astype(numeric)


def reference_margin(spec: ModelSpec, stored: bentoml.Model, rows: list[Row]) -> np.ndarray:
    """(rows, outputs) margins from the stored model itself, not through the explainer."""
    if spec.framework == "xgboost":
        booster = xgboost.Booster(model_file=stored.path_of(XGBOOST_MODEL_FILE))
        margin = booster.inplace_predict(np.asarray(rows, np.float32), predict_type="margin")
        return margin[:, None]
    pipeline = bentoml.sklearn.load_model(stored)
    frame = frame_of(spec, rows)
    if isinstance(pipeline[-1], DecisionTreeClassifier):  # no margin: its probabilities
        probabilities = pipeline.predict_proba(frame)
        return probabilities[:, 1:] if len(spec.class_names) == 2 else probabilities
    margin = pipeline.decision_function(frame)
    return margin[:, None] if margin.ndim == 1 else margin


@pytest.fixture(scope="module")
def loaded(trained_store) -> dict[str, tuple[LoadedModel, bentoml.Model]]:
    stored = {name: bentoml.models.get(f"{name}:latest") for name in MODELS}
    return {name: (LoadedModel(MODELS[name], stored[name], 1), stored[name]) for name in MODELS}


@pytest.mark.parametrize("name", list(MODELS))
def test_contributions_sum_to_the_margin(loaded, name: str) -> None:
    spec = MODELS[name]
    model, stored = loaded[name]
    rows = dataset_rows(spec) + odd_rows(spec)
    explanation = model.explain(rows)

    classes = spec.class_names[1:] if len(spec.class_names) == 2 else spec.class_names
    assert explanation.outputs == classes
    assert explanation.contributions.dtype == np.float32
    assert explanation.contributions.shape == (len(rows), len(classes), len(spec.features) + 1)
    margin = explanation.contributions.astype(np.float64).sum(axis=2)
    np.testing.assert_allclose(margin, reference_margin(spec, stored, rows), atol=MARGIN_TOLERANCE)
    # And the margins are the served probabilities' (a tree's "margin" is the probability).
    probabilities = model.predict_proba(rows)
    if explanation.scale == "probability":
        assert name == "drug"
        served = margin
    elif len(classes) == 1:
        served = expit(margin[:, 0])
        probabilities = probabilities[:, 1]
    else:
        served = softmax(margin, axis=1)
    np.testing.assert_allclose(served, probabilities, atol=1e-5)


def test_linear_contributions_are_coefficient_times_standardised_value(loaded) -> None:
    """Beyond the sum: each iris feature gets exactly its own term, the intercept the base."""
    spec = MODELS["iris"]
    model, stored = loaded["iris"]
    rows = dataset_rows(spec)
    scaler, regression = bentoml.sklearn.load_model(stored)
    standardised = (np.asarray(rows, dtype=np.float64) - scaler.mean_) / scaler.scale_
    expected = standardised[:, None, :] * regression.coef_[None, :, :]
    contributions = model.explain(rows).contributions
    np.testing.assert_allclose(contributions[:, :, :-1], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(contributions[0, :, -1], regression.intercept_, rtol=1e-6)


def xgboost_trees(booster: xgboost.Booster) -> list[Tree]:
    """XGBoost's trees in our form, from its JSON model: it goes left when x < condition, so
    the threshold is the float32 just below the condition."""
    model = json.loads(booster.save_raw("json"))
    trees = []
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        left = np.asarray(tree["left_children"])
        condition = np.asarray(tree["split_conditions"], dtype=np.float32)
        trees.append(
            Tree(
                left=left,
                right=np.asarray(tree["right_children"]),
                feature=np.asarray(tree["split_indices"]),
                threshold=np.nextafter(condition, np.float32(-np.inf)).astype(np.float64),
                missing_left=np.asarray(tree["default_left"], dtype=bool),
                cover=np.asarray(tree["sum_hessian"], dtype=np.float64),
                # At a leaf, split_conditions holds the leaf's value.
                value=np.where(left < 0, condition, 0.0).astype(np.float64)[:, None],
            )
        )
    return trees


def assert_treeshap_is_xgboosts(booster: xgboost.Booster, x: np.ndarray) -> np.ndarray:
    """Our TreeSHAP on the booster's trees == its pred_contribs; returns ours."""
    expected = booster.predict(xgboost.DMatrix(x, feature_names=booster.feature_names),
                               pred_contribs=True)  # fmt: skip
    shap = TreeShap(xgboost_trees(booster), x.shape[1], np.float32)
    ours = shap.shap_values(x)[:, :, 0]
    np.testing.assert_allclose(ours, expected[:, :-1], atol=1e-5)
    # The bias differs by the base score only, the same for every row.
    offset = expected[:, -1] - shap.expected_value[0]
    np.testing.assert_allclose(offset, offset[0], atol=1e-5)
    return ours


def test_treeshap_equals_xgboost_pred_contribs_on_the_churn_trees(loaded) -> None:
    spec = MODELS["churn"]
    _, stored = loaded["churn"]
    booster = xgboost.Booster(model_file=stored.path_of(XGBOOST_MODEL_FILE))
    assert_treeshap_is_xgboosts(booster, np.asarray(dataset_rows(spec), dtype=np.float32))


def test_treeshap_with_missing_values_and_a_feature_never_split_on() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values go each node's default way
    x[:, 7] = 1.0  # constant: no tree can split on it
    signal = np.nansum(x[:, :4], axis=1) + np.nan_to_num(x[:, 4] * x[:, 5] * x[:, 6])
    # Deep enough for paths on 5 distinct features: an odd count, where one quadrature point
    # too few is no longer exact.
    classifier = xgboost.XGBClassifier(n_estimators=20, max_depth=5, n_jobs=1)
    booster = classifier.fit(x, signal > 0).get_booster()
    ours = assert_treeshap_is_xgboosts(booster, x)
    assert (ours[:, 7] == 0).all()
    assert (np.abs(ours[:, :7]) > 0).any(axis=0).all()


def synthetic_spec(classes: tuple[str, ...]) -> ModelSpec:
    features = tuple(
        Feature(f"x{index}", Kind.NUMBER, "noise", minimum=-9, maximum=9, required=False)
        for index in range(4)
    )
    return ModelSpec(
        name="synthetic", title="", use_case="", framework="sklearn", features=features,
        class_names=classes, dataset_file=None, dataset_loader="", estimator_builder="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("estimator", "classes"),
    [
        (HistGradientBoostingClassifier(max_iter=15, max_depth=3), ("a", "b", "c")),
        (DecisionTreeClassifier(max_depth=5, random_state=0), ("a", "b")),
    ],
    ids=["hist-gradient-boosting-multiclass", "decision-tree-binary"],
)
def test_scikit_learn_trees_with_missing_values(estimator, classes: tuple[str, ...]) -> None:
    """NaN reaching the trees themselves (the catalog imputes first): each node's own missing
    direction, multi-class HistGradientBoosting and a binary tree."""
    spec = synthetic_spec(classes)
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(500, 4)), columns=spec.feature_names)
    labels = (frame["x0"] > 0).astype(int) + (len(classes) == 3) * (frame["x1"] > 0.5)
    frame = frame.mask(rng.random(frame.shape) < 0.2)
    keep = ColumnTransformer([("keep", "passthrough", spec.feature_names)])
    pipeline = Pipeline([("keep", keep), ("classify", estimator)]).fit(frame, labels)

    explanation = explainer_for(spec, pipeline).explain(frame)
    total = explanation.contributions.astype(np.float64).sum(axis=2)
    if isinstance(estimator, DecisionTreeClassifier):
        assert explanation.scale == "probability"
        expected = pipeline.predict_proba(frame)[:, 1:]
    else:
        assert explanation.scale == "log-odds"
        expected = pipeline.decision_function(frame)
    np.testing.assert_allclose(total, expected, atol=MARGIN_TOLERANCE)


def test_spam_top_tokens_are_tokens_of_the_input(loaded) -> None:
    model, _ = loaded["spam"]
    rows = dataset_rows(MODELS["spam"])
    explanation = model.explain(rows)
    assert explanation.tokens is not None and len(explanation.tokens) == len(rows)
    complete = 0
    for (text,), tokens, contributions in zip(
        rows, explanation.tokens, explanation.contributions, strict=True
    ):
        words = set(re.findall(r"\b\w\w+\b", text.lower()))  # the vectoriser's default tokens
        assert len(tokens) <= TOP_TOKENS
        for token, _ in tokens:
            assert set(token.split()) <= words, (token, text)
        sizes = [abs(value) for _, value in tokens]
        assert sizes == sorted(sizes, reverse=True)
        if 0 < len(tokens) < TOP_TOKENS:  # every token shown: they make up the text's share
            complete += 1
            assert sum(value for _, value in tokens) == pytest.approx(contributions[0, 0], abs=1e-4)
    assert complete > len(rows) // 4


@pytest.mark.parametrize("name", ["drug", "iris", "spam", "admission"])
def test_every_transformed_column_is_credited_to_sent_features(loaded, name: str) -> None:
    spec = MODELS[name]
    _, stored = loaded[name]
    pipeline = bentoml.sklearn.load_model(stored)
    columns = column_map(spec, pipeline)
    width = pipeline[:-1].transform(frame_of(spec, odd_rows(spec))).shape[1]
    assert len(columns.names) == columns.to_features.shape[0] == width
    # All of each column's contribution goes to the sent features, none is lost or doubled.
    np.testing.assert_allclose(columns.to_features.sum(axis=1), 1.0)
    if name != "admission":
        return
    credited = {
        column: {
            spec.feature_names[feature]: weight
            for feature, weight in enumerate(columns.to_features[index])
            if weight
        }
        for index, column in enumerate(columns.names)
    }
    assert credited["mean_arterial_pressure"] == pytest.approx({"sbp": 1 / 3, "dbp": 2 / 3})
    assert credited["missingindicator_sbp"] == {"sbp": 1.0}
    assert credited["pain_score"] == {"pain_score": 1.0}  # not "pain"
    assert credited["arrival_mode_walk_in"] == {"arrival_mode": 1.0}
    assert credited["mental_state_unresponsive"] == {"mental_state": 1.0}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_rows_explanation_is_the_same_alone_or_in_a_batch(loaded, name: str) -> None:
    """A row's explanation does not depend on the rows explained with it. Timed on the way, not
    asserted (the machine is shared): the per-row cost at 1 and 100 rows, printed (-s)."""
    model, _ = loaded[name]
    rows = (dataset_rows(MODELS[name]) * 100)[:100]
    model.explain(rows[:1])  # warm
    started = time.perf_counter()
    alone = [model.explain([row]).contributions[0] for row in rows[:10]]
    one_ms = (time.perf_counter() - started) / 10 * 1000
    started = time.perf_counter()
    together = model.explain(rows).contributions
    hundred_ms = (time.perf_counter() - started) / 100 * 1000
    np.testing.assert_allclose(together[:10], np.stack(alone), atol=1e-6)
    print(
        f"\nexplain {name}: {one_ms:.2f} ms/row alone, {hundred_ms:.3f} ms/row at 100 rows", end=""
    )

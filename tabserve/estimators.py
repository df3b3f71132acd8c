"""The model pipelines, one builder per use case.

Each builder returns an unfitted estimator that takes a DataFrame whose columns are the model's
feature names (categorical columns as strings, numeric ones as floats with NaN for "not given")
and has `predict_proba`. Everything a caller's row needs before the model (encoding, imputation,
derived features) is inside the pipeline, so online, batch and training paths share it.
"""

from __future__ import annotations

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier

SEED = 42


def churn_classifier(fast: bool) -> XGBClassifier:
    return XGBClassifier(
        n_estimators=40 if fast else 300,
        max_depth=4,
        learning_rate=0.05,
        subsample=0.9,
        colsample_bytree=0.9,
        eval_metric="logloss",
        random_state=SEED,
        n_jobs=2,
    )


def drug_classifier(fast: bool) -> Pipeline:
    # The tutorial's model: one-hot encode the three categorical columns, then a decision tree.
    encode = ColumnTransformer(
        [("categories", OneHotEncoder(handle_unknown="ignore"), ["sex", "bp", "cholesterol"])],
        remainder="passthrough",
    )
    return make_pipeline(encode, DecisionTreeClassifier(max_depth=6, random_state=SEED))


def iris_classifier(fast: bool) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED))


def spam_classifier(fast: bool) -> Pipeline:
    tfidf = TfidfVectorizer(
        lowercase=True, ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=50_000
    )
    return Pipeline(
        [
            # A ColumnTransformer given a single column name hands the vectoriser a 1-D text array.
            ("tfidf", ColumnTransformer([("text", tfidf, "text")])),
            ("classify", LogisticRegression(C=20.0, max_iter=2000, random_state=SEED)),
        ]
    )


# MAP = (SBP + 2 x DBP) / 3, as the weights of its inputs.
MEAN_ARTERIAL_PRESSURE = {"sbp": 1.0 / 3.0, "dbp": 2.0 / 3.0}
# Columns a pipeline derives from the caller's features, each a weighted sum of them: an
# explanation splits a derived column's contribution between its inputs by these weights.
DERIVED_COLUMNS = {"mean_arterial_pressure": MEAN_ARTERIAL_PRESSURE}


def add_mean_arterial_pressure(frame: pd.DataFrame) -> pd.DataFrame:
    """MAP = (SBP + 2 x DBP) / 3; NaN when either pressure is missing (then imputed)."""
    frame = frame.copy()
    frame["mean_arterial_pressure"] = sum(
        weight * frame[name] for name, weight in MEAN_ARTERIAL_PRESSURE.items()
    )
    return frame


ADMISSION_NUMERIC = [
    "age",
    "injury",
    "pain",
    "pain_score",
    "triage_acuity",
    "sbp",
    "dbp",
    "mean_arterial_pressure",
    "heart_rate",
    "respiratory_rate",
    "temperature_c",
    "o2_saturation",
]
ADMISSION_CATEGORIES = ["sex", "arrival_mode", "mental_state"]


def admission_classifier(fast: bool) -> Pipeline:
    # Missing vitals get the training median plus a "was missing" indicator column: a vital that
    # was not taken is itself a signal (it is skipped for the least sick patients).
    prepare = ColumnTransformer(
        [
            ("vitals", SimpleImputer(strategy="median", add_indicator=True), ADMISSION_NUMERIC),
            ("categories", OneHotEncoder(handle_unknown="ignore"), ADMISSION_CATEGORIES),
        ]
    )
    return Pipeline(
        [
            ("derive", FunctionTransformer(add_mean_arterial_pressure)),
            ("prepare", prepare),
            (
                "classify",
                HistGradientBoostingClassifier(
                    max_iter=40 if fast else 200,
                    learning_rate=0.05,
                    max_depth=4,
                    l2_regularization=1.0,
                    early_stopping=False,
                    random_state=SEED,
                ),
            ),
        ]
    )

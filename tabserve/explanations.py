"""Why a model predicts what it does: each feature's additive contribution to its margin.

For every output (binary: the second class; multi-class: each class) a row's contributions, one
per spec feature plus the base value last, sum to the model's margin for that output:
- XGBoost: the booster's own exact TreeSHAP (`pred_contribs`), on the log-odds scale.
- scikit-learn trees: exact path-dependent TreeSHAP (tabserve/treeshap.py). HistGradientBoosting
  on its raw (log-odds) prediction; a single decision tree has no margin, so its probabilities
  are explained ("probability" scale).
- Logistic regression: exact linear contributions, see `_linear`.
The contributions of a pipeline's transformed columns are summed into the feature the caller
sent (`ColumnMap`); for a text feature the row's top tokens are reported too.

Imported only where the ML libraries already are (runner, batch, training).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost
from scipy import sparse
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from tabserve.catalog import ModelSpec
from tabserve.estimators import DERIVED_COLUMNS
from tabserve.features import Kind
from tabserve.treeshap import Tree, TreeShap

TOP_TOKENS = 10  # tokens reported per row for a text feature
_MISSING_INDICATOR = "missingindicator_"  # SimpleImputer(add_indicator=True)'s column prefix


@dataclass(frozen=True)
class Explanation:
    # float32 (rows, outputs, features + 1): per output, one column per spec feature in
    # ModelSpec.feature_names order, the base value LAST; summed over the last axis, the model's
    # margin for that output.
    contributions: np.ndarray
    outputs: tuple[str, ...]  # the class each output explains
    scale: str  # "log-odds" (margin) | "probability" (a model with no margin)
    # Text features: per row, the top tokens and their contributions (to the row's output with
    # the largest margin), largest |contribution| first; else None.
    tokens: list[list[tuple[str, float]]] | None


def explained_classes(spec: ModelSpec) -> tuple[str, ...]:
    """Binary: the second class (the one whose log-odds the model's margin is); else each."""
    return spec.class_names[1:] if len(spec.class_names) == 2 else spec.class_names


class Explainer(ABC):
    @abstractmethod
    def explain(self, inputs: Any) -> Explanation:
        """`inputs`: what the model's predict_proba takes (XGBoost: a float32 matrix, columns in
        spec order; a pipeline: a DataFrame of the spec's features)."""


class BoosterExplainer(Explainer):
    def __init__(self, spec: ModelSpec, booster: xgboost.Booster) -> None:
        self._outputs = explained_classes(spec)
        self._booster = booster
        self._names = spec.feature_names  # the booster checks them against its own

    def explain(self, inputs: np.ndarray) -> Explanation:
        # The same float32 matrix inplace_predict gets; NaN is "missing" for both. Copying the
        # (capped) rows takes one thread; the booster's own nthread, the CPU share, does the work.
        matrix = xgboost.DMatrix(inputs, feature_names=self._names, nthread=1)
        contributions = self._booster.predict(matrix, pred_contribs=True)
        if contributions.ndim == 2:  # one output: (rows, features + 1)
            contributions = contributions[:, None, :]
        return Explanation(contributions.astype(np.float32), self._outputs, "log-odds", None)


@dataclass(frozen=True)
class ColumnMap:
    """How a pipeline's transformed columns map back to the spec's features."""

    names: list[str]  # each column's name within its transformer (a TF-IDF column: its token)
    # (columns, features): a column's contribution is split among the spec's features by these
    # weights: 1 for its source feature, or a derived column's formula weights (DERIVED_COLUMNS).
    to_features: np.ndarray
    text: np.ndarray  # indices of the columns that come from a text feature


def _source(column: str, inputs: list[str]) -> str:
    """The input a transformer's output column comes from, by the names transformers give:
    the input's own name (scalers, imputers, passthrough), `missingindicator_<input>`
    (SimpleImputer's indicator), `<input>_<category>` (OneHotEncoder), anything from a
    transformer of one input (a vectoriser's tokens)."""
    if len(inputs) == 1:
        return inputs[0]
    if column in inputs:
        return column
    if column.startswith(_MISSING_INDICATOR) and column[len(_MISSING_INDICATOR) :] in inputs:
        return column[len(_MISSING_INDICATOR) :]
    # The longest match: "pain_score_3" is pain_score's, not pain's.
    prefixes = [name for name in inputs if column.startswith(f"{name}_")]
    if not prefixes:
        raise ValueError(f"transformed column {column!r} comes from none of {inputs}")
    return max(prefixes, key=len)


def _column_sources(transform: Any) -> list[tuple[str, str]]:
    """(column name, source input name) for each output column of the pipeline's last
    transformer, in output order, from its fitted transformers' get_feature_names_out()."""
    inputs = [str(name) for name in transform.feature_names_in_]
    if not isinstance(transform, ColumnTransformer):
        return [(name, _source(name, inputs)) for name in transform.get_feature_names_out()]
    sources = []
    for _, transformer, columns in transform.transformers_:
        if isinstance(transformer, str):  # "drop"; passthrough is fitted as a transformer
            continue
        selected = [columns] if isinstance(columns, str) else list(columns)
        selected = [inputs[c] if isinstance(c, (int, np.integer)) else str(c) for c in selected]
        sources += [(name, _source(name, selected)) for name in transformer.get_feature_names_out()]
    return sources


def column_map(spec: ModelSpec, pipeline: Pipeline) -> ColumnMap:
    sources = _column_sources(pipeline[-2])
    width = pipeline[-1].n_features_in_
    if len(sources) != width:
        raise ValueError(f"{spec.name}: {len(sources)} columns named, the model takes {width}")
    features = {feature.name: index for index, feature in enumerate(spec.features)}
    to_features = np.zeros((width, len(features)))
    for column, (_, source) in enumerate(sources):
        weights = {source: 1.0} if source in features else DERIVED_COLUMNS.get(source)
        if weights is None:
            raise ValueError(f"{spec.name}: column {source!r} is neither a feature nor derived")
        for name, weight in weights.items():
            to_features[column, features[name]] = weight
    texts = [features[f.name] for f in spec.features if f.kind is Kind.TEXT]
    return ColumnMap(
        names=[name for name, _ in sources],
        to_features=to_features,
        text=np.flatnonzero(to_features[:, texts].any(axis=1)),
    )


@dataclass(frozen=True)
class _Columns:
    """A final estimator's explanation on its input columns."""

    per_output: list[Any]  # per output: (rows, columns) contributions, dense or scipy sparse
    base: np.ndarray  # (outputs,)
    scale: str


@dataclass(frozen=True)
class _Linear:
    model: LogisticRegression

    def explain_columns(self, x: Any) -> _Columns:
        """coef * x per column and output, base value = the intercept: the margin of the
        all-zero transformed row. That baseline is the training mean after a StandardScaler and
        a text with no known token after TF-IDF. Exact: the columns sum to the decision
        function."""
        if sparse.issparse(x):
            per_output = [sparse.csr_matrix(x.multiply(coef)) for coef in self.model.coef_]
        else:
            per_output = [np.asarray(x) * coef for coef in self.model.coef_]
        return _Columns(per_output, self.model.intercept_.astype(np.float64), "log-odds")


@dataclass(frozen=True)
class _Trees:
    shap: TreeShap
    baseline: np.ndarray  # (outputs,): what the model adds to its trees' sum
    scale: str

    def explain_columns(self, x: Any) -> _Columns:
        values = self.shap.shap_values(x.toarray() if sparse.issparse(x) else x)
        return _Columns(
            [values[:, :, output] for output in range(values.shape[2])],
            self.shap.expected_value + self.baseline,
            self.scale,
        )


def _decision_tree(model: DecisionTreeClassifier, spec: ModelSpec) -> _Trees:
    """No margin: the leaves' class proportions, which predict_proba returns, are explained."""
    tree = model.tree_
    proportions = tree.value[:, 0, :] / tree.value[:, 0, :].sum(axis=1, keepdims=True)
    explained = [1] if len(spec.class_names) == 2 else slice(None)
    flat = Tree(
        left=tree.children_left,
        right=tree.children_right,
        feature=tree.feature,
        threshold=tree.threshold,
        missing_left=tree.missing_go_to_left.astype(bool),
        cover=tree.weighted_n_node_samples,
        value=proportions[:, explained],
    )
    # scikit-learn's trees compare float32 values with float64 thresholds.
    shap = TreeShap([flat], model.n_features_in_, np.float32)
    return _Trees(shap, np.zeros(flat.value.shape[1]), "probability")


def _hist_gradient_boosting(model: HistGradientBoostingClassifier) -> _Trees:
    """The raw prediction (log-odds; per class for multi-class): baseline plus the trees."""
    outputs = model.n_trees_per_iteration_
    trees = []
    for iteration in model._predictors:
        for output, predictor in enumerate(iteration):  # one tree per output and iteration
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise ValueError("TreeSHAP here supports numeric splits only")
            leaf = nodes["is_leaf"].astype(bool)
            value = np.zeros((len(nodes), outputs))
            value[:, output] = np.where(leaf, nodes["value"], 0.0)
            trees.append(
                Tree(
                    left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
                    right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
                    feature=nodes["feature_idx"],
                    threshold=nodes["num_threshold"],
                    missing_left=nodes["missing_go_to_left"].astype(bool),
                    cover=nodes["count"].astype(np.float64),
                    value=value,
                )
            )
    # HistGradientBoosting compares float64 values.
    shap = TreeShap(trees, model.n_features_in_, np.float64)
    return _Trees(shap, model._baseline_prediction[0], "log-odds")


def _final(spec: ModelSpec, model: Any) -> _Linear | _Trees:
    if isinstance(model, LogisticRegression):
        return _Linear(model)
    if isinstance(model, DecisionTreeClassifier):
        return _decision_tree(model, spec)
    if isinstance(model, HistGradientBoostingClassifier):
        return _hist_gradient_boosting(model)
    raise ValueError(f"{spec.name}: no explainer for {type(model).__name__}")


class PipelineExplainer(Explainer):
    def __init__(self, spec: ModelSpec, pipeline: Pipeline) -> None:
        self._outputs = explained_classes(spec)
        self._transform = pipeline[:-1]
        self._final = _final(spec, pipeline[-1])
        self._columns = column_map(spec, pipeline)

    def explain(self, inputs: pd.DataFrame) -> Explanation:
        columns = self._final.explain_columns(self._transform.transform(inputs))
        rows = inputs.shape[0]
        contributions = np.empty((rows, len(self._outputs), self._columns.to_features.shape[1] + 1))
        for output, per_column in enumerate(columns.per_output):
            contributions[:, output, :-1] = per_column @ self._columns.to_features
            contributions[:, output, -1] = columns.base[output]
        tokens = None
        if self._columns.text.size:
            top = contributions.sum(axis=2).argmax(axis=1)
            tokens = [self._tokens(columns.per_output[top[row]], row) for row in range(rows)]
        return Explanation(contributions.astype(np.float32), self._outputs, columns.scale, tokens)

    def _tokens(self, per_column: Any, row: int) -> list[tuple[str, float]]:
        values = per_column[row]
        values = np.asarray(values.todense()).ravel() if sparse.issparse(values) else values
        text = self._columns.text[values[self._columns.text] != 0]
        ranked = text[np.argsort(-np.abs(values[text]), kind="stable")][:TOP_TOKENS]
        return [(self._columns.names[column], float(values[column])) for column in ranked]


def explainer_for(spec: ModelSpec, model: xgboost.Booster | Pipeline) -> Explainer:
    """The explainer of a loaded model: the XGBoost booster or the scikit-learn pipeline."""
    if isinstance(model, xgboost.Booster):
        return BoosterExplainer(spec, model)
    return PipelineExplainer(spec, model)

"""Reference distributions and the Population Stability Index, numpy only.

A `Binning` says how one feature's values fall into bins: numbers by quantile edges of the
training data, categories by the declared categories plus an "other" bin, text by its token
count. Every binning ends with a "missing" bin (omitted optional values). Training measures the
fraction of its rows in each bin; serving counts its rows in the same bins with the same code
(`Binning.counts`), and `psi` compares the two.

The API workers import this module, so it must not import pandas or scikit-learn (service.py).
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from tabserve.catalog import ModelSpec
from tabserve.features import Feature, Kind

# The metadata key; a new layout gets a new key, so old models keep meaning what they meant.
REFERENCE_KEY = "drift_reference_v1"
# Deciles: the usual PSI binning, fine enough to see a shift, coarse enough that a few thousand
# rows fill every bin.
QUANTILE_BINS = 10
# An empty bin (on either side) counts as this fraction: ln(0) is undefined, and a bin empty on
# both sides then adds exactly 0.
EPSILON = 1e-4
# Edges and fractions are rounded for a compact JSON metadata; the fractions are measured with
# the rounded edges, so serving and training still bin alike.
_EDGE_DIGITS = 6
_FRACTION_DIGITS = 5
# The score's pseudo-feature name in reports ("score" cannot be a feature: see `score_binning`).
SCORE = "score"

BinKind = Literal["numeric", "category", "tokens"]


@dataclass(frozen=True)
class Binning:
    """Bins of one feature: numeric values split at `edges` (bin i holds edges[i-1] < x <=
    edges[i]), categories one bin each plus "other"; the last bin counts missing values."""

    kind: BinKind
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    fractions: tuple[float, ...] = ()  # the reference's share of rows per bin

    @property
    def bins(self) -> int:
        if self.kind == "category":
            return len(self.categories) + 2  # + other + missing
        return len(self.edges) + 2  # value bins + missing

    def labels(self) -> list[str]:
        """A name per bin, for the report's plots."""
        if self.kind == "category":
            return [*self.categories, "other", "missing"]
        bounds = [f"{edge:g}" for edge in self.edges]
        ranges = [f"<={bound}" for bound in bounds[:1]]
        ranges += [f"{low}-{high}" for low, high in itertools.pairwise(bounds)]
        return [*ranges, f">{bounds[-1]}" if bounds else "all", "missing"]

    @cached_property
    def edge_array(self) -> np.ndarray:
        return np.asarray(self.edges, dtype=np.float64)

    @cached_property
    def index(self) -> dict[str, int]:
        """Category -> its bin."""
        return {category: position for position, category in enumerate(self.categories)}

    def counts(self, values: Sequence[Any]) -> np.ndarray:
        """How many of `values` (one column of rows; None = missing) fall in each bin."""
        if self.kind == "category":
            return np.bincount(category_bins(self, values), minlength=self.bins)
        # None -> NaN, booleans -> 0/1
        numbers = tokens(values) if self.kind == "tokens" else np.array(values, np.float64)
        return np.bincount(numeric_bins(self, numbers), minlength=self.bins)

    def to_json(self) -> dict[str, Any]:
        described: dict[str, Any] = {"kind": self.kind, "fractions": list(self.fractions)}
        if self.kind == "category":
            described["categories"] = list(self.categories)
        else:
            described["edges"] = list(self.edges)
        return described

    @classmethod
    def from_json(cls, described: dict[str, Any]) -> Binning:
        """Checked, as the service would otherwise fail requests on a mangled reference."""
        binning = cls(
            kind=described["kind"],
            edges=tuple(float(edge) for edge in described.get("edges", ())),
            categories=tuple(described.get("categories", ())),
            fractions=tuple(float(fraction) for fraction in described["fractions"]),
        )
        if binning.kind not in typing.get_args(BinKind):
            raise ValueError(f"unknown kind of bins {binning.kind!r}")
        if len(binning.fractions) != binning.bins or list(binning.edges) != sorted(binning.edges):
            raise ValueError(f"{binning.bins} bins need as many fractions and sorted edges")
        return binning


def category_bins(binning: Binning, values: Sequence[Any]) -> np.ndarray:
    """The bin of each category value: its own, "other" for an unknown one, or "missing"."""
    index = binning.index
    other, missing = len(binning.categories), len(binning.categories) + 1
    return np.fromiter(
        (missing if value is None else index.get(value, other) for value in values),
        dtype=np.intp,
        count=len(values),
    )


def numeric_bins(binning: Binning, values: np.ndarray) -> np.ndarray:
    """The bin of each number: how many edges are below it (bin i holds edges[i-1] < x <=
    edges[i]), or "missing" for a NaN."""
    bins = np.searchsorted(binning.edge_array, values, side="left")
    bins[np.isnan(values)] = binning.bins - 1
    return bins


def psi(reference: Sequence[float] | np.ndarray, counts: np.ndarray) -> float:
    """Population Stability Index of observed bin counts against reference fractions:
    sum((actual - expected) * ln(actual / expected)), empty bins counted as EPSILON."""
    expected = np.maximum(np.asarray(reference, dtype=np.float64), EPSILON)
    actual = np.maximum(counts / max(int(counts.sum()), 1), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def tokens(values: Sequence[Any]) -> np.ndarray:
    """Texts -> their whitespace-separated token counts (NaN for a missing text)."""
    return np.array([np.nan if v is None else len(v.split()) for v in values], dtype=np.float64)


# --- building a reference (training) ------------------------------------------------------------
def _quantile_edges(values: np.ndarray) -> tuple[float, ...]:
    """Inner decile edges of the present values, deduplicated; an edge at the maximum would
    leave the top bin empty (a 0/1 flag would get bins ≤0, ≤1, >1), so it is dropped."""
    present = values[~np.isnan(values)]
    if not len(present):
        return ()
    quantiles = np.quantile(present, np.arange(1, QUANTILE_BINS) / QUANTILE_BINS)
    edges = np.unique([float(f"{edge:.{_EDGE_DIGITS}g}") for edge in quantiles])
    return tuple(float(edge) for edge in edges if edge < present.max())


def _measured(binning: Binning, values: Sequence[Any]) -> Binning:
    counts = binning.counts(values)
    fractions = tuple(round(float(c) / max(len(values), 1), _FRACTION_DIGITS) for c in counts)
    return Binning(binning.kind, binning.edges, binning.categories, fractions)


def feature_binning(feature: Feature, values: Sequence[Any]) -> Binning:
    """The reference of one feature from its training values (None = missing)."""
    if feature.kind is Kind.CATEGORY:
        return _measured(Binning("category", categories=feature.categories), values)
    if feature.kind is Kind.TEXT:
        return _measured(Binning("tokens", edges=_quantile_edges(tokens(values))), values)
    numbers = np.array(values, dtype=np.float64)
    return _measured(Binning("numeric", edges=_quantile_edges(numbers)), values)


def score_values(spec: ModelSpec, probabilities: np.ndarray, best: np.ndarray) -> Sequence[Any]:
    """The model's score per row: the positive class's probability for a binary model, the
    predicted class for a multi-class one."""
    if spec.positive_class is None:
        return [spec.class_names[index] for index in best.tolist()]
    return probabilities[:, spec.class_names.index(spec.positive_class)]


def score_binning(spec: ModelSpec, probabilities: np.ndarray) -> Binning:
    """The reference of the score, from the model's probabilities on held-out rows."""
    values = score_values(spec, probabilities, probabilities.argmax(axis=1))
    if spec.positive_class is None:
        return _measured(Binning("category", categories=spec.class_names), values)
    return _measured(Binning("numeric", edges=_quantile_edges(np.asarray(values))), values)


@dataclass(frozen=True)
class Reference:
    """A model's reference: one binning per feature (spec order) and one for the score."""

    features: dict[str, Binning]
    score: Binning
    rows: int  # training rows the feature fractions were measured on
    score_rows: int  # held-out rows the score fractions were measured on

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "score_rows": self.score_rows,
            "features": {name: binning.to_json() for name, binning in self.features.items()},
            "score": self.score.to_json(),
        }

    @classmethod
    def from_json(cls, described: dict[str, Any]) -> Reference:
        return cls(
            features={
                name: Binning.from_json(binning) for name, binning in described["features"].items()
            },
            score=Binning.from_json(described["score"]),
            rows=described["rows"],
            score_rows=described["score_rows"],
        )

    @classmethod
    def of_model(cls, metadata: dict[str, Any]) -> Reference | None:
        """The reference in a model's metadata; None for a model trained before drift existed."""
        described = metadata.get(REFERENCE_KEY)
        return None if described is None else cls.from_json(described)

"""Drift in the service: each API worker counts its served rows in the bins of the model's
reference (tabserve/drift/reference.py) over a sliding window, and exports the PSI gauges.

Bounded: a window is BUCKETS arrays of counts per bin (a few hundred integers per model
version) whatever the traffic, and a request adds one `np.bincount` per feature. The PSI is
computed at most once per PUBLISH_INTERVAL_S per model, not per request. Runs on the worker's
event loop (the data plane's `predict`), so no lock.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tabserve import metrics
from tabserve.catalog import ModelSpec
from tabserve.drift.reference import SCORE, Binning, Reference, psi, score_values
from tabserve.schemas import ModelInfo, Row
from tabserve.settings import Settings

logger = logging.getLogger(__name__)

# The window moves by a quarter: it holds the last 3/4 to all of drift_window_rows rows.
BUCKETS = 4
# Gauges are refreshed at most this often per model: Prometheus scrapes every 15-30 s, and a PSI
# over all features costs ~20x a request's counting.
PUBLISH_INTERVAL_S = 1.0


@dataclass
class _Bucket:
    counts: np.ndarray
    rows: int = 0


@dataclass
class DriftWindow:
    """One model version's last rows, counted per bin of each feature and of the score."""

    spec: ModelSpec
    reference: Reference
    window_rows: int
    # (position in a row, name, binning) of every feature the reference has
    _columns: list[tuple[int, str, Binning]] = field(init=False)
    _slices: list[slice] = field(init=False)
    _buckets: deque[_Bucket] = field(init=False, default_factory=deque)
    _total: np.ndarray = field(init=False)
    rows: int = field(init=False, default=0)
    publish_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._columns = [
            (position, feature.name, self.reference.features[feature.name])
            for position, feature in enumerate(self.spec.features)
            if feature.name in self.reference.features
        ]
        binnings = [binning for _, _, binning in self._columns] + [self.reference.score]
        ends = np.cumsum([binning.bins for binning in binnings]).tolist()
        self._slices = [slice(end - b.bins, end) for end, b in zip(ends, binnings, strict=True)]
        self._total = np.zeros(ends[-1], dtype=np.int64)

    def add(self, rows: Sequence[Row], scores: Sequence[Any]) -> None:
        columns = list(zip(*rows, strict=True))
        counts = np.concatenate(
            [binning.counts(columns[position]) for position, _, binning in self._columns]
            + [self.reference.score.counts(scores)]
        )
        if not self._buckets or self._buckets[-1].rows * BUCKETS >= self.window_rows:
            if len(self._buckets) == BUCKETS:
                oldest = self._buckets.popleft()
                self._total -= oldest.counts
                self.rows -= oldest.rows
            self._buckets.append(_Bucket(np.zeros_like(self._total)))
        bucket = self._buckets[-1]
        bucket.counts += counts
        bucket.rows += len(rows)
        self._total += counts
        self.rows += len(rows)

    def binnings(self) -> dict[str, Binning]:
        """The reference's binning per feature name, and the score's under reference.SCORE."""
        return {name: binning for _, name, binning in self._columns} | {SCORE: self.reference.score}

    def counts(self) -> dict[str, np.ndarray]:
        """The window's count per bin, by the names of `binnings`."""
        names = self.binnings()
        return {name: self._total[where] for name, where in zip(names, self._slices, strict=True)}

    def psi(self) -> dict[str, float]:
        """PSI per feature name, and of the score under reference.SCORE."""
        binnings = self.binnings()
        return {
            name: psi(binnings[name].fractions, counts) for name, counts in self.counts().items()
        }


class DriftMonitor:
    """The drift windows of one API worker, one per model (replaced when its version changes)."""

    def __init__(self, settings: Settings) -> None:
        self._window_rows = settings.drift_window_rows
        self._min_rows = settings.drift_min_rows
        # model name -> (tag, its window or None when the model has no usable reference)
        self._windows: dict[str, tuple[str, DriftWindow | None]] = {}

    def observe(
        self,
        spec: ModelSpec,
        info: ModelInfo,
        rows: Sequence[Row],
        probabilities: np.ndarray,
        best: np.ndarray,
    ) -> None:
        """Served rows and their predictions into the model's window; gauges refreshed when due."""
        if not self._window_rows:
            return
        window = self._window(spec, info)
        if window is None:
            return
        window.add(rows, score_values(spec, probabilities, best))
        now = time.monotonic()
        if window.rows >= self._min_rows and now >= window.publish_at:
            window.publish_at = now + PUBLISH_INTERVAL_S
            values = window.psi()
            metrics.record_drift(spec.name, info.tag, values.pop(SCORE), values)

    def _window(self, spec: ModelSpec, info: ModelInfo) -> DriftWindow | None:
        known = self._windows.get(spec.name)
        if known is not None and known[0] == info.tag:
            return known[1]
        window = None
        try:
            reference = Reference.of_model(info.metadata)
        except (KeyError, TypeError, ValueError) as error:
            logger.warning("%s: unusable drift reference, no drift gauges: %r", info.tag, error)
        else:
            if reference is None:
                logger.warning("%s has no drift reference (trained before it): retrain", info.tag)
            else:
                window = DriftWindow(spec, reference, self._window_rows)
        self._windows[spec.name] = (info.tag, window)
        return window

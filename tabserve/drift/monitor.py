"""Drift in the service: each API worker counts its served rows in the bins of the model's
reference (tabserve/drift/reference.py) over a sliding window, and exports the PSI gauges.

Bounded: a window is BUCKETS arrays of counts per bin (a few hundred integers per model
version) and a buffer of at most FLUSH_ROWS rows, whatever the traffic; rows are counted a few
hundred at a time (~2.5 µs per single-row request, 0.4-2 ms per 1000-row one, measured on a
shared 2-core machine). The PSI is computed at most once per PUBLISH_INTERVAL_S per model.
Runs on the worker's event loop (the data plane's `predict`), so no lock.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from tabserve import metrics
from tabserve.catalog import ModelSpec
from tabserve.drift.reference import (
    SCORE,
    Binning,
    Reference,
    category_bins,
    numeric_bins,
    psi,
    score_values,
    tokens,
)
from tabserve.schemas import ModelInfo
from tabserve.settings import Settings

logger = logging.getLogger(__name__)

# The window moves by a quarter: it holds the last 3/4 to all of drift_window_rows rows.
BUCKETS = 4
# Rows are counted this many at a time (DriftWindow).
FLUSH_ROWS = 256
# Gauges are refreshed at most this often per model: Prometheus scrapes every 15-30 s, and a PSI
# over all features costs ~20x a request's counting.
PUBLISH_INTERVAL_S = 1.0


class BinCounter:
    """Counts rows in the bins of every feature of a model and of its score at once: one flat
    vector holds every bin (a feature's bins, then the next one's, the score's last), so a
    request costs one `np.bincount` and one binning call per feature."""

    def __init__(self, spec: ModelSpec, reference: Reference) -> None:
        self._spec = spec
        present = [
            (pos, f.name) for pos, f in enumerate(spec.features) if f.name in reference.features
        ]
        self.binnings = {name: reference.features[name] for _, name in present}
        self.binnings[SCORE] = reference.score
        ends = np.cumsum([binning.bins for binning in self.binnings.values()]).tolist()
        self.slices = {
            name: slice(end - binning.bins, end)
            for (name, binning), end in zip(self.binnings.items(), ends, strict=True)
        }
        self.size = ends[-1]
        # (position in a row, binning, its first bin in the flat vector) per feature kind
        by_kind: dict[str, list[tuple[int, Binning, int]]] = {
            "numeric": [],
            "tokens": [],
            "category": [],
        }
        for pos, name in present:
            binning = self.binnings[name]
            by_kind[binning.kind].append((pos, binning, self.slices[name].start))
        self._numbers, self._texts, self._categories = by_kind.values()
        self._number_positions = [pos for pos, _, _ in self._numbers]

    def counts(self, rows: np.ndarray, probabilities: np.ndarray, best: np.ndarray) -> np.ndarray:
        """`rows`: the model's input array (tabserve/model_input.py); `best`: each row's
        predicted class index."""
        numbers = rows[:, self._number_positions].astype(np.float64)  # None -> NaN, bools -> 0/1
        indices = [
            start + numeric_bins(binning, numbers[:, column])
            for column, (_, binning, start) in enumerate(self._numbers)
        ]
        indices += [
            start + numeric_bins(binning, tokens(rows[:, pos].tolist()))
            for pos, binning, start in self._texts
        ]
        indices += [
            start + category_bins(binning, rows[:, pos].tolist())
            for pos, binning, start in self._categories
        ]
        score, start = self.binnings[SCORE], self.slices[SCORE].start
        if score.kind == "numeric":
            indices.append(
                start + numeric_bins(score, score_values(self._spec, probabilities, best))
            )
        else:
            indices.append(start + best)
        return np.bincount(np.concatenate(indices), minlength=self.size)


@dataclass
class _Bucket:
    counts: np.ndarray
    rows: int = 0


class DriftWindow:
    """One model version's last rows, counted per bin of each feature and of the score.

    Rows wait in a small buffer and are counted together: counting costs a few numpy calls per
    feature whatever the rows, ~50 µs for a single row of a wide model, ~1-2 µs per row when
    a few hundred are counted at once. The buffer holds at most a quarter of the window and
    FLUSH_ROWS rows (and the one request that fills it).
    """

    def __init__(self, spec: ModelSpec, reference: Reference, window_rows: int) -> None:
        self.window_rows = window_rows
        self._counter = BinCounter(spec, reference)
        self._buckets: deque[_Bucket] = deque()
        self._total = np.zeros(self._counter.size, dtype=np.int64)
        self._counted = 0
        self._flush_rows = max(1, min(FLUSH_ROWS, window_rows // BUCKETS))
        self._pending: list[np.ndarray] = []  # input arrays
        self._pending_rows = 0
        self._pending_probabilities: list[np.ndarray] = []
        self._pending_best: list[np.ndarray] = []
        self.publish_at = 0.0

    @property
    def rows(self) -> int:
        return self._counted + self._pending_rows

    def add(self, rows: np.ndarray, probabilities: np.ndarray, best: np.ndarray) -> None:
        """`rows`: the model's input array (tabserve/model_input.py)."""
        self._pending.append(rows)
        self._pending_rows += len(rows)
        self._pending_probabilities.append(probabilities)
        self._pending_best.append(best)
        if self._pending_rows >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        """Counts the buffered rows into the newest bucket (a new one once it holds a quarter
        of the window, the oldest then dropped)."""
        if not self._pending:
            return
        counts = self._counter.counts(
            np.concatenate(self._pending),
            np.concatenate(self._pending_probabilities),
            np.concatenate(self._pending_best),
        )
        if not self._buckets or self._buckets[-1].rows * BUCKETS >= self.window_rows:
            if len(self._buckets) == BUCKETS:
                oldest = self._buckets.popleft()
                self._total -= oldest.counts
                self._counted -= oldest.rows
            self._buckets.append(_Bucket(np.zeros_like(self._total)))
        bucket = self._buckets[-1]
        bucket.counts += counts
        bucket.rows += self._pending_rows
        self._total += counts
        self._counted += self._pending_rows
        self._pending, self._pending_probabilities, self._pending_best = [], [], []
        self._pending_rows = 0

    def binnings(self) -> dict[str, Binning]:
        """The reference's binning per feature name, and the score's under reference.SCORE."""
        return self._counter.binnings

    def counts(self) -> dict[str, np.ndarray]:
        """The window's count per bin, by the names of `binnings`."""
        self.flush()
        return {name: self._total[where] for name, where in self._counter.slices.items()}

    def psi(self) -> dict[str, float]:
        """PSI per feature name, and of the score under reference.SCORE."""
        counts = self.counts()
        return {name: psi(b.fractions, counts[name]) for name, b in self.binnings().items()}


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
        rows: np.ndarray,
        probabilities: np.ndarray,
        best: np.ndarray,
    ) -> None:
        """Served rows and their predictions into the model's window; gauges refreshed when due."""
        if not self._window_rows:
            return
        window = self._window(spec, info)
        if window is None:
            return
        window.add(rows, probabilities, best)
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

"""Exact path-dependent TreeSHAP for tree ensembles, in numpy, vectorised over rows and leaves.

Why our own and not the `shap` package: `shap` pulls numba and llvmlite (~60 MB), imports in
seconds and compiles on first use in every runner process. The catalog's trees are shallow
(depth <= 6), for which a few large numpy operations per call are fast enough.

The method gives the values of TreeSHAP's Algorithm 2 (Lundberg et al., 2020). For one leaf with
value v, the path-dependent expectation E[f(x) | x_S] holds v times, for each distinct feature j
split on along the leaf's path, o_j if j is in S (1 when x takes every branch on j towards the
leaf, else 0) or z_j if not (the share of the training cover that takes those branches). The
Shapley value of j in that leaf's game is

    v (o_j - z_j) sum_{S in F\\{j}} |S|! (d-|S|-1)! / d!  prod_{k in S} o_k  prod_{k not in S} z_k
  = v (o_j - z_j) integral_0^1 prod_{k != j} (z_k (1 - t) + o_k t) dt        (Beta integrals)

The integrand is a polynomial of degree < d, which Gauss-Legendre quadrature with ceil(d / 2)
points integrates exactly (the idea of Linear TreeSHAP, Yu et al., 2022). Summed over every
leaf of every tree this is TreeSHAP; tests/test_explanations.py checks it against XGBoost's
`pred_contribs` on the same trees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

# Rows are explained in blocks of at most this many (row, leaf, feature) cells (8 bytes each, a
# few arrays of them alive at once): memory stays bounded whatever the number of rows.
_BLOCK_CELLS = 1 << 19


@dataclass(frozen=True)
class Tree:
    """One fitted tree as flat node arrays (node 0 is the root). A row goes left at a node when
    x[feature] <= threshold, or, x[feature] being NaN, when missing_left."""

    left: np.ndarray  # (nodes,) int: the left child, -1 at a leaf
    right: np.ndarray  # (nodes,) int: the right child
    feature: np.ndarray  # (nodes,) int: the column split on (ignored at leaves)
    threshold: np.ndarray  # (nodes,) float64
    missing_left: np.ndarray  # (nodes,) bool
    cover: np.ndarray  # (nodes,) float64: the training weight that reached the node
    value: np.ndarray  # (nodes, outputs) float64: a leaf's value for each output


def _paths(tree: Tree) -> list[tuple[int, list[tuple[int, bool]]]]:
    """Every leaf with its path from the root: (node, went left) per split."""
    found, stack = [], [(0, [])]
    while stack:
        node, steps = stack.pop()
        if tree.left[node] < 0:
            found.append((node, steps))
            continue
        stack.append((int(tree.left[node]), [*steps, (node, True)]))
        stack.append((int(tree.right[node]), [*steps, (node, False)]))
    return found


class TreeShap:
    """The SHAP values of the sum of `trees` (each adding its leaf values) for rows of `columns`
    values; a row's values are first cast to `dtype`, as the model's own traversal does."""

    def __init__(self, trees: list[Tree], columns: int, dtype: type[np.floating]) -> None:
        self.dtype = dtype
        # Every tree's nodes in one numbering, so one comparison decides every split of a row.
        offsets = np.cumsum([0] + [len(tree.left) for tree in trees])
        self._feature = np.concatenate([np.maximum(tree.feature, 0) for tree in trees])
        self._threshold = np.concatenate([tree.threshold for tree in trees])
        self._missing_left = np.concatenate([tree.missing_left for tree in trees])
        leaves = [(tree, offset, leaf, steps)
                  for tree, offset in zip(trees, offsets, strict=False)
                  for leaf, steps in _paths(tree)]  # fmt: skip
        depth = max(1, max(len(steps) for *_, steps in leaves))
        # Per leaf: its splits (steps) and the distinct features among them (slots); a feature
        # split on twice takes both branches' cover shares and must satisfy both. Unused steps and
        # slots are padding that changes nothing: a slot with z = o = 1 is a null player.
        self._step_node = np.zeros((len(leaves), depth), dtype=np.int64)
        self._step_left = np.zeros((len(leaves), depth), dtype=bool)
        self._step_slot = np.zeros((len(leaves), depth), dtype=np.int64)
        self._step_used = np.zeros((len(leaves), depth), dtype=bool)
        slots: list[list[int]] = []
        zero: list[list[float]] = []
        for index, (tree, offset, _, steps) in enumerate(leaves):
            features: list[int] = []
            shares: list[float] = []
            for position, (node, went_left) in enumerate(steps):
                feature = int(tree.feature[node])
                if feature not in features:
                    features.append(feature)
                    shares.append(1.0)
                slot = features.index(feature)
                child = tree.left[node] if went_left else tree.right[node]
                shares[slot] *= tree.cover[child] / tree.cover[node]
                self._step_node[index, position] = offset + node
                self._step_left[index, position] = went_left
                self._step_slot[index, position] = slot
                self._step_used[index, position] = True
            slots.append(features)
            zero.append(shares)
        width = max(1, max(len(features) for features in slots))
        self._zero = np.ones((len(leaves), width))
        feature_of_slot = np.full((len(leaves), width), -1)
        for index, (features, shares) in enumerate(zip(slots, zero, strict=True)):
            self._zero[index, : len(shares)] = shares
            feature_of_slot[index, : len(features)] = features
        self._leaf_value = np.stack([tree.value[leaf] for tree, _, leaf, _ in leaves])
        # Which column each (leaf, slot) adds to: summing a row's slot values into its columns is
        # then one sparse product.
        used = feature_of_slot.ravel() >= 0
        self._slot_to_column = sparse.csr_matrix(
            (np.ones(used.sum()), (np.flatnonzero(used), feature_of_slot.ravel()[used])),
            shape=(feature_of_slot.size, columns),
        )
        # The value with no feature known: each leaf weighted by its share of the cover.
        self.expected_value = (self._zero.prod(axis=1)[:, None] * self._leaf_value).sum(axis=0)
        points, weights = np.polynomial.legendre.leggauss((width + 1) // 2)
        self._points, self._weights = (points + 1) / 2, weights / 2  # from [-1, 1] to [0, 1]

    def shap_values(self, x: np.ndarray) -> np.ndarray:
        """(rows, columns, outputs) contributions; each row's sum over columns plus
        `expected_value` is the ensemble's output for the row."""
        x = np.asarray(x, dtype=self.dtype)
        block = max(1, _BLOCK_CELLS // self._zero.size)
        return np.concatenate(
            [self._block(x[start : start + block]) for start in range(0, len(x), block)]
        )

    def _block(self, x: np.ndarray) -> np.ndarray:
        values = x[:, self._feature]
        goes_left = np.where(np.isnan(values), self._missing_left, values <= self._threshold)
        # one[r, leaf, slot]: does row r take every branch on the slot's feature towards the leaf?
        one = np.ones((len(x), *self._zero.shape), dtype=bool)
        leaves = np.arange(len(self._zero))
        for step in range(self._step_node.shape[1]):
            agrees = goes_left[:, self._step_node[:, step]] == self._step_left[:, step]
            one[:, leaves, self._step_slot[:, step]] &= agrees | ~self._step_used[:, step]
        one = one.astype(np.float64)
        integral = np.zeros_like(one)
        for point, weight in zip(self._points, self._weights, strict=True):
            factor = self._zero * (1.0 - point) + one * point
            # The product over every other slot: exclusive prefix times exclusive suffix products.
            before = np.ones_like(factor)
            before[..., 1:] = np.cumprod(factor[..., :-1], axis=-1)
            after = np.ones_like(factor)
            after[..., :-1] = np.cumprod(factor[..., :0:-1], axis=-1)[..., ::-1]
            integral += weight * before * after
        per_slot = (one - self._zero) * integral  # (rows, leaves, slots), for a leaf value of 1
        outputs = self._leaf_value.shape[1]
        contributions = np.empty((len(x), self._slot_to_column.shape[1], outputs))
        for output in range(outputs):
            weighted = (per_slot * self._leaf_value[None, :, output, None]).reshape(len(x), -1)
            contributions[:, :, output] = (self._slot_to_column.T @ weighted.T).T
        return contributions

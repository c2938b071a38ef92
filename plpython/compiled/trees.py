"""Tree ensembles evaluated, with three traversal kernels: many rows walk
level by level over all trees at once (numpy fancy indexing, in threads for
large batches); one row runs generated Python for small ensembles
(:mod:`.rowcode`), else a Python loop over the nodes unless numpy's
per-level cost is clearly lower (wide, shallow ensembles). Leaves become
P(class 1) by :data:`.ir.COMBINE_RULES`, summed tree by tree in the
estimator's order as scikit-learn does.

Trees compare the float32-rounded feature against the float64 threshold (as
scikit-learn's Cython does), so the results agree with scikit-learn to the
last bit or close to it.
"""

from __future__ import annotations

import math
from array import array

from . import float32, ir
from .lazy import Numpy
from .linear import expit
from .rowcode import RowCode
from .threads import THREADED_MIN_ROWS, in_threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Sequence

    import numpy as np

if not TYPE_CHECKING:
    np = Numpy(globals())

# Rows processed per vectorised tree-traversal chunk: (rows x trees) index
# matrices of ~131k entries (1 MiB) stay in cache between the gathers of one
# level; 1M-entry chunks walked 1.2-1.6x slower (GBM, RF of the demo).
_TREE_CHUNK_CELLS = 1 << 17


class Trees:
    """A tree ensemble (:class:`.ir.TreeEnsemble`) scoring rows of model-input floats."""

    # One numpy level step costs about as much as this many Python node
    # steps (demo forest, one row: 8 levels 115 us, 750 node steps 127 us).
    # A tie goes to Python, which needs no numpy in the backend.
    _LEVEL_COST = 100

    def __init__(self, ensemble: ir.TreeEnsemble, output_names: Sequence[str]):
        """``ensemble`` as :meth:`.ir.Model.read` made it: checked, its node
        arrays compact array.arrays that the one-row walk reads (the batch
        walk's numpy arrays are made from them on first use)."""
        self.estimator = ensemble.estimator
        self.cast_float32 = ensemble.cast_float32
        self.route_missing = ensemble.route_missing
        self.allow_inf = ensemble.allow_inf
        self.max_depth = ensemble.max_depth
        self.start = ensemble.start
        self.leaf_scale = ensemble.leaf_scale
        self.averages = ensemble.averages
        self.float32 = ensemble.float32  # sums and logistic in float32 (.float32)
        self.output_names = list(output_names)
        self.node_feature = ensemble.feature
        self.node_threshold = ensemble.threshold
        self.node_left = ensemble.left
        self.node_right = ensemble.right
        self.node_missing_left = ensemble.missing_left
        self.node_value = ensemble.value
        self.node_roots = ensemble.roots
        self.n_trees = ensemble.n_trees
        # Categorical splits (LightGBM's; ir.TreeEnsemble.goes_left_category), if any.
        self.categorical = ensemble.categorical
        self.node_category_set = ensemble.category_set
        self.goes_left_category = ensemble.goes_left_category
        # Nodes that send the zero band where missing values go (ir.TreeEnsemble.zero_missing), if any.
        self.zero_band = ensemble.zero_band
        self.node_zero_missing = ensemble.zero_missing
        # The one-row walk's view of both, built once per model rather than per row: a model
        # with only one of them reads "no set" (-1) or "not the zero band" (0) at every node.
        if self.categorical or self.zero_band:
            n_nodes = len(ensemble.feature)
            self.row_category_set = self.node_category_set if self.categorical else [-1] * n_nodes
            self.row_zero_missing = self.node_zero_missing if self.zero_band else [0] * n_nodes
        self._ensemble = ensemble
        self.python_one = ensemble.walk_steps <= self._LEVEL_COST * self.max_depth
        self.row_code = RowCode(ensemble) if RowCode.fits(ensemble) else None
        self.children: np.ndarray | None = None  # the batch walk's arrays: _numpy_ready()

    def _numpy_ready(self) -> None:
        """The batch walk's numpy arrays, made on its first use in this backend.

        The walk numbers node k as 2k (and 2k + 1): a step is then
        ``children[node + went_right]``, one gather, and the per-node arrays
        hold each value twice. Features cast to float32 meet float32
        thresholds, each rounded down: for a float32 x, x > t exactly when
        x > (the largest float32 <= t), and the gathers move half the bytes.
        Both together walked the demo forest ~25% faster.
        """
        if self.children is not None:
            return
        feature = np.asarray(self.node_feature, dtype=np.intp)
        is_leaf = feature < 0
        nodes = np.arange(feature.shape[0])
        # Leaves loop onto themselves, so every row can take max_depth steps
        # without asking whether it already reached a leaf.
        left = np.where(is_leaf, nodes, np.asarray(self.node_left, dtype=np.intp))
        right = np.where(is_leaf, nodes, np.asarray(self.node_right, dtype=np.intp))
        self.roots2 = 2 * np.asarray(self.node_roots, dtype=np.intp)
        self.feature2 = np.repeat(np.where(is_leaf, 0, feature), 2)
        self.value2 = np.repeat(np.asarray(self.node_value, dtype=np.float64), 2)
        self.missing_right2 = np.repeat(~np.asarray(self.node_missing_left, dtype=bool), 2)
        self.threshold2 = np.repeat(np.asarray(self.node_threshold, dtype=np.float64), 2)
        with np.errstate(over="ignore"):  # beyond float32: inf, stepped down to its largest value
            threshold32 = self.threshold2.astype(np.float32)
        above = threshold32.astype(np.float64) > self.threshold2
        threshold32[above] = np.nextafter(threshold32[above], np.float32(-np.inf))
        self.threshold2_32 = threshold32
        if self.zero_band:
            self.zero2 = np.repeat(np.asarray(self._ensemble.zero_missing, dtype=bool), 2)
        if self.categorical:
            ensemble = self._ensemble
            category_set = np.asarray(ensemble.category_set, dtype=np.intp)
            bounds = np.asarray(ensemble.category_bounds, dtype=np.intp)
            is_category = category_set >= 0
            start = np.where(is_category, bounds[np.maximum(category_set, 0)], 0)
            size = np.where(is_category, bounds[np.maximum(category_set, 0) + 1] - start, 0)
            self.category2 = np.repeat(is_category, 2)
            self.category_start2 = np.repeat(start, 2)
            self.category_size2 = np.repeat(size, 2).astype(np.float64)
            # One byte more, so that a row that matches no set indexes something.
            self.category_left = np.append(np.asarray(ensemble.category_left, dtype=bool), False)
        self.children = 2 * np.stack([left, right], axis=1).ravel()  # last: the others are ready

    def _check_one(self, x: list[float]) -> None:
        """:meth:`_check` of one row (after the float32 cast), without numpy."""
        if self.route_missing and self.allow_inf:
            return
        for column, v in enumerate(x):
            if v - v == 0.0:
                continue
            missing = v != v
            if missing and self.route_missing or not missing and self.allow_inf:
                continue
            raise self._refused(column, missing)

    def _check(self, X: np.ndarray) -> None:
        """Reject NaN / infinity as scikit-learn's check_array does for this estimator."""
        if self.route_missing and self.allow_inf:
            return
        finite = np.isfinite(X)
        if finite.all():
            return
        if self.route_missing:
            bad = ~(finite | np.isnan(X))
        elif self.allow_inf:
            bad = np.isnan(X)
        else:
            bad = ~finite
        if not bad.any():
            return
        row, col = np.argwhere(bad)[0]
        raise self._refused(int(col), bool(np.isnan(X[row, col])))

    def _refused(self, column: int, missing: bool) -> ValueError:
        if missing:
            return ValueError(
                f"feature {self.output_names[column]!r}: value is missing (None/NaN) and {self.estimator} "
                "does not accept missing values here (impute it in the pipeline)"
            )
        return ValueError(
            f"feature {self.output_names[column]!r}: value is infinite or too large for float32, "
            f"which {self.estimator} rejects"
        )

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        if self.cast_float32:
            # scikit-learn trees see float32 features (compared with float64 thresholds).
            with np.errstate(over="ignore"):
                X = X.astype(np.float32)
        self._check(X)
        return X

    def _walk(self, x: np.ndarray) -> np.ndarray:
        """Leaf values reached from the roots (one row: shape (trees,); rows: (rows, trees))."""
        has_nan = self.route_missing and bool(np.isnan(x).any())
        feature, children = self.feature2, self.children
        threshold = self.threshold2_32 if x.dtype == np.float32 else self.threshold2
        flat = x.ravel()
        # Position of each entry's row in the flattened matrix.
        base = 0 if x.ndim == 1 else (np.arange(x.shape[0]) * x.shape[1])[:, None]
        # A copy, always: ascontiguousarray keeps a one-row broadcast (its stride-0 axis has
        # length 1, so it counts as contiguous) as the read-only view, which node += refuses.
        node = np.array(np.broadcast_to(self.roots2, x.shape[:-1] + self.roots2.shape))
        # One buffer per intermediate, reused level after level; indices are
        # in range by construction (ir.TreeEnsemble.read), so take() need not check.
        position, child = np.empty_like(node), np.empty_like(node)
        xv, t = np.empty(node.shape, dtype=x.dtype), np.empty(node.shape, dtype=threshold.dtype)
        went_right = np.empty(node.shape, dtype=bool)
        for _ in range(self.max_depth):
            np.take(feature, node, out=position, mode="clip")
            position += base
            np.take(flat, position, out=xv, mode="clip")
            np.take(threshold, node, out=t, mode="clip")
            # NaN compares False: it goes left unless routed below.
            np.greater(xv, t, out=went_right)
            if has_nan:
                nan = np.isnan(xv)
                if nan.any():
                    went_right[nan] = self.missing_right2[node[nan]]
            if self.zero_band:
                band = self.zero2[node] & (np.abs(xv) <= ir.ZERO_BAND)
                if band.any():
                    went_right[band] = self.missing_right2[node[band]]
            if self.categorical:
                self._categorical_step(node, xv, went_right)
            node += went_right
            np.take(children, node, out=child, mode="clip")
            node, child = child, node
        return self.value2[node]

    def _categorical_step(self, node: np.ndarray, xv: np.ndarray, went_right: np.ndarray) -> None:
        """Where ``node`` is a categorical split, ``went_right`` as
        ir.TreeEnsemble.goes_left_category says: left only for a value whose
        truncation is a category of the node's set (NaN compares False)."""
        at = self.category2[node]
        if not at.any():
            return
        nodes, v = node[at], xv[at]
        ok = (v > -1.0) & (v < self.category_size2[nodes])
        code = np.where(ok, v, 0.0).astype(np.intp)  # truncates toward zero, as C's cast
        where = np.where(ok, self.category_start2[nodes] + code, self.category_left.shape[0] - 1)
        went_right[at] = ~self.category_left[where]

    def _combine(self, leaves: np.ndarray) -> np.ndarray:
        """P(class 1) from leaf values (rows, trees), summing tree by tree in order.

        A pairwise np.sum would round differently from scikit-learn's loop.
        """
        if self.float32:
            return float32.logistic_batch(float32.sum_batch(self.start, leaves))
        if self.leaf_scale is not None:
            leaves = leaves * self.leaf_scale
        raw = np.full(leaves.shape[0], self.start)
        for tree_values in np.ascontiguousarray(leaves.T):
            raw += tree_values
        if self.averages:
            return raw / self.n_trees
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-raw))

    def predict_batch(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        self._numpy_ready()
        X = self._prepare(X)
        n = X.shape[0]
        out = np.empty(n, dtype=np.float64)
        chunk = max(1, _TREE_CHUNK_CELLS // self.n_trees)

        def walk(starts: Sequence[int]) -> None:
            for start in starts:
                out[start:start + chunk] = self._combine(self._walk(X[start:start + chunk]))

        starts = range(0, n, chunk)
        if threads > 1 and n >= THREADED_MIN_ROWS:
            in_threads(walk, starts, threads)
        else:
            walk(starts)
        return out

    def _walk_python(self, x: list[float]) -> list[float]:
        feature, threshold = self.node_feature, self.node_threshold
        left, right, value = self.node_left, self.node_right, self.node_value
        leaves = []
        if self.categorical or self.zero_band:
            goes_left = self.goes_left_category
            category_set = self.row_category_set
            zero = self.row_zero_missing
            band = ir.ZERO_BAND
            missing_left = self.node_missing_left
            for node in self.node_roots:
                f = feature[node]
                while f >= 0:
                    v = x[f]
                    if category_set[node] >= 0:
                        node = left[node] if goes_left(node, v) else right[node]
                    elif zero[node] and -band <= v <= band:
                        node = left[node] if missing_left[node] else right[node]
                    elif v <= threshold[node]:
                        node = left[node]
                    elif v != v:
                        node = left[node] if missing_left[node] else right[node]
                    else:
                        node = right[node]
                    f = feature[node]
                leaves.append(value[node])
        elif self.route_missing and not math.isfinite(sum(x)):
            missing_left = self.node_missing_left
            for node in self.node_roots:
                f = feature[node]
                while f >= 0:
                    v = x[f]
                    if v <= threshold[node]:
                        node = left[node]
                    elif v != v:
                        node = left[node] if missing_left[node] else right[node]
                    else:
                        node = right[node]
                    f = feature[node]
                leaves.append(value[node])
        else:
            for node in self.node_roots:
                f = feature[node]
                while f >= 0:
                    node = left[node] if x[f] <= threshold[node] else right[node]
                    f = feature[node]
                leaves.append(value[node])
        return leaves

    def finish(self, raw: float) -> float:
        """P(class 1) from the sum of leaves (from ``start``; :class:`.rowcode.RowCode`'s too)."""
        if self.float32:
            return float32.logistic(raw)
        return raw / self.n_trees if self.averages else expit(raw)

    def predict_one(self, x: list[float]) -> float:
        if self.row_code is not None:
            raw = self.row_code.raw(x)
            if raw is not None:
                return self.finish(raw)
        if self.python_one:
            # array('f') rounds to float32 as numpy's cast does (overflow to +-inf included).
            xs = array("f", x).tolist() if self.cast_float32 else x
            self._check_one(xs)
            leaves = self._walk_python(xs)
        else:
            self._numpy_ready()
            xa = self._prepare(np.array([x], dtype=np.float64))[0]
            leaves = self._walk(xa).tolist()
        # Same operations as _combine, on Python floats (cheaper for one row).
        if self.float32:
            return self.finish(float32.sum_one(self.start, leaves))
        raw = self.start
        scale = self.leaf_scale
        if scale is not None:
            for v in leaves:
                raw += scale * v
        else:
            for v in leaves:
                raw += v
        return self.finish(raw)

"""The tree converter: DecisionTree/ExtraTree and RandomForest/ExtraTrees as
an averaging :class:`ir.TreeEnsemble`; and the node-table flattening that
the boosting converters (:mod:`.gbm`, :mod:`.hgb`) share."""

from __future__ import annotations

from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from .common import UnsupportedModel


def accepts(clf: Any) -> bool:
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    return type(clf) in (RandomForestClassifier, ExtraTreesClassifier) or isinstance(clf, DecisionTreeClassifier)


def convert(clf: Any, path: str, sparse: bool) -> ir.TreeEnsemble:
    estimators = getattr(clf, "estimators_", [clf])
    trees = []
    for est in estimators:
        if est.n_outputs_ != 1:
            raise UnsupportedModel(f"{type(clf).__name__} in step {path!r}: multi-output trees are not supported")
        # predict_proba returns the stored (already normalised) class fractions.
        trees.append(sk_tree(est.tree_, est.tree_.value[:, 0, 1]))
    allow_nan = bool(estimators[0].__sklearn_tags__().input_tags.allow_nan) and not sparse
    return ensemble(
        trees,
        estimator=type(clf).__name__, combine="average", cast_float32=True,
        missing="route" if allow_nan else "error", allow_inf=False,
    )


def ensemble(trees: list[dict[str, np.ndarray]], *, estimator: str, combine: str, cast_float32: bool, missing: str,
             allow_inf: bool, init: float = 0.0, learning_rate: float = 1.0) -> ir.TreeEnsemble:
    """The ensemble of per-tree node tables (each rooted at its node 0), flattened into one."""
    arrays, max_depth = _flatten(trees)
    return ir.TreeEnsemble(estimator, combine, cast_float32, missing, allow_inf, max_depth, init, learning_rate,
                           **arrays)


def sk_tree(tree: Any, value: np.ndarray) -> dict[str, np.ndarray]:
    """A scikit-learn ``Tree``'s node table, with ``value`` as the leaves' values."""
    return {
        "feature": np.where(tree.children_left == -1, -1, tree.feature),
        "threshold": tree.threshold,
        "left": tree.children_left,
        "right": tree.children_right,
        "missing_left": tree.missing_go_to_left,
        "value": value,
    }


def _flatten(trees: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
    """Concatenate per-tree node tables, shifting child indices; returns arrays and max depth."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("feature", "threshold", "left", "right", "missing_left", "value")}
    roots = []
    offset = 0
    max_depth = 0
    for tree in trees:
        n = len(tree["feature"])
        leaf = tree["feature"] < 0
        roots.append(offset)
        parts["feature"].append(np.where(leaf, -1, tree["feature"]).astype(np.int32))
        parts["threshold"].append(tree["threshold"].astype(np.float64))
        parts["left"].append(np.where(leaf, -1, tree["left"] + offset).astype(np.int32))
        parts["right"].append(np.where(leaf, -1, tree["right"] + offset).astype(np.int32))
        parts["missing_left"].append(tree["missing_left"].astype(np.uint8))
        parts["value"].append(tree["value"].astype(np.float64))
        max_depth = max(max_depth, _depth(tree["left"], tree["right"], leaf))
        offset += n
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    arrays["roots"] = np.array(roots, dtype=np.int32)
    return arrays, max_depth


def _depth(left: np.ndarray, right: np.ndarray, leaf: np.ndarray) -> int:
    """Longest root-to-leaf path (in edges) of one tree whose root is node 0."""
    deepest = 0
    stack = [(0, 0)]
    while stack:
        node, depth = stack.pop()
        if leaf[node]:
            deepest = max(deepest, depth)
        else:
            stack.append((int(left[node]), depth + 1))
            stack.append((int(right[node]), depth + 1))
    return deepest

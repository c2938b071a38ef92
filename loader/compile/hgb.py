"""The HistGradientBoosting converter: HistGradientBoostingClassifier (binary,
numeric splits) as a hist_boosting :class:`ir.TreeEnsemble`."""

from __future__ import annotations

from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from .common import UnsupportedModel
from .trees import ensemble


def accepts(clf: Any) -> bool:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return type(clf) is HistGradientBoostingClassifier


def convert(clf: Any, path: str, sparse: bool) -> ir.TreeEnsemble:
    if clf.is_categorical_ is not None and np.any(clf.is_categorical_):
        raise UnsupportedModel(
            f"HistGradientBoostingClassifier in step {path!r}: categorical_features are not supported "
            "(one-hot encode them in the pipeline instead)"
        )
    if getattr(clf, "_preprocessor", None) is not None:
        raise UnsupportedModel(f"HistGradientBoostingClassifier in step {path!r}: internal preprocessing is not supported")
    if sparse:
        raise UnsupportedModel(f"HistGradientBoostingClassifier in step {path!r} cannot take sparse input")
    if clf.n_trees_per_iteration_ != 1 or type(clf._loss).__name__ != "HalfBinomialLoss":
        raise UnsupportedModel(f"HistGradientBoostingClassifier in step {path!r}: only binary log-loss is supported")
    trees = []
    for (predictor,) in clf._predictors:
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        if nodes["is_categorical"].any():
            raise UnsupportedModel(f"HistGradientBoostingClassifier in step {path!r}: categorical splits")
        trees.append({
            "feature": np.where(leaf, -1, nodes["feature_idx"]),
            "threshold": nodes["num_threshold"],
            "left": nodes["left"].astype(np.int64),
            "right": nodes["right"].astype(np.int64),
            "missing_left": nodes["missing_go_to_left"],
            "value": nodes["value"],
        })
    return ensemble(
        trees,
        estimator="HistGradientBoostingClassifier", combine="hist_boosting", cast_float32=False,
        missing="route", allow_inf=True, init=float(clf._baseline_prediction.reshape(-1)[0]),
    )

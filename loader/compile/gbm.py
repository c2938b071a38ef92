"""The GradientBoosting converter: GradientBoostingClassifier (log_loss) as a
boosting :class:`ir.TreeEnsemble`."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from .common import UnsupportedModel
from .trees import ensemble, sk_tree


def accepts(clf: Any) -> bool:
    from sklearn.ensemble import GradientBoostingClassifier

    return type(clf) is GradientBoostingClassifier


def convert(clf: Any, path: str, sparse: bool) -> ir.TreeEnsemble:
    from sklearn.dummy import DummyClassifier

    if clf.loss != "log_loss":
        raise UnsupportedModel(f"GradientBoostingClassifier in step {path!r}: loss={clf.loss!r} is not supported")
    if clf.estimators_.shape[1] != 1:
        raise UnsupportedModel(f"GradientBoostingClassifier in step {path!r}: only binary models are supported")
    if not (clf.init_ == "zero" or (isinstance(clf.init_, DummyClassifier) and clf.init_.strategy == "prior")):
        raise UnsupportedModel(
            f"GradientBoostingClassifier in step {path!r}: init={type(clf.init_).__name__} is not supported"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The prior's log-odds, computed by scikit-learn itself so it is bit-identical.
        init = float(clf._raw_predict_init(np.zeros((1, clf.n_features_in_), dtype=np.float32))[0, 0])
    trees = [sk_tree(est.tree_, est.tree_.value[:, 0, 0]) for est in clf.estimators_[:, 0]]
    return ensemble(
        trees,
        estimator="GradientBoostingClassifier", combine="boosting", cast_float32=True,
        missing="error", allow_inf=False, init=init, learning_rate=float(clf.learning_rate),
    )

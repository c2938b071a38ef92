"""The linear converter: LogisticRegression(CV) and SGDClassifier (log_loss,
modified_huber) as :class:`ir.Linear`."""

from __future__ import annotations

from typing import Any

import numpy as np

from pgscore_server.compiled import ir


def accepts(clf: Any) -> bool:
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    return isinstance(clf, LogisticRegression) or (
        isinstance(clf, SGDClassifier) and clf.loss in ("log_loss", "modified_huber")
    )


def convert(clf: Any, path: str, sparse: bool) -> ir.Linear:
    coef = clf.coef_
    if hasattr(coef, "toarray"):
        coef = coef.toarray()
    link = "modified_huber" if getattr(clf, "loss", None) == "modified_huber" else "logistic"
    return ir.Linear(type(clf).__name__, link, np.ascontiguousarray(coef, dtype=np.float64).reshape(1, -1),
                     np.asarray(clf.intercept_, dtype=np.float64).reshape(1))

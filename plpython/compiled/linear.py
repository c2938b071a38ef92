"""Linear classifiers (LogisticRegression(CV), SGDClassifier with log_loss or
modified_huber): P(class 1) is a link of ``X @ coef.T + intercept``.
"""

from __future__ import annotations

import math

from . import ir
from .lazy import Numpy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Sequence

    import numpy as np

if not TYPE_CHECKING:
    np = Numpy(globals())


def expit(z: float) -> float:
    """The logistic function of one float, as scipy.special.expit computes it."""
    # scipy.special.expit computes 1 / (1 + exp(-z)); same operations here.
    try:
        return 1.0 / (1.0 + math.exp(-z))
    except OverflowError:
        return 0.0


class Linear:
    """Linear classifiers whose predict_proba is a link of ``X @ coef.T + intercept``."""

    def __init__(self, linear: ir.Linear, output_names: Sequence[str]):
        self.estimator = linear.estimator
        self.link = linear.link
        # Same (1, p) layout and transpose as scikit-learn, so BLAS sums in the same order.
        self.coef = np.ascontiguousarray(linear.coef, dtype=np.float64).reshape(1, -1)
        self.intercept = np.asarray(linear.intercept, dtype=np.float64).reshape(1)
        self.output_names = list(output_names)

    def check(self, X: np.ndarray) -> None:
        if not np.isfinite(X).all():
            bad = np.argwhere(~np.isfinite(X))[0]
            value = X[bad[0], bad[1]]
            what = "missing (None/NaN)" if np.isnan(value) else f"infinite ({value})"
            raise ValueError(
                f"feature {self.output_names[bad[1]]!r}: value is {what} and {self.estimator} does not "
                "accept missing or infinite values (impute it in the pipeline)"
            )

    def predict_batch(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """``threads`` is for the trees' signature: one matrix product needs none."""
        self.check(X)
        z = (X @ self.coef.T + self.intercept).reshape(-1)
        if self.link == "logistic":
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-z))
        return (np.clip(z, -1.0, 1.0) + 1.0) / 2.0

    def predict_one(self, x: list[float]) -> float:
        X = np.array(x, dtype=np.float64).reshape(1, -1)
        if not math.isfinite(sum(x)):
            self.check(X)
        z = float((X @ self.coef.T + self.intercept)[0, 0])
        if self.link == "logistic":
            return expit(z)
        return (min(max(z, -1.0), 1.0) + 1.0) / 2.0

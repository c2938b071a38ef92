"""What every converter of ``pgscore.compile`` shares: the error it raises (from pgscore.errors),
values in the form the compiled format can hold, scikit-learn checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from ..errors import UnsupportedModel


def plain_value(value: Any, where: str) -> Any:
    """A category or fill value as the IR holds it (a Python value; numpy
    scalars converted, NaN as ir.NAN_KEY); raises UnsupportedModel for a type the format has no tag for."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return ir.NAN_KEY  # as ir.Model.read gives it back
    if ir.encode_value(value) is None:
        raise UnsupportedModel(f"{where}: value {value!r} of type {type(value).__name__} is not supported")
    return value


def unsupported(est: Any, path: str) -> UnsupportedModel:
    return UnsupportedModel(f"{type(est).__name__} in step {path!r} is not supported by the compiled path")


def is_identity(est: Any) -> bool:
    """'passthrough' as ColumnTransformer stores it once fitted (an argument-less FunctionTransformer)."""
    from sklearn.preprocessing import FunctionTransformer

    return est == "passthrough" or (
        isinstance(est, FunctionTransformer) and est.func is None and est.inverse_func is None
    )


def check_binary(clf: Any, path: str) -> None:
    classes = getattr(clf, "classes_", None)
    if classes is None or np.ndim(classes) != 1 or len(classes) != 2:
        raise UnsupportedModel(
            f"{type(clf).__name__} in step {path!r}: only binary classifiers are supported "
            "(the score is P(classes_[1]))"
        )

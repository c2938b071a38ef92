"""The classifier families ``pgscore.compile`` converts, one converter module each.

A family is (name, ``accepts(clf)``, ``convert(clf, path, sparse)`` giving
its :mod:`pgscore_server.compiled.ir` classifier); :func:`convert` tries
them in this order. The preprocessing before the classifier has its own
converter, :mod:`.preprocessing`. Adding a family: a converter module here,
a row below, its evaluator in ``pgscore_server.compiled`` (and its SQL in
``pgscore_server.sqlgen`` if it has a SQL form), a row in ``tests/families.py``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from pgscore_server.compiled import ir

from . import gbm, hgb, lgbm, linear, trees, xgb
from .common import UnsupportedModel, check_binary, unsupported


class Family(NamedTuple):
    name: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any, str, bool], "ir.Linear | ir.TreeEnsemble"]


FAMILIES = (
    Family("linear", linear.accepts, linear.convert),
    Family("trees", trees.accepts, trees.convert),
    Family("gbm", gbm.accepts, gbm.convert),
    Family("hgb", hgb.accepts, hgb.convert),
    Family("xgboost", xgb.accepts, xgb.convert),
    Family("lgbm", lgbm.accepts, lgbm.convert),
)


def convert(clf: Any, path: str, sparse: bool) -> ir.Linear | ir.TreeEnsemble:
    """The IR of a fitted binary classifier; raises UnsupportedModel for any other."""
    for family in FAMILIES:
        if family.accepts(clf):
            check_binary(clf, path)
            return family.convert(clf, path, sparse)
    if not hasattr(clf, "predict_proba"):
        raise UnsupportedModel(f"{type(clf).__name__} in step {path!r} has no predict_proba")
    raise unsupported(clf, path)

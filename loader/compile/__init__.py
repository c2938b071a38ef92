"""Compiling a fitted scikit-learn pipeline into data that numpy alone can score.

:func:`compile_model` walks a fitted pipeline and writes what scoring needs
(category tables, means, scales, imputation values, coefficients, tree node
tables) into a :class:`CompiledModel`. Its :meth:`CompiledModel.to_bytes` is
a ``.npz`` archive: a JSON manifest plus plain numeric arrays, readable with
``numpy.load(..., allow_pickle=False)``; ``pgscore_server.compiled`` scores
it inside PostgreSQL without scikit-learn.

Supported: an optional ``Pipeline`` whose steps before the classifier are
either one ``ColumnTransformer`` or per-column transformers, built from
OneHotEncoder, StandardScaler, SimpleImputer, nested Pipelines of those,
'passthrough' and 'drop'; and a binary classifier: LogisticRegression(CV),
SGDClassifier (log_loss / modified_huber), DecisionTree/ExtraTree,
RandomForest/ExtraTrees, GradientBoosting (log_loss),
HistGradientBoosting (numeric features), XGBoost's XGBClassifier
(binary:logistic, gbtree) or LightGBM's LGBMClassifier (binary). Anything
else raises :class:`UnsupportedModel`.

One converter per family, each producing the typed model of
``pgscore_server.compiled.ir``: :mod:`.preprocessing` (the steps before the
classifier) and, registered in :data:`.families.FAMILIES`, :mod:`.linear`,
:mod:`.trees` (single trees and forests), :mod:`.gbm`, :mod:`.hgb`, :mod:`.xgb`,
:mod:`.lgbm`.
:class:`CompiledModel` (:mod:`.archive`) is that model in the archive's
layout (value tags, array names: ``pgscore_server.compiled.ir``).
"""

from __future__ import annotations

from typing import Any

from pgscore_server.compiled import ir

from . import families, lgbm, preprocessing
from .archive import CompiledModel
from .common import UnsupportedModel

FORMAT = ir.FORMAT
FORMAT_VERSION = ir.FORMAT_VERSION

__all__ = ["FORMAT", "FORMAT_VERSION", "CompiledModel", "UnsupportedModel", "compile_model"]


def compile_model(model: Any) -> CompiledModel:
    """Compile a fitted pipeline or bare classifier.

    Raises UnsupportedModel (with a reason naming the estimator and step) for
    anything outside the supported set, for multiclass models, for unfitted
    models and for models fitted without feature names.
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except (NotFittedError, TypeError) as exc:
        raise UnsupportedModel(f"{type(model).__name__} is not a fitted scikit-learn estimator: {exc}") from None

    steps: list[tuple[str, Any]]
    if isinstance(model, Pipeline):
        steps = [(name, est) for name, est in model.steps if est is not None and est != "passthrough"]
        if not steps:
            raise UnsupportedModel("the pipeline has no steps")
    else:
        steps = [("", model)]
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        raise UnsupportedModel(
            f"{type(model).__name__} was fitted without feature names (fit it on a pandas DataFrame)"
        )
    feature_names = [str(n) for n in names]
    *pre, (clf_name, clf) = steps

    transform, sparse = preprocessing.convert(pre, feature_names)
    classifier = families.convert(clf, clf_name or type(clf).__name__, sparse)
    if lgbm.accepts(clf):  # its pandas category columns are a step of the transform
        transform = lgbm.input_transform(clf, clf_name or type(clf).__name__, transform, bool(pre), feature_names)
    n_in = getattr(clf, "n_features_in_", None)
    if n_in is not None and n_in != transform.n_outputs:
        raise UnsupportedModel(
            f"internal: the preprocessing yields {transform.n_outputs} columns "
            f"but {type(clf).__name__} expects {n_in}"
        )
    source = {"estimator": _describe(model), "sklearn_version": _sklearn_version()}
    return CompiledModel.from_ir(ir.Model(feature_names, transform, classifier, source))


def _describe(model: Any) -> str:
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        return "Pipeline(" + ", ".join(f"{n}={type(e).__name__}" for n, e in model.steps) + ")"
    return type(model).__name__


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__

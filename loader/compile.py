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
RandomForest/ExtraTrees, GradientBoosting (log_loss) or
HistGradientBoosting (numeric features). Anything else raises
:class:`UnsupportedModel`.

Value tags in the manifest (categories, fill values): ``["none"]``,
``["nan"]``, ``["str", s]``, ``["bool", b]``, ``["int", i]`` and
``["float", float.hex(x)]`` (hex keeps every bit).
"""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pgscore_server import compiled as _server

FORMAT = _server.FORMAT
FORMAT_VERSION = _server.FORMAT_VERSION


class UnsupportedModel(Exception):
    """The model cannot be compiled; ``reason`` says which part and why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CompiledModel:
    """A compiled pipeline: a JSON-able manifest and named numeric arrays."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_names"])

    def to_bytes(self) -> bytes:
        """The ``.npz`` archive (no pickle; deterministic for the same model)."""
        entries = dict(self.arrays)
        entries["manifest"] = np.frombuffer(
            json.dumps(self.manifest, sort_keys=True, allow_nan=False).encode("utf-8"), dtype=np.uint8
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(entries):
                # A fixed timestamp: the same model gives the same bytes and sha256.
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(entries[name]), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CompiledModel":
        """The model :meth:`to_bytes` wrote (as stored in scoring.models.compiled)."""
        archive = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
        arrays = {name: archive[name] for name in archive.files}
        manifest = json.loads(arrays.pop("manifest").tobytes().decode("utf-8"))
        return cls(manifest, arrays)

    def evaluator(self) -> _server.Evaluator:
        """The server-side evaluator of these bytes (what the database will run).

        Built once per CompiledModel (parity checks call this per row); the
        evaluator holds no per-call state, so sharing it is safe.
        """
        cached = self.__dict__.get("_evaluator")
        if cached is None:
            cached = _server.load(self.to_bytes())
            object.__setattr__(self, "_evaluator", cached)  # frozen dataclass: a cache, not a field
        return cached


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

    builder = _Builder(feature_names)
    sparse = False
    if len(pre) == 1 and _is_column_transformer(pre[0][1]):
        sparse = builder.column_transformer(pre[0][0], pre[0][1])
    elif any(_is_column_transformer(est) for _, est in pre):
        raise UnsupportedModel(
            "a ColumnTransformer is supported only as the single preprocessing step of the pipeline"
        )
    else:
        chains = [_Chain(i) for i in range(len(feature_names))]
        builder.emit("/".join(n for n, _ in pre) or "input", builder.chain_steps(pre, chains))

    model_spec = _compile_classifier(clf, clf_name or type(clf).__name__, builder, sparse)
    n_in = getattr(clf, "n_features_in_", None)
    if n_in is not None and n_in != builder.n_outputs:
        raise UnsupportedModel(
            f"internal: the preprocessing yields {builder.n_outputs} columns "
            f"but {type(clf).__name__} expects {n_in}"
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_names": feature_names,
        "transform": {
            "n_outputs": builder.n_outputs,
            "numeric": builder.numeric,
            "onehot": builder.onehot,
            "dtype_checks": builder.dtype_checks,
        },
        "model": model_spec,
        "source": {"estimator": _describe(model), "sklearn_version": _sklearn_version()},
    }
    return CompiledModel(manifest, builder.arrays)


def check_parity(model: Any, compiled: CompiledModel, rows: Sequence[Any]) -> float:
    """Max |compiled - predict_proba[:, 1]| over rows (dicts keyed by feature name).

    Raises whatever either side raises on these rows.
    """
    from pgscore_server.features import to_frame

    expected = model.predict_proba(to_frame(rows, compiled.feature_names))[:, 1]
    got = compiled.evaluator().predict(rows)
    return float(np.max(np.abs(expected - got))) if len(rows) else 0.0


# -- values and descriptions ---------------------------------------------------

def encode_value(value: Any, where: str) -> list[Any]:
    """A category or fill value in its manifest form; raises UnsupportedModel for other types."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ["none"]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["nan"] if math.isnan(value) else ["float", value.hex()]
    if isinstance(value, str):
        return ["str", value]
    raise UnsupportedModel(f"{where}: value {value!r} of type {type(value).__name__} is not supported")


def _describe(model: Any) -> str:
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        return "Pipeline(" + ", ".join(f"{n}={type(e).__name__}" for n, e in model.steps) + ")"
    return type(model).__name__


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def _is_column_transformer(est: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    return isinstance(est, ColumnTransformer)


def _unsupported(est: Any, path: str) -> UnsupportedModel:
    return UnsupportedModel(f"{type(est).__name__} in step {path!r} is not supported by the compiled path")


def _is_identity(est: Any) -> bool:
    """'passthrough' as ColumnTransformer stores it once fitted (an argument-less FunctionTransformer)."""
    from sklearn.preprocessing import FunctionTransformer

    return est == "passthrough" or (
        isinstance(est, FunctionTransformer) and est.func is None and est.inverse_func is None
    )


# -- preprocessing -------------------------------------------------------------

@dataclass
class _Chain:
    """What happens to one input column, step by step."""

    source: int
    fills: list[Any] = field(default_factory=list)  # value-level imputations
    ops: list[tuple[str, float]] = field(default_factory=list)  # float64 operations
    in_float: bool = False


@dataclass
class _OneHot:
    chain: _Chain
    step: str
    categories: list[Any]
    drop: int | None
    unknown: str
    object_categories: bool


class _Builder:
    """Accumulates manifest blocks and arrays; assigns model-input columns in order."""

    def __init__(self, feature_names: list[str]):
        self.feature_names = feature_names
        self.arrays: dict[str, np.ndarray] = {}
        self.numeric: list[dict[str, Any]] = []
        self.onehot: list[dict[str, Any]] = []
        self.dtype_checks: list[dict[str, Any]] = []
        self.n_outputs = 0

    def column_transformer(self, path: str, ct: Any) -> bool:
        """Emit the blocks of a fitted ColumnTransformer; returns whether its output is sparse."""
        if getattr(ct, "transformer_weights", None):
            raise UnsupportedModel(f"ColumnTransformer {path!r} with transformer_weights is not supported")
        names = [str(n) for n in getattr(ct, "feature_names_in_", [])]
        if names != self.feature_names:
            raise UnsupportedModel(f"ColumnTransformer {path!r} was fitted without the pipeline's feature names")
        for name, trans, _columns in ct.transformers_:
            indices = [int(i) for i in ct._transformer_to_input_indices.get(name, [])]
            if trans == "drop" or not indices:
                continue
            step = f"{path}/{name}"
            chains = [_Chain(i) for i in indices]
            if _is_identity(trans):
                self.emit(step, chains)
                continue
            from sklearn.pipeline import Pipeline

            if isinstance(trans, Pipeline):
                sub = [(f"{step}/{n}", e) for n, e in trans.steps if e is not None and e != "passthrough"]
            else:
                sub = [(step, trans)]
            self.emit(step, self.chain_steps(sub, chains))
        return bool(getattr(ct, "sparse_output_", False))

    def chain_steps(self, steps: list[tuple[str, Any]], chains: list[_Chain]) -> list[_Chain] | list[_OneHot]:
        """Apply per-column transformers in order; a OneHotEncoder must come last."""
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        for k, (path, est) in enumerate(steps):
            if _is_identity(est):
                continue
            if isinstance(est, Pipeline):
                inner = [(f"{path}/{n}", e) for n, e in est.steps if e is not None and e != "passthrough"]
                rest = steps[k + 1:]
                result = self.chain_steps(inner, chains)
                if rest:
                    if result and isinstance(result[0], _OneHot):
                        raise UnsupportedModel(f"a step after the OneHotEncoder in {path!r} is not supported")
                    return self.chain_steps(rest, result)  # type: ignore[arg-type]
                return result
            if isinstance(est, SimpleImputer):
                check = _imputer_dtype_check(est, path, chains)
                if check is not None:
                    self.dtype_checks.append(check)
                chains = _imputer(est, path, chains)
            elif isinstance(est, StandardScaler):
                chains = _scaler(est, path, chains)
            elif isinstance(est, OneHotEncoder):
                if k != len(steps) - 1:
                    raise UnsupportedModel(
                        f"{type(steps[k + 1][1]).__name__} after the OneHotEncoder in step "
                        f"{steps[k + 1][0]!r} is not supported by the compiled path"
                    )
                return _onehot(est, path, chains)
            else:
                raise _unsupported(est, path)
        return chains

    def emit(self, step: str, outputs: list[_Chain] | list[_OneHot]) -> None:
        """Assign model-input columns to a transformer's outputs, in its output order."""
        group: list[tuple[_Chain, int]] = []
        for item in outputs:
            if isinstance(item, _OneHot):
                self._flush(step, group)
                group = []
                self._emit_onehot(item)
                continue
            if group and _signature(group[0][0]) != _signature(item):
                self._flush(step, group)
                group = []
            group.append((item, self.n_outputs))
            self.n_outputs += 1
        self._flush(step, group)

    def _flush(self, step: str, group: list[tuple[_Chain, int]]) -> None:
        if not group:
            return
        chains = [c for c, _ in group]
        block_id = len(self.numeric)
        ops = []
        for j, (code, _) in enumerate(chains[0].ops):
            name = f"numeric{block_id}_{j}_{code}"
            self.arrays[name] = np.array([c.ops[j][1] for c in chains], dtype=np.float64)
            ops.append([code, name])
        self.numeric.append({
            "step": step,
            "inputs": [c.source for c in chains],
            "outputs": [out for _, out in group],
            "fills": [
                [encode_value(c.fills[j], step) for c in chains] for j in range(len(chains[0].fills))
            ],
            "ops": ops,
        })

    def _emit_onehot(self, item: _OneHot) -> None:
        outputs = []
        for k in range(len(item.categories)):
            if k == item.drop:
                outputs.append(-1)
            else:
                outputs.append(self.n_outputs)
                self.n_outputs += 1
        self.onehot.append({
            "step": item.step,
            "input": item.chain.source,
            "fills": [encode_value(v, item.step) for v in item.chain.fills],
            "categories": [encode_value(v, item.step) for v in item.categories],
            "outputs": outputs,
            "unknown": item.unknown,
            "object_categories": item.object_categories,
        })


def _signature(chain: _Chain) -> tuple[int, tuple[str, ...]]:
    return len(chain.fills), tuple(code for code, _ in chain.ops)


def _imputer_dtype_check(est: Any, path: str, chains: list[_Chain]) -> dict[str, Any] | None:
    """The batch dtypes a value-level SimpleImputer rejects, or None if it rejects none.

    most_frequent / constant imputers keep the input's dtype (the common
    dtype of the batch's columns): scikit-learn refuses a bool block, and
    for 'constant' a block its fitted dtype cannot be cast to (float fill
    into an int block).
    """
    if est.strategy not in ("most_frequent", "constant") or any(c.in_float for c in chains):
        return None
    fit_kind = np.dtype(est._fit_dtype).kind
    if fit_kind == "O":
        return None  # transform then converts every batch to object: nothing to refuse
    fill_kind = np.dtype(est._fill_dtype).kind if est.strategy == "constant" else None
    return {"step": path, "inputs": [c.source for c in chains], "fill_kind": fill_kind}


def _imputer(est: Any, path: str, chains: list[_Chain]) -> list[_Chain]:
    missing = est.missing_values
    if not (isinstance(missing, float) and math.isnan(missing)):
        raise UnsupportedModel(f"SimpleImputer in step {path!r}: only missing_values=np.nan is supported")
    if est.add_indicator:
        raise UnsupportedModel(f"SimpleImputer in step {path!r}: add_indicator=True is not supported")
    stats = list(est.statistics_)
    if len(stats) != len(chains):
        raise UnsupportedModel(f"SimpleImputer in step {path!r}: unexpected number of statistics")
    out = []
    for chain, stat in zip(chains, stats):
        stat = stat.item() if isinstance(stat, np.generic) else stat
        if isinstance(stat, float) and math.isnan(stat) and not est.keep_empty_features:
            continue  # scikit-learn drops columns that had no observed value
        if est.strategy not in ("most_frequent", "constant") or chain.in_float:
            # mean, median, callable: scikit-learn converts the input to
            # float64 first, so only NaN is missing and the statistic is a float.
            chain.in_float = True
            chain.ops.append(("fill", float(stat)))
        else:
            chain.fills.append(stat)
        out.append(chain)
    return out


def _scaler(est: Any, path: str, chains: list[_Chain]) -> list[_Chain]:
    for k, chain in enumerate(chains):
        chain.in_float = True
        if est.with_mean:
            chain.ops.append(("sub", float(est.mean_[k])))
        if est.with_std and est.scale_ is not None:
            chain.ops.append(("div", float(est.scale_[k])))
        if not chain.ops:
            # A scaler that changes nothing still refuses +-inf; the evaluator
            # and the SQL generator refuse it where a block has an operation.
            chain.ops.append(("sub", 0.0))
    return chains


def _onehot(est: Any, path: str, chains: list[_Chain]) -> list[_OneHot]:
    if getattr(est, "_infrequent_enabled", False):
        raise UnsupportedModel(
            f"OneHotEncoder in step {path!r}: min_frequency / max_categories are not supported"
        )
    if est.handle_unknown == "error":
        unknown = "error"
    elif est.handle_unknown in ("ignore", "infrequent_if_exist", "warn"):
        unknown = "ignore"  # without infrequent categories all of these give all zeros
    else:
        raise UnsupportedModel(f"OneHotEncoder in step {path!r}: handle_unknown={est.handle_unknown!r}")
    drop = getattr(est, "_drop_idx_after_grouping", None)
    out = []
    for k, chain in enumerate(chains):
        if chain.in_float:
            raise UnsupportedModel(f"OneHotEncoder in step {path!r} after a numeric transformer is not supported")
        categories = est.categories_[k]
        out.append(_OneHot(
            chain=chain,
            step=path,
            categories=[v.item() if isinstance(v, np.generic) else v for v in categories.tolist()],
            drop=None if drop is None or drop[k] is None else int(drop[k]),
            unknown=unknown,
            object_categories=categories.dtype.kind in "OUS",
        ))
    return out


# -- classifiers ---------------------------------------------------------------

def _check_binary(clf: Any, path: str) -> None:
    classes = getattr(clf, "classes_", None)
    if classes is None or np.ndim(classes) != 1 or len(classes) != 2:
        raise UnsupportedModel(
            f"{type(clf).__name__} in step {path!r}: only binary classifiers are supported "
            "(the score is P(classes_[1]))"
        )


def _compile_classifier(clf: Any, path: str, builder: _Builder, sparse: bool) -> dict[str, Any]:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(clf, LogisticRegression) or (
        isinstance(clf, SGDClassifier) and clf.loss in ("log_loss", "modified_huber")
    ):
        _check_binary(clf, path)
        return _linear(clf, builder)
    if type(clf) in (RandomForestClassifier, ExtraTreesClassifier) or isinstance(clf, DecisionTreeClassifier):
        _check_binary(clf, path)
        return _forest(clf, path, builder, sparse)
    if type(clf) is GradientBoostingClassifier:
        _check_binary(clf, path)
        return _gradient_boosting(clf, path, builder)
    if type(clf) is HistGradientBoostingClassifier:
        _check_binary(clf, path)
        return _hist_gradient_boosting(clf, path, builder, sparse)
    if not hasattr(clf, "predict_proba"):
        raise UnsupportedModel(f"{type(clf).__name__} in step {path!r} has no predict_proba")
    raise _unsupported(clf, path)


def _linear(clf: Any, builder: _Builder) -> dict[str, Any]:
    coef = clf.coef_
    if hasattr(coef, "toarray"):
        coef = coef.toarray()
    builder.arrays["coef"] = np.ascontiguousarray(coef, dtype=np.float64).reshape(1, -1)
    builder.arrays["intercept"] = np.asarray(clf.intercept_, dtype=np.float64).reshape(1)
    link = "modified_huber" if getattr(clf, "loss", None) == "modified_huber" else "logistic"
    return {"kind": "linear", "estimator": type(clf).__name__, "link": link}


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
    arrays = {f"tree_{k}": np.concatenate(v) for k, v in parts.items()}
    arrays["tree_roots"] = np.array(roots, dtype=np.int32)
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


def _sk_tree(tree: Any, value: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "feature": np.where(tree.children_left == -1, -1, tree.feature),
        "threshold": tree.threshold,
        "left": tree.children_left,
        "right": tree.children_right,
        "missing_left": tree.missing_go_to_left,
        "value": value,
    }


def _tree_spec(builder: _Builder, trees: list[dict[str, np.ndarray]], **spec: Any) -> dict[str, Any]:
    arrays, max_depth = _flatten(trees)
    builder.arrays.update(arrays)
    builder.arrays["init"] = np.array(spec.pop("init", 0.0), dtype=np.float64)
    builder.arrays["learning_rate"] = np.array(spec.pop("learning_rate", 1.0), dtype=np.float64)
    return {"kind": "trees", "max_depth": max_depth, "n_trees": len(trees), **spec}


def _forest(clf: Any, path: str, builder: _Builder, sparse: bool) -> dict[str, Any]:
    estimators = getattr(clf, "estimators_", [clf])
    trees = []
    for est in estimators:
        if est.n_outputs_ != 1:
            raise UnsupportedModel(f"{type(clf).__name__} in step {path!r}: multi-output trees are not supported")
        # predict_proba returns the stored (already normalised) class fractions.
        trees.append(_sk_tree(est.tree_, est.tree_.value[:, 0, 1]))
    allow_nan = bool(estimators[0].__sklearn_tags__().input_tags.allow_nan) and not sparse
    return _tree_spec(
        builder, trees,
        estimator=type(clf).__name__, combine="average", cast_float32=True,
        missing="route" if allow_nan else "error", allow_inf=False,
    )


def _gradient_boosting(clf: Any, path: str, builder: _Builder) -> dict[str, Any]:
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
    trees = [_sk_tree(est.tree_, est.tree_.value[:, 0, 0]) for est in clf.estimators_[:, 0]]
    return _tree_spec(
        builder, trees,
        estimator="GradientBoostingClassifier", combine="boosting", cast_float32=True,
        missing="error", allow_inf=False, init=init, learning_rate=float(clf.learning_rate),
    )


def _hist_gradient_boosting(clf: Any, path: str, builder: _Builder, sparse: bool) -> dict[str, Any]:
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
    return _tree_spec(
        builder, trees,
        estimator="HistGradientBoostingClassifier", combine="hist_boosting", cast_float32=False,
        missing="route", allow_inf=True, init=float(clf._baseline_prediction.reshape(-1)[0]),
    )

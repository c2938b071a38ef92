"""The LightGBM converter: ``lightgbm.LGBMClassifier`` (binary, ``objective='binary'``)
as a hist_boosting :class:`ir.TreeEnsemble`, reproducing LightGBM 4.7.0's prediction exactly.

What LightGBM does when it predicts one row (``include/LightGBM/tree.h``,
``src/c_api.cpp``), and how each step becomes the IR:

- Every value with ``|x| <= kZeroThreshold`` (1e-35f as a double) is dropped
  from the row, i.e. read as 0.0. Only a threshold inside that band can tell
  the difference, so such a threshold is moved to the band's edge it behaves
  as (:func:`_numeric_threshold`): the trees then test the raw value.
- A numerical node sends x left when ``x <= threshold`` (doubles). Its
  missing type (``decision_type`` bits 2-3) says what NaN does: ``None``:
  NaN is read as 0.0, so it goes where 0.0 goes; ``NaN``: NaN takes the
  default direction (bit 1); ``Zero`` (``zero_as_missing=True``): NaN and
  the zero band take the default direction (``ir.TreeEnsemble.zero_missing``).
- A categorical node sends x left when x is not NaN, ``int(x) >= 0`` and the
  bit of ``int(x)`` is set in its bitset: the IR's category sets
  (``ir.TreeEnsemble.category_set``), one byte per category.
- The raw score is ``0.0 + tree_0 + tree_1 + ...`` in float64 (the average
  of boost_from_average is already in tree 0's leaves), and the probability
  ``1 / (1 + exp(-sigmoid * raw))``: the hist_boosting rule with start 0.0,
  which needs sigmoid 1.0 (named 'lightgbm' for a model with categorical or
  zero-as-missing nodes, which a server without them must refuse).
- ``predict_proba`` uses the first ``best_iteration_`` trees when early
  stopping set it, else all of them.

Thresholds and leaf values are read from ``Booster.model_to_string()``,
which prints every double with ``%.17g`` (exact). pandas ``category``
columns (``Booster.pandas_categorical``) become :class:`ir.OrdinalColumn`
steps: the value's position among the training categories, NaN for None
or a value not among them, as LightGBM's ``_data_from_pandas`` does.

The reference LightGBM is compared against takes a pandas frame
(pgscore.verify.library_frame, with :func:`category_columns`): LightGBM
converts it to float64 unless every column is small enough for float32
(bool, int8/16, category codes), and those values are exact in float32, so
float64 is what its trees see either way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from .common import UnsupportedModel, plain_value
from .trees import ensemble

# LightGBM's kZeroThreshold (include/LightGBM/meta.h: 1e-35f), as the double it is compared as.
K_ZERO_THRESHOLD = ir.ZERO_BAND
assert K_ZERO_THRESHOLD == float(np.float32(1e-35))
_CATEGORICAL_MASK = 1
_DEFAULT_LEFT_MASK = 2
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2


def accepts(clf: Any) -> bool:
    """An LGBMClassifier, told by its class's module so that lightgbm is
    imported only when the model holds one already."""
    return type(clf).__name__ == "LGBMClassifier" and type(clf).__module__.split(".")[0] == "lightgbm"


def _numeric_threshold(t: float) -> float:
    """The threshold for the raw value that decides as ``x' <= t`` does, x'
    being x with the band ``|x| <= kZeroThreshold`` read as 0.0."""
    k = K_ZERO_THRESHOLD
    if -k <= t < 0.0:
        return math.nextafter(-k, -math.inf)  # the whole band (as 0.0) goes right
    if 0.0 <= t < k:
        return k  # the whole band goes left
    return t


def _parse(model_string: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The header's ``key=value`` lines and one dict per ``Tree=`` block."""
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    current = header
    for line in model_string.splitlines():
        if line.startswith("end of trees"):
            break
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
            continue
        key, _, value = line.partition("=")
        if key:
            current[key] = value  # a bare flag (average_output) too
    return header, trees


def _floats(tree: dict[str, str], key: str) -> list[float]:
    return [float(v) for v in tree[key].split()] if tree.get(key, "") else []


def _ints(tree: dict[str, str], key: str) -> list[int]:
    return [int(v) for v in tree[key].split()] if tree.get(key, "") else []


def _check_objective(header: dict[str, str], booster: Any, where: str) -> None:
    objective, *params = header.get("objective", "").split()
    settings = dict(p.split(":", 1) for p in params if ":" in p)
    if objective != "binary":
        raise UnsupportedModel(f"{where}: objective {objective or 'custom'!r} is not supported "
                               "(only objective='binary': train with objective='binary')")
    if float(settings.get("sigmoid", "1")) != 1.0:
        raise UnsupportedModel(f"{where}: sigmoid={settings['sigmoid']} is not supported (only sigmoid=1.0)")
    if int(header.get("num_class", "1")) != 1 or int(header.get("num_tree_per_iteration", "1")) != 1:
        raise UnsupportedModel(f"{where}: only binary models are supported (one tree per iteration)")
    if "average_output" in header or booster.params.get("boosting", "gbdt") in ("rf", "random_forest"):
        raise UnsupportedModel(f"{where}: boosting='rf' (averaged trees) is not supported")


def convert(clf: Any, path: str, sparse: bool) -> ir.TreeEnsemble:
    where = f"LGBMClassifier in step {path!r}"
    if callable(getattr(clf, "objective", None)):
        raise UnsupportedModel(f"{where}: a custom objective function is not supported (use objective='binary')")
    booster = clf.booster_
    header, trees = _parse(booster.model_to_string(num_iteration=-1))
    _check_objective(header, booster, where)
    best = int(getattr(booster, "best_iteration", 0) or 0)
    if best > 0:
        trees = trees[:best]
    tables: list[dict[str, np.ndarray]] = []
    category_set: list[int] = []
    zero_missing: list[int] = []
    bounds, members = [0], []
    for index, tree in enumerate(trees):
        if tree.get("is_linear", "0") != "0":
            raise UnsupportedModel(f"{where}: linear_tree=True (linear models in the leaves) is not supported")
        leaf_values = _floats(tree, "leaf_value")
        n_leaves = int(tree["num_leaves"])
        if len(leaf_values) != n_leaves:
            raise UnsupportedModel(f"{where}: tree {index} is malformed ({n_leaves} leaves, {len(leaf_values)} values)")
        n_inner = n_leaves - 1
        split_feature, threshold = _ints(tree, "split_feature"), _floats(tree, "threshold")
        decision_type, left, right = _ints(tree, "decision_type"), _ints(tree, "left_child"), _ints(tree, "right_child")
        cat_bounds, cat_words = _ints(tree, "cat_boundaries"), _ints(tree, "cat_threshold")
        # Inner node k is node k, leaf j is node n_inner + j (a one-leaf tree: just its leaf).
        table: dict[str, list[Any]] = {k: [] for k in ("feature", "threshold", "left", "right", "missing_left",
                                                        "value")}

        def node_of(child: int) -> int:
            return child if child >= 0 else n_inner + ~child

        for k in range(n_inner):
            dt = decision_type[k]
            feature = split_feature[k]
            table["feature"].append(feature)
            table["left"].append(node_of(left[k]))
            table["right"].append(node_of(right[k]))
            table["value"].append(0.0)
            if dt & _CATEGORICAL_MASK:
                cat = int(threshold[k])
                words = cat_words[cat_bounds[cat]:cat_bounds[cat + 1]]
                flags = [(w >> bit) & 1 for w in words for bit in range(32)]
                while flags and not flags[-1]:
                    flags.pop()
                category_set.append(len(bounds) - 1)
                zero_missing.append(0)
                members += flags
                bounds.append(len(members))
                table["threshold"].append(0.0)
                table["missing_left"].append(0)
                continue
            missing_type = (dt >> 2) & 3
            t = _numeric_threshold(threshold[k])
            table["threshold"].append(t)
            category_set.append(-1)
            zero_missing.append(1 if missing_type == _MISSING_ZERO else 0)
            if missing_type in (_MISSING_NAN, _MISSING_ZERO):
                table["missing_left"].append(1 if dt & _DEFAULT_LEFT_MASK else 0)
            else:  # None: NaN is read as 0.0
                table["missing_left"].append(1 if 0.0 <= t else 0)
        for value in leaf_values:
            for name in ("feature", "left", "right"):
                table[name].append(-1)
            table["threshold"].append(0.0)
            table["missing_left"].append(0)
            table["value"].append(value)
            category_set.append(-1)
            zero_missing.append(0)
        tables.append({
            "feature": np.asarray(table["feature"], dtype=np.int64),
            "threshold": np.asarray(table["threshold"], dtype=np.float64),
            "left": np.asarray(table["left"], dtype=np.int64),
            "right": np.asarray(table["right"], dtype=np.int64),
            "missing_left": np.asarray(table["missing_left"], dtype=np.uint8),
            "value": np.asarray(table["value"], dtype=np.float64),
        })
    if not tables:
        raise UnsupportedModel(f"{where}: the model has no trees")
    # hist_boosting's rule; named 'lightgbm' when the optional node arrays are written
    # (ir.NODE_ARRAY_RULES: a server without them refuses the archive).
    extended = any(s >= 0 for s in category_set) or any(zero_missing)
    result = ensemble(tables, estimator="LGBMClassifier", combine="lightgbm" if extended else "hist_boosting",
                      cast_float32=False, missing="route", allow_inf=True, init=0.0)
    if any(s >= 0 for s in category_set):
        result.category_set = np.asarray(category_set, dtype=np.int32)
        result.category_bounds = np.asarray(bounds, dtype=np.int32)
        result.category_left = np.asarray(members, dtype=np.uint8)
    if any(zero_missing):
        result.zero_missing = np.asarray(zero_missing, dtype=np.uint8)
    return result


def categorical_features(clf: Any) -> list[int]:
    """The positions of the features LightGBM treats as categorical."""
    header, _ = _parse(clf.booster_.model_to_string(num_iteration=-1))
    infos = header.get("feature_infos", "").split()
    return [k for k, info in enumerate(infos) if not info.startswith("[") and info != "none"]


def input_transform(clf: Any, path: str, transform: ir.Transform, has_preprocessing: bool,
                    feature_names: list[str]) -> ir.Transform:
    """The transform before a bare LGBMClassifier fitted on pandas ``category``
    columns: those inputs become :class:`ir.OrdinalColumn` (their codes), the
    others stay as they were. Unchanged without ``pandas_categorical``.

    Raises UnsupportedModel for a pipeline whose steps hand LightGBM the
    input columns as they are: a numpy array of ints reaches its trees as
    float32 (``_np2d_to_np1d``), of floats as float64, so the same row would
    split differently by the batch it comes in (a NULL makes an int column float).
    Every other supported step outputs float64."""
    where = f"LGBMClassifier in step {path!r}"
    if has_preprocessing and not transform.onehot and all(not b.ops and not b.fills for b in transform.numeric):
        raise UnsupportedModel(
            f"{where}: the steps before it pass the input columns on unconverted, and LightGBM reads an array "
            "that is not float as float32, so its splits would depend on each batch's column types; push the "
            "LGBMClassifier alone (it reads a DataFrame as float64), or scale or impute the columns in the pipeline")
    pandas_categorical = getattr(clf.booster_, "pandas_categorical", None) or []
    if not pandas_categorical:
        return transform
    if has_preprocessing:
        raise UnsupportedModel(f"{where}: pandas category columns after preprocessing are not supported "
                               "(one-hot encode them in the pipeline, or push the LGBMClassifier alone)")
    categorical = categorical_features(clf)
    if len(categorical) != len(pandas_categorical):
        raise UnsupportedModel(
            f"{where}: {len(pandas_categorical)} pandas category columns but {len(categorical)} categorical "
            "features: ordered categories, or categorical_feature given with category columns, are not supported "
            "(train with unordered category columns and categorical_feature='auto')")
    (block,) = transform.numeric
    if block.ops or block.fills or block.inputs != block.outputs:
        raise UnsupportedModel(f"{where}: internal: unexpected transform before a bare classifier")
    keep = [i for i in block.inputs if i not in categorical]
    numeric = [ir.NumericBlock(block.step, keep, keep, [], [])] if keep else []
    ordinal = [
        ir.OrdinalColumn("pandas_categorical", i,
                         [plain_value(v, f"{where}: category of {feature_names[i]!r}") for v in categories], i)
        for i, categories in zip(categorical, pandas_categorical)
    ]
    return ir.Transform(transform.n_outputs, numeric, transform.onehot, transform.dtype_checks, ordinal)


def category_columns(model: Any, frame: Any) -> Any:
    """``frame`` (pgscore_server.features.to_frame's, for pgscore.verify.library_frame)
    with the pandas category columns of a bare LGBMClassifier as ``category``:
    LightGBM refuses text columns, and maps a category column to its training
    categories itself (an unknown value or a NULL becomes NaN)."""
    if not getattr(model.booster_, "pandas_categorical", None):
        return frame
    frame = frame.copy(deep=False)
    for k in categorical_features(model):
        frame[frame.columns[k]] = frame[frame.columns[k]].astype("category")
    return frame

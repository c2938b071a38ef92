"""The XGBoost converter: ``xgboost.XGBClassifier`` (binary:logistic, gbtree)
as an 'xgboost' :class:`ir.TreeEnsemble`, reproducing what its
``predict_proba`` computes (XGBoost 3.x, CPU predictor):

- a split sends float32(x) left when ``x < split_condition`` (strict, in
  float32); the IR tests ``x <= t``, so t is the float32 just below the
  split condition, with ``cast_float32``: the same side for every float32,
  infinities included (XGBoost's in-place prediction, which predict_proba
  uses, takes infinite values as values: +inf goes right, -inf left);
- NaN (and a NULL) is missing and takes the node's default direction
  (``default_left``); any other ``missing`` value is refused;
- the margin starts from the base margin, XGBoost's own float32
  ``ProbToMargin(base_score)``, and adds the leaves in tree order in float32;
  the probability is its float32 Sigmoid (:data:`ir.FLOAT32_RULES`);
- with early stopping, only the trees up to ``best_iteration``, as predict_proba.

The trees are read from the booster's JSON model (``save_raw('json')``),
whose float32 values are written as shortest round-trip decimals and read
back here exactly (never from the text dump, rounded to 6 digits).
xgboost is imported only for a model that is an XGBoost estimator.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from .common import UnsupportedModel
from .trees import ensemble

RETRAIN = "retrain it with XGBClassifier(objective='binary:logistic', booster='gbtree') or push it as ONNX"


def accepts(clf: Any) -> bool:
    """Any estimator of the xgboost package (checked by name: xgboost may not be installed)."""
    return type(clf).__module__.split(".", 1)[0] == "xgboost"


def convert(clf: Any, path: str, sparse: bool) -> ir.TreeEnsemble:
    where = f"{type(clf).__name__} in step {path!r}"
    if type(clf).__name__ != "XGBClassifier":
        raise UnsupportedModel(f"{where}: only XGBClassifier is supported (binary classification); {RETRAIN}")
    if callable(clf.objective) or clf.objective not in (None, "binary:logistic"):
        raise UnsupportedModel(f"{where}: objective={clf.objective!r} is not supported, only 'binary:logistic'; "
                               f"{RETRAIN}")
    if not (isinstance(clf.missing, float) and math.isnan(clf.missing)):
        raise UnsupportedModel(f"{where}: missing={clf.missing!r} is not supported: pgscore routes NaN and NULL "
                               "as missing values only; retrain it with missing=np.nan (the default)")
    if sparse:
        raise UnsupportedModel(
            f"{where} gets a sparse matrix, in which XGBoost takes every zero for a missing value; make the "
            "preprocessing dense (OneHotEncoder(sparse_output=False), or ColumnTransformer(sparse_threshold=0))")
    booster = clf.get_booster()
    config = json.loads(booster.save_config())["learner"]
    booster_name = config["gradient_booster"]["name"]
    if booster_name != "gbtree" or clf.booster not in (None, "gbtree"):
        name = clf.booster if clf.booster not in (None, "gbtree") else booster_name
        raise UnsupportedModel(f"{where}: booster={name!r} is not supported, only 'gbtree'; {RETRAIN}")
    objective = config["objective"]["name"]
    if objective != "binary:logistic":
        raise UnsupportedModel(f"{where}: objective {objective!r} is not supported, only 'binary:logistic'; {RETRAIN}")
    best = _best_iteration(booster)
    if best is not None:
        booster = booster[: best + 1]  # predict_proba uses the trees up to best_iteration only
    raw = booster.save_raw(raw_format="json")
    model = json.loads(raw, parse_float=Decimal)
    learner = model["learner"]
    trees_model = learner["gradient_booster"]["model"]
    params = learner["learner_model_param"]
    if int(params.get("num_class", "0")) > 1 or int(params.get("num_target", "1")) != 1:
        raise UnsupportedModel(f"{where}: only binary models are supported (one output, no classes beyond two)")
    if int(trees_model["gbtree_model_param"]["num_parallel_tree"]) != 1:
        raise UnsupportedModel(f"{where}: num_parallel_tree > 1 (boosted random forests) is not supported; {RETRAIN}")
    if any(float(w) != 1.0 for w in trees_model.get("weight_drop", [])):
        raise UnsupportedModel(f"{where}: dropout tree weights (DART: rate_drop, skip_drop, one_drop) are not "
                               f"supported; {RETRAIN}")
    if any(group != 0 for group in trees_model["tree_info"]):
        raise UnsupportedModel(f"{where}: only binary models are supported (trees of more than one output group)")
    names = booster.feature_names or [f"column {k} of its input" for k in range(booster.num_features())]
    for k, kind in enumerate(booster.feature_types or []):
        if kind == "c":
            raise UnsupportedModel(f"{where}: feature {names[k]!r} is categorical (enable_categorical=True), which "
                                   "pgscore does not compile; one-hot encode it in the pipeline instead")
    trees = [_tree(tree, names, where) for tree in trees_model["trees"]]
    if not trees:
        raise UnsupportedModel(f"{where} has no trees")
    return ensemble(
        trees,
        estimator="XGBClassifier", combine="xgboost", cast_float32=True,
        missing="route", allow_inf=True, init=base_margin(booster, raw),
    )


def _best_iteration(booster: Any) -> int | None:
    """The booster's best_iteration (set by early stopping), which predict_proba stops at; None without one."""
    try:
        return int(booster.best_iteration)
    except AttributeError:
        return None


def _tree(tree: dict[str, Any], names: list[str], where: str) -> dict[str, np.ndarray]:
    """One tree's node table, its nodes renumbered in the order they are
    reached from the root (a pruned tree keeps deleted nodes in its arrays)."""
    left, right = tree["left_children"], tree["right_children"]
    split = tree["split_indices"]
    if any(kind != 0 for kind in tree.get("split_type", [])):
        node = next(k for k, kind in enumerate(tree["split_type"]) if kind != 0)
        raise UnsupportedModel(f"{where}: feature {names[split[node]]!r} has categorical splits "
                               "(enable_categorical=True), which pgscore does not compile; one-hot encode it in "
                               "the pipeline instead")
    conditions = float32_values(tree["split_conditions"])
    order = [0]
    for node in order:
        if left[node] != -1:
            if right[node] != left[node] + 1:  # the CPU predictor takes left + 1 as the right child
                raise UnsupportedModel(f"{where}: tree {tree['id']} has an unexpected node layout")
            order += [left[node], right[node]]
    index = {node: k for k, node in enumerate(order)}
    inner = np.array([left[node] != -1 for node in order])
    conditions = conditions[order]
    # x < c in float32 is x <= (the float32 just below c) for every float32 x, +-inf included.
    below = np.nextafter(conditions, np.float32(-np.inf)).astype(np.float64)
    return {
        "feature": np.array([split[node] if left[node] != -1 else -1 for node in order]),
        "threshold": np.where(inner, below, 0.0),
        "left": np.array([index[left[node]] if left[node] != -1 else -1 for node in order]),
        "right": np.array([index[right[node]] if left[node] != -1 else -1 for node in order]),
        "missing_left": np.array([bool(tree["default_left"][node]) for node in order]),
        # A leaf's split condition is its value (XGBoost keeps both in one field).
        "value": np.where(inner, 0.0, conditions.astype(np.float64)),
    }


def float32_values(decimals: list[Any]) -> np.ndarray:
    """float32 values from their JSON decimals (Decimal or int), each the
    float32 nearest to the decimal, as XGBoost's own reader parses them.
    Rounding the decimal to float64 first would be double rounding, wrong
    where the decimal lies next to the midpoint of two float32: those few
    are rounded exactly."""
    out = np.array([float(d) for d in decimals], dtype=np.float64).astype(np.float32)
    for k, d in enumerate(decimals):
        nearest = out[k]
        if not math.isfinite(nearest):
            continue
        below, above = np.nextafter(nearest, np.float32(-np.inf)), np.nextafter(nearest, np.float32(np.inf))
        exact = Fraction(d)
        if abs(exact - Fraction(float(nearest))) * 2 <= Fraction(float(above)) - Fraction(float(nearest)) and \
                abs(exact - Fraction(float(nearest))) * 2 <= Fraction(float(nearest)) - Fraction(float(below)):
            continue
        out[k] = min((below, nearest, above), key=lambda c: (abs(exact - Fraction(float(c))),
                                                             int(np.array(c).view(np.uint32)) & 1))
    return out


def base_margin(booster: Any, raw: bytes) -> float:
    """The base margin predict_proba starts every row from: XGBoost keeps
    ``base_score`` as a probability and turns it into a margin with its own
    float32 ``ProbToMargin`` (-logf(1/p - 1), p clipped to [1e-6, 1 - 1e-6])
    when it loads the model. The value is taken from XGBoost itself, so its
    ``logf`` decides the last bit: the same model with every leaf set to 0
    predicts exactly its base margin (x + 0.0 is x in float32)."""
    import xgboost

    # Parsed again with float64 numbers: its splits may move, but every leaf is 0.
    zeroed = json.loads(raw)
    for tree in zeroed["learner"]["gradient_booster"]["model"]["trees"]:
        tree["split_conditions"] = [0.0 if child == -1 else c
                                    for c, child in zip(tree["split_conditions"], tree["left_children"])]
        tree["base_weights"] = [0.0] * len(tree["base_weights"])
    probe = xgboost.Booster()
    probe.load_model(bytearray(json.dumps(zeroed).encode()))
    n_features = booster.num_features()
    margin = probe.inplace_predict(np.zeros((1, n_features), dtype=np.float32), predict_type="margin",
                                   validate_features=False)
    return float(np.asarray(margin, dtype=np.float32).reshape(-1)[0])

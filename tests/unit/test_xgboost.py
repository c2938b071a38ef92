"""XGBoost compiled (pgscore.compile.xgb): the margin is XGBoost's float32 sum
bit for bit, the probability within two float32 ulps of predict_proba (the
bound push checks, pgscore.verify.parity_bound: expf against exp), on random rows with NaN,
on a value equal to every split condition and its float32 neighbours, on
infinities; alone and after scikit-learn preprocessing; and what is refused."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pgscore import verify
from pgscore.compile import UnsupportedModel, compile_model
from pgscore.compile.xgb import float32_values
from pgscore_server import compiled
from pgscore_server.compiled import float32
from pgscore_server.features import to_frame
from pgscore_server.sqlgen import to_sql
from tests.factories import FEATURES, TEXT, telco_rows, training_rows

xgboost = pytest.importorskip("xgboost")

NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "complaint_count"]


def within_bound(got: Any, expected: Any) -> None:
    """The XGBoost bound: |ours - theirs| <= FLOAT32_ULPS float32 ulps of theirs (their float32 probability)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected)
    assert expected.dtype == np.float32
    ulps = verify.FLOAT32_ULP.measure(expected, got)
    assert np.all(ulps <= verify.FLOAT32_ULPS), f"{int(np.sum(ulps > verify.FLOAT32_ULPS))} beyond, worst {np.nanmax(ulps)}"


def numeric_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "tenure_months": rng.integers(0, 72, n).astype(float),
        "monthly_charges": rng.normal(65, 30, n).round(2),
        "total_charges": rng.gamma(2, 1000, n).round(2),
        "complaint_count": rng.poisson(1.0, n).astype(float),
    })
    for name, share in (("total_charges", 0.2), ("monthly_charges", 0.1), ("complaint_count", 0.05)):
        frame.loc[rng.random(n) < share, name] = np.nan
    logit = 1.5 - frame["tenure_months"] / 20 + frame["complaint_count"].fillna(3) - frame["total_charges"].isna()
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, y


@pytest.fixture(scope="module")
def bare() -> Any:
    X, y = numeric_frame(3000, seed=0)
    return xgboost.XGBClassifier(n_estimators=60, max_depth=5, learning_rate=0.2, n_jobs=1, random_state=0).fit(X, y)


def split_conditions(clf: Any) -> dict[int, list[float]]:
    """Model column -> the float32 split conditions of every tree."""
    model = json.loads(clf.get_booster().save_raw(raw_format="json"))
    found: dict[int, set[float]] = {}
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        for node, child in enumerate(tree["left_children"]):
            if child != -1:
                found.setdefault(tree["split_indices"][node], set()).add(float(np.float32(tree["split_conditions"][node])))
    return {k: sorted(v) for k, v in found.items()}


def threshold_rows(clf: Any, base: dict, names: list[str]) -> list[dict]:
    """A row equal to every split condition, and to the float32 just below and above it."""
    rows = []
    for column, conditions in split_conditions(clf).items():
        for c in conditions:
            c32 = np.float32(c)
            for value in (c32, np.nextafter(c32, np.float32(-np.inf)), np.nextafter(c32, np.float32(np.inf))):
                rows.append({**base, names[column]: float(value)})
    return rows


def margins(evaluator: compiled.Evaluator, rows: list[dict]) -> np.ndarray:
    """The compiled form's float32 margins (before the Sigmoid), batch walk."""
    trees = evaluator.model
    trees._numpy_ready()
    return float32.sum_batch(trees.start, trees._walk(trees._prepare(evaluator.features(rows))))


def test_bare_classifier_with_nans_and_every_threshold(bare: Any) -> None:
    X, _ = numeric_frame(2000, seed=1)
    rows = X.to_dict("records")
    base = rows[0]
    edges = threshold_rows(bare, base, NUMERIC)
    edges += [{**base, name: value} for name in NUMERIC for value in (math.nan, None, math.inf, -math.inf, 1e300)]
    assert len(edges) > 300
    evaluator = compiled.load(compile_model(bare).to_bytes())
    assert evaluator.ir.classifier.combine == "xgboost" and verify.parity_bound(evaluator) is verify.FLOAT32_ULP
    for batch in (rows, edges):
        frame = verify.library_frame(bare, batch, NUMERIC)
        # The margin: XGBoost's float32 sum, bit for bit (same leaves, same order, same float32 additions).
        assert np.array_equal(margins(evaluator, batch), bare.predict(frame, output_margin=True))
        expected = bare.predict_proba(frame)[:, 1]
        within_bound(evaluator.predict(batch), expected)
        # One row at a time: generated code for the usual row, the general path for NaN and infinity.
        within_bound([evaluator.predict_one(row) for row in batch[:400]], expected[:400])


def test_infinity_is_a_value_and_none_is_missing(bare: Any) -> None:
    """predict_proba's in-place prediction takes +-inf as values (+inf right, -inf left);
    a float64 beyond float32 is inf once cast. NULL is NaN: the default direction."""
    base = numeric_frame(1, seed=2)[0].to_dict("records")[0]
    rows = [{**base, "total_charges": v} for v in (math.inf, -math.inf, 1e300, -1e300, math.nan, None)]
    expected = bare.predict_proba(verify.library_frame(bare, rows, NUMERIC))[:, 1]
    within_bound(compiled.load(compile_model(bare).to_bytes()).predict(rows), expected)
    assert expected[4] == expected[5]


def test_base_margin_is_probtomargin_of_base_score(bare: Any) -> None:
    """XGBoost keeps base_score as a probability; the margin is its float32 -logf(1/p - 1)."""
    for base_score in (None, 0.3, 0.9999999):
        X, y = numeric_frame(500, seed=3)
        clf = xgboost.XGBClassifier(n_estimators=3, max_depth=2, base_score=base_score, n_jobs=1).fit(X, y)
        p = np.float32(float(json.loads(clf.get_booster().save_config())["learner"]["learner_model_param"]
                             ["base_score"].strip("[]")))
        p = min(max(p, np.float32(1e-6)), np.float32(1) - np.float32(1e-6))
        formula = -np.float32(math.log(np.float32(np.float32(1) / p) - np.float32(1)))
        start = compile_model(clf).ir.classifier.init
        assert start == float(formula)


def test_early_stopping_scores_with_the_best_iteration_only() -> None:
    X, y = numeric_frame(2000, seed=4)
    clf = xgboost.XGBClassifier(n_estimators=300, learning_rate=0.5, max_depth=6, early_stopping_rounds=3, n_jobs=1)
    clf.fit(X[:1500], y[:1500], eval_set=[(X[1500:], y[1500:])], verbose=False)
    assert clf.best_iteration + 1 < 300
    ir = compile_model(clf).ir.classifier
    assert ir.n_trees == clf.best_iteration + 1
    rows = X.to_dict("records")
    within_bound(compiled.load(compile_model(clf).to_bytes()).predict(rows), clf.predict_proba(X)[:, 1])


def test_pipeline_with_onehot_and_scaler() -> None:
    rows, y = training_rows(3000, seed=1)
    numeric = [name for name in FEATURES if name not in TEXT]
    prep = ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(TEXT)),
                              ("numeric", StandardScaler(), numeric)])
    model = Pipeline([("prep", prep), ("clf", xgboost.XGBClassifier(n_estimators=40, max_depth=4, n_jobs=1))])
    model.fit(to_frame(rows, FEATURES), y)
    score_rows = telco_rows(3000, seed=5)
    base = score_rows[0]
    scaler = model.named_steps["prep"].named_transformers_["numeric"]
    offset = sum(len(c) for c in model.named_steps["prep"].named_transformers_["text"].categories_)
    edges = []  # raw values that scale to (around) every split condition: the float32 cast decides the side
    for column, conditions in split_conditions(model.named_steps["clf"]).items():
        k = column - offset
        if k >= 0 and numeric[k] not in ("senior_citizen", "partner", "dependents", "phone_service",
                                         "paperless_billing"):
            for c in conditions:
                raw = c * scaler.scale_[k] + scaler.mean_[k]
                edges += [{**base, numeric[k]: float(v)} for v in (raw, np.nextafter(raw, np.inf),
                                                                      np.nextafter(raw, -np.inf))]
    edges += [{**base, "total_charges": None}, {**base, "contract": "Weekly"}, {**base, "senior_citizen": None}]
    evaluator = compiled.load(compile_model(model).to_bytes())
    for batch in (score_rows, edges):
        expected = model.predict_proba(to_frame(batch, FEATURES))[:, 1]
        within_bound(evaluator.predict(batch), expected)
        within_bound([evaluator.predict_one(row) for row in batch[:300]], expected[:300])
    sql = to_sql(evaluator)
    assert "::float4" in sql and "xgboost" not in sql.lower()


def _fit(X: pd.DataFrame, y: np.ndarray, **params: Any) -> Any:
    return xgboost.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1, **params).fit(X, y)


@pytest.mark.parametrize("params, says", [
    ({"missing": 0.0}, "missing=0.0"),
    ({"booster": "gblinear"}, "booster='gblinear'"),
    ({"booster": "dart", "rate_drop": 0.5}, "dart"),
    ({"objective": "binary:logitraw"}, "binary:logitraw"),
    ({"objective": "binary:hinge"}, "binary:hinge"),
    ({"num_parallel_tree": 3}, "num_parallel_tree"),
])
def test_refusals_name_the_parameter_and_what_to_do(params: dict, says: str) -> None:
    X, y = numeric_frame(300, seed=6)
    with pytest.raises(UnsupportedModel, match="XGBClassifier in step") as refused:
        compile_model(_fit(X, y, **params))
    assert says.lower() in str(refused.value).lower()
    assert "retrain" in str(refused.value)


def test_refusals_of_categorical_multiclass_and_sparse_input() -> None:
    X, y = numeric_frame(600, seed=7)
    X["contract"] = pd.Categorical(np.where(X["tenure_months"] > 30, "Two year", "Month-to-month"))
    with pytest.raises(UnsupportedModel, match="feature 'contract' is categorical"):
        compile_model(_fit(X, y, enable_categorical=True))
    X = X.drop(columns="contract")
    with pytest.raises(UnsupportedModel, match="only binary"):
        compile_model(_fit(X, np.arange(len(X)) % 3))
    rows, labels = training_rows(400, seed=8)
    sparse = Pipeline([("prep", ColumnTransformer([("text", OneHotEncoder(), list(TEXT))], sparse_threshold=1.0)),
                       ("clf", xgboost.XGBClassifier(n_estimators=2, n_jobs=1))]).fit(to_frame(rows, FEATURES), labels)
    with pytest.raises(UnsupportedModel, match="sparse matrix.*zero for a missing value"):
        compile_model(sparse)


def test_library_frame_gives_a_bare_library_model_numbers_and_scikit_learn_the_frame_as_it_is(bare: Any) -> None:
    rows = [{"a": True, "b": 1}, {"a": None, "b": None}]
    frame = verify.library_frame(bare, rows, ["a", "b"])
    assert list(frame.dtypes) == [np.float64, np.float64] and math.isnan(frame["a"][1])
    assert verify.library_frame(StandardScaler(), rows, ["a", "b"])["a"].dtype == object
    scikit = LogisticRegression().fit(pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]}), [0, 0, 1, 1])
    assert verify.parity_bound(compile_model(scikit)) is verify.ABSOLUTE


def test_json_decimals_round_to_the_nearest_float32() -> None:
    """A decimal next to the midpoint of two float32: rounding it to float64 first would land
    on the midpoint and round to even; the nearest float32 is the other one."""
    from decimal import Decimal

    low = np.float32(1.0)
    high = np.nextafter(low, np.float32(2))
    assert Decimal(float(low)) + Decimal(float(high)) == 2 * Decimal("1.000000059604644775390625")  # the midpoint
    just_above = Decimal("1.000000059604644775390625000001")  # float64(just_above) is the midpoint: even, low
    assert np.float32(float(just_above)) == low
    assert float32_values([just_above, Decimal("0.1"), 3])[0] == high
    assert float32_values([Decimal("0.1"), 3]).tolist() == [np.float32(0.1), np.float32(3)]


def test_an_archive_with_infinite_leaves_is_refused(bare: Any) -> None:
    """A crafted XGBoost archive with a +inf and a -inf leaf on one row's
    path: its float32 margin is NaN, which the compiled path's min() kept
    (score NaN) and the SQL's LEAST() did not (score ~0). XGBoost's leaves
    are finite; the reader refuses infinite ones."""
    from pgscore.compile import CompiledModel

    ir_model = compile_model(bare).ir
    manifest, arrays = ir_model.write(lambda v, dtype, shape=None: np.asarray(v, dtype=dtype))
    value, feature, roots = arrays["tree_value"].copy(), arrays["tree_feature"], arrays["tree_roots"]

    def first_leaf(root: int) -> int:
        node = int(root)
        while feature[node] >= 0:
            node = int(arrays["tree_left"][node])
        return node

    value[first_leaf(roots[0])], value[first_leaf(roots[1])] = math.inf, -math.inf
    arrays["tree_value"] = value
    with pytest.raises(ValueError, match="infinite start or leaf value"):
        compiled.load(CompiledModel(manifest, arrays).to_bytes())


def test_dropout_tree_weights_are_refused() -> None:
    """From XGBoost 3.4, dropout (DART) trains gbtree models with tree weights, which pgscore
    refuses; before it (Python 3.11's 3.2) the parameter is ignored and the model compiles exactly."""
    X, y = numeric_frame(300, seed=9)
    model = xgboost.XGBClassifier(n_estimators=10, rate_drop=0.5, n_jobs=1, random_state=0).fit(X, y)
    if tuple(map(int, xgboost.__version__.split(".")[:2])) >= (3, 4):
        with pytest.raises(UnsupportedModel, match="dropout tree weights"):
            compile_model(model)
    else:
        within_bound(compile_model(model).evaluator().predict(X.to_dict("records")),
                     model.predict_proba(X)[:, 1])

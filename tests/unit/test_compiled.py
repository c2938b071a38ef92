"""The compiled scoring path against scikit-learn's predict_proba (no database).

``pgscore.compile`` turns fitted pipelines into numpy-only data and
``pgscore_server.compiled`` scores it; the reference is
``pipeline.predict_proba(to_frame(rows, feature_names))[:, 1]``.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from pgscore.compile import CompiledModel, UnsupportedModel, compile_model
from pgscore_server import compiled
from pgscore_server.features import to_frame
from tests import families
from tests.factories import BOOLS, FEATURES, NUMBERS, TEXT, Row, preprocessing, telco_rows, training_rows
from tests.floats import assert_within_ulps

TOLERANCE = 1e-9

# Unknown categories are part of the edge cases; scikit-learn warns about each.
pytestmark = pytest.mark.filterwarnings("ignore:Found unknown categories:UserWarning")


CLASSIFIERS = {family.name: family.make for family in families.FAMILIES}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """As on the server (OMP_NUM_THREADS=1): HistGradientBoosting's OpenMP pool crawls on a busy machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def train() -> tuple[list[Row], np.ndarray]:
    return training_rows(3000, seed=1)


@pytest.fixture(scope="module")
def score_rows() -> list[Row]:
    return telco_rows(20000, seed=3)


@pytest.fixture(scope="module")
def pipelines(train: tuple[list[Row], np.ndarray]) -> dict[str, Pipeline]:
    rows, y = train
    X = to_frame(rows, FEATURES)
    return {
        name: Pipeline([("prep", preprocessing()), ("clf", make())]).fit(X, y)
        for name, make in CLASSIFIERS.items()
    }


def assert_parity(family: str, got: Any, expected: Any) -> None:
    """``got`` equals predict_proba's ``expected`` within the family's bound
    (pgscore.verify.parity_bound): 1e-9, or two float32 ulps (FLOAT32_ULPS) where the library computes in float32."""
    from pgscore import verify

    bound = verify.FLOAT32_ULP if families.BY_NAME[family].float32 else verify.ABSOLUTE
    assert np.max(bound.measure(expected, got)) <= bound.limit, family


def reference(model: Any, rows: list[Row], features: list[str] = FEATURES) -> np.ndarray:
    return model.predict_proba(to_frame(rows, features))[:, 1]


def roundtrip(model: Any) -> compiled.Evaluator:
    return compiled.load(compile_model(model).to_bytes())


def edge_rows(model: Pipeline) -> list[Row]:
    """Hand-made rows: gaps, unknown categories, extremes, and values that land on tree thresholds."""
    base = telco_rows(1, seed=99)[0]
    rows: list[Row] = [
        {**base, "total_charges": None},
        {**base, "tenure_months": 0, "total_charges": None},
        {**base, "contract": "Three year"},
        {**base, "payment_method": "Bitcoin", "gender": "Other"},
        {**base, "contract": None},
        {**base, "monthly_charges": 1e12, "total_charges": -1e12},
        {**base, "monthly_charges": -1e12, "total_charges": 1e12, "tenure_months": 10**6},
        {**base, "complaint_count": 0},
        {**base, "complaint_count": 250},
        {**base, "senior_citizen": None},
        {**base, "monthly_charges": 65},  # int where a float is usual
        {k: v for k, v in base.items() if k != "total_charges"},  # key missing: NaN
    ]
    prep: ColumnTransformer = model.named_steps["prep"]
    scaler: StandardScaler = prep.named_transformers_["numeric"].named_steps["standardscaler"]
    first_numeric = sum(len(c) for c in prep.named_transformers_["text"].categories_)
    thresholds = _split_points(model.named_steps["clf"])
    for column, threshold in thresholds[:150]:
        k = column - first_numeric
        name = (BOOLS + NUMBERS)[k] if 0 <= k < len(BOOLS + NUMBERS) else None
        if name is None or name in BOOLS:
            continue
        # Raw input that scales back to (around) the threshold: the float32
        # cast then decides the side, as in scikit-learn.
        raw = threshold * scaler.scale_[k] + scaler.mean_[k]
        for value in (raw, np.nextafter(raw, np.inf), np.nextafter(raw, -np.inf)):
            rows.append({**base, name: float(value)})
    return rows


def _split_points(clf: Any) -> list[tuple[int, float]]:
    """(model column, threshold) of the clf's splits, first trees first."""
    points: list[tuple[int, float]] = []
    if isinstance(clf, HistGradientBoostingClassifier):
        for (predictor,) in clf._predictors:
            nodes = predictor.nodes[~predictor.nodes["is_leaf"].astype(bool)]
            points += list(zip(nodes["feature_idx"].tolist(), nodes["num_threshold"].tolist()))
        return points
    if isinstance(clf, GradientBoostingClassifier):
        estimators = list(clf.estimators_[:, 0])
    elif hasattr(clf, "estimators_") or hasattr(clf, "tree_"):
        estimators = list(getattr(clf, "estimators_", [clf]))
    else:
        return points  # not a tree model
    for est in estimators:
        inner = est.tree_.children_left != -1
        points += list(zip(est.tree_.feature[inner].tolist(), est.tree_.threshold[inner].tolist()))
    return points


@pytest.mark.parametrize("family", list(CLASSIFIERS))
def test_parity_with_predict_proba(family: str, pipelines: dict[str, Pipeline], score_rows: list[Row]) -> None:
    model = pipelines[family]
    evaluator = roundtrip(model)
    assert evaluator.feature_names == FEATURES

    expected = reference(model, score_rows)
    got = evaluator.predict(score_rows)
    assert got.shape == expected.shape
    assert_parity(family, got, expected)

    # Tuples in feature order are the fast form of the same rows.
    tuples = [tuple(r[f] for f in FEATURES) for r in score_rows[:2000]]
    assert_within_ulps(evaluator.predict(tuples), got[:2000])

    edges = edge_rows(model)
    assert_parity(family, evaluator.predict(edges), reference(model, edges))

    # One row at a time is its own path (and its own pandas dtype inference).
    for row in edges[:30] + score_rows[:30]:
        expected_one = reference(model, [row])
        assert_parity(family, [evaluator.predict_one(row)], expected_one)
        assert_parity(family, evaluator.predict([row]), expected_one)


@pytest.mark.parametrize("family", families.names(trees=True))
def test_one_row_equals_the_batch(family: str, pipelines: dict[str, Pipeline], score_rows: list[Row]) -> None:
    """predict_one (generated Python from raw values to the leaves for small
    ensembles, the numpy walk for large ones, the general path for rows with
    missing or unusual values) gives the batch's scores to a few ulps (the
    leaves are the same; their sum and exp round as the CPU does), edge rows included."""
    model = pipelines[family]
    evaluator = roundtrip(model)
    small = family in ("gbm", "hgb", "tree", "lgbm")
    assert (evaluator.model.row_code is not None) == small
    assert (evaluator.pipeline_code is not None) == small
    evaluator.warm()  # scoring.warmup compiles the single-row code ahead of the first insert
    if small:
        assert evaluator.pipeline_code._function is not None
    rows = score_rows[:1500] + edge_rows(model)
    batch = evaluator.predict(rows)
    one = np.array([evaluator.predict_one(row) for row in rows])
    if families.BY_NAME[family].float32:  # the same float32 operations, but exp is numpy's in a batch
        assert_parity(family, one, batch.astype(np.float32))
    else:
        assert_within_ulps(one, batch)
    if small:
        # The generated pipeline scores the usual rows itself (it would pass
        # the check above trivially by always handing over to the general path).
        raw = [evaluator.pipeline_code.raw(evaluator._row(row)) for row in score_rows[:1500]]
        assert sum(r is not None for r in raw) >= 1400
        # and refuses what it does not handle: a missing number, an unknown category
        assert evaluator.pipeline_code.raw(evaluator._row({**score_rows[0], "total_charges": None})) is None
        assert evaluator.pipeline_code.raw(evaluator._row({**score_rows[0], "contract": "Weekly"})) is None
        # An int beyond float range: the general path names the feature, as for a batch.
        with pytest.raises(ValueError, match="'tenure_months'"):
            evaluator.predict_one({**score_rows[0], "tenure_months": 10**400})


@pytest.mark.parametrize("family", ["gbm", "rf"])
def test_threaded_batch_walk_gives_the_same_scores(family: str, pipelines: dict[str, Pipeline],
                                                   score_rows: list[Row]) -> None:
    """A large batch walked in several threads (scoring.score_many, rescore)
    scores every row exactly as one thread does, including rows whose
    missing values are imputed, and refuses what one thread refuses."""
    evaluator = roundtrip(pipelines[family])
    rows = score_rows + edge_rows(pipelines[family])
    assert len(rows) >= compiled.THREADED_MIN_ROWS
    columns = [list(column) for column in zip(*(evaluator._row(row) for row in rows))]
    one = evaluator.predict_columns(columns, threads=1)
    for threads in (2, 3):
        assert_within_ulps(evaluator.predict_columns(columns, threads=threads), one)
    columns[FEATURES.index("monthly_charges")][12345] = math.inf  # the imputer and scaler refuse it
    with pytest.raises(ValueError, match="'monthly_charges'"):
        evaluator.predict_columns(columns, threads=2)


@pytest.mark.parametrize("family", ["gbm", "rf"])
def test_a_batch_whose_last_chunk_is_one_row(family: str, pipelines: dict[str, Pipeline],
                                              score_rows: list[Row]) -> None:
    """predict_columns (score_with_model, score_many) of one row, and of a
    batch one row longer than a walk chunk: the walk's node buffer for a
    one-row chunk was numpy's read-only broadcast view ("output array is
    read-only")."""
    evaluator = roundtrip(pipelines[family])
    chunk = max(1, compiled.trees._TREE_CHUNK_CELLS // evaluator.model.n_trees)
    rows = (score_rows * (chunk // len(score_rows) + 2))[:chunk + 1]
    columns = [list(column) for column in zip(*(evaluator._row(row) for row in rows))]
    assert_within_ulps(evaluator.predict_columns([c[:1] for c in columns]), evaluator.predict(rows[:1]))
    assert_within_ulps(evaluator.predict_columns(columns), evaluator.predict(rows))


def test_threads_hand_their_failure_to_the_caller() -> None:
    done: list[int] = []

    def work(part: Any) -> None:
        if 5 in part:
            raise RuntimeError("part with 5 failed")
        done.extend(part)

    with pytest.raises(RuntimeError, match="part with 5"):
        compiled._in_threads(work, range(8), 2)
    assert sorted(done) == [0, 1, 2, 3]  # the other part ran to its end
    done.clear()
    compiled._in_threads(work, [0, 1, 2], 3)
    assert sorted(done) == [0, 1, 2]


def test_one_input_encoded_twice_scores_one_row_like_the_batch(train: tuple[list[Row], np.ndarray],
                                                               score_rows: list[Row]) -> None:
    """A ColumnTransformer may one-hot encode the same column twice: the
    generated single-row function keeps the two codes apart."""
    rows, y = train
    features = ["contract", "payment_method", "tenure_months"]
    prep = ColumnTransformer([("all", OneHotEncoder(handle_unknown="ignore"), ["contract"]),
                              ("dropped", OneHotEncoder(drop="first"), ["contract", "payment_method"]),
                              ("number", "passthrough", ["tenure_months"])])
    model = Pipeline([("prep", prep), ("clf", GradientBoostingClassifier(n_estimators=30, random_state=0))])
    model.fit(to_frame([{k: r[k] for k in features} for r in rows], features), y)
    evaluator = roundtrip(model)
    assert evaluator.pipeline_code is not None
    probe = [{k: r[k] for k in features} for r in score_rows[:400]]
    expected = reference(model, probe, features)
    one = np.array([evaluator.predict_one(row) for row in probe])
    assert_within_ulps(one, evaluator.predict(probe))
    assert np.max(np.abs(one - expected)) <= TOLERANCE


def numeric_frame_rows(n: int, seed: int) -> list[Row]:
    return [{k: r[k] for k in BOOLS + NUMBERS} for r in telco_rows(n, seed)]


@pytest.mark.parametrize("make", [
    lambda: RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0),
    lambda: DecisionTreeClassifier(max_depth=12, random_state=0),
    lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=20, max_depth=8, random_state=0),
], ids=["rf", "tree", "hgb", "extra_trees"])
def test_bare_trees_on_thresholds_and_missing_values(make: Any, train: tuple[list[Row], np.ndarray]) -> None:
    """No preprocessing: raw values sit exactly on thresholds and on their float32 neighbours; NaN is routed."""
    rows, y = train
    features = BOOLS + NUMBERS
    model = make().fit(to_frame([{k: r[k] for k in features} for r in rows], features), y)
    evaluator = roundtrip(model)

    base = numeric_frame_rows(1, seed=5)[0]
    probes: list[Row] = [{**base, "total_charges": None}, {**base, "total_charges": math.nan}]
    for column, threshold in _split_points(model)[:300]:
        name = features[column]
        # An infinite threshold splits "missing" from "present"; inf itself is rejected input.
        if name in BOOLS or not math.isfinite(threshold):
            continue
        f32 = np.float32(threshold)
        candidates = {
            threshold,
            float(np.nextafter(threshold, np.inf)),
            float(np.nextafter(threshold, -np.inf)),
            float(f32),
            float(np.nextafter(f32, np.float32(np.inf))),
            float(np.nextafter(f32, np.float32(-np.inf))),
        }
        probes += [{**base, name: value} for value in sorted(candidates)]
    test_rows = numeric_frame_rows(3000, seed=6) + probes
    assert np.max(np.abs(evaluator.predict(test_rows) - reference(model, test_rows, features))) <= TOLERANCE
    for row in probes[:80]:
        assert abs(evaluator.predict_one(row) - reference(model, [row], features)[0]) <= TOLERANCE


def test_within_a_few_ulps_for_demo_families(pipelines: dict[str, Pipeline], score_rows: list[Row]) -> None:
    """Beyond the 1e-9 contract: the same float operations, in pgscore's order
    and scikit-learn's, agree to a few ulps on any CPU."""
    rows = score_rows[:5000]
    for family in ("lr", "gbm", "rf"):
        model = pipelines[family]
        assert_within_ulps(roundtrip(model).predict(rows), reference(model, rows), what=family)


def test_missing_category_single_row_follows_pandas_inference(train: tuple[list[Row], np.ndarray]) -> None:
    """A learned NaN category: None matches it in a batch of strings, not alone (pandas keeps a lone None)."""
    rows, y = train
    rows = [{**r, "contract": None} if i % 10 == 0 else r for i, r in enumerate(rows)]
    model = Pipeline([("prep", preprocessing()), ("clf", LogisticRegression(max_iter=2000))])
    model.fit(to_frame(rows, FEATURES), y)
    evaluator = roundtrip(model)
    probe = {**telco_rows(1, seed=7)[0], "contract": None}
    batch = [telco_rows(1, seed=8)[0], probe]
    assert np.max(np.abs(evaluator.predict(batch) - reference(model, batch))) <= TOLERANCE
    assert abs(evaluator.predict_one(probe) - reference(model, [probe])[0]) <= TOLERANCE
    # The two contexts really differ, in scikit-learn as in the evaluator.
    assert evaluator.predict(batch)[1] != evaluator.predict_one(probe)


def test_unknown_category_with_handle_unknown_error(train: tuple[list[Row], np.ndarray]) -> None:
    rows, y = train
    model = Pipeline([("prep", preprocessing("error")), ("clf", LogisticRegression(max_iter=2000))])
    model.fit(to_frame(rows, FEATURES), y)
    evaluator = roundtrip(model)
    good = telco_rows(50, seed=11)
    assert np.max(np.abs(evaluator.predict(good) - reference(model, good))) <= TOLERANCE

    bad = {**good[0], "payment_method": "Bitcoin"}
    with pytest.raises(ValueError):
        reference(model, [bad])
    for call in (lambda: evaluator.predict_one(bad), lambda: evaluator.predict(good[:5] + [bad])):
        with pytest.raises(ValueError, match="payment_method") as info:
            call()
        assert "Bitcoin" in str(info.value)


def test_missing_value_reaching_a_model_without_imputer(train: tuple[list[Row], np.ndarray]) -> None:
    rows, y = train
    prep = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), list(TEXT)),
        ("numeric", StandardScaler(), ["tenure_months", "monthly_charges", "complaint_count"]),
    ])
    model = Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=2000))]).fit(to_frame(rows, FEATURES), y)
    evaluator = roundtrip(model)
    bad = {**rows[0], "monthly_charges": None}
    with pytest.raises(ValueError):
        reference(model, [bad])
    with pytest.raises(ValueError, match="monthly_charges"):
        evaluator.predict_one(bad)
    with pytest.raises(ValueError, match="monthly_charges"):
        evaluator.predict(rows[:3] + [bad])
    with pytest.raises(ValueError, match="tenure_months"):
        evaluator.predict_one({**rows[0], "tenure_months": "twelve"})


@pytest.mark.parametrize("numeric, refused", [
    (StandardScaler(), True),
    (StandardScaler(with_mean=False, with_std=False), True),  # changes nothing, still checks
    (SimpleImputer(strategy="median"), True),
    ("passthrough", False),
], ids=["scaler", "no-op scaler", "imputer", "passthrough"])
def test_infinity_is_refused_by_imputer_and_scaler_even_before_a_model_that_accepts_it(
        numeric: Any, refused: bool, train: tuple[list[Row], np.ndarray]) -> None:
    """HistGradientBoosting routes +-inf, but SimpleImputer and StandardScaler
    in front of it refuse it (ensure_all_finite='allow-nan')."""
    rows, y = train
    features = list(TEXT) + NUMBERS
    prep = ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), list(TEXT)),
                              ("numeric", numeric, NUMBERS)])
    model = Pipeline([("prep", prep), ("clf", HistGradientBoostingClassifier(max_iter=20, random_state=0))])
    model.fit(to_frame([{k: r[k] for k in features} for r in rows], features), y)
    evaluator = roundtrip(model)
    ordinary = [{k: r[k] for k in features} for r in rows[:3]]
    for value in (math.inf, -math.inf):
        odd = {**ordinary[0], "monthly_charges": value}
        if refused:
            with pytest.raises(ValueError, match="infinity"):
                reference(model, [odd], features)
            with pytest.raises(ValueError, match="'monthly_charges': value -?inf is infinite"):
                evaluator.predict_one(odd)
            with pytest.raises(ValueError, match="'monthly_charges': value -?inf is infinite"):
                evaluator.predict(ordinary + [odd])
        else:
            expected = reference(model, ordinary + [odd], features)
            assert abs(evaluator.predict_one(odd) - expected[-1]) <= TOLERANCE
            assert np.max(np.abs(evaluator.predict(ordinary + [odd]) - expected)) <= TOLERANCE


def messy_training_frame(rows: list[Row]) -> Any:
    """Training rows with gaps: None in a text column and in a boolean column."""
    rows = [
        {**r, "internet_service": None if i % 17 == 0 else r["internet_service"],
         "partner": None if i % 13 == 0 else r["partner"]}
        for i, r in enumerate(rows)
    ]
    return to_frame(rows, FEATURES)


VARIANTS = {
    # Value-level imputers: strings before the encoder, numbers before scaling.
    "constant_imputer_then_onehot_drop_first": lambda: Pipeline([
        ("prep", ColumnTransformer([
            ("text", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                                   OneHotEncoder(drop="first", handle_unknown="ignore")), list(TEXT)),
            ("numbers", make_pipeline(SimpleImputer(strategy="most_frequent"), StandardScaler()), NUMBERS),
            ("flags", SimpleImputer(strategy="median"), BOOLS),
        ])),
        ("clf", LogisticRegression(max_iter=2000)),
    ]),
    # A learned NaN category (internet_service) meets None alone and in batches;
    # imputers that refuse integer-only or bool-only batches.
    "missing_category_and_typed_imputers": lambda: Pipeline([
        ("prep", ColumnTransformer([
            ("text", OneHotEncoder(handle_unknown="ignore"), list(TEXT)),
            ("charges", make_pipeline(SimpleImputer(strategy="constant", fill_value=0.0), StandardScaler()),
             ["tenure_months", "total_charges"]),
            ("mixed", make_pipeline(SimpleImputer(strategy="most_frequent"), StandardScaler()),
             ["senior_citizen", "monthly_charges"]),
            ("rest", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
             ["complaint_count", "partner", "dependents"]),
        ])),
        ("clf", LogisticRegression(max_iter=2000)),
    ]),
    "passthrough_remainder_nan_to_forest": lambda: Pipeline([
        ("prep", ColumnTransformer(
            [("text", OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(TEXT)),
             ("drop_me", "drop", ["gender"])],
            remainder="passthrough",
        )),
        ("clf", RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0)),
    ]),
    "sgd_on_onehot_of_numbers": lambda: Pipeline([
        ("prep", ColumnTransformer([
            ("codes", OneHotEncoder(handle_unknown="ignore"), ["complaint_count", "senior_citizen", "contract"]),
            ("numeric", make_pipeline(SimpleImputer(), StandardScaler()), ["monthly_charges", "total_charges"]),
        ])),
        ("clf", SGDClassifier(loss="log_loss", random_state=0)),
    ]),
}


ODD_VALUES: dict[str, list[Any]] = {
    "contract": [None, math.nan, "Three year", 1, True],
    "internet_service": [None, "Satellite"],
    "partner": [None, 1, 0.5],
    "senior_citizen": [None, 2],
    "total_charges": [None, math.nan, 1e12, "12.5", "n/a", 1500],
    "complaint_count": [None, 99, 2.0, True],
    "monthly_charges": [None, -1e12, 70, True],
}


def messy_rows(n_random: int, seed: int) -> list[list[Row]]:
    """Batches where values go missing, change type or are unknown.

    Every odd value once alone (a one-row batch: pandas infers the column
    from that value) and once among ordinary rows, then random small batches.
    """
    import random

    rng = random.Random(seed)
    ordinary = telco_rows(3, seed=seed)
    batches = []
    for name, values in ODD_VALUES.items():
        for value in values:
            batches.append([{**ordinary[0], name: value}])
            batches.append([ordinary[1], {**ordinary[0], name: value}, ordinary[2]])
    for _ in range(n_random):
        batch = []
        for row in telco_rows(rng.choice([1, 1, 2, 4]), seed=rng.randrange(10**6)):
            for name, values in ODD_VALUES.items():
                if rng.random() < 0.15:
                    row[name] = rng.choice(values)
                if rng.random() < 0.03:
                    del row[name]
            batch.append(row)
        batches.append(batch)
    return batches


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_agree_on_messy_rows(variant: str, train: tuple[list[Row], np.ndarray]) -> None:
    """Scores agree, and so does failing: the evaluator raises ValueError exactly where scikit-learn raises."""
    rows, y = train
    model = VARIANTS[variant]().fit(messy_training_frame(rows), y)
    evaluator = roundtrip(model)
    failures = 0
    batches = messy_rows(100, seed=sorted(VARIANTS).index(variant))
    for batch in batches:
        try:
            expected: Any = reference(model, batch)
        except (ValueError, TypeError):
            expected = None
        if expected is None:
            failures += 1
            with pytest.raises(ValueError):
                evaluator.predict(batch)
        else:
            assert np.max(np.abs(evaluator.predict(batch) - expected)) <= TOLERANCE, batch
    assert 0 < failures < len(batches)  # both outcomes were exercised


def as_codes(values: list[Any], categories: list[str]) -> compiled.CategoryCodes:
    """A text column as the SQL of pgscore_server.catalog.category_codes codes it."""
    codes = bytes(compiled.CODE_NULL if v is None
                  else compiled.CODE_FIRST + categories.index(v) if v in categories
                  else compiled.CODE_OTHER for v in values)
    return compiled.CategoryCodes(np.frombuffer(codes, dtype=np.uint8))


CODED_VARIANTS = {
    **VARIANTS,
    "unknown_text_is_an_error": lambda: Pipeline([
        ("prep", ColumnTransformer([
            ("text", OneHotEncoder(handle_unknown="error"), ["contract", "internet_service"]),
            ("imputed", make_pipeline(SimpleImputer(strategy="constant", fill_value="none"),
                                      OneHotEncoder(handle_unknown="error")), ["payment_method"]),
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
        ])),
        ("clf", GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)),
    ]),
}


@pytest.mark.parametrize("variant", list(CODED_VARIANTS))
def test_category_codes_score_as_the_strings(variant: str, train: tuple[list[Row], np.ndarray]) -> None:
    """Text columns sent as category codes (what batch reads do) give the
    scores (to a few ulps) and the errors the strings give, wherever the evaluator accepts the
    codes; it declines them only where they cannot say what the strings do:
    an unknown string the model names in its error."""
    import random

    rows, y = train
    model = CODED_VARIANTS[variant]().fit(messy_training_frame(rows), y)
    evaluator = roundtrip(model)
    coded_inputs = evaluator.category_inputs()
    text_inputs = {k for k, name in enumerate(evaluator.feature_names) if name in TEXT}
    assert coded_inputs and set(coded_inputs) <= text_inputs
    rng = random.Random(7)
    odd_values = [None, "Three year", "Satellite", "missing", "none", ""]  # what a text column can hold
    batches = []
    for name in (evaluator.feature_names[k] for k in coded_inputs):
        for value in odd_values:
            batches.append([{**row, name: value} for row in telco_rows(5, seed=len(batches))])  # the whole column
            batches.append(telco_rows(3, seed=len(batches)) + [{**telco_rows(1, seed=9)[0], name: value}])
    for _ in range(150):
        batch = telco_rows(rng.choice([2, 5, 40]), seed=rng.randrange(10**6))
        for row in batch:
            for k in coded_inputs:
                if rng.random() < 0.1:
                    row[evaluator.feature_names[k]] = rng.choice(odd_values)
        batches.append(batch)
    outcomes = {"scored": 0, "raised": 0, "declined": 0}
    for batch in batches:
        columns: list[Any] = [[row[name] for row in batch] for name in evaluator.feature_names]
        try:
            expected: Any = evaluator.predict_columns(columns)
        except ValueError as exc:
            expected = exc
        coded = list(columns)
        for k, categories in coded_inputs.items():
            coded[k] = as_codes(columns[k], categories)
        if not all(evaluator.codes_usable(k, coded[k]) for k in coded_inputs):
            outcomes["declined"] += 1
            assert isinstance(expected, ValueError), batch
            continue
        if isinstance(expected, ValueError):
            outcomes["raised"] += 1
            with pytest.raises(ValueError) as raised:
                evaluator.predict_columns(coded)
            assert str(raised.value) == str(expected)
        else:
            outcomes["scored"] += 1
            assert_within_ulps(evaluator.predict_columns(coded), expected)
            part = slice(1, None)  # batch paths cut codes into chunks
            try:
                strings_part: Any = evaluator.predict_columns([c[part] for c in columns])
            except ValueError as exc:
                strings_part = str(exc)
            try:
                coded_part: Any = evaluator.predict_columns([c[part] for c in coded])
            except ValueError as exc:
                coded_part = str(exc)
            if isinstance(coded_part, np.ndarray):
                assert_within_ulps(coded_part, strings_part)
            else:
                assert coded_part == strings_part
    assert outcomes["scored"], outcomes
    if variant == "unknown_text_is_an_error":
        # A NULL contract is unknown without its string; 'Three year' needs it.
        assert outcomes["raised"] and outcomes["declined"], outcomes


@pytest.mark.parametrize("build, mentions", [
    (lambda: Pipeline([
        ("prep", ColumnTransformer([("log", FunctionTransformer(np.log1p), ["monthly_charges"])])),
        ("clf", LogisticRegression()),
    ]), "FunctionTransformer"),
    (lambda: Pipeline([("prep", preprocessing()), ("clf", KNeighborsClassifier())]), "KNeighborsClassifier"),
    (lambda: Pipeline([
        ("prep", ColumnTransformer([("text", OneHotEncoder(min_frequency=50), list(TEXT))])),
        ("clf", LogisticRegression()),
    ]), "min_frequency"),
], ids=["function_transformer", "knn", "infrequent_categories"])
def test_unsupported_models_say_why(build: Any, mentions: str, train: tuple[list[Row], np.ndarray]) -> None:
    rows, y = train
    model = build().fit(to_frame(rows, FEATURES), y)
    with pytest.raises(UnsupportedModel) as info:
        compile_model(model)
    assert mentions in info.value.reason


def test_multiclass_is_unsupported(train: tuple[list[Row], np.ndarray]) -> None:
    rows, y = train
    labels = y + (np.arange(len(y)) % 3 == 0)
    model = Pipeline([("prep", preprocessing()), ("clf", LogisticRegression(max_iter=500))])
    model.fit(to_frame(rows, FEATURES), labels)
    with pytest.raises(UnsupportedModel, match="binary"):
        compile_model(model)


def test_bytes_are_safe_and_stable(pipelines: dict[str, Pipeline]) -> None:
    model = pipelines["gbm"]
    first = compile_model(model)
    data = first.to_bytes()
    assert isinstance(first, CompiledModel)
    assert first.feature_names == FEATURES
    assert data == compile_model(model).to_bytes()  # same model, same bytes (stable sha256)
    archive = np.load(io.BytesIO(data), allow_pickle=False)
    assert all(archive[name].dtype != object for name in archive.files)
    manifest = json.loads(archive["manifest"].tobytes())
    assert manifest["format"] == compiled.FORMAT and manifest["model"]["kind"] == "trees"
    with pytest.raises(ValueError):
        compiled.load(b"not a model")
    assert compiled.load(data).predict([]).shape == (0,)
    # The server reads the archive without numpy or zipfile: same arrays, damage refused.
    stored = compiled._read_npz(data)
    assert sorted(stored) == sorted(archive.files)
    for name in archive.files:
        assert np.array_equal(np.asarray(stored[name]).astype(archive[name].dtype), archive[name].ravel()), name
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    for damaged in (bytes(flipped), data[:-30], data[: len(data) // 2]):
        with pytest.raises(ValueError, match="not a compiled pgscore model"):
            compiled.load(damaged)


def test_manifest_reader_is_json_loads_without_json(pipelines: dict[str, Pipeline]) -> None:
    """compiled._json_document (json's C scanner, no json import) reads what
    json.loads reads and refuses what it refuses, and NaN, which the loader
    never writes."""
    for family in ("lr", "gbm", "rf", "hgb"):
        archive = np.load(io.BytesIO(compile_model(pipelines[family]).to_bytes()))
        text = archive["manifest"].tobytes().decode("utf-8")
        assert compiled._json_document(text) == json.loads(text)
    for text in ('  {"a": [1, -2.5e-7, "\\u00e9", null, true, false, {}]}\n', "[]", '"x"'):
        assert compiled._json_document(text) == json.loads(text)
    for bad in ("", "   ", '{"a": 1} {}', '{"a": 1', '{"a": NaN}', '[-Infinity]', "{'a': 1}"):
        with pytest.raises(ValueError):
            compiled._json_document(bad)


def test_server_module_needs_only_numpy_and_one_tree_row_not_even_that(tmp_path: Path, pipelines: dict[str, Pipeline]) -> None:
    rows = telco_rows(20, seed=13)
    expected = {}
    for family in ("lr", "gbm", "rf", "hgb"):
        (tmp_path / f"{family}.npz").write_bytes(compile_model(pipelines[family]).to_bytes())
        expected[family] = reference(pipelines[family], rows).tolist()
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import pgscore_server.compiled as compiled
        root = Path({str(tmp_path)!r})
        rows = {rows!r}
        # One row of a tree model (the complaint trigger's work) needs no numpy at all,
        # nor json (which imports re and enum): the server reads the archive itself.
        one = {{family: compiled.load((root / (family + ".npz")).read_bytes()).predict_one(rows[0])
               for family in ("gbm", "rf", "hgb")}}
        numpy_for_one_row = "numpy" in sys.modules
        json_for_one_row = "json" in sys.modules
        import json
        out = {{}}
        for family in ("lr", "gbm", "rf", "hgb"):
            evaluator = compiled.load((root / (family + ".npz")).read_bytes())
            out[family] = evaluator.predict(rows).tolist() + [evaluator.predict_one(rows[0])]
        banned = sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "pandas", "scipy", "pgscore"))
        print(json.dumps({{"banned": banned, "out": out, "one": one, "numpy_for_one_row": numpy_for_one_row,
                          "json_for_one_row": json_for_one_row}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["banned"] == []
    assert report["numpy_for_one_row"] is False
    assert report["json_for_one_row"] is False
    for family, value in report["one"].items():
        assert abs(value - expected[family][0]) <= TOLERANCE
    for family, values in report["out"].items():
        assert np.max(np.abs(np.array(values[:-1]) - expected[family])) <= TOLERANCE
        assert abs(values[-1] - expected[family][0]) <= TOLERANCE


def test_single_row_is_fast(pipelines: dict[str, Pipeline], score_rows: list[Row]) -> None:
    """Generous bounds (targets: ~50 us for LR, < 1 ms for 100 trees); catches gross regressions.

    Best of several rounds, so that a busy machine does not fail the test.
    """
    import time

    rows = score_rows[:100]
    for family, bound in (("lr", 250e-6), ("gbm", 2e-3)):
        evaluator = roundtrip(pipelines[family])
        best = math.inf
        for _ in range(7):
            start = time.perf_counter()
            for row in rows:
                evaluator.predict_one(row)
            best = min(best, (time.perf_counter() - start) / len(rows))
        assert best < bound, (family, best)


def test_every_converter_family_has_a_row_in_the_test_matrix() -> None:
    """tests/families.py lists every family pgscore.compile converts (and no other)."""
    from pgscore.compile.families import FAMILIES as CONVERTERS

    assert {f.converter for f in families.FAMILIES} == {f.name for f in CONVERTERS}


@pytest.mark.parametrize("family", families.names(path="sql"))
def test_families_with_a_sql_path_are_written_as_sql(family: str, pipelines: dict[str, Pipeline]) -> None:
    """The matrix's sql column, without a database (test_sqlgen runs the demo kinds in one)."""
    from pgscore_server.sqlgen import to_sql

    assert to_sql(compile_model(pipelines[family])).startswith(("CASE", "(", "1::float8"))


def test_an_archive_inflating_beyond_the_limit_is_refused_before_it_is_inflated(monkeypatch) -> None:
    """A loader role can write scoring.models.compiled itself: deflate packs ~1,000:1, so the
    server checks what the members declare (and inflates no more than that) first."""
    import zipfile

    from pgscore_server.compiled import archive

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as packed:
        packed.writestr("zeros.npy", b"\0" * (8 << 20))  # 8 MiB, ~8 kB packed
    data = buffer.getvalue()
    assert len(data) < 64 << 10
    monkeypatch.setattr(archive, "MAX_INFLATED_BYTES", 4 << 20)
    with pytest.raises(ValueError, match="arrays exceed 4 MiB"):
        archive._read_npz(data)

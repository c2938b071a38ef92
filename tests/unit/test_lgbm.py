"""LightGBM's LGBMClassifier compiled (pgscore.compile.lgbm): the compiled
evaluator equals LightGBM 4.7.0's own predict_proba to 1e-9 (docs/models-from-other-tools.md)
on random data with NaNs, on values at and around every threshold (the
zero band included), on categorical splits of pandas category and integer
columns, one row at a time and in batches; and what it refuses, it names."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pgscore.compile import CompiledModel, UnsupportedModel, compile_model
from pgscore.compile.lgbm import K_ZERO_THRESHOLD
from pgscore.verify import library_proba
from pgscore_server.compiled import ir

lightgbm = pytest.importorskip("lightgbm")

BOUND = 1e-9  # LightGBM computes in float64 (docs/models-from-other-tools.md)


def _fit(X: pd.DataFrame, y: np.ndarray, **params: Any) -> Any:
    settings = dict(n_estimators=40, num_leaves=15, min_child_samples=3, min_data_per_group=3, cat_smooth=1.0,
                    verbose=-1, random_state=0)
    fit = {"categorical_feature": params.pop("categorical_feature")} if "categorical_feature" in params else {}
    settings.update(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lightgbm.LGBMClassifier(**settings).fit(X, y, **fit)


def _rows(X: pd.DataFrame) -> list[dict]:
    """Rows as the database gives them: NULL as None, numbers as Python numbers."""
    rows = []
    for record in X.astype(object).to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    return rows


def _edge_values(model: Any, feature: int) -> list[float]:
    """Every numeric threshold of ``feature``, the doubles next to it, and the
    values LightGBM treats specially (NaN, zero and its band, infinities)."""
    values = {0.0, -0.0, 1e-36, -1e-36, K_ZERO_THRESHOLD, -K_ZERO_THRESHOLD, math.inf, -math.inf}
    for tree in model.booster_.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" not in node:
                continue
            if node["decision_type"] == "<=" and node["split_feature"] == feature:
                t = float(node["threshold"])
                values |= {t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)}
            stack += [node["left_child"], node["right_child"]]
    for t in list(values):
        values |= {math.nextafter(t, math.inf), math.nextafter(t, -math.inf)}
    return sorted(v for v in values if not math.isnan(v)) + [math.nan]


def _check(model: Any, rows: list[dict]) -> float:
    """Max |compiled - predict_proba| over ``rows``, batch and one by one
    (after an archive round trip, as the server reads it)."""
    compiled = CompiledModel.from_bytes(compile_model(model).to_bytes())
    evaluator = compiled.evaluator()
    names = compiled.feature_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = library_proba(model, rows, names)
        # A row alone, as the trigger scores it: pandas infers a lone row's dtypes
        # its own way where it holds a None (elsewhere alone and together agree).
        alone = expected.copy()
        for k, row in enumerate(rows):
            if None in row.values():
                alone[k] = library_proba(model, [row], names)[0]
    batch = evaluator.predict(rows)
    one = np.array([evaluator.predict_one(r) for r in rows])
    return float(max(np.max(np.abs(batch - expected)), np.max(np.abs(one - alone))))


@pytest.fixture(scope="module")
def numeric() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 1500
    X = pd.DataFrame({
        "a": rng.normal(size=n),
        "b": rng.normal(size=n) * 1e-30,  # splits in and around the zero band
        "c": rng.integers(-5, 6, n).astype(float),  # zeros: thresholds at +-kZeroThreshold
        "d": rng.exponential(size=n),
    })
    X.loc[rng.random(n) < 0.15, "a"] = np.nan  # missing type NaN
    X.loc[rng.random(n) < 0.3, "b"] = 0.0
    y = ((X["a"].fillna(1.0) + (X["b"] > 0) + 0.3 * X["c"] - X["d"] + rng.normal(size=n)) > 0).astype(int)
    return X, y.to_numpy()


def test_numeric_splits_missing_values_and_every_threshold(numeric: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = numeric
    model = _fit(X, y)
    thresholds = {float(t) for tree in model.booster_.dump_model()["tree_info"]
                  for t in [tree["tree_structure"].get("threshold", 0.0)]}
    assert thresholds  # the model has splits
    rows = _rows(X.head(300))
    base = rows[0]
    for k, name in enumerate(X.columns):
        rows += [{**base, name: None if math.isnan(v) else v} for v in _edge_values(model, k)]
    assert _check(model, rows) <= BOUND


def test_thresholds_in_the_zero_band_follow_lightgbm() -> None:
    """LightGBM reads |x| <= kZeroThreshold as 0.0: a split between -1e-35
    and 0 sends the whole band right, one between 0 and 1e-35 left."""
    rng = np.random.default_rng(3)
    n = 800
    b = rng.choice([-1.0, 0.0, 1.0], n)
    X = pd.DataFrame({"b": b, "a": rng.normal(size=n)})
    y = ((b < 0) ^ (rng.random(n) < 0.1)).astype(int)
    model = _fit(X, y, n_estimators=5)
    inner = compile_model(model).ir.classifier
    used = {float(t) for f, t in zip(inner.feature, inner.threshold) if f == 0}
    assert used & {K_ZERO_THRESHOLD, math.nextafter(-K_ZERO_THRESHOLD, -math.inf)}
    rows = [{"b": v, "a": 0.1} for v in _edge_values(model, 0)]
    assert _check(model, rows) <= BOUND


def test_zero_as_missing(numeric: tuple[pd.DataFrame, np.ndarray]) -> None:
    """zero_as_missing=True (missing type Zero): 0.0, the zero band and NaN
    take the default direction; any other value compares."""
    X, y = numeric
    model = _fit(X, y, zero_as_missing=True)
    compiled = compile_model(model)
    assert compiled.ir.classifier.zero_band
    assert compiled.evaluator().pipeline_code is not None  # the generated row code has the band too
    rows = _rows(X.head(300))
    base = rows[1]
    for k, name in enumerate(X.columns):
        rows += [{**base, name: None if math.isnan(v) else v} for v in _edge_values(model, k)]
    assert _check(model, rows) <= BOUND


def test_none_missing_type_reads_nan_as_zero() -> None:
    """Trained without NaN: LightGBM reads a NaN as 0.0 at prediction."""
    rng = np.random.default_rng(4)
    X = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600)})
    y = (X["a"] + 0.5 * X["b"] > 0.1).astype(int).to_numpy()
    model = _fit(X, y)
    rows = [{"a": a, "b": b} for a in (None, 0.0, -0.05, 0.2) for b in (None, 0.0, 1.0)]
    assert _check(model, rows) <= BOUND


@pytest.fixture(scope="module")
def categorical() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(1)
    n = 1500
    plan = rng.choice(["basic", "plus", "pro", "max", "team"], n)
    X = pd.DataFrame({
        "plan": pd.Categorical(plan),
        "region": pd.Categorical(rng.choice(["north", "south", "east"], n)),
        "tenure": rng.integers(0, 60, n),
        "charges": rng.normal(50, 20, n),
    })
    X.loc[rng.random(n) < 0.1, "charges"] = np.nan
    X.loc[rng.random(n) < 0.05, "plan"] = np.nan
    y = ((np.isin(plan, ["plus", "max"]) * 1.5 + (X["region"] == "east") - X["tenure"] / 30
          + rng.normal(size=n)) > 0).astype(int).to_numpy()
    return X, y


def test_pandas_category_columns(categorical: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = categorical
    model = _fit(X, y)
    compiled = compile_model(model)
    assert compiled.ir.classifier.categorical
    assert [c.input for c in compiled.ir.transform.ordinal] == [0, 1]
    rows = _rows(X.head(300))
    base = rows[0]
    for value in ["basic", "plus", "pro", "max", "team", "unseen", "", None]:
        rows.append({**base, "plan": value})
        rows.append({**base, "region": value})
    for value in _edge_values(model, 3):
        rows.append({**base, "charges": None if math.isnan(value) else value})
    assert _check(model, rows) <= BOUND


def test_integer_categorical_feature(categorical: tuple[pd.DataFrame, np.ndarray]) -> None:
    """Integer codes declared categorical: int(x) toward zero, negatives, NaN
    and codes past the bitset go right."""
    X, y = categorical
    X = X.assign(plan=X["plan"].cat.codes.astype(float).replace(-1, np.nan),
                 region=X["region"].cat.codes.astype("int64"))
    model = _fit(X, y, categorical_feature=["plan", "region"])
    compiled = compile_model(model)
    assert compiled.ir.classifier.categorical
    # One row: the generated Python (category sets written in) and the whole pipeline's.
    assert compiled.evaluator().pipeline_code is not None
    rows = _rows(X.head(300))
    base = rows[0]
    for value in [0, 1, 2, 3, 4, 5, 40, 2.5, 0.9, -0.5, -1, -1.0, 1e12, math.inf, -math.inf, None]:
        rows.append({**base, "plan": value})
    for value in [0, 1, 2, 3, -1, 99]:
        rows.append({**base, "region": value})
    assert _check(model, rows) <= BOUND


@pytest.mark.parametrize("sparse_threshold", [0.0, 1.0])  # dense, and a sparse matrix (absent = 0.0 to LightGBM)
def test_pipeline_with_onehot_and_scaler(categorical: tuple[pd.DataFrame, np.ndarray], sparse_threshold: float) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = categorical
    X = X.assign(plan=X["plan"].astype(object).where(X["plan"].notna(), None),
                 region=X["region"].astype(str))
    prep = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["tenure", "charges"]),
    ], sparse_threshold=sparse_threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Pipeline([("prep", prep), ("clf", lightgbm.LGBMClassifier(
            n_estimators=40, num_leaves=15, min_child_samples=3, verbose=-1, random_state=0))]).fit(X, y)
    rows = _rows(X.head(300))
    base = rows[0]
    rows += [{**base, "plan": v} for v in ("unseen", None)] + [{**base, "charges": v} for v in (None, 0.0, 1e6)]
    assert _check(model, rows) <= BOUND


def test_a_frame_lightgbm_reads_as_float32_scores_the_same() -> None:
    """Only bool and category columns: LightGBM's _data_from_pandas makes the
    frame float32, whose values (0/1, small codes) are exact; pgscore's float64 agrees."""
    rng = np.random.default_rng(6)
    X = pd.DataFrame({"flag": rng.random(600) < 0.4, "kind": pd.Categorical(rng.choice(list("abcdefg"), 600))})
    y = (X["flag"] ^ X["kind"].isin(["b", "e"])).astype(int).to_numpy()
    model = _fit(X, y, n_estimators=10)
    rows = _rows(X.head(50)) + [{"flag": None, "kind": "a"}, {"flag": True, "kind": None}, {"flag": False, "kind": "z"}]
    assert _check(model, rows) <= BOUND


def test_pipeline_passing_columns_through_unconverted_is_refused() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(5)
    X = pd.DataFrame({"a": rng.integers(0, 2 ** 26, 400), "b": rng.integers(0, 100, 400)})
    y = (X["a"] % 1000 > 500).astype(int).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Pipeline([("pass", ColumnTransformer([("keep", "passthrough", ["a", "b"])])),
                          ("clf", lightgbm.LGBMClassifier(n_estimators=5, verbose=-1))]).fit(X, y)
    with pytest.raises(UnsupportedModel, match="float32"):
        compile_model(model)


def test_early_stopping_scores_with_the_best_iteration(numeric: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = numeric
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lightgbm.LGBMClassifier(n_estimators=300, learning_rate=0.3, verbose=-1, random_state=0).fit(
            X.iloc[:1000], y[:1000], eval_set=[(X.iloc[1000:], y[1000:])],
            callbacks=[lightgbm.early_stopping(5, verbose=False)])
    assert 0 < model.best_iteration_ < 300
    assert compile_model(model).ir.classifier.n_trees == model.best_iteration_
    assert _check(model, _rows(X.head(200))) <= BOUND


def test_old_archive_layout_is_unchanged_without_categories(numeric: tuple[pd.DataFrame, np.ndarray]) -> None:
    """An all-numeric model writes no new arrays or keys, so archives stay what
    they were (and earlier archives read as all-numeric)."""
    X, y = numeric
    model = _fit(X, y, n_estimators=3)
    manifest, arrays = compile_model(model).ir.write(lambda v, dtype, shape=None: np.asarray(v))
    assert "ordinal" not in manifest["transform"]
    assert not any(name.startswith("tree_category") or name == "tree_zero_missing" for name in arrays)
    assert manifest["model"]["combine"] == "hist_boosting"


def test_categorical_archives_name_a_rule_older_servers_refuse(categorical: tuple[pd.DataFrame, np.ndarray]) -> None:
    """Category sets come with the combine rule 'lightgbm', which a server
    without them does not know (it refuses the archive rather than reading
    categorical nodes as numeric ones); the reader refuses them under any other rule."""
    X, y = categorical
    compiled = compile_model(_fit(X, y, n_estimators=5))
    manifest, arrays = compiled.ir.write(lambda v, dtype, shape=None: np.asarray(v))
    assert manifest["model"]["combine"] == "lightgbm" and "tree_category_set" in arrays
    manifest["model"]["combine"] = "hist_boosting"
    with pytest.raises(ValueError, match="no categorical"):
        ir.Model.read(manifest, arrays)


def test_nodes_sharing_a_category_set_are_refused(categorical: tuple[pd.DataFrame, np.ndarray]) -> None:
    """A crafted archive whose categorical nodes all name one large set: the
    row code and the SQL spell out each node's set, so the work grew with
    nodes x set size (a 6 KB archive took 0.8 GiB and 5 s to load). LightGBM
    gives every categorical node its own set; the reader refuses a shared one."""
    X, y = categorical
    compiled = compile_model(_fit(X, y, n_estimators=5))
    manifest, arrays = compiled.ir.write(lambda v, dtype, shape=None: np.asarray(v))
    sets = arrays["tree_category_set"]
    assert (sets >= 0).sum() > 1
    arrays["tree_category_set"] = np.where(sets >= 0, 0, -1).astype(sets.dtype)
    arrays["tree_category_bounds"] = np.array([0, 100_000], dtype=arrays["tree_category_bounds"].dtype)
    arrays["tree_category_left"] = np.ones(100_000, dtype=arrays["tree_category_left"].dtype)
    with pytest.raises(ValueError, match="name the same category set 0"):
        ir.Model.read(manifest, arrays)


def test_a_set_listing_many_codes_is_neither_written_as_python_nor_as_sql(
        categorical: tuple[pd.DataFrame, np.ndarray]) -> None:
    """A crafted archive whose one categorical node lists 200,000 codes (all
    flags 1, a few KB deflated): the row code compiled each written code
    (3,000,000 took 3 GiB and 8 s on the first row) and the SQL listed them
    all. Over RowCode.MAX_CATEGORY_CODES the general walk scores the row; over
    sqlgen's MAX_CATEGORY_CODES the SQL generator refuses the model."""
    from pgscore_server import compiled as server_compiled
    from pgscore_server.sqlgen import SqlUnsupported, to_sql
    from pgscore_server.sqlgen.trees import MAX_CATEGORY_CODES

    X, y = categorical
    X = X.assign(plan=X["plan"].cat.codes.astype(float).replace(-1, np.nan),
                 region=X["region"].cat.codes.astype("int64"))
    model = _fit(X, y, n_estimators=5, categorical_feature=["plan", "region"])
    ir_model = compile_model(model).ir
    manifest, arrays = ir_model.write(lambda v, dtype, shape=None: np.asarray(v, dtype=dtype))
    bounds, flags = arrays["tree_category_bounds"], arrays["tree_category_left"]
    many = MAX_CATEGORY_CODES * 2
    arrays["tree_category_left"] = np.concatenate([flags[: bounds[-2]], np.ones(many, flags.dtype)])
    arrays["tree_category_bounds"] = np.concatenate([bounds[:-1], [bounds[-2] + many]]).astype(bounds.dtype)
    blob = CompiledModel(manifest, arrays).to_bytes()
    assert len(blob) < 50_000
    evaluator = server_compiled.load(blob)
    assert evaluator.model.row_code is None and evaluator.pipeline_code is None
    row = {name: 1.0 for name in X.columns}
    assert evaluator.predict_one(row) == evaluator.predict([row])[0]
    with pytest.raises(SqlUnsupported, match="too many to write as SQL"):
        to_sql(CompiledModel.from_bytes(blob), "p", column_types={name: "double precision" for name in X.columns})


def test_none_is_never_an_ordinal_category() -> None:
    """An archive listing None among a category column's categories (pandas
    never does): None still reads as NaN, as the docstring and the SQL say."""
    from pgscore_server.compiled import transforms

    column = transforms.OrdinalColumn(ir.OrdinalColumn("pandas_categorical", 0, [None, "a"], 0), ["plan"])
    assert math.isnan(column.value_one(None)) and column.value_one("a") == 1.0


@pytest.mark.parametrize("params, mentions", [  # each refusal names the parameter
    (dict(linear_tree=True), "linear_tree"),
    (dict(objective="cross_entropy"), "objective 'cross_entropy'"),
    (dict(sigmoid=2.0), "sigmoid=2"),
    (dict(boosting_type="rf", bagging_freq=1, bagging_fraction=0.5), "boosting='rf'"),
])
def test_unsupported_lightgbm_models_say_why(numeric: tuple[pd.DataFrame, np.ndarray], params: dict,
                                             mentions: str) -> None:
    X, y = numeric
    X = X.fillna(0.0)
    model = _fit(X, y, n_estimators=5, **params)
    with pytest.raises(UnsupportedModel, match=mentions.replace("(", r"\(")):
        compile_model(model)


def test_multiclass_lightgbm_is_refused(numeric: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = numeric
    model = _fit(X, (X["d"] * 3).astype(int).clip(0, 2).to_numpy(), n_estimators=3)
    with pytest.raises(UnsupportedModel, match="only binary"):
        compile_model(model)


def test_ordered_category_column_is_refused(categorical: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = categorical
    X = X.assign(region=X["region"].cat.as_ordered())
    model = _fit(X, y, n_estimators=5)
    with pytest.raises(UnsupportedModel, match="ordered categories"):
        compile_model(model)

"""LightGBM models end to end: trained on the demo data (text columns as
pandas ``category``, with and without zero_as_missing, and a pipeline whose
StandardScaler hands NaNs on to LightGBM), pushed as format 'compiled', activated as 'churn'; complaints
inserted on the 'compiled' and the 'sql' path store LightGBM's own
predict_proba to 1e-9, and the backend that scored never imported lightgbm."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from pgscore import push_model
from pgscore.dev.demo_data import LABEL_COLUMN, PROFILE_COLUMNS, TEXT_COLUMNS, synthetic_profiles
from pgscore.models import fetch_feature_rows
from pgscore.verify import library_proba
from pgscore_server.features import to_frame
from tests.conftest import drop_category_checks

lightgbm = pytest.importorskip("lightgbm")

BOUND = 1e-9  # LightGBM computes in float64 (docs/models-from-other-tools.md)
CUSTOMERS = list(range(1, 41))


def _profiles() -> tuple[Any, np.ndarray]:
    records = synthetic_profiles(3000, seed=11)
    X = to_frame(records, PROFILE_COLUMNS)
    y = np.array([r[LABEL_COLUMN] for r in records], dtype=int)
    return X, y


def _categorical_model(**params: Any) -> Any:
    """A bare LGBMClassifier on the demo data, its text columns as pandas categories."""
    X, y = _profiles()
    X = X.astype({name: "category" for name in TEXT_COLUMNS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lightgbm.LGBMClassifier(n_estimators=40, num_leaves=15, min_data_per_group=20, cat_smooth=5,
                                       verbose=-1, random_state=0, **params).fit(X, y)


def _pipeline_with_nans() -> Any:
    """One-hot text, scaled numbers with their NaNs left in (total_charges is
    NULL for new customers, more made NULL here), then LightGBM routing them."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = _profiles()
    rng = np.random.default_rng(2)
    X.loc[rng.random(len(X)) < 0.2, "monthly_charges"] = np.nan
    numbers = [c for c in PROFILE_COLUMNS if c not in TEXT_COLUMNS]
    prep = ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), list(TEXT_COLUMNS)),
                              ("num", StandardScaler(), numbers)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Pipeline([("prep", prep), ("clf", lightgbm.LGBMClassifier(
            n_estimators=40, num_leaves=15, verbose=-1, random_state=0))]).fit(X, y)


MODELS = {"categorical": _categorical_model, "pipeline_nans": _pipeline_with_nans,
          # 0 (complaint_count, tenure_months) takes the default direction, as NULL does.
          "zero_as_missing": lambda: _categorical_model(zero_as_missing=True)}


def _expected(model: Any, conn: Any, ids: list[int]) -> dict[int, float]:
    names = list(model.feature_names_in_)
    rows = fetch_feature_rows(conn, names, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = library_proba(model, rows, names)
    return {row["customer_id"]: float(p) for row, p in zip(rows, proba)}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_lightgbm_scores_equal_predict_proba_on_both_paths_without_lightgbm(seeded, kind: str) -> None:
    model = MODELS[kind]()
    with seeded.connect() as admin:
        # Some NULLs the model routes (on top of total_charges' own).
        admin.execute("UPDATE customer_profiles SET monthly_charges = NULL WHERE customer_id % 5 = 0")
        if kind != "pipeline_nans":
            # A value LightGBM never saw: NaN at prediction, as pandas' set_categories makes it.
            drop_category_checks(admin)
            admin.execute("UPDATE customer_profiles SET contract = 'Weekly' WHERE customer_id % 7 = 0")
    result = push_model(seeded.dsn("loader"), model, name="churn", activate=True)
    assert result.format == "compiled"
    assert result.scoring_path == "sql", result.path_note  # the SQL passed the parity check at push
    with seeded.connect() as admin:
        admin.execute("CREATE FUNCTION public.loaded_modules() RETURNS text[] LANGUAGE plpython3u"
                      " AS $$\nimport sys\nreturn sorted(sys.modules)\n$$")
        for path, customers in (("compiled", CUSTOMERS[:20]), ("sql", CUSTOMERS[20:])):
            admin.execute("SELECT scoring.set_scoring_path('churn', %s, %s)", [result.version, path])
            # One customer (the single-row trigger) and the others in one statement.
            admin.execute("INSERT INTO complaints (customer_id, channel) VALUES (%s, 'phone')", [customers[0]])
            admin.execute("INSERT INTO complaints (customer_id, channel) SELECT unnest(%s::bigint[]), 'web'",
                          [customers[1:]])
            stored = dict(admin.execute(
                "SELECT customer_id, churn_score FROM customer_profiles WHERE customer_id = ANY(%s)"
                " AND churn_model_id = %s", [customers, result.model_id]).fetchall())
            expected = _expected(model, admin, customers)
            assert sorted(stored) == sorted(customers), path
            worst = max(abs(stored[c] - expected[c]) for c in customers)
            assert worst <= BOUND, (path, worst)
            # score(bigint) in this backend too.
            one = admin.execute("SELECT scoring.score(%s::bigint)", [customers[0]]).fetchone()[0]
            assert abs(one - expected[customers[0]]) <= BOUND
        modules = admin.execute("SELECT public.loaded_modules()").fetchone()[0]
        assert "pgscore_server.compiled.evaluator" in modules  # this backend scored with the compiled model
        assert not [m for m in modules if m.split(".")[0] in ("lightgbm", "xgboost", "mlflow", "sklearn")]


def test_pandas_categories_read_as_floats_match_an_integer_column_in_sql(db) -> None:
    """A pandas category column made from numbers with a NaN has float
    categories (0.0, 1.0, ...); scored from a bigint column, the compiled
    path and LightGBM match 7 to 7.0, and the SQL must too (it wrote no
    category at all: every row went right)."""
    import pandas as pd

    from pgscore.compile import compile_model
    from pgscore_server.sqlgen import to_sql

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 9, 1500)
    x = rng.normal(size=1500)
    X = pd.DataFrame({"c": pd.Categorical(np.where(rng.random(1500) < 0.1, np.nan, codes)), "x": x})
    y = (((codes % 7) < 3) ^ (x > 0.2)).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, min_data_per_group=3, cat_smooth=1.0,
                                        verbose=-1, random_state=0).fit(X, y)
    assert isinstance(model.booster_.pandas_categorical[0][0], float)
    rows = [{"c": c, "x": v} for c in (None, 0, 3, 7, 8, 9, -1) for v in (-1.0, 0.0, 0.5)]
    expected = library_proba(model, rows, ["c", "x"])
    expression = to_sql(compile_model(model), "p", column_types={"c": "bigint", "x": "double precision"})
    with db.connect() as conn:
        got = [r[0] for r in conn.execute(
            f"SELECT {expression} FROM (VALUES {', '.join(['(%s::bigint, %s::float8)'] * len(rows))}) AS p(c, x)",
            [v for row in rows for v in (row["c"], row["x"])])]
    assert max(abs(g - e) for g, e in zip(got, expected)) <= BOUND

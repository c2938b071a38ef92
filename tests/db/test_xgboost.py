"""XGBoost in the database: an XGBClassifier trained on the demo data (after
scikit-learn preprocessing) and on data with NaNs (alone, missing values
routed by its default directions) is pushed as format 'compiled', activated
as 'churn', and the scores the complaint trigger stores equal XGBoost's own
predict_proba within the model's bound (pgscore.verify.parity_bound), on the
'compiled' and the 'sql' path; the server never imports xgboost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pgscore import push_model, verify
from pgscore.dev.demo_data import LABEL_COLUMN, PROFILE_COLUMNS, TEXT_COLUMNS, synthetic_profiles
from pgscore_server.features import to_frame

xgboost = pytest.importorskip("xgboost")

CUSTOMERS = list(range(1, 41))


def demo_pipeline() -> Pipeline:
    """The demo's preprocessing (dense one-hot: XGBoost takes a sparse zero for a missing value), then XGBoost."""
    numeric = [c for c in PROFILE_COLUMNS if c not in TEXT_COLUMNS]
    preprocess = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(TEXT_COLUMNS)),
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
    ])
    model = Pipeline([("preprocess", preprocess),
                      ("classifier", xgboost.XGBClassifier(n_estimators=100, max_depth=4, n_jobs=1, random_state=0))])
    profiles = synthetic_profiles(3000, seed=0)
    return model.fit(to_frame(profiles, PROFILE_COLUMNS), [row[LABEL_COLUMN] for row in profiles])


def with_nans() -> Any:
    """XGBoost alone on numbers and booleans: total_charges is NULL for new customers, and a
    quarter of monthly_charges is missing too; NaN reaches the trees, which route it."""
    columns = ["tenure_months", "monthly_charges", "total_charges", "complaint_count", "senior_citizen",
               "paperless_billing"]
    profiles = synthetic_profiles(3000, seed=1)
    rng = np.random.default_rng(1)
    for row in profiles:
        if rng.random() < 0.25:
            row["monthly_charges"] = None
    X = to_frame(profiles, columns)
    assert X["total_charges"].isna().any() and X["monthly_charges"].isna().any()
    return xgboost.XGBClassifier(n_estimators=60, max_depth=5, n_jobs=1, random_state=0).fit(
        X, [row[LABEL_COLUMN] for row in profiles])


LOADED_MODULES = """
CREATE FUNCTION public.loaded_modules() RETURNS text[] LANGUAGE plpython3u AS $$
import sys
return sorted(sys.modules)
$$"""


@pytest.mark.parametrize("path", ["compiled", "sql"])
@pytest.mark.parametrize("make", [demo_pipeline, with_nans], ids=["demo_pipeline", "with_nans"])
def test_pushed_xgboost_scores_equal_predict_proba_and_the_server_never_imports_xgboost(seeded, make, path):
    model = make()
    with seeded.connect() as admin:
        admin.execute(LOADED_MODULES)
        if make is with_nans:  # a gap the model routes, in the profiles themselves
            admin.execute("UPDATE customer_profiles SET monthly_charges = NULL WHERE customer_id % 3 = 0")
    result = push_model(seeded.dsn("loader"), model, name="churn", activate=True, scoring_path=path)
    assert (result.format, result.scoring_path) == ("compiled", path)
    assert "float32 ulp" in result.path_note
    bound = verify.FLOAT32_ULP
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) SELECT unnest(%s::bigint[])", [CUSTOMERS])  # several
        app.execute("INSERT INTO complaints (customer_id) VALUES (7)")  # one customer
        # The same backend scored them (the trigger's Python on 'compiled'): no xgboost there, nor on 'sql'.
        modules = app.execute("SELECT public.loaded_modules()").fetchone()[0]
    assert not [m for m in modules if m.split(".")[0] in ("xgboost", "lightgbm", "mlflow")]
    with seeded.connect() as admin:
        stored = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles"
                                    " WHERE customer_id = ANY(%s) AND churn_model_id = %s",
                                    [CUSTOMERS, result.model_id]).fetchall())
        rows = verify.fetch_feature_rows(admin, list(model.feature_names_in_), CUSTOMERS)
        what_if = admin.execute("SELECT scoring.score('churn', to_jsonb(p)) FROM customer_profiles p"
                                " WHERE customer_id = 7").fetchone()[0]
    assert sorted(stored) == CUSTOMERS
    expected = verify.library_proba(model, rows, list(model.feature_names_in_))
    assert expected.dtype == np.float64
    got = np.array([stored[row["customer_id"]] for row in rows])
    # XGBoost's probability is a float32: the bound is measured in its ulps.
    assert np.max(bound.measure(expected.astype(np.float32), got)) <= bound.limit
    by_id = {row["customer_id"]: p for row, p in zip(rows, expected)}
    assert bound.measure(np.float32(by_id[7]), what_if) <= bound.limit


def test_a_joblib_file_of_an_xgboost_pipeline_is_pushed_compiled_only_when_the_pusher_trusts_it(seeded, tmp_path):
    """Compiling needs the live model, so the pickle is unpickled in push's own process: only with
    --i-trust-this-pickle, and then no approval is asked, since the server gets the arrays only."""
    import joblib

    from pgscore import PushError

    path = tmp_path / "xgb.joblib"
    joblib.dump(with_nans(), path)
    with pytest.raises(PushError, match=r"built with xgboost, which push compiles .* push it with --i-trust-this-pickle"):
        push_model(seeded.dsn("loader"), path, name="churn")
    result = push_model(seeded.dsn("loader"), path, name="churn", trust_pickle=True)
    assert result.format == "compiled" and result.scoring_path in ("compiled", "sql")
    with seeded.connect() as admin:
        stored = admin.execute("SELECT format, blob = compiled FROM scoring.models WHERE model_id = %s",
                               [result.model_id]).fetchone()
    assert stored == ("compiled", True)

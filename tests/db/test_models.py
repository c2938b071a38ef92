"""Push refusals (nothing written), hot swap across open sessions, model cache."""

from __future__ import annotations

import joblib
import psycopg
import pytest
from sklearn.preprocessing import StandardScaler

from pgscore import PushError, activate, list_models, push_model
from pgscore.dev.demo_data import train_demo_model
from pgscore_server import runtime
from tests.conftest import local_scores
from tests.factories import untrusted_function_pipeline


def model_count(db) -> int:
    with db.connect() as conn:
        return conn.execute("SELECT count(*) FROM scoring.models").fetchone()[0]


def test_push_refuses_a_file_that_is_not_a_model(seeded, tmp_path):
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(PushError, match="junk.joblib is not a model file: pgscore push expects a fitted"):
        push_model(seeded.dsn("loader"), junk, name="churn")
    assert model_count(seeded) == 0


def test_push_refuses_a_model_without_predict_proba(seeded, tmp_path):
    import pandas as pd

    scaler = StandardScaler().fit(pd.DataFrame({"tenure_months": [1.0, 2.0, 3.0]}))
    path = tmp_path / "scaler.joblib"
    joblib.dump(scaler, path)
    with pytest.raises(PushError, match="has no predict_proba"):
        push_model(seeded.dsn("loader"), path, name="churn")
    assert model_count(seeded) == 0


def test_push_refuses_features_that_are_not_profile_columns(seeded, tmp_path):
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"tenure_months": [1, 5, 30, 60], "shoe_size": [40, 42, 44, 46]})
    model = LogisticRegression().fit(frame, [1, 1, 0, 0])
    with pytest.raises(PushError, match="not columns of public.customer_profiles: shoe_size"):
        push_model(seeded.dsn("loader"), model, name="churn")
    assert model_count(seeded) == 0


def test_push_refuses_a_model_saved_with_another_scikit_learn(seeded, tmp_path, monkeypatch):
    import sklearn.base

    pipeline, _ = train_demo_model(rows=500, kind="logreg")
    monkeypatch.setattr(sklearn.base, "__version__", "1.2.1")  # what the pickle records as its writer
    path = tmp_path / "old.joblib"
    joblib.dump(pipeline, path)
    monkeypatch.undo()
    with pytest.raises(PushError, match=r"saved with scikit-learn 1\.2\.1"):
        push_model(seeded.dsn("loader"), path, name="churn")
    assert model_count(seeded) == 0


def test_server_runtime_mismatch_is_named():
    problems = runtime.incompatibilities({"scikit-learn": "1.9.1", "numpy": "2.4.6"},
                                         {"scikit-learn": "1.2.1", "numpy": "1.24.2"})
    assert problems == ["scikit-learn 1.9.1 (here: 1.2.1)", "numpy 2.4.6 (here: 1.24.2)"]


def test_push_test_scores_real_profiles_and_records_metadata(seeded, model_files):
    result = push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", note="first", metrics={"auc": 0.8})
    assert result.sample_size == 200 and result.max_abs_diff <= 1e-9
    assert not result.activated
    rows = list_models(seeded.dsn("analyst"), "churn")
    assert [(r["version"], r["active"], r["note"], r["metrics"]) for r in rows] == [(1, False, "first", {"auc": 0.8})]
    assert rows[0]["created_by"].startswith("scoring_loader")


def test_activation_takes_effect_in_an_already_open_session(seeded, model_files):
    loader = seeded.dsn("loader")
    v1 = push_model(loader, model_files["logreg"], name="churn", activate=True)
    v2 = push_model(loader, model_files["gbm"], name="churn")
    expected_v1 = local_scores(model_files["logreg"], seeded, [9])[9]
    expected_v2 = local_scores(model_files["gbm"], seeded, [9])[9]
    assert abs(expected_v1 - expected_v2) > 1e-6
    with seeded.connect("analyst") as analyst, seeded.connect("app") as app:
        assert analyst.execute("SELECT scoring.score(9::bigint)").fetchone()[0] == pytest.approx(expected_v1, abs=1e-9)
        app.execute("INSERT INTO complaints (customer_id) VALUES (9)")
        activate(loader, "churn", v2.version)  # from another session
        assert analyst.execute("SELECT scoring.score(9::bigint)").fetchone()[0] != pytest.approx(expected_v1, abs=1e-9)
        app.execute("INSERT INTO complaints (customer_id) VALUES (9)")
    with seeded.connect() as admin:
        model_id, score = admin.execute(
            "SELECT churn_model_id, churn_score FROM customer_profiles WHERE customer_id = 9").fetchone()
    assert model_id == v2.model_id != v1.model_id
    assert score == pytest.approx(local_scores(model_files["gbm"], seeded, [9])[9], abs=1e-9)


def test_activate_unknown_version_names_it(seeded, model_files):
    push_model(seeded.dsn("loader"), model_files["logreg"], name="churn")
    with pytest.raises(psycopg.errors.UndefinedObject, match="model 'churn' has no version 7"):
        activate(seeded.dsn("loader"), "churn", 7)
    with pytest.raises(psycopg.errors.UndefinedObject, match="no model named 'nope' has been pushed"):
        activate(seeded.dsn("loader"), "nope", 1)


def test_database_refuses_a_blob_whose_sha256_is_not_the_recorded_one(seeded):
    with seeded.connect("loader") as loader:
        with pytest.raises(psycopg.errors.CheckViolation):
            loader.execute("INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names)"
                           " VALUES ('churn', 1, 'joblib', 'abc', repeat('0', 64), '{tenure_months}')")


def test_push_stores_skops_by_default_and_the_server_loads_it(seeded, model_files):
    from tests.conftest import local_scores

    result = push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="sklearn")
    with seeded.connect() as admin:
        fmt, path = admin.execute("SELECT format, scoring_path FROM scoring.models WHERE model_id = %s",
                                  [result.model_id]).fetchone()
    with seeded.connect("analyst") as analyst:
        score = analyst.execute("SELECT scoring.score(3::bigint)").fetchone()[0]
    assert (fmt, path) == ("skops", "sklearn")
    assert score == pytest.approx(local_scores(model_files["gbm"], seeded, [3])[3], abs=1e-9)


def test_joblib_only_on_request(seeded, model_files):
    result = push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", format="joblib")
    with seeded.connect() as admin:
        assert admin.execute("SELECT format FROM scoring.models WHERE model_id = %s",
                             [result.model_id]).fetchone()[0] == "joblib"


def test_push_refuses_untrusted_types_in_skops_and_names_them(seeded):
    with pytest.raises(PushError, match=r"types pgscore does not trust in skops format: _operator.neg"):
        push_model(seeded.dsn("loader"), untrusted_function_pipeline(), name="churn")
    assert model_count(seeded) == 0


def test_server_refuses_a_skops_blob_with_untrusted_types(seeded, model_files):
    """Planted by a superuser past push's check: the server refuses it too, naming the types."""
    import skops.io

    model = untrusted_function_pipeline()
    blob = skops.io.dumps(model)
    with seeded.connect() as admin:
        admin.execute(
            "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime)"
            " VALUES ('churn', 1, 'skops', %b, encode(sha256(%b), 'hex'), '{tenure_months,monthly_charges}',"
            " scoring.runtime_info())", [blob, blob])
        admin.execute("SELECT scoring.activate('churn', 1)")
    with seeded.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.ExternalRoutineException, match="does not trust: _operator.neg"):
            analyst.execute("SELECT scoring.score(3::bigint)")


def test_push_scores_rows_as_if_alone_but_in_one_call_where_that_is_the_same():
    """The sql-path check compares the server's SQL with predict_proba of each
    row alone; rows without NULLs go in one call (same dtypes), the others,
    and every row when that call fails, one by one, None where refused."""
    from pgscore.dev.demo_data import synthetic_profiles
    from pgscore.verify import scores_one_by_one
    from pgscore_server.features import to_frame

    model, _ = train_demo_model(rows=2000, seed=0, kind="gbm")
    names = list(model.feature_names_in_)
    rows = [{name: row[name] for name in names} for row in synthetic_profiles(300, seed=4)]
    rows[5] = {**rows[5], "total_charges": None, "contract": None}
    rows[9] = {**rows[9], "tenure_months": "twelve"}  # scikit-learn refuses it, alone or together

    def alone(row):
        try:
            return float(model.predict_proba(to_frame([row], names))[:, 1][0])
        except Exception:  # noqa: BLE001 - scikit-learn refuses the row, whatever the error
            return None

    expected = [alone(row) for row in rows]
    assert expected[9] is None and expected[5] is not None
    assert scores_one_by_one(model, rows, names) == pytest.approx(expected, abs=1e-12, nan_ok=False)
    clean = rows[:5] + rows[10:]
    assert scores_one_by_one(model, clean, names) == pytest.approx([alone(row) for row in clean], abs=1e-12)

"""The 'sql' scoring path: chosen at push, written into the complaint trigger and
score(bigint) by the server from the compiled arrays, switched on activation."""

from __future__ import annotations

import pandas as pd
import psycopg
import pytest
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pgscore import push_model
from pgscore.models import PushError, fetch_feature_rows
from pgscore_server.features import to_frame
from tests.conftest import local_scores

EVIL = "Two year'); DROP TABLE public.complaints; --$$ $body$ $install$"


def trigger_source(db):
    with db.connect() as conn:
        return conn.execute("SELECT prosrc FROM pg_proc WHERE oid = 'scoring._on_complaints_inserted'::regproc"
                            ).fetchone()[0]


def test_auto_puts_a_short_exact_model_on_the_sql_path(seeded, model_files):
    result = push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    assert result.scoring_path == "sql"
    assert "max difference" in result.path_note and "generated rows" in result.path_note
    assert f"for model_id {result.model_id} (scoring_path 'sql')" in trigger_source(seeded)
    with seeded.connect() as admin:
        definition = admin.execute("SELECT prosrc FROM pg_proc WHERE oid = 'scoring.score(bigint)'::regprocedure"
                                   ).fetchone()[0]
    assert "_score_customer_py" not in definition  # no Python at all for score()


def test_a_long_model_stays_compiled_with_the_reason(seeded, model_files, monkeypatch):
    from pgscore_server import paths

    monkeypatch.setattr(paths, "SQL_PATH_MAX_CHARS", 10_000)  # the demo GBM's SQL is ~68 kB
    result = push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True)
    assert result.scoring_path == "compiled"
    assert "not sql" in result.path_note and "characters" in result.path_note
    assert "_score_new_complaints" in trigger_source(seeded)


def test_activation_switches_the_trigger_and_rollback_switches_back(seeded, model_files):
    with seeded.connect() as admin:
        before = dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles").fetchall())
    logreg = push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    gbm = push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="compiled")
    assert "_score_new_complaints" in trigger_source(seeded)
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) VALUES (11), (12), (11)")
    with seeded.connect("loader") as loader:
        loader.execute("SELECT scoring.rollback('churn')")
    assert f"model_id {logreg.model_id}" in trigger_source(seeded)
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) VALUES (11)")
        app.execute("INSERT INTO complaints (customer_id) VALUES (12), (13), (12)")
    expected = local_scores(model_files["logreg"], seeded, [11, 12, 13])
    with seeded.connect() as admin:
        rows = admin.execute("SELECT customer_id, complaint_count, churn_score, churn_model_id,"
                             " scoring.score(customer_id) FROM customer_profiles"
                             " WHERE customer_id IN (11, 12, 13) ORDER BY 1").fetchall()
        # set_scoring_path of the active version rewrites the trigger too.
        admin.execute("SELECT scoring.set_scoring_path('churn', %s, 'compiled')", [logreg.version])
    assert [(r[0], r[1] - before[r[0]]) for r in rows] == [(11, 3), (12, 3), (13, 1)]
    for customer_id, _, score, model_id, fresh in rows:
        assert model_id == logreg.model_id and model_id != gbm.model_id
        assert score == pytest.approx(expected[customer_id], abs=1e-9)
        assert fresh == pytest.approx(expected[customer_id], abs=1e-9)
    assert "_score_new_complaints" in trigger_source(seeded)


def test_forcing_sql_on_a_model_sql_cannot_express_names_the_reason(seeded):
    frame = pd.DataFrame({"tenure_months": [1, 5, 30, 60],
                          "contract": ["Month-to-month", "One year", "Two year", "One year"]})
    from sklearn.impute import SimpleImputer

    model = make_pipeline(make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder()), ["contract"]),
        ("passthrough", ["tenure_months"])), LogisticRegression()).fit(frame, [1, 0, 0, 1])
    with pytest.raises(PushError, match="cannot use the (sql|compiled) path"):
        push_model(seeded.dsn("loader"), model, name="churn", scoring_path="sql")
    with seeded.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == 0


def test_categories_are_literals_in_the_generated_trigger(seeded):
    """A category carrying quotes and dollar tags is data in the generated code, never code."""
    frame = pd.DataFrame({"tenure_months": [1, 5, 30, 60, 2, 70],
                          "contract": ["Month-to-month", EVIL, "One year", EVIL, "Month-to-month", "One year"]})
    model = make_pipeline(make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), ["contract"]), (StandardScaler(), ["tenure_months"])),
        LogisticRegression()).fit(frame, [1, 0, 0, 0, 1, 0])
    result = push_model(seeded.dsn("loader"), model, name="churn", activate=True, scoring_path="sql")
    assert result.scoring_path == "sql"
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) VALUES (21)")
    with seeded.connect() as admin:
        score = admin.execute("SELECT churn_score FROM customer_profiles WHERE customer_id = 21").fetchone()[0]
        # score_many's query is quoted once more inside its function: still data.
        many = admin.execute("SELECT score FROM scoring.score_many(ARRAY[21]::bigint[])").fetchone()[0]
        rows = fetch_feature_rows(admin, ["tenure_months", "contract"], [21])
        assert admin.execute("SELECT count(*) FROM complaints").fetchone()[0] == 1
    expected = model.predict_proba(to_frame(rows, ["tenure_months", "contract"]))[0, 1]
    assert score == pytest.approx(expected, abs=1e-9)
    assert many == pytest.approx(expected, abs=1e-9)


def test_sql_path_rejection_raises_from_score_and_names_the_feature(seeded):
    frame = pd.DataFrame({"tenure_months": [1, 5, 30, 60], "contract": ["Month-to-month", "One year"] * 2})
    model = make_pipeline(make_column_transformer(
        (OneHotEncoder(handle_unknown="error"), ["contract"]), ("passthrough", ["tenure_months"])),
        LogisticRegression()).fit(frame, [1, 0, 0, 1])
    with seeded.connect() as admin:
        admin.execute("UPDATE customer_profiles SET contract = 'One year' WHERE contract = 'Two year'")
    push_model(seeded.dsn("loader"), model, name="churn", activate=True, scoring_path="sql")
    with seeded.connect() as admin:
        admin.execute("UPDATE customer_profiles SET contract = 'Two year' WHERE customer_id = 9")
    with seeded.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.ExternalRoutineInvocationException, match="'contract'.*Two year"):
            analyst.execute("SELECT scoring.score(9::bigint)")
        with pytest.raises(psycopg.errors.NoDataFound, match="customer_id 99999"):
            analyst.execute("SELECT scoring.score(99999::bigint)")


def test_rescore_on_the_sql_path_equals_predict_proba(seeded, model_files):
    push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    with psycopg.connect(seeded.dsn("loader"), autocommit=True) as loader:
        loader.execute("CALL scoring.rescore('churn', 70)")
    with seeded.connect() as admin:
        stored = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles").fetchall())
    expected = local_scores(model_files["logreg"], seeded, list(stored))
    assert len(stored) == 300
    assert max(abs(stored[c] - expected[c]) for c in stored) <= 1e-9


def test_score_many_on_the_sql_path_is_plain_sql_with_the_same_contract(seeded, model_files):
    push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    expected = local_scores(model_files["logreg"], seeded, [4, 9, 2])
    with seeded.connect("analyst") as analyst:
        rows = analyst.execute("SELECT * FROM scoring.score_many(ARRAY[9, 4, 9, 2]::bigint[])").fetchall()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="contains NULL"):
            analyst.execute("SELECT * FROM scoring.score_many(ARRAY[1, NULL]::bigint[])")
        with pytest.raises(psycopg.errors.NoDataFound, match=r"customer_ids 1001, .*, 1010 and 2 more"):
            analyst.execute("SELECT * FROM scoring.score_many(ARRAY[3] || ARRAY(SELECT generate_series(1001, 1012)))")
        assert analyst.execute("SELECT count(*) FROM scoring.score_many(NULL)").fetchone()[0] == 0
    with seeded.connect() as admin:
        source = admin.execute("SELECT prosrc FROM pg_proc WHERE oid = 'scoring.score_many'::regproc").fetchone()[0]
    assert "_score_bits_py(customer_ids, model_name)" in source and "WITH ORDINALITY" in source
    assert [r[0] for r in rows] == [9, 4, 9, 2]
    for customer_id, score in rows:
        assert score == pytest.approx(expected[customer_id], abs=1e-9)


def test_score_many_of_a_range_of_ids_on_the_sql_path(seeded, model_files):
    """Every id from a first to a last, ascending, walks the primary key
    instead of joining: the same rows and scores as any other order, and a
    missing profile in the range is named as there."""
    push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    expected = local_scores(model_files["logreg"], seeded, range(1, 301))
    with seeded.connect("analyst") as analyst:
        ranged = analyst.execute("SELECT * FROM scoring.score_many(ARRAY(SELECT generate_series(1, 300)))").fetchall()
        one = analyst.execute("SELECT * FROM scoring.score_many(ARRAY[7]::bigint[])").fetchall()
        descending = analyst.execute("SELECT * FROM scoring.score_many(ARRAY(SELECT generate_series(300, 1, -1)))").fetchall()
        shifted = analyst.execute("SELECT * FROM scoring.score_many('[0:2]={5,6,7}'::bigint[])").fetchall()
        with pytest.raises(psycopg.errors.NoDataFound, match=r"customer_ids 301, 302, 303"):
            analyst.execute("SELECT * FROM scoring.score_many(ARRAY(SELECT generate_series(290, 303)))")
        # Ids too far apart for bigint arithmetic: the join, no overflow.
        with pytest.raises(psycopg.errors.NoDataFound,
                           match="customer_ids -9223372036854775808, 9223372036854775807"):
            analyst.execute("SELECT * FROM scoring.score_many(ARRAY[-9223372036854775808, 9223372036854775807]::bigint[])")
    assert [r[0] for r in ranged] == list(range(1, 301))
    assert [r[0] for r in descending] == list(range(300, 0, -1))
    assert [r[0] for r in shifted] == [5, 6, 7] and [r[0] for r in one] == [7]
    for customer_id, score in ranged + descending + shifted + one:
        assert score == pytest.approx(expected[customer_id], abs=1e-9)
    assert dict(ranged) == dict(descending)


@pytest.mark.parametrize("path", ["sql", "compiled"])
def test_infinity_is_refused_where_a_scaler_sees_it_and_routed_where_none_does(seeded, path):
    """A double precision feature holding +-Infinity: StandardScaler refuses it
    in scikit-learn, so both paths must refuse it (naming the feature), even
    for HistGradientBoosting, which itself accepts infinity and routes it."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    names = ["usage_ratio", "contract"]
    with seeded.connect() as admin:
        admin.execute("ALTER TABLE customer_profiles ADD COLUMN usage_ratio double precision")
        admin.execute("UPDATE customer_profiles SET usage_ratio = (customer_id % 37) / 7.0")
        rows = fetch_feature_rows(admin, names, list(range(1, 301)))
    frame = to_frame(rows, names)
    labels = [int(r["usage_ratio"] > 2.5) for r in rows]
    infinite = [{**rows[6], "usage_ratio": float("inf")}, {**rows[7], "usage_ratio": float("-inf")}]

    def hgb(numeric):
        return make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["contract"]),
                                                     (numeric, ["usage_ratio"])),
                             HistGradientBoostingClassifier(max_iter=15, random_state=0)).fit(frame, labels)

    scaled = hgb(StandardScaler())
    with pytest.raises(ValueError, match="infinity"):
        scaled.predict_proba(to_frame(infinite[:1], names))
    # Pushed while every profile is finite: push test-scores real profiles and
    # refuses a model that cannot score them.
    push_model(seeded.dsn("loader"), scaled, name="churn", activate=True, scoring_path=path)
    with seeded.connect() as admin:
        admin.execute("UPDATE customer_profiles SET usage_ratio = 'Infinity' WHERE customer_id = 7")
        admin.execute("UPDATE customer_profiles SET usage_ratio = '-Infinity' WHERE customer_id = 8")
    with seeded.connect("analyst") as analyst:
        for customer_id in (7, 8):
            with pytest.raises(psycopg.errors.ExternalRoutineInvocationException, match="'usage_ratio'.*infinite"):
                analyst.execute("SELECT scoring.score(%s::bigint)", [customer_id])
        assert analyst.execute("SELECT scoring.score(9::bigint)").fetchone()[0] == pytest.approx(
            scaled.predict_proba(to_frame([rows[8]], names))[0, 1], abs=1e-9)

    passthrough = hgb("passthrough")
    push_model(seeded.dsn("loader"), passthrough, name="churn", activate=True, scoring_path=path)
    expected = passthrough.predict_proba(to_frame(infinite, names))[:, 1]
    with seeded.connect("analyst") as analyst:
        got = [analyst.execute("SELECT scoring.score(%s::bigint)", [c]).fetchone()[0] for c in (7, 8)]
    assert got == pytest.approx(list(expected), abs=1e-9)


def test_one_customer_of_a_long_model_is_scored_by_python_inside_the_generated_trigger(seeded, model_files):
    """The demo GBM's SQL (~68 kB) would be set up anew in every statement: one
    customer goes through scoring._score_profile, several through the SQL."""
    gbm = push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="sql")
    assert gbm.scoring_path == "sql"
    source = trigger_source(seeded)
    one, many = source.split("ELSIF v_rows > 0 THEN")
    assert "scoring._score_profile(" in one and "scoring._score_profile(" not in many
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) VALUES (31)")
        app.execute("INSERT INTO complaints (customer_id) VALUES (32), (33), (32)")
    expected = local_scores(model_files["gbm"], seeded, [31, 32, 33])
    with seeded.connect() as admin:
        rows = admin.execute("SELECT customer_id, churn_score, churn_model_id FROM customer_profiles"
                             " WHERE customer_id IN (31, 32, 33) ORDER BY 1").fetchall()
    for customer_id, score, model_id in rows:
        assert model_id == gbm.model_id
        assert score == pytest.approx(expected[customer_id], abs=1e-9)
    # Batches of a long expression are scored with the compiled arrays in
    # Python: score_many keeps input order and duplicates, rescore writes
    # the same scores, and score(bigint) stays SQL.
    with seeded.connect("analyst") as analyst:
        many = analyst.execute("SELECT * FROM scoring.score_many(ARRAY[33, 31, 33, 32]::bigint[])").fetchall()
        with pytest.raises(psycopg.errors.NoDataFound, match="customer_id 4242"):
            analyst.execute("SELECT * FROM scoring.score_many(ARRAY[31, 4242]::bigint[])")
    with seeded.connect() as admin:
        source = admin.execute("SELECT prosrc FROM pg_proc WHERE oid = 'scoring.score_many'::regproc").fetchone()[0]
        assert "scoring._score_bits_py(" in source and "Generated by pgscore_server.sqlpath" not in source
        assert "Generated by pgscore_server.sqlpath" in admin.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'scoring.score(bigint)'::regprocedure").fetchone()[0]
    assert [c for c, _ in many] == [33, 31, 33, 32]
    for customer_id, score in many:
        assert score == pytest.approx(expected[customer_id], abs=1e-9)
    with seeded.connect("loader", autocommit=True) as loader:
        loader.execute("CALL scoring.rescore('churn', 7)")
    expected = local_scores(model_files["gbm"], seeded, range(1, 301))
    with seeded.connect() as admin:
        rescored = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles").fetchall())
    assert max(abs(rescored[c] - expected[c]) for c in expected) <= 1e-9


def test_compiled_model_gets_a_generated_trigger_that_calls_python_only_to_score(seeded, model_files):
    result = push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True,
                        scoring_path="compiled")
    source = trigger_source(seeded)
    one, many = source.split("ELSIF v_rows > 0 THEN")
    assert f"scoring._score_profile({result.model_id}, p.customer_id, '" in one
    assert "scoring._score_new_complaints(" in many
    with seeded.connect() as admin:
        # The row function is the owner's: no role may call it directly.
        callers = admin.execute(
            "SELECT r.rolname FROM pg_roles r WHERE r.rolname LIKE 'scoring%' AND r.rolname <> 'scoring_owner'"
            " AND has_function_privilege(r.oid, 'scoring._score_profile(bigint, bigint, text,"
            " double precision[], bigint[], boolean[], text[])', 'EXECUTE')").fetchall()
    assert callers == []


def test_a_backend_that_scored_with_scikit_learn_switches_to_the_compiled_form(seeded, model_files):
    """A pooled connection keeps its models across a path change: the row
    scorer must not go on with the scikit-learn copy it loaded before."""
    result = push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True,
                        scoring_path="compiled")
    with seeded.connect() as conn:
        conn.execute("SELECT scoring.set_scoring_path('churn', %s, 'sklearn')", [result.version])
        conn.execute("SELECT scoring.score(31::bigint)")  # this backend now holds the scikit-learn copy
        conn.execute("SELECT scoring.set_scoring_path('churn', %s, 'compiled')", [result.version])
        conn.execute("INSERT INTO complaints (customer_id) VALUES (32)")
        held = []
        conn.add_notice_handler(lambda d: held.append(d.message_primary))
        conn.execute(f"DO $$ plpy.notice(type(GD['pgscore.models'][{result.model_id}].estimator).__name__) $$"
                     " LANGUAGE plpython3u")
        score, model_id = conn.execute(
            "SELECT churn_score, churn_model_id FROM customer_profiles WHERE customer_id = 32").fetchone()
    assert held == ["Evaluator"]
    assert model_id == result.model_id
    assert score == pytest.approx(local_scores(model_files["gbm"], seeded, [32])[32], abs=1e-9)


def test_altering_the_profiles_rewrites_the_generated_functions_or_is_refused(seeded, model_files):
    """Generated code names the model's columns: dropping one the active sql
    model reads is refused (naming it and the scorer), and so is retyping a feature."""
    gbm = push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="sql")
    assert gbm.scoring_path == "sql"
    # The scorer's trigger depends on the column, and with CASCADE the scorer refuses (docs/scorers.md).
    with seeded.connect() as admin, pytest.raises(psycopg.errors.DependentObjectsStillExist) as refused:
        admin.execute("ALTER TABLE customer_profiles DROP COLUMN contract")
    assert "contract" in refused.value.diag.message_primary
    assert "pgscore_churn_features" in refused.value.diag.message_detail
    with seeded.connect() as admin, pytest.raises(psycopg.errors.DependentObjectsStillExist,
                                                  match='scorer churn uses column contract'):
        admin.execute("ALTER TABLE customer_profiles DROP COLUMN contract CASCADE")
    with seeded.connect() as admin:
        admin.execute("ALTER TABLE customer_profiles ADD COLUMN region text")  # not a feature: harmless
        before = trigger_source(seeded)
        admin.execute("ALTER TABLE customer_profiles ALTER COLUMN region TYPE varchar(20)")
    assert trigger_source(seeded) == before
    # A feature's type is fixed while a scorer's trigger lists it (docs/scorers.md: detach, alter, attach).
    with seeded.connect() as admin, pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        admin.execute("ALTER TABLE customer_profiles ALTER COLUMN total_charges TYPE double precision")
    assert "pgscore_churn_features" in refused.value.diag.message_detail
    assert "total_charges" in refused.value.diag.message_detail
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) VALUES (41)")
        app.execute("INSERT INTO complaints (customer_id) VALUES (42), (43)")
    expected = local_scores(model_files["gbm"], seeded, [41, 42, 43])
    with seeded.connect() as admin:
        stored = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles"
                                    " WHERE customer_id IN (41, 42, 43)").fetchall())
    assert stored == pytest.approx(expected, abs=1e-9)

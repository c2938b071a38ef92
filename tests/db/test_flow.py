"""The whole flow as the three roles use it: push, insert complaints, score."""

from __future__ import annotations

import psycopg
import pytest

from pgscore import push_model
from tests.conftest import local_scores


@pytest.fixture(params=["sql", "compiled"])
def scored(seeded, model_files, request):
    """The demo logreg pushed and active, on the sql path (auto's choice for
    it: generated PL/pgSQL) and on the compiled Python path."""
    result = push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True,
                        scoring_path=request.param)
    assert result.scoring_path == request.param, result.path_note
    return seeded


def profile(conn, customer_id):
    return conn.execute(
        "SELECT complaint_count, churn_score, churn_model_id, churn_scored_at FROM customer_profiles"
        " WHERE customer_id = %s", [customer_id]).fetchone()


def test_complaint_increments_counter_and_rescores(scored, model_files):
    with scored.connect("app") as app, scored.connect() as admin:
        before = profile(admin, 7)
        app.execute("INSERT INTO complaints (customer_id, channel, category, body) VALUES (7, 'phone', 'billing', 'x')")
        count, score, model_id, scored_at = profile(admin, 7)
    assert count == before[0] + 1
    assert model_id == admin_active_model(scored)
    assert scored_at is not None
    assert score == pytest.approx(local_scores(model_files["logreg"], scored, [7])[7], abs=1e-9)
    assert score > (before[1] or 0.0)  # complaints raise the demo model's churn score


def admin_active_model(db):
    with db.connect() as conn:
        return conn.execute("SELECT model_id FROM scoring.active_models WHERE name = 'churn'").fetchone()[0]


def test_multi_row_insert_counts_exactly_and_makes_one_model_call(scored):
    rows = [(3,), (3,), (5,), (3,), (8,)]
    with scored.connect() as admin:
        counts = dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles"
                                    " WHERE customer_id IN (3, 5, 8)").fetchall())
    with scored.connect("app") as app:
        with app.cursor() as cur:
            cur.execute("INSERT INTO complaints (customer_id) SELECT unnest(%s::bigint[])", [[r[0] for r in rows]])
    with scored.connect() as admin:
        after = dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles"
                                   " WHERE customer_id IN (3, 5, 8)").fetchall())
        scored_at = {r[0] for r in admin.execute(
            "SELECT churn_scored_at FROM customer_profiles WHERE customer_id IN (3, 5, 8)")}
    assert after == {3: counts[3] + 3, 5: counts[5] + 1, 8: counts[8] + 1}
    assert len(scored_at) == 1  # one statement, one transaction, one scoring pass


def test_copy_into_complaints_scores_like_insert(scored, model_files):
    with scored.connect("app") as app:
        with app.cursor().copy("COPY complaints (customer_id, channel) FROM STDIN") as copy:
            for customer_id in (11, 12, 11):
                copy.write_row((customer_id, "email"))
    with scored.connect() as admin:
        got = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles WHERE customer_id IN (11, 12)")
                   .fetchall())
        counts = dict(admin.execute("SELECT customer_id, count(*) FROM complaints GROUP BY 1").fetchall())
    expected = local_scores(model_files["logreg"], scored, [11, 12])
    assert counts == {11: 2, 12: 1}
    for customer_id, score in got.items():
        assert score == pytest.approx(expected[customer_id], abs=1e-9)


def test_no_active_model_still_counts_and_raises_nothing(seeded):
    with seeded.connect() as admin:
        before = profile(admin, 1)[0]
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) VALUES (1), (1)")
    with seeded.connect() as admin:
        count, score, model_id, _ = profile(admin, 1)
        errors = admin.execute("SELECT count(*) FROM scoring.errors").fetchone()[0]
    assert count == before + 2
    assert score is None and model_id is None
    assert errors == 0


def test_unknown_customer_is_a_foreign_key_error_and_nothing_is_written(scored):
    with scored.connect("app") as app:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            app.execute("INSERT INTO complaints (customer_id) VALUES (1), (999999)")
    with scored.connect() as admin:
        assert admin.execute("SELECT count(*) FROM complaints").fetchone()[0] == 0


def test_application_role_only_inserts(scored):
    with scored.connect("app") as app:
        for statement in ("SELECT blob FROM scoring.models", "SELECT scoring.score(1::bigint)",
                          "SELECT scoring.activate('churn', 1)",
                          "UPDATE customer_profiles SET complaint_count = 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)


def test_analyst_scores_and_reads_metadata_but_never_the_blob(scored, model_files):
    with scored.connect("analyst") as analyst:
        score = analyst.execute("SELECT scoring.score(5::bigint)").fetchone()[0]
        versions = analyst.execute("SELECT name, version, sha256 FROM scoring.models").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT blob FROM scoring.models")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT scoring.rollback('churn')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("UPDATE customer_profiles SET churn_score = 0")
    assert versions[0][:2] == ("churn", 1)
    assert score == pytest.approx(local_scores(model_files["logreg"], scored, [5])[5], abs=1e-9)


def test_rescore_writes_every_profile_with_the_active_model(scored, model_files):
    with scored.connect("loader") as loader:
        loader.execute("CALL scoring.rescore('churn', 64)")
    with scored.connect() as admin:
        rows = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles").fetchall())
        model_ids = {r[0] for r in admin.execute("SELECT DISTINCT churn_model_id FROM customer_profiles")}
    expected = local_scores(model_files["logreg"], scored, list(rows))
    assert len(rows) == 300 and model_ids == {admin_active_model(scored)}
    assert max(abs(rows[c] - expected[c]) for c in rows) <= 1e-9


def test_rescore_inside_a_transaction_block_says_how_to_call_it(scored):
    with scored.connect("loader", autocommit=False) as loader:
        with pytest.raises(psycopg.Error, match="cannot run inside a transaction block"):
            loader.execute("CALL scoring.rescore()")


def test_push_then_rollback_walks_history(seeded, model_files):
    loader = seeded.dsn("loader")
    first = push_model(loader, model_files["logreg"], name="churn", activate=True)
    second = push_model(loader, model_files["gbm"], name="churn", activate=True)
    third = push_model(loader, model_files["logreg"], name="churn", activate=True)
    assert (first.version, second.version, third.version) == (1, 2, 3)
    from pgscore import rollback

    assert rollback(loader, "churn") == (second.model_id, 2)
    assert rollback(loader, "churn") == (first.model_id, 1)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no earlier deployment"):
        rollback(loader, "churn")

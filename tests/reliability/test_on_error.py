"""scoring.on_error: a failing model never loses a complaint under 'keep',
and fails the insert under 'raise'."""

from __future__ import annotations

import threading
import time

import pandas as pd
import psycopg
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pgscore import push_model
from tests.conftest import profile_state as state


@pytest.fixture(params=["sql", "compiled"])
def fragile(seeded, request):
    """Active model without an imputer: a profile whose total_charges is NULL makes
    it fail; on the sql path (generated PL/pgSQL) and on the Python path."""
    frame = pd.DataFrame({"tenure_months": [1, 5, 30, 60, 2, 70], "total_charges": [50.0, 300, 2000, 5000, 90, 7000]})
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, [1, 1, 0, 0, 1, 0])
    with seeded.connect() as admin:
        # Keep push's test-scoring sample free of NULLs; profile 42 turns NULL afterwards.
        admin.execute("UPDATE customer_profiles SET total_charges = coalesce(total_charges, 0)")
    push_model(seeded.dsn("loader"), model, name="churn", activate=True, scoring_path=request.param)
    with seeded.connect() as admin:
        # The update itself is a failure to score profile 42 (recorded, the old score stays): start from none.
        admin.execute("UPDATE customer_profiles SET total_charges = NULL WHERE customer_id = 42")
        admin.execute("TRUNCATE scoring.errors RESTART IDENTITY")
        admin.execute("SELECT scoring.score(41::bigint)")
    return seeded


def test_keep_commits_the_complaint_and_records_the_failure(fragile):
    warnings = []
    before = state(fragile, 42)
    with fragile.connect("app") as app:
        app.add_notice_handler(lambda diag: warnings.append((diag.severity_nonlocalized, diag.message_primary)))
        app.execute("INSERT INTO complaints (customer_id) VALUES (42), (41)")
    count, score, model_id, _, complaints = state(fragile, 42)
    assert (count, complaints) == (before[0] + 1, before[4] + 1)
    assert (score, model_id) == before[1:3]  # the old score stays
    assert state(fragile, 41)[1] is not None  # the healthy profile in the same statement was scored
    with fragile.connect() as admin:
        errors = admin.execute("SELECT customer_id, sqlstate, message FROM scoring.errors").fetchall()
    assert len(errors) == 1 and errors[0][0] == 42
    assert "failed to score" in errors[0][2] and ("total_charges" in errors[0][2] or "NaN" in errors[0][2])
    assert "Traceback" not in errors[0][2]
    assert any(sev == "WARNING" and "customer_id 42" in msg for sev, msg in warnings)


def test_a_failure_evaluated_again_under_a_concurrent_insert_is_recorded_once(fragile):
    """When a concurrent insert for the same customer commits first, PostgreSQL
    evaluates the trigger's UPDATE again on the newer row version
    (EvalPlanQual): the failing score of one insert is still one error row."""
    before = state(fragile, 42)
    with fragile.connect("app", autocommit=False) as first, fragile.connect("app") as second:
        first.execute("INSERT INTO complaints (customer_id) VALUES (42)")  # holds 42's profile until commit
        waiting_pid = second.execute("SELECT pg_backend_pid()").fetchone()[0]
        waiter = threading.Thread(target=second.execute, args=("INSERT INTO complaints (customer_id) VALUES (42)",))
        waiter.start()
        with fragile.connect() as admin:
            for _ in range(400):
                waits = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                      [waiting_pid]).fetchone()[0]
                if waits == "Lock":
                    break
                time.sleep(0.025)
        assert waits == "Lock"  # the second insert scored the old version and waits for the first
        first.commit()
        waiter.join(30)
        assert not waiter.is_alive()
    assert state(fragile, 42)[0] == before[0] + 2
    with fragile.connect() as admin:
        recorded = admin.execute("SELECT count(*) FROM scoring.errors WHERE customer_id = 42").fetchone()[0]
    assert recorded == 2


def test_raise_fails_the_insert_and_writes_nothing(fragile):
    before = state(fragile, 42)
    with fragile.connect("app") as app:
        app.execute("SET scoring.on_error = 'raise'")
        with pytest.raises(psycopg.errors.ExternalRoutineInvocationException, match="failed to score"):
            app.execute("INSERT INTO complaints (customer_id) VALUES (42)")
    assert state(fragile, 42) == before
    with fragile.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring.errors").fetchone()[0] == 0


CORRUPTIONS = {
    "blob": ("UPDATE scoring.models SET blob = '\\x0badbeef', sha256 = encode(sha256('\\x0badbeef'), 'hex'),"
             " scoring_path = 'sklearn'", "could not be loaded"),
    "compiled": ("UPDATE scoring.models SET compiled = '\\x0badbeef', scoring_path = 'compiled'",
                 "compiled form cannot be read"),
}


@pytest.mark.parametrize("policy", ["keep", "raise"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_model(scored, corruption, policy):
    plant, message = CORRUPTIONS[corruption]
    with scored.connect() as admin:
        admin.execute(plant)
    before = state(scored, 5)
    with scored.connect("app") as app:
        app.execute(f"SET scoring.on_error = '{policy}'")
        if policy == "raise":
            with pytest.raises(psycopg.errors.ExternalRoutineException, match=message):
                app.execute("INSERT INTO complaints (customer_id) VALUES (5)")
            assert state(scored, 5) == before
            return
        app.execute("INSERT INTO complaints (customer_id) VALUES (5)")
    assert state(scored, 5)[0] == before[0] + 1
    with scored.connect() as admin:
        assert message in admin.execute("SELECT message FROM scoring.errors").fetchone()[0]


def test_bad_on_error_value_is_named_when_scoring_fails(fragile):
    with fragile.connect("app") as app:
        app.execute("SET scoring.on_error = 'ignore'")
        app.execute("INSERT INTO complaints (customer_id) VALUES (41)")  # scoring works: setting not consulted
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be 'keep' or 'raise'"):
            app.execute("INSERT INTO complaints (customer_id) VALUES (42)")


def test_compiled_model_never_unpickles_its_blob(scored, model_files):
    """With the compiled path the blob is not even read: a corrupt one changes nothing."""
    with scored.connect() as admin:
        admin.execute("SELECT scoring.set_scoring_path('churn', 1, 'compiled')")
        admin.execute("UPDATE scoring.models SET blob = '\\x0badbeef', sha256 = encode(sha256('\\x0badbeef'), 'hex')")
    with scored.connect("app") as app:
        app.execute("SET scoring.on_error = 'raise'")
        app.execute("INSERT INTO complaints (customer_id) VALUES (5)")
    from tests.conftest import local_scores

    with scored.connect() as admin:
        score = admin.execute("SELECT churn_score FROM customer_profiles WHERE customer_id = 5").fetchone()[0]
    assert score == pytest.approx(local_scores(model_files["logreg"], scored, [5])[5], abs=1e-9)

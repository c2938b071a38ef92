"""8 concurrent clients inserting complaints for 10 hot customers: exact
counters and no deadlocks, single-row and multi-row (5 random customers,
in random order, per statement); and the same clients beside a session
rescoring every profile over and over."""

from __future__ import annotations

import collections
import random
import threading
import time

import psycopg
import pytest

CLIENTS = 8
HOT = list(range(1, 11))
STATEMENTS_PER_CLIENT = 40
TIME_LIMIT = 60.0  # seconds; the load stops by itself


def hammer(db, rows_per_statement: int) -> tuple[int, list[BaseException]]:
    errors: list[BaseException] = []
    inserted = [0] * CLIENTS
    start = threading.Barrier(CLIENTS)

    def client(index: int) -> None:
        rng = random.Random(index)
        deadline = time.monotonic() + TIME_LIMIT
        try:
            with psycopg.connect(db.dsn("app"), autocommit=True) as conn:
                conn.execute("SET scoring.on_error = 'raise'")  # any scoring failure must surface here
                start.wait()
                for _ in range(STATEMENTS_PER_CLIENT):
                    if time.monotonic() > deadline:
                        break
                    customers = rng.sample(HOT, rows_per_statement)  # random order on purpose
                    conn.execute(
                        "INSERT INTO complaints (customer_id, channel) SELECT unnest(%s::bigint[]), 'chat'",
                        [customers])
                    inserted[index] += len(customers)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIME_LIMIT + 30)
    return sum(inserted), errors


def counts(db) -> dict[int, int]:
    with db.connect() as admin:
        return dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles"
                                  " WHERE customer_id = ANY(%s)", [HOT]).fetchall())


@pytest.mark.parametrize("rows_per_statement", [1, 5], ids=["single-row", "multi-row"])
def test_concurrent_inserts_count_exactly_without_deadlocks(scored, rows_per_statement):
    before = counts(scored)
    inserted, errors = hammer(scored, rows_per_statement)
    assert errors == []  # a deadlock would be psycopg.errors.DeadlockDetected here
    after = counts(scored)
    with scored.connect() as admin:
        new_rows = dict(admin.execute("SELECT customer_id, count(*) FROM complaints GROUP BY 1").fetchall())
        deadlocks = admin.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]
        unscored = admin.execute("SELECT count(*) FROM customer_profiles WHERE customer_id = ANY(%s)"
                                 " AND churn_score IS NULL", [HOT]).fetchone()[0]
    assert inserted == sum(new_rows.values()) == CLIENTS * STATEMENTS_PER_CLIENT * rows_per_statement
    assert {c: after[c] - before[c] for c in HOT} == {c: new_rows.get(c, 0) for c in HOT}
    assert deadlocks == 0
    assert unscored == 0


RESCORE_SECONDS = 8.0  # of load; every client stops by itself


@pytest.mark.parametrize("path", ["sql", "compiled"])
def test_rescore_alongside_multi_row_inserts_never_deadlocks(scored, model_files, path):
    """CALL scoring.rescore in small batches (sql path: one UPDATE per id
    range; compiled: read unlocked, write where unchanged) over and over
    while clients insert complaints for 5 customers per statement in random
    order: no deadlock, exact counters, and every profile's score is the
    model's for the profile as it is afterwards (a score from a stale
    complaint_count would differ)."""
    from pgscore import push_model

    from tests.conftest import local_scores

    if path == "compiled":
        pushed = push_model(scored.dsn("loader"), model_files["logreg"], name="churn", activate=True,
                            scoring_path="compiled")
        assert pushed.scoring_path == "compiled"
    with scored.connect() as admin:
        # Table order unlike customer_id order: the even ids' rows move to the table's end.
        admin.execute("UPDATE customer_profiles SET churn_score = NULL WHERE customer_id % 2 = 0")
        admin.commit()
        ids = [row[0] for row in admin.execute("SELECT customer_id FROM customer_profiles ORDER BY 1")]
        counts_before = dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles").fetchall())
    errors: list[BaseException] = []
    inserted = [collections.Counter() for _ in range(CLIENTS)]  # one per client: no shared updates
    passes = [0]
    deadline = time.monotonic() + RESCORE_SECONDS
    start = threading.Barrier(CLIENTS + 1)

    def inserter(index: int) -> None:
        rng = random.Random(index)
        try:
            with psycopg.connect(scored.dsn("app"), autocommit=True) as conn:
                conn.execute("SET scoring.on_error = 'raise'")
                start.wait()
                for _ in range(2000):
                    if time.monotonic() > deadline:
                        break
                    customers = rng.sample(ids, 5)
                    conn.execute("INSERT INTO complaints (customer_id, channel)"
                                 " SELECT unnest(%s::bigint[]), 'chat'", [customers])
                    inserted[index].update(customers)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    def rescorer() -> None:
        try:
            with psycopg.connect(scored.dsn("loader"), autocommit=True) as conn:
                start.wait()
                while time.monotonic() < deadline and passes[0] < 200:
                    conn.execute("CALL scoring.rescore('churn', 40)")
                    passes[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=inserter, args=(i,)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=rescorer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RESCORE_SECONDS + 60)
    assert errors == []  # a deadlock would be psycopg.errors.DeadlockDetected here
    with scored.connect() as admin:
        deadlocks = admin.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]
        after = dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles").fetchall())
        stored = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles").fetchall())
    total = sum(inserted, collections.Counter())
    assert deadlocks == 0
    assert passes[0] >= 2 and sum(total.values()) > 0, (passes, total)
    assert {c: after[c] - counts_before[c] for c in ids} == {c: total.get(c, 0) for c in ids}
    expected = local_scores(model_files["logreg"], scored, ids)
    assert max(abs(stored[c] - expected[c]) for c in ids) <= 1e-9


@pytest.mark.parametrize("change", ["complaint", "edit"])
@pytest.mark.parametrize("path", ["sql", "compiled"])
def test_rescore_never_writes_a_score_of_a_profile_that_changed_meanwhile(scored, model_files, path, change):
    """A complaint arrives (or the application edits the profile) while
    rescore has read its batch and waits to write it: the profile's score is
    the one for the profile as it is now (the compiled path skips the changed
    profile and scores it again under lock: an edit, unlike a complaint, is
    not rescored by the trigger; the sql path computes each score from the
    row version it writes)."""
    from pgscore import push_model

    from tests.conftest import local_scores

    if path == "compiled":
        push_model(scored.dsn("loader"), model_files["logreg"], name="churn", activate=True, scoring_path="compiled")
    customer = 150
    failures: list[BaseException] = []
    writer = scored.dsn("app" if change == "complaint" else "admin")
    with psycopg.connect(writer) as app, psycopg.connect(scored.dsn("loader"), autocommit=True) as loader:
        if change == "complaint":  # the lock is held until the commit below
            app.execute("INSERT INTO complaints (customer_id, channel) VALUES (%s, 'phone')", [customer])
        else:
            app.execute("UPDATE customer_profiles SET tenure_months = tenure_months + 30,"
                        " contract = 'Month-to-month' WHERE customer_id = %s", [customer])
        rescorer_pid = loader.execute("SELECT pg_backend_pid()").fetchone()[0]

        def rescore() -> None:
            try:
                loader.execute("CALL scoring.rescore('churn', 1000)")
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                failures.append(exc)

        thread = threading.Thread(target=rescore)
        thread.start()
        with scored.connect(autocommit=True) as admin:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not admin.execute(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [rescorer_pid]
            ).fetchone()[0]:
                time.sleep(0.01)
        waited = time.monotonic() < deadline  # rescore read the old profile and waits to write it
        app.commit()
        thread.join(60)
    assert failures == [] and waited
    with scored.connect() as admin:
        stored = admin.execute("SELECT churn_score FROM customer_profiles WHERE customer_id = %s",
                               [customer]).fetchone()[0]
    assert stored == pytest.approx(local_scores(model_files["logreg"], scored, [customer])[customer], abs=1e-12)

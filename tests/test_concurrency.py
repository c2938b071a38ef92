"""8 concurrent clients inserting complaints for 10 hot customers: exact
counters and no deadlocks, single-row and multi-row (5 random customers,
in random order, per statement)."""

from __future__ import annotations

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
